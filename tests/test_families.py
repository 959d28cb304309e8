"""The 2026 families (Chroma, Flux.2, Qwen-Image, Z-Image, SANA) in all three directions: our sampler
through ``from_pipeline`` against the pipeline's own output, ``wg.patch`` on the classic pipeline, and
the windowguide guiders in the family's modular pipeline; plus each family's crop positions."""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import windowguide as wg
import windowguide.adapters.registry
import pipes


@dataclass
class Spec:
    """How to run one family's tiny pipeline: its latent shape for windowguide, the pipeline's form of
    those latents, the CFG argument and how it maps to our CFG weight."""
    build: Callable
    shape: tuple
    pixels: int                          # image side in pixels for the pipeline's height/width
    to_pipeline: Callable                # our latents -> the pipeline's ``latents`` argument
    from_ours: Callable = None           # our final state -> the pipeline's output_type='latent' (else to_pipeline)
    negative: bool = True                # the pipeline takes a negative prompt
    scale: str = "guidance_scale"        # the pipeline's CFG argument
    weight: Callable = lambda s: s - 1   # our CFG weight for the pipeline's scale
    call: dict = None                    # other arguments of the pipeline's call
    sampler: str = "flow_euler"
    steps: int = 3
    output_layer: str = "proj_out"       # the network's last layer: one call of it per evaluation
    modular: str | None = None           # diffusers' modular blocks of the family (with a guider)
    modular_out: Callable = None         # our final state -> the modular pipeline's output='latents' (else to_pipeline)
    crops_per_call: int = 1              # crops of one size in one call (1: one call per window place, shared ids)


def _chroma():
    from windowguide.adapters.flux import pack
    return Spec(pipes.tiny_chroma, (4, 16, 16), 32, pack, call=dict(max_sequence_length=6))


def _klein():
    from windowguide.adapters.flux2 import latents_to_vae
    pipe = pipes.tiny_flux2(klein=True)
    return Spec(lambda: pipe, (16, 8, 8), 32, lambda z: z, lambda x: latents_to_vae(pipe.vae, x), negative=False,
                call=dict(max_sequence_length=12), modular="Flux2KleinBaseAutoBlocks")


def _qwen():
    from windowguide.adapters.flux import pack
    pipe = pipes.tiny_qwen_image()
    cfg = pipe.vae.config
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
    # the modular pipeline's latents are the VAE's: the latent statistics undone, one frame
    return Spec(lambda: pipe, (4, 16, 16), 32, pack, scale="true_cfg_scale", modular="QwenImageAutoBlocks",
                modular_out=lambda x: x[:, :, None] * std + mean)


def _zimage():
    return Spec(pipes.tiny_zimage, (4, 16, 16), 32, lambda z: z, weight=lambda s: s, call=dict(max_sequence_length=12),
                output_layer="all_final_layer.2-1", modular="ZImageAutoBlocks", crops_per_call=4)


def _sana():
    return Spec(pipes.tiny_sana, (4, 16, 16), 32, lambda z: z, call=dict(max_sequence_length=12,
                                                                          use_resolution_binning=False))


SPECS = {"chroma": _chroma, "flux2-klein": _klein, "qwenimage": _qwen, "zimage": _zimage, "sana": _sana}


@pytest.fixture(scope="module", params=sorted(SPECS))
def family(request):
    spec = SPECS[request.param]()
    return request.param, spec, spec.build()


def _latents(shape, seed=7):
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def _run(spec, pipe, **kw):
    if not spec.negative:
        kw.pop("negative_prompt", None)
    with torch.no_grad():
        return pipe(prompt="a red cat", height=spec.pixels, width=spec.pixels, num_inference_steps=spec.steps,
                    latents=spec.to_pipeline(_latents(spec.shape)), output_type="latent", **(spec.call or {}),
                    **kw).images


def _encode(spec, m):
    return m.encode(prompt="a red cat", negative_prompt="blue dog" if spec.negative else "",
                    **{k: v for k, v in (spec.call or {}).items() if k == "max_sequence_length"})


def _out(spec, x):
    return (spec.from_ours or spec.to_pipeline)(x)


