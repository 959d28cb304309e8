"""windowguide's diffusers guiders in tiny modular pipelines (SDXL, SD3), against diffusers' own
ClassifierFreeGuidance and against windowguide's sampler on the same model, schedule and seed."""
import subprocess
import sys

import pytest
import torch

import windowguide as wg
from pipes import modular, tiny_sd3, tiny_sdxl
from windowguide.errors import WindowguideError

guiders = pytest.importorskip("windowguide.guiders")
from diffusers.guiders import ClassifierFreeGuidance  # noqa: E402

STEPS = 4


def _latents(seed=7):
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    classic = tiny_sdxl(tmp_path_factory.mktemp("sdxl"))
    return classic, modular(classic, ClassifierFreeGuidance(guidance_scale=3.0))


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    classic = tiny_sd3(tmp_path_factory.mktemp("sd3"))
    return classic, modular(classic, ClassifierFreeGuidance(guidance_scale=3.0))


def _run(pipe, guider, **kw):
    pipe.update_components(guider=guider)
    extra = dict(max_sequence_length=8) if "3" in type(pipe).__name__ else {}
    return pipe(prompt="a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=STEPS,
                latents=_latents(), output="latents", **extra, **kw)


def _null(neg):
    return {k: v[0] for k, v in neg.items()}


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_weight_zero_equals_classifier_free_guidance_bit_for_bit(family, request):
    classic, pipe = request.getfixturevalue(family)
    cfg = _run(pipe, ClassifierFreeGuidance(guidance_scale=3.0))
    for g in (guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.0),
              guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, swg_start=0.0, swg_stop=0.01),
              guiders.ModelAutoGuidance(weak_model=classic.unet if family == "sdxl" else classic.transformer,
                                        autoguidance_scale=0.0, guidance_scale=3.0)):
        assert torch.equal(_run(pipe, g), cfg), g
    net = classic.unet if family == "sdxl" else classic.transformer
    assert "forward" not in vars(net) and not getattr(getattr(net, "_diffusers_hook", None), "hooks", None)


def test_sdxl_mswg_equals_windowguides_sampler_with_batched_crops(sdxl):
    classic, pipe = sdxl
    calls = []
    hook = classic.unet.register_forward_pre_hook(lambda mod, args: calls.append(tuple(args[0].shape)))
    try:
        out = _run(pipe, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10))
    finally:
        hook.remove()
    # per step: the conditional batch, one call of its 4 crops, the unconditional batch
    assert calls == [(1, 4, 16, 16), (4, 4, 10, 10), (1, 4, 16, 16)] * STEPS
    m = wg.from_pipeline(classic)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(STEPS), cond=pos,
                      guidance=wg.CFG(2.0, null=_null(neg)) + wg.MSWG(0.5, window=10))
    assert (m.pipeline_latents(x, m.sigmas(STEPS)) - out).abs().max() <= 1e-4


def test_sdxl_two_images_per_prompt(sdxl):
    classic, pipe = sdxl
    pipe.update_components(guider=guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10))
    lat = torch.cat([_latents(7), _latents(8)])
    out = pipe(prompt="a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=STEPS,
               latents=lat, num_images_per_prompt=2, output="latents")
    m = wg.from_pipeline(classic)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    pos2 = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in pos.items()}
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7, 8], sampler="ddim", sigmas=m.sigmas(STEPS), cond=pos2,
                      guidance=wg.CFG(2.0, null=_null(neg)) + wg.MSWG(0.5, window=10))
    assert out.shape[0] == 2 and (m.pipeline_latents(x, m.sigmas(STEPS)) - out).abs().max() <= 1e-4


