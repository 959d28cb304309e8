"""Conditioning at each window's place (``windowguide.integrations.comfyplace``) inside ComfyUI's own
sampler: ControlNet hints, areas, masks, an inpainting model's latent and the noise mask, under the fusion
sampler and the guidance nodes. Tiny models built with ComfyUI's own classes (harness)."""
import pytest
import torch

from harness import CPU, close, conditioning, tiny_sd15
import comfy.cldm.cldm
import comfy.controlnet
import comfy.ops
import comfy.sample
import comfy.samplers
import comfy.supported_models as supported
import comfy.utils
import nodes as comfy_nodes
from tiny_models import SD15, patcher
from windowguide.comfyui import nodes
from windowguide.errors import WindowguideError
from windowguide.integrations import comfyui as host
from windowguide.windows import current_regions, current_samples


@pytest.fixture(scope="module")
def sd15():
    return tiny_sd15(seed=0)


def tiny_controlnet(seed=1):
    """A ControlNet of the tiny UNet's shape (ComfyUI's ``cldm.ControlNet``), random weights."""
    cfg = {k: v for k, v in SD15.items() if k not in ("adm_in_channels", "use_temporal_attention",
                                                      "use_temporal_resblock", "transformer_depth_output")}
    torch.manual_seed(seed)
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, device=CPU, **cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return comfy.controlnet.ControlNet(net, load_device=CPU)


def hint_image(batch=1, h=100, w=150, seed=5):
    """An IMAGE [B, H, W, 3] of another size and aspect than the canvas (ComfyUI scales and centre-crops it)."""
    return torch.rand(batch, h, w, 3, generator=torch.Generator().manual_seed(seed))


def with_controlnet(positive, negative, control, image, strength=1.0):
    return comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, image, strength, 0.0, 1.0)


def latent(shape, seed=11):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5


def ksampler(model, positive, negative, image_latent, denoise, steps=4, cfg=3.0, seed=3, noise_mask=None):
    """ComfyUI's own img2img: KSampler with denoise (its noise from the seed, added as ComfyUI adds it)."""
    noise = comfy.sample.prepare_noise(image_latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, image_latent,
                               denoise=denoise, seed=seed, disable_pbar=True, noise_mask=noise_mask)


def fused(model, positive, negative, image_latent, denoise, window, stride, steps=4, cfg=3.0, seed=3, noise_mask=None,
          **options):
    """The fusion sampler as img2img: SamplerCustom with the KSampler's sigmas for this denoise."""
    sampler = host.fusion_sampler(window=window, stride=stride, **options)
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=CPU, sampler="euler", scheduler="normal",
                                     denoise=denoise).sigmas
    noise = comfy.sample.prepare_noise(image_latent, seed)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, image_latent,
                                      noise_mask=noise_mask, disable_pbar=True, seed=seed)


def conds_of(kind, positive, negative, batch=1):
    if kind == "controlnet":
        return with_controlnet(positive, negative, tiny_controlnet(), hint_image(batch))
    if kind == "area":
        extra = comfy_nodes.ConditioningSetArea().append(conditioning(8), 64, 96, 32, 8, 1.0)[0]
        return positive + extra, negative
    if kind == "mask":
        mask = torch.zeros(1, 128, 128)
        mask[:, 20:90, 50:128] = 1.0
        extra = comfy_nodes.ConditioningSetMask().append(conditioning(8), mask, "default", 1.0)[0]
        return positive + extra, negative
    return positive, negative