def _ours(spec, pipe, guidance=None, cfg_scale=None):
    m = wg.from_pipeline(pipe)
    pos, neg = _encode(spec, m)
    g = guidance
    if cfg_scale is not None and spec.weight(cfg_scale) > 0:
        cfg = wg.CFG(spec.weight(cfg_scale), null={k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0])
        g = cfg if g is None else cfg + g
    g = m.family_guidance(g)
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [7], sampler=spec.sampler, sigmas=m.sigmas(spec.steps, shape=spec.shape),
                      cond=pos, guidance=g)
    return _out(spec, x)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_our_sampler_equals_the_pipeline(family, scale):
    name, spec, pipe = family
    ref = _run(spec, pipe, negative_prompt="blue dog", **{spec.scale: scale})
    assert (_ours(spec, pipe, cfg_scale=scale) - ref).abs().max() <= 1e-4


def _untouched(net):
    return "forward" not in vars(net) and not getattr(getattr(net, "_diffusers_hook", None), "hooks", None)


def _recipe_terms(recipe, shape, multiple, null):
    """The recipe as our sampler's Guidance (an auto window sized by the term), the CFG term's null the
    negative prompt."""
    from dataclasses import replace
    from windowguide import spec as recipes
    terms = recipes.build(recipe, recipes.Context(net=None, load=None))
    return wg.Guidance(tuple(replace(t, null=null) if isinstance(t, wg.CFG) else t for t in terms))


@pytest.mark.parametrize("recipe", ["mswg:w=0.5", "sgg:fsplit=0.5,cfg={w:g},mswg=0.5"])
def test_patch_weight_zero_bit_for_bit_and_guided_equals_our_sampler(family, recipe):
    name, spec, pipe = family
    recipe = recipe.format(w=spec.weight(3.0))
    args = dict(negative_prompt="blue dog", **{spec.scale: 3.0})
    before = _run(spec, pipe, **args)
    with wg.patch(pipe, "mswg:w=0"):
        zero = _run(spec, pipe, **args)
    with wg.patch(pipe, recipe):
        patched = _run(spec, pipe, **args)
    assert torch.equal(zero, before) and torch.equal(_run(spec, pipe, **args), before) and _untouched(pipe.transformer)
    assert not torch.equal(patched, before)
    m = wg.from_pipeline(pipe)
    pos, neg = _encode(spec, m)
    null = {k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0]
    terms = _recipe_terms(recipe, spec.shape[-2:], m.multiple, null)
    if not any(isinstance(t, wg.CFG) for t in terms):
        terms = wg.CFG(spec.weight(3.0), null=null) + terms
    terms = m.family_guidance(terms)
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [7], sampler=spec.sampler, sigmas=m.sigmas(spec.steps, shape=spec.shape),
                      cond=pos, guidance=terms)
    assert (_out(spec, x) - patched).abs().max() <= 1e-4


def _full_calls(pipe, run, spec):
    """The token shapes of the transformer's evaluations during ``run()``, seen at its output layer
    (a call that a hook answers without running the network does not reach it)."""
    seen = []
    hook = pipe.transformer.get_submodule(spec.output_layer).register_forward_pre_hook(
        lambda mod, args: seen.append(tuple(args[0].shape[:-1])))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_sgg_under_the_patch_skips_the_unconditional_call_where_cfg_is_off(family):
    """FLUX-like pipelines run CFG as a second call: where sgg's CFG is off it is not evaluated."""
    name, spec, pipe = family
    if wg.adapters.registry.by_pipeline(pipe, patched=True).patched[type(pipe).__name__].rows != "separate":
        pytest.skip("CFG in one batch: the unconditional rows are evaluated with the conditional ones")
    args = dict(negative_prompt="blue dog", **{spec.scale: 3.0})
    plain = _full_calls(pipe, lambda: _run(spec, pipe, **args), spec)
    with wg.patch(pipe, f"sgg:fsplit=0.5,cfg={spec.weight(3.0):g},mswg=0.5"):
        calls = _full_calls(pipe, lambda: _run(spec, pipe, **args), spec)
    full = plain[0]
    high = int(0.5 * spec.steps)                       # CFG on steps 0 .. high - 1
    assert len(plain) == 2 * spec.steps
    assert sum(c == full for c in calls) == 2 * high + (spec.steps - high)