def test_sdxl_swg_alone_runs_one_batch_and_default_window(sdxl):
    classic, pipe = sdxl
    assert guiders.default_window(64, 8) == 40 and guiders.default_window(32, 2) == 20
    assert guiders.default_window(16, 4) == 12 and guiders.default_window(24, 4) == 16
    with pytest.raises(WindowguideError, match="side of 16 is too small.*factor 8"):
        guiders.default_window(16, 8)           # 8 + 8 = 16: two windows would not overlap
    out = _run(pipe, guiders.SlidingWindowGuidance(guidance_scale=1.0, swg_scale=0.7, masked=False,
                                                  swg_start=0.25, swg_stop=1.0, window=12))
    m = wg.from_pipeline(classic)
    pos, _ = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(STEPS), cond=pos,
                      guidance=wg.Interval(wg.SWG(0.7, window=12), fraction=(0.25, 1.0)))
    assert (m.pipeline_latents(x, m.sigmas(STEPS)) - out).abs().max() <= 1e-4


def test_sdxl_two_model_autoguidance(sdxl, tmp_path):
    classic, pipe = sdxl
    weak = tiny_sdxl(tmp_path).unet
    with torch.no_grad():
        for p in weak.parameters():
            p.mul_(0.9)
    out = _run(pipe, guiders.ModelAutoGuidance(weak_model=weak, autoguidance_scale=1.1, guidance_scale=2.0,
                                               ag_sigma_lo=0.5))
    m = wg.from_pipeline(classic)
    mw = wg.from_pipeline(type(classic)(**{**classic.components, "unet": weak}))
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(STEPS), cond=pos,
                      guidance=wg.CFG(1.0, null=_null(neg)) + wg.AutoGuidance(mw.denoiser, 1.1, sigma_lo=0.5))
    assert (m.pipeline_latents(x, m.sigmas(STEPS)) - out).abs().max() <= 1e-4
    # the weak model from a folder named in the config
    weak.save_pretrained(tmp_path / "weak")
    from_path = _run(pipe, guiders.ModelAutoGuidance(weak_model_path=str(tmp_path / "weak"), autoguidance_scale=1.1,
                                                     guidance_scale=2.0, ag_sigma_lo=0.5))
    assert (from_path - out).abs().max() <= 1e-4      # loaded weights, another attention kernel order


@pytest.mark.parametrize("low", ["skip_layer", "mswg"])
def test_sd3_segmented_guidance_equals_windowguides_sampler(sd3, low):
    classic, pipe = sd3
    calls = []
    hook = classic.transformer.register_forward_pre_hook(lambda mod, args, kw: calls.append(kw["hidden_states"].shape[0]),
                                                         with_kwargs=True)
    try:
        out = _run(pipe, guiders.SegmentedGuidance(guidance_scale=3.0, low=low, low_scale=0.8, split=0.5,
                                                   skip_layers=[1], window=10))
    finally:
        hook.remove()
    m = wg.from_pipeline(classic)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    low_term = wg.Custom(m.skip_layers([1]), 0.8) if low == "skip_layer" else wg.MSWG(0.8, window=10)
    g = wg.Segmented(wg.CFG(2.0, null=_null(neg)), low_term, fraction_split=0.5)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=m.sigmas(STEPS), cond=pos, guidance=g)
    assert (x - out).abs().max() <= 1e-4
    # two evaluations per step: cond + uncond above the split, cond + the low term's below
    low_calls = [1, 1] if low == "skip_layer" else [1, 4]
    assert calls == [1, 1] * (STEPS // 2) + low_calls * (STEPS // 2)


def test_sd3_sigma_split_and_interval(sd3):
    classic, pipe = sd3
    m = wg.from_pipeline(classic)
    sig = m.sigmas(STEPS)
    split = float((sig[1] + sig[2]) / 2)          # between the second and third step: 2 CFG steps
    out = _run(pipe, guiders.SegmentedGuidance(guidance_scale=3.0, low="mswg", low_scale=0.6, sigma_split=split,
                                               schedule="flow", window=10))
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=sig, cond=pos,
                      guidance=wg.Segmented(wg.CFG(2.0, null=_null(neg)), wg.MSWG(0.6, window=10), sigma_split=split))
    assert (x - out).abs().max() <= 1e-4
    out = _run(pipe, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10, swg_sigma_hi=split))
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=sig, cond=pos,
                      guidance=wg.CFG(2.0, null=_null(neg)) + wg.MSWG(0.5, window=10, sigma_hi=split))
    assert (x - out).abs().max() <= 1e-4