@pytest.mark.parametrize("kind", ["none", "controlnet", "area", "mask"])
def test_one_window_over_the_image_is_comfyuis_img2img(sd15, kind):
    """One window covering the canvas: the fusion sampler is ComfyUI's KSampler with denoise < 1, the same
    noise added the same way, with a ControlNet, an area or a mask condition too."""
    positive, negative = conds_of(kind, conditioning(1), conditioning(2))
    start = latent((1, 4, 16, 16))
    ref = ksampler(sd15, positive, negative, start, denoise=0.6)
    ours = fused(sd15, positive, negative, start, denoise=0.6, window=16, stride=8)
    assert close(sd15, ours, ref, tol=1e-5)
    assert not torch.equal(ref, ksampler(sd15, positive, negative, start, denoise=0.9))   # denoise matters
    if kind != "none":                     # and the conditioning does (0.23 of 44 here; the mask 0.006)
        assert float((ref - ksampler(sd15, conditioning(1), conditioning(2), start, denoise=0.6)).abs().max()) > 1e-3


def record_control_calls(control):
    """Wrap a ControlNet's network: each call's hint and the rows' places (regions, samples)."""
    seen, net = [], control.control_model
    inner = net.forward

    def forward(*args, **kw):
        regions = current_regions()
        seen.append((kw["hint"].clone(), None if regions is None else regions.clone(),
                     None if current_samples() is None else current_samples().clone()))
        return inner(*args, **kw)
    net.forward = forward
    return seen


def cut(canvas_hint, region, sample, size, ratio=8):
    top, left = int(region[0]), int(region[1])
    h, w = size
    return canvas_hint[sample % canvas_hint.shape[0], :, top * ratio:(top + h) * ratio, left * ratio:(left + w) * ratio]


def check_hints(seen, image, canvas):
    """Every ControlNet call's hint row is the image (as ComfyUI scales it for the canvas) cut at the row's
    place: the canvas itself where the call is the canvas."""
    h, w = canvas
    expected = comfy.utils.common_upscale(image.movedim(-1, 1), w * 8, h * 8, "nearest-exact", "center")
    placed = 0
    for hint, regions, samples in seen:
        size = (hint.shape[-2] // 8, hint.shape[-1] // 8)
        if regions is None:
            assert size == canvas and torch.equal(hint[:expected.shape[0]], expected)
            continue
        for j in range(hint.shape[0]):
            r = j % regions.shape[0]
            assert torch.equal(hint[j], cut(expected, regions[r], int(samples[r]), size)), (j, regions[r].tolist())
            placed += 1
    return placed


@pytest.mark.parametrize("how", ["mswg", "fusion", "fusion+mswg"])
def test_every_controlnet_call_gets_the_hint_cut_at_its_place(sd15, how):
    """M-SWG crops of the canvas, fusion windows, and M-SWG crops of fusion windows: each row of each
    ControlNet call gets the hint's pixels under it (2 samples with 2 different hints)."""
    control, image = tiny_controlnet(), hint_image(batch=2)
    seen = record_control_calls(control)
    positive, negative = with_controlnet(conditioning(1), conditioning(2), control, image)
    model = sd15
    if "mswg" in how:
        model = nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 0.625, 2, 0.0, 1.0)[0]
    canvas = (24, 32) if "fusion" in how else (16, 16)
    start = latent((2, 4) + canvas)
    if "fusion" in how:
        out = fused(model, positive, negative, start, denoise=0.7, window=16, stride=8, steps=2)
    else:
        out = ksampler(model, positive, negative, start, denoise=0.7, steps=2)
    assert torch.isfinite(out).all()
    assert check_hints(seen, image, canvas) > 0