def test_sgg_under_the_patch_of_a_batched_cfg_pipeline(tmp_path):
    """SD runs CFG in one batch: where sgg's CFG is off the unconditional rows get the conditional
    prediction, so that the pipeline's combination is the conditional one plus the low term."""
    pipe = pipes.tiny_sd(tmp_path)
    z = _latents((4, 16, 16))

    def run():
        with torch.no_grad():
            return pipe("a red cat", negative_prompt="blue dog", guidance_scale=3.0, height=32, width=32,
                        num_inference_steps=4, latents=z, output_type="latent").images
    with wg.patch(pipe, "sgg:fsplit=0.5,cfg=2,mswg=0.5,window=10"):
        patched = run()
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    terms = _recipe_terms("sgg:fsplit=0.5,cfg=2,mswg=0.5,window=10", (16, 16), m.multiple, neg[0])
    pipe.scheduler.set_timesteps(4)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4, sampler="ddim"), cond=pos,
                      guidance=terms, **m.sampler_options("ddim", 4))
    assert (m.pipeline_latents(x, m.sigmas(4, sampler="ddim")) - patched).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def modular_family(family):
    name, spec, pipe = family
    if spec.modular is None:
        pytest.skip(f"diffusers has no modular {name} pipeline with a guider")
    import diffusers.modular_pipelines as mp
    from diffusers.guiders import ClassifierFreeGuidance
    blocks = getattr(mp, spec.modular)().init_pipeline()
    blocks.update_components(**{k: v for k, v in pipe.components.items() if v is not None and k in blocks._component_specs},
                             guider=ClassifierFreeGuidance(guidance_scale=3.0))
    return name, spec, pipe, blocks


def _run_modular(spec, blocks, guider):
    blocks.update_components(guider=guider)
    kw = dict(negative_prompt="blue dog") if spec.negative else {}
    with torch.no_grad():
        return blocks(prompt="a red cat", height=spec.pixels, width=spec.pixels, num_inference_steps=spec.steps,
                      latents=spec.to_pipeline(_latents(spec.shape)), output="latents", **(spec.call or {}), **kw)


def test_guiders_in_the_modular_pipeline(modular_family):
    from diffusers.guiders import ClassifierFreeGuidance
    from windowguide import guiders
    name, spec, pipe, blocks = modular_family
    cfg = _run_modular(spec, blocks, ClassifierFreeGuidance(guidance_scale=3.0))
    assert torch.equal(_run_modular(spec, blocks, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.0)), cfg)
    calls = _full_calls(pipe, lambda: _run_modular(spec, blocks, guiders.SlidingWindowGuidance(
        guidance_scale=3.0, swg_scale=0.5)), spec)
    assert _untouched(pipe.transformer)
    m = wg.from_pipeline(pipe)
    window = [wg.windows.default_window(side, m.multiple) for side in spec.shape[-2:]]
    full = calls[0]
    crops = [c for c in calls if c != full]
    # per step: the conditional batch, its crops once each (one call per window place: a call's ids are
    # shared by its rows), the unconditional batch; the conditional prediction is not evaluated again
    assert sum(c == full for c in calls) == 2 * spec.steps and len(crops) == 4 * spec.steps // spec.crops_per_call
    assert {c[0] for c in crops} == {spec.crops_per_call}
    pos, neg = _encode(spec, m)
    null = {k: v[0] for k, v in neg.items()}
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [7], sampler=spec.sampler, sigmas=m.sigmas(spec.steps, shape=spec.shape),
                      cond=pos, guidance=m.family_guidance(wg.CFG(2.0, null=null) + wg.MSWG(0.5, window=tuple(window))))
    out = _run_modular(spec, blocks, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5))
    assert ((spec.modular_out or spec.to_pipeline)(x) - out).abs().max() <= 1e-4