def test_recipe_guider(sd3):
    classic, pipe = sd3
    sgg = _run(pipe, guiders.SegmentedGuidance(guidance_scale=3.0, low="skip_layer", low_scale=0.8, skip_layers=[1]))
    assert torch.equal(_run(pipe, guiders.RecipeGuidance(recipe="sgg:fsplit=0.5,cfg=2,slg=0.8,skip=1")), sgg)
    m = wg.from_pipeline(classic)
    sig = m.sigmas(STEPS)
    lo, hi = float((sig[2] + sig[3]) / 2), float((sig[0] + sig[1]) / 2)     # CFG on steps 1 and 2 only
    out = _run(pipe, guiders.RecipeGuidance(recipe=f"cfg:w=2,lo={lo},hi={hi}+mswg:w=0.5,start=0.5,stop=1",
                                            schedule="flow"))
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    g = (wg.Interval(wg.CFG(2.0, null=_null(neg)), lo, hi)
         + wg.Interval(wg.MSWG(0.5, window=10), fraction=(0.5, 1.0)))
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=sig, cond=pos, guidance=g)
    assert (x - out).abs().max() <= 1e-4
    with pytest.raises(WindowguideError, match="schedule='sd'"):
        guiders.RecipeGuidance(recipe="cfg:w=1,hi=3")
    with pytest.raises(WindowguideError, match="one cfg term"):
        guiders.RecipeGuidance(recipe="cfg:w=1+cfg:w=2")
    with pytest.raises(WindowguideError, match="ramps"):
        guiders.RecipeGuidance(recipe="mswg:w=1,wend=0")


def _public(config):
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def test_configs_round_trip(tmp_path, sdxl):
    classic, pipe = sdxl
    made = [guiders.SlidingWindowGuidance(guidance_scale=4.0, swg_scale=0.3, window=[10, 12], masked=False,
                                          swg_start=0.2, swg_sigma_hi=3.0, start=0.1),
            guiders.SegmentedGuidance(guidance_scale=4.5, low="skip_layer", low_scale=3.0, skip_layers=[7, 8, 9]),
            guiders.ModelAutoGuidance(weak_model_path="some/folder", autoguidance_scale=1.45, ag_stop=0.8),
            guiders.RecipeGuidance(recipe="cfg:w=1,lo=0.28,hi=2.9+mswg:w=0.2,window=40", schedule="sd")]
    for i, g in enumerate(made):
        g.save_pretrained(tmp_path / str(i))
        assert (tmp_path / str(i) / "guider_config.json").exists()
        back = type(g).from_pretrained(tmp_path / str(i))
        assert _public(back.config) == _public(g.config) and back.get_state()["num_conditions"] == g.num_conditions
        assert _public(g.new().config) == _public(g.config) and len(_public(g.config)) >= 5
    g = guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10)
    g.save_pretrained(tmp_path / "swg")
    assert torch.equal(_run(pipe, g), _run(pipe, guiders.SlidingWindowGuidance.from_pretrained(tmp_path / "swg")))
    weak = classic.unet
    ag = guiders.ModelAutoGuidance.from_pretrained(tmp_path / "2", weak_model=weak)
    assert ag.weak_model is weak and "weak_model" not in ag.config and ag.new().weak_model is weak


def test_bad_settings_are_clear_errors():
    with pytest.raises(WindowguideError, match="weight must be"):
        guiders.SlidingWindowGuidance(swg_scale=-1.0)
    with pytest.raises(WindowguideError, match="low='bogus'"):
        guiders.SegmentedGuidance(low="bogus")
    with pytest.raises(WindowguideError, match="schedule='sd'"):
        guiders.SegmentedGuidance(sigma_split=1.0)
    with pytest.raises(WindowguideError, match="skip_layers"):
        guiders.SegmentedGuidance(low="skip_layer")
    with pytest.raises(WindowguideError, match="step fractions"):
        guiders.SlidingWindowGuidance(swg_start=0.6, swg_stop=0.5)