def record_unet_calls(model):
    """A clone whose UNet calls are recorded: input shape, cross-attention context, c_concat, places."""
    calls, m = [], model.clone()

    def wrapper(apply, args):
        c = args["c"]
        regions = current_regions()
        calls.append({"shape": tuple(args["input"].shape), "context": c["c_crossattn"].clone(),
                      "concat": None if c.get("c_concat") is None else c["c_concat"].clone(),
                      "regions": None if regions is None else regions.clone(),
                      "samples": None if current_samples() is None else current_samples().clone()})
        return apply(args["input"], args["timestep"], **c)
    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def test_area_conditions_reach_exactly_the_windows_they_cover(sd15):
    """An area (ConditioningSetArea, pixels 64 x 96 at (32, 8) = latent 8 x 12 at (4, 1)) on a 24 x 32
    canvas of 16 x 16 windows at stride 8: evaluated on each window it meets, on their intersection (in
    the window's pixels), and never on the others."""
    area_cond = conditioning(8)
    positive = conditioning(1) + comfy_nodes.ConditioningSetArea().append(area_cond, 96, 64, 8, 32, 1.0)[0]
    model, calls = record_unet_calls(sd15)
    fused(model, positive, conditioning(2), latent((1, 4, 24, 32)), denoise=0.7, window=16, stride=8, steps=1)
    area_ctx = area_cond[0][0]
    met = {}
    for c in calls:
        for j in range(c["shape"][0]):
            if torch.equal(c["context"][j, :area_ctx.shape[1]], area_ctx[0]):
                top, left = c["regions"][j % c["regions"].shape[0], :2].tolist()
                met[(top, left)] = c["shape"][-2:]
    lo_y, hi_y, lo_x, hi_x = 4, 12, 1, 13                   # the area in latent pixels
    expected = {}
    for top in (0, 8):
        for left in (0, 8, 16):
            h = min(hi_y, top + 16) - max(lo_y, top)
            w = min(hi_x, left + 16) - max(lo_x, left)
            if h > 0 and w > 0:
                expected[(top, left)] = (h, w)
    assert met == expected


def test_a_mask_condition_is_cut_per_window_and_skipped_where_it_is_zero(sd15):
    """ConditioningSetMask: the mask's crop at each window; windows where it is zero do not evaluate it."""
    mask_cond = conditioning(8)
    mask = torch.zeros(1, 192, 256)
    mask[:, :64, :64] = 1.0                      # only the top-left window (latent 0..8) meets it
    positive = conditioning(1) + comfy_nodes.ConditioningSetMask().append(mask_cond, mask, "default", 1.0)[0]
    model, calls = record_unet_calls(sd15)
    fused(model, positive, conditioning(2), latent((1, 4, 24, 32)), denoise=0.7, window=16, stride=8, steps=1)
    met = set()
    for c in calls:
        for j in range(c["shape"][0]):
            if torch.equal(c["context"][j, :6], mask_cond[0][0][0]):
                met.add(tuple(c["regions"][j % c["regions"].shape[0], :2].tolist()))
    assert met == {(0, 0)}


def tiny_inpainting(seed=0):
    """An inpainting UNet (9 input channels: latent, mask, masked image; ComfyUI's ``set_inpaint``)."""
    return patcher(supported.SD15({**SD15, "in_channels": 9}), seed)


def test_an_inpainting_model_under_the_fusion_sampler(sd15):
    """A 9-channel inpainting UNet with a noise mask: every window's c_concat is the canvas's cut at its
    place, one window is ComfyUI's own inpainting, and outside the mask the image is kept."""
    inpaint = tiny_inpainting()
    start = latent((1, 4, 24, 32))
    mask = torch.zeros(1, 1, 24, 32)
    mask[..., 6:18, 4:28] = 1.0
    cond = [[conditioning(1)[0][0], {"concat_latent_image": start * 0.18215, "concat_mask": mask}]]
    uncond = [[conditioning(2)[0][0], {"concat_latent_image": start * 0.18215, "concat_mask": mask}]]
    model, calls = record_unet_calls(inpaint)
    out = fused(model, cond, uncond, start, denoise=0.8, window=16, stride=8, steps=2, noise_mask=mask)
    assert torch.isfinite(out).all()
    kept = (mask == 0).expand_as(out)
    assert torch.allclose(out[kept], start[kept], atol=1e-5)
    first = calls[0]
    canvas_concat = None
    whole = fused(record_unet_calls(inpaint)[0], cond, uncond, start, denoise=0.8, window=32, stride=8, steps=2,
                  noise_mask=mask)
    ref = ksampler(inpaint, cond, uncond, start, denoise=0.8, steps=2, noise_mask=mask)
    assert close(inpaint, whole, ref, tol=1e-5)
    # the canvas's c_concat, as ComfyUI builds it for the whole canvas (recorded from its own sampler)
    probe, canvas_calls = record_unet_calls(inpaint)
    ksampler(probe, cond, uncond, start, denoise=0.8, steps=1, noise_mask=mask)
    canvas_concat = canvas_calls[0]["concat"][:1]
    checked = 0
    for c in calls:
        rows = c["regions"].shape[0]
        for j in range(c["shape"][0]):
            top, left = c["regions"][j % rows, :2].tolist()
            want = canvas_concat[0, :, top:top + 16, left:left + 16]
            assert torch.equal(c["concat"][j], want)
            checked += 1
    assert checked and first["concat"].shape[-2:] == (16, 16)