def _canvas_ids_flux(pipe, shape):
    """The pipeline's own image ids of the whole canvas, as a [rows, cols, D] grid."""
    h, w = shape[-2] // 2, shape[-1] // 2
    return type(pipe)._prepare_latent_image_ids(1, h, w, "cpu", torch.float32).reshape(h, w, -1)


def _canvas_ids_flux2(pipe, shape):
    return type(pipe)._prepare_latent_ids(torch.zeros(1, *shape))[0].reshape(shape[-2], shape[-1], -1)


CANVAS_IDS = {"chroma": (_canvas_ids_flux, 2), "flux2-klein": (_canvas_ids_flux2, 1)}


def test_a_crops_positions_are_the_canvas_at_its_place(family):
    """Every crop call's image ids equal the canvas's ids (as the pipeline builds them) at the crop's place."""
    name, spec, pipe = family
    if name not in CANVAS_IDS:
        pytest.skip("positions are not ids: tested by the family's own test")
    canvas_ids, per_id = CANVAS_IDS[name]
    grid = canvas_ids(pipe, spec.shape).float()
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["hidden_states"].shape[1], kw["img_ids"].float())), with_kwargs=True)
    m = wg.from_pipeline(pipe)
    pos, _ = _encode(spec, m)
    try:
        with torch.no_grad():
            wg.sample(m.denoiser, spec.shape, [7], sampler=spec.sampler, sigmas=m.sigmas(1, shape=spec.shape), cond=pos,
                      guidance=wg.MSWG(0.5, window=(spec.shape[-2] - 2 * per_id, spec.shape[-1] - 4 * per_id)))
    finally:
        hook.remove()
    crops = [ids for n, ids in seen if n < grid.shape[0] * grid.shape[1]]
    assert len(crops) == 4                                     # 2 x 2 windows, one call per place
    places = set()
    for ids in crops:
        ids = ids[0] if ids.dim() == 3 else ids
        top, left = int(ids[0, 1]), int(ids[0, 2])
        h, w = int(ids[:, 1].max()) - top + 1, int(ids[:, 2].max()) - left + 1
        assert torch.equal(ids.reshape(h, w, -1), grid[top:top + h, left:left + w])
        places.add((top, left))
    gh, gw = grid.shape[:2]
    assert {(0, 0), (gh - h, gw - w)} <= places and len(places) == 4     # the last window flush with the edge


@pytest.fixture(scope="module")
def flux2_dev():
    return pipes.tiny_flux2(klein=False)


def _run_dev(pipe, **kw):
    with torch.no_grad():
        return pipe(prompt="a red cat", guidance_scale=2.5, height=32, width=32, num_inference_steps=3,
                    latents=_latents((16, 8, 8)), output_type="latent", max_sequence_length=12, **kw).images


def test_flux2_dev_guidance_embedding_sampler_and_patch(flux2_dev):
    """[dev] has no CFG: its guidance_scale is an input; M-SWG under the patch equals our sampler."""
    from windowguide.adapters.flux2 import pack
    from windowguide.errors import WindowguideError
    pipe = flux2_dev
    before = _run_dev(pipe)
    m = wg.from_pipeline(pipe, guidance_embed=2.5)
    pos, _ = m.encode(prompt="a red cat", max_sequence_length=12)
    sigmas = m.sigmas(3, shape=(16, 8, 8))
    with torch.no_grad():
        plain = wg.sample(m.denoiser, (16, 8, 8), [7], sampler="flow_euler", sigmas=sigmas, cond=pos)
        guided = wg.sample(m.denoiser, (16, 8, 8), [7], sampler="flow_euler", sigmas=sigmas, cond=pos,
                           guidance=wg.MSWG(0.5, window=5))
    assert (pack(plain) - before).abs().max() <= 1e-4
    with wg.patch(pipe, "mswg:w=0"):
        assert torch.equal(_run_dev(pipe), before)
    with wg.patch(pipe, "mswg:w=0.5,window=5"):
        patched = _run_dev(pipe)
    assert (pack(guided) - patched).abs().max() <= 1e-4 and torch.equal(_run_dev(pipe), before)
    with pytest.raises(WindowguideError, match="Flux2Pipeline runs no CFG"):
        with wg.patch(pipe, "cfg:w=2+mswg:w=0.5"):
            pass