def test_diffusers_version_checks():
    class Changed:
        def __init__(self, start, stop, enabled, new_argument): ...
    with pytest.raises(WindowguideError, match="pip install 'diffusers>=0.42,<0.43'"):
        guiders.check_diffusers("0.50.0", Changed)
    from diffusers.guiders import BaseGuidance
    with pytest.warns(UserWarning, match="tested with diffusers"):
        guiders.check_diffusers("0.44.0", BaseGuidance)
    guiders.check_diffusers("0.42.1", BaseGuidance)


def test_without_diffusers_windowguide_imports_and_the_guiders_say_what_to_install():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "import windowguide\n"
            "try:\n    import windowguide.guiders\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "pip install 'windowguide[diffusers]'" in out.stdout


def test_a_guider_that_raises_leaves_no_hook_behind(sdxl, monkeypatch):
    """Replayed first: a windowguide guider whose terms fail mid-call; the next run with diffusers' own
    CFG and the next windowguide guider must run as if it never happened."""
    classic, pipe = sdxl
    cfg = _run(pipe, ClassifierFreeGuidance(guidance_scale=3.0))

    def broken(self, *args):
        raise RuntimeError("the terms failed")
    monkeypatch.setattr(guiders.SlidingWindowGuidance, "_make_terms", broken)
    with pytest.raises(RuntimeError, match="the terms failed"):
        _run(pipe, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5))
    assert not getattr(getattr(classic.unet, "_diffusers_hook", None), "hooks", None)
    assert torch.equal(_run(pipe, ClassifierFreeGuidance(guidance_scale=3.0)), cfg)
    monkeypatch.undo()
    assert torch.equal(_run(pipe, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.0)), cfg)


def test_guidance_rescale_sees_the_same_reference_in_the_guider_and_the_patch(sdxl):
    """One definition for both paths: rescale's reference is P_cond + Delta / s (what a classic pipeline
    under wg.patch hands its rescale). The modular guider and the patched classic SDXL pipeline agree."""
    classic, pipe = sdxl
    out = _run(pipe, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10, guidance_rescale=0.7))
    with wg.patch(classic, "cfg:w=2+mswg:w=0.5,window=10"):
        with torch.no_grad():
            ref = classic(prompt="a red cat", negative_prompt="blue dog", height=32, width=32,
                          num_inference_steps=STEPS, latents=_latents(), output_type="latent",
                          guidance_rescale=0.7).images
    plain = _run(pipe, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10))
    assert (out - ref).abs().max() <= 1e-4 and (out - plain).abs().max() > 1e-4


def test_controlnet_residuals_reach_the_guiders_crops(tmp_path):
    """Replayed: in the modular SDXL pipeline with a ControlNet, SlidingWindowGuidance returned exactly CFG
    (no crop call, no warning). The crops now run, each with the residuals cut to its window; with zero
    residuals the result equals the same guider without a ControlNet."""
    from diffusers import ControlNetModel
    classic = tiny_sdxl(tmp_path)
    torch.manual_seed(3)
    control = ControlNetModel.from_unet(classic.unet, conditioning_embedding_out_channels=(4, 8)).eval()
    guider = lambda: guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10)
    plain = _run(modular(classic, guider()), guider())
    pipe = modular(classic, guider())
    pipe.update_components(controlnet=control)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = classic.unet.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((tuple(args[0].shape), [tuple(r.shape[-2:]) for r in
                                           (kw.get("down_block_additional_residuals") or ())])), with_kwargs=True)
    try:
        _run(pipe, guider(), control_image=image)
    finally:
        hook.remove()
    crops = [r for shape, r in seen if shape[-1] == 10]
    assert len(crops) == STEPS and all(r[0] == (10, 10) and r[-1] == (5, 5) for r in crops)
    with torch.no_grad():
        for p in list(control.controlnet_down_blocks.parameters()) + list(control.controlnet_mid_block.parameters()):
            p.zero_()
    assert (_run(pipe, guider(), control_image=image) - plain).abs().max() <= 1e-5