def test_a_weak_model_of_another_architecture_is_named(sd15):
    """Autoguidance with a weak model of another architecture: a message naming what differs, not
    ComfyUI's tensor error."""
    model = nodes.TwoModelAutoguidance.execute(sd15, tiny_inpainting(), 1.0, 0.0, 1.0)[0]
    with pytest.raises(WindowguideError, match="input channels: 4 vs 9"):
        ksampler(model, conditioning(1), conditioning(2), latent((1, 4, 16, 16)), denoise=1.0, steps=1)


def test_gligen_and_wrapping_areas_are_refused_with_a_message(sd15):
    positive = conditioning(1) + comfy_nodes.ConditioningSetArea().append(conditioning(8), 64, 64, 0, 0, 1.0)[0]
    with pytest.raises(WindowguideError, match="circular"):
        fused(sd15, positive, conditioning(2), latent((1, 4, 16, 24)), denoise=0.7, window=16, stride=8, steps=1,
              circular=True)


def test_a_model_patch_controlnet_is_refused_under_windows(sd15):
    """ComfyUI's model-patch ControlNets (Qwen-Image's DiffSynth patch) scale the whole image to each call:
    under the fusion sampler or M-SWG each window would get the whole image, so they are refused by name."""
    from comfy_extras.nodes_model_patch import DiffSynthCnetPatch

    class Patch(DiffSynthCnetPatch):                    # what QwenImageDiffsynthControlnet sets, without its nets
        def __init__(self):
            self.encoded_image, self.encoded_image_size = None, (128, 128)

        def models(self):
            return []

        def to(self, device):
            return self
    model = sd15.clone()
    model.set_model_double_block_patch(Patch())
    with pytest.raises(WindowguideError, match="model-patch ControlNet \\(Patch, double_block"):
        fused(model, conditioning(1), conditioning(2), latent((1, 4, 16, 24)), denoise=0.7, window=16, stride=8,
              steps=1)
    guided = nodes.SlidingWindowGuidance.execute(model, 0.5, True, 0.625, 2, 0.0, 1.0)[0]
    with pytest.raises(WindowguideError, match="model-patch ControlNet"):
        ksampler(guided, conditioning(1), conditioning(2), latent((1, 4, 16, 16)), denoise=0.7, steps=1)


def test_an_sdxl_controlnet_gets_its_crop_too():
    """SDXL: a ControlNet of the SDXL UNet's shape (its size embedding beside the time) under the fusion
    sampler; every call's hint is the image cut at its window."""
    from harness import tiny_sdxl
    model = tiny_sdxl(seed=0)
    cfg = {k: v for k, v in model.model.model_config.unet_config.items()
           if k not in ("use_temporal_attention", "use_temporal_resblock", "transformer_depth_output")}
    torch.manual_seed(2)
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, device=CPU, **cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    control, image = comfy.controlnet.ControlNet(net, load_device=CPU), hint_image()
    seen = record_control_calls(control)
    pos, neg = conditioning(1, pooled=True), conditioning(2, pooled=True)
    positive, negative = with_controlnet(pos, neg, control, image)
    out = fused(model, positive, negative, latent((1, 4, 24, 32)), denoise=0.7, window=16, stride=8, steps=1)
    assert torch.isfinite(out).all() and check_hints(seen, image, (24, 32)) > 0