def test_qwen_image_crops_get_the_canvas_rope_at_their_place():
    """Qwen-Image's RoPE is centred on the image: a crop's call gets the canvas's frequencies at its place
    (and the canvas's text offset), not those of a small image of its own."""
    pipe = pipes.tiny_qwen_image()
    pe = pipe.transformer.pos_embed
    canvas_vid, canvas_txt = pe([(1, 8, 8)], max_txt_seq_len=12, device="cpu")
    grid = canvas_vid.reshape(8, 8, -1)
    seen = []
    hook = pe.register_forward_hook(lambda mod, args, kw, out: seen.append(out), with_kwargs=True)
    m = wg.from_pipeline(pipe)
    pos, _ = m.encode(prompt="a red cat")
    try:
        with torch.no_grad():
            wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=m.sigmas(1, shape=(4, 16, 16)),
                      cond=pos, guidance=wg.MSWG(0.5, window=10))
    finally:
        hook.remove()
    crops = [(vid, txt) for vid, txt in seen if vid.shape[0] == 25]           # 5 x 5 tokens of a 10 x 10 crop
    assert len(crops) == 4 and len(seen) == 5
    places = {(0, 0), (0, 3), (3, 0), (3, 3)}                                 # the last window flush with the edge
    for vid, txt in crops:
        match = [p for p in places if torch.equal(vid, grid[p[0]:p[0] + 5, p[1]:p[1] + 5].reshape(25, -1))]
        assert len(match) == 1 and torch.equal(txt, canvas_txt[:txt.shape[0]])
        places -= set(match)
    assert not places
    own, _ = pe([(1, 5, 5)], max_txt_seq_len=12, device="cpu")                # 'stretch': the crop's own grid
    assert not torch.equal(own, grid[:5, :5].reshape(25, -1))


def test_qwen_norm_cfg_in_d_space_is_the_pipelines_formula_in_velocity():
    """renorm_cfg(x, sigma, D, D_ref) is P |P_ref| / |P| per packed token, written in D-space."""
    from windowguide.adapters.flux import pack, unpack
    from windowguide.adapters.qwenimage import renorm_cfg
    g = torch.Generator().manual_seed(0)
    x, d, ref = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    sigma = torch.tensor([0.7, 3.0])
    t = (sigma / (1 + sigma)).view(-1, 1, 1, 1)
    x_t = x / (1 + sigma.view(-1, 1, 1, 1))
    v, v_ref = pack((x_t - d) / t), pack((x_t - ref) / t)                       # the pipeline's token layout
    v_new = v * (torch.norm(v_ref, dim=-1, keepdim=True) / torch.norm(v, dim=-1, keepdim=True))
    assert torch.allclose(renorm_cfg(x, sigma, d, ref), x_t - t * unpack(v_new, 8, 8), atol=1e-5)


def test_zimage_crops_get_the_canvas_positions_at_their_place_in_one_call():
    """Z-Image builds positions per sample: each crop of one call gets the canvas's rows and columns at
    its own place (the caption axis as the canvas's)."""
    from windowguide.adapters.zimage import image_positions_at
    pipe = pipes.tiny_zimage()
    tr = pipe.transformer
    cap = [torch.randn(5, 16)]
    full = tr.patchify_and_embed([torch.randn(4, 1, 16, 16)], cap, 2, 1)[3][0][:64].reshape(8, 8, 3)
    corners = [(0, 0), (0, 3), (3, 0), (3, 3)]
    with image_positions_at(tr, corners, (5, 5)):
        crops = tr.patchify_and_embed([torch.randn(4, 1, 10, 10)] * 4, cap * 4, 2, 1)[3]
    for (top, left), ids in zip(corners, crops):
        assert torch.equal(ids[:25].reshape(5, 5, 3), full[top:top + 5, left:left + 5])
    assert "create_coordinate_grid" not in vars(tr)


def test_zimage_cfg_normalization_and_truncation_agree_in_the_patch_and_our_sampler():
    spec = _zimage()
    pipe = spec.build()
    options = dict(cfg_normalization=1.02, cfg_truncation=0.5)
    args = dict(negative_prompt="blue dog", guidance_scale=3.0, **options)
    with wg.patch(pipe, "mswg:w=0.5"):
        patched = _run(spec, pipe, **args)
        plain = _run(spec, pipe, negative_prompt="blue dog", guidance_scale=3.0)
    m = wg.from_pipeline(pipe)
    pos, neg = _encode(spec, m)
    g = wg.CFG(3.0, null={k: v[0] for k, v in neg.items()}) + wg.MSWG(0.5, window=10)
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [7], sampler="flow_euler", sigmas=m.sigmas(3, shape=spec.shape), cond=pos,
                      guidance=m.family_guidance(g, **options))
    assert (x - patched).abs().max() <= 1e-4 and (patched - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["qwenimage", "zimage"])
def test_cli_sample_of_a_new_family_folder_equals_the_python_api(name, tmp_path):
    """``windowguide sample --model DIR`` on a saved folder: the PNGs are the Python API's images (the
    family's CFG convention included: Qwen-Image's norm correction)."""
    from windowguide.cli import main
    from windowguide.files import read_png
    spec = SPECS[name]()
    pipe = spec.build()
    pipe.save_pretrained(tmp_path / name)
    out = tmp_path / "s"
    assert main(["sample", "--model", str(tmp_path / name), "--prompt", "a red cat", "--negative-prompt", "blue dog",
                 "--height", "32", "--width", "32", "--steps", "3", "--seeds", "5", "--guidance",
                 "cfg:w=2+mswg:w=0.5", "--out", str(out)]) == 0
    png = read_png(str(out / "000005.png")) if (out / "000005.png").exists() else read_png(
        str(sorted(out.glob("*5.png"))[0]))
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    from windowguide import spec as recipes
    g = recipes.build("cfg:w=2+mswg:w=0.5", recipes.Context(net=None, load=None))
    m.denoiser.null_cond = {k: v[0] for k, v in neg.items()}
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [5], sampler="flow_euler", steps=3, sigmas=m.sigmas(3, shape=spec.shape),
                      cond=pos, guidance=m.family_guidance(g))
    assert (png.astype(int) - m.decode(x)[0].astype(int)).__abs__().max() <= 1
    import json
    assert json.loads((out / "settings.json").read_text())["family"] == name


def test_model_card_presets_name_their_source():
    from windowguide.presets import PRESETS
    for name in ("flux2-klein-base", "qwen-image", "z-image", "chroma", "sana"):
        p = PRESETS[name]
        assert "model card" in p.source and p.sampler == "flow_euler" and p.steps > 0


def test_calls_a_crop_cannot_take_are_refused_by_name():
    """Editing calls (reference image tokens) cannot be cut into crops: a clear error, not a wrong image."""
    from windowguide.adapters import flux2, qwenimage
    from windowguide.errors import WindowguideError
    ids = torch.cat([flux2.flux2_ids(4, 4), flux2.flux2_ids(4, 4) + torch.tensor([10, 0, 0, 0])])
    call = dict(img_ids=ids, hidden_states=torch.zeros(1, 32, 8), encoder_hidden_states=torch.zeros(1, 3, 4),
                timestep=torch.tensor([0.5]))
    with pytest.raises(WindowguideError, match="FLUX.2 with reference images"):
        flux2.read_call(None, call)
    call = dict(img_shapes=[[(1, 4, 4), (1, 4, 4)]], hidden_states=torch.zeros(1, 32, 16),
                encoder_hidden_states=torch.zeros(1, 3, 4), timestep=torch.tensor([0.5]))
    with pytest.raises(WindowguideError, match="Qwen-Image with reference images"):
        qwenimage.read_call(None, call)
    with pytest.raises(WindowguideError, match="QwenLikePipeline is not supported.*QwenImagePipeline"):
        wg.from_pipeline(type("QwenLikePipeline", (), {})())
