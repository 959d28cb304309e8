"""windowguide.patch: a classic pipeline's own loop running windowguide's guidance, on tiny pipelines."""
import pytest
import torch

import windowguide as wg
from pipes import tiny_flux, tiny_pixart, tiny_sd, tiny_sd3, tiny_sdxl
from windowguide.adapters.flux import pack
from windowguide.errors import WindowguideError


def _latents(shape, seed=7):
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def _untouched(net):
    """No instance forward and no hook left (FLUX's own cache_context makes an empty hook registry)."""
    return "forward" not in vars(net) and not getattr(getattr(net, "_diffusers_hook", None), "hooks", None)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sd_pipe(request, tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("clip"), request.param)


def _run_sd(pipe, **kw):
    kw = {"guidance_scale": 3.5, **kw}
    with torch.no_grad():
        return pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=4,
                    latents=_latents((4, 16, 16)), output_type="latent", **kw).images


def test_sd_weight_zero_and_removal_leave_the_pipeline_bit_for_bit(sd_pipe):
    before = _run_sd(sd_pipe)
    with wg.patch(sd_pipe, "mswg:w=0,window=10"):
        zero = _run_sd(sd_pipe)
    with wg.patch(sd_pipe, "cfg:w=2.5+mswg:w=0,window=10"):      # the recipe's cfg is the pipeline's scale
        zero_cfg = _run_sd(sd_pipe, guidance_scale=None)
    after = _run_sd(sd_pipe)
    assert torch.equal(zero, before) and torch.equal(zero_cfg, before) and torch.equal(after, before)
    assert _untouched(sd_pipe.unet) and type(sd_pipe).__call__ is type(sd_pipe).__mro__[0].__call__


def test_sd_patched_equals_windowguides_sampler_and_adds_only_the_crops(sd_pipe):
    m = wg.from_pipeline(sd_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    calls = []
    hook = sd_pipe.unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    try:
        with wg.patch(sd_pipe, guidance="cfg:w=2.5+mswg:w=0.5"):    # window: 5/8 of the 16-pixel side
            patched = _run_sd(sd_pipe, guidance_scale=None)
    finally:
        hook.remove()
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=pos,
                      guidance=wg.CFG(2.5, null=neg[0]) + wg.MSWG(0.5, window=10))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4
    # per step: the pipeline's own call (uncond + cond) and one call of the 4 crops, nothing more
    assert [tuple(c) for c in calls] == [(2, 4, 16, 16), (4, 4, 10, 10)] * 4


def test_patch_step_fractions_and_refusals(sd_pipe):
    m = wg.from_pipeline(sd_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with wg.patch(sd_pipe, "swg:w=0.7,window=12,start=0.5,stop=1"):
        patched = _run_sd(sd_pipe)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=pos,
                      guidance=wg.CFG(2.5, null=neg[0]) + wg.Interval(wg.SWG(0.7, window=12), fraction=(0.5, 1)))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4
    hi = float(m.sigmas(4)[1]) * 1.01                  # M-SWG from the second step on, by sigma
    with wg.patch(sd_pipe, f"mswg:w=0.5,window=10,hi={hi}"):
        patched = _run_sd(sd_pipe)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=pos,
                      guidance=wg.CFG(2.5, null=neg[0]) + wg.MSWG(0.5, window=10, sigma_hi=hi))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4
    with pytest.raises(WindowguideError, match="conflicts with the recipe's cfg"):
        with wg.patch(sd_pipe, "cfg:w=1+mswg:w=0.5,window=10"):
            _run_sd(sd_pipe, guidance_scale=3.5)
    with pytest.raises(WindowguideError, match="no ramp"):       # intervals run since sgg came to the patch
        with wg.patch(sd_pipe, "cfg:w=1,wend=2"):
            pass
    with pytest.raises(WindowguideError, match="weak network"):
        with wg.patch(sd_pipe, "ag:w=1,model=x"):
            pass
    with pytest.raises(WindowguideError, match="already patched"):
        with wg.patch(sd_pipe, "mswg:w=0.5"):
            with wg.patch(sd_pipe, "swg:w=0.5"):
                pass
    with pytest.raises(WindowguideError, match="does not support DiTPipeline"):
        with wg.patch(type("DiTPipeline", (), {})(), "mswg:w=1"):
            pass
    assert _untouched(sd_pipe.unet)


def test_sd_autoguidance_by_a_weak_network(sd_pipe, tmp_path):
    weak = tiny_sd(tmp_path, sd_pipe.scheduler.config.prediction_type).unet
    with torch.no_grad():
        for p in weak.parameters():
            p.mul_(0.9)
    m, mw = wg.from_pipeline(sd_pipe), wg.from_pipeline(type(sd_pipe)(**{**sd_pipe.components, "unet": weak}))
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with wg.patch(sd_pipe, "ag:w=0.8,model=weak", weak=weak):
        patched = _run_sd(sd_pipe)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=pos,
                      guidance=wg.CFG(2.5, null=neg[0]) + wg.AutoGuidance(mw.denoiser, 0.8))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def sdxl_pipe(tmp_path_factory):
    return tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


def test_sdxl_patch(sdxl_pipe):
    def run(**kw):
        with torch.no_grad():
            return sdxl_pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=3,
                             latents=_latents((4, 16, 16)), output_type="latent", **kw).images
    before = run(guidance_scale=3.0)
    with wg.patch(sdxl_pipe, "cfg:w=2+mswg:w=0,window=10"):
        zero = run()
    with wg.patch(sdxl_pipe, "cfg:w=2+mswg:w=0.5,window=10"):
        patched = run()
    assert torch.equal(zero, before) and torch.equal(run(guidance_scale=3.0), before) and _untouched(sdxl_pipe.unet)
    m = wg.from_pipeline(sdxl_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with torch.no_grad():   # windowguide gives each crop its own time ids, as the patched loop must
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(3), cond=pos,
                      guidance=wg.CFG(2, null={k: v[0] for k, v in neg.items()}) + wg.MSWG(0.5, window=10))
    assert (m.pipeline_latents(x, m.sigmas(3)) - patched).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def sd3_pipe(tmp_path_factory):
    return tiny_sd3(tmp_path_factory.mktemp("sd3"))


def test_sd3_patch_with_mswg_and_skip_layers(sd3_pipe):
    def run(**kw):
        with torch.no_grad():
            return sd3_pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=4,
                            latents=_latents((4, 16, 16)), output_type="latent", max_sequence_length=8, **kw).images
    before = run(guidance_scale=4.0)
    with wg.patch(sd3_pipe, "cfg:w=3+mswg:w=0,window=10+slg:w=0,skip=1"):
        zero = run()
    recipe = "cfg:w=3+mswg:w=0.5,window=10+slg:w=0.8,skip=1,start=0.5,stop=1"
    with wg.patch(sd3_pipe, recipe):
        patched = run()
    assert torch.equal(zero, before) and torch.equal(run(guidance_scale=4.0), before)
    assert _untouched(sd3_pipe.transformer)
    m = wg.from_pipeline(sd3_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    g = (wg.CFG(3.0, null={k: v[0] for k, v in neg.items()}) + wg.MSWG(0.5, window=10)
         + wg.Interval(wg.Custom(m.skip_layers([1]), 0.8), fraction=(0.5, 1)))
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=m.sigmas(4), cond=pos, guidance=g)
    assert (x - patched).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def flux_pipe(tmp_path_factory):
    return tiny_flux(tmp_path_factory.mktemp("flux"))


@pytest.mark.parametrize("recipe, true_cfg", [("mswg:w=0.5,window=10", 1.0), ("cfg:w=2+mswg:w=0.5,window=10", None)])
def test_flux_patch(flux_pipe, recipe, true_cfg):
    shape = (4, 16, 16)

    def run(**kw):
        with torch.no_grad():
            return flux_pipe("a red cat", guidance_scale=2.5, height=32, width=32, num_inference_steps=3,
                             latents=pack(_latents(shape)), output_type="latent", max_sequence_length=6, **kw).images
    base = dict(true_cfg_scale=3.0, negative_prompt="") if true_cfg is None else dict(true_cfg_scale=1.0)
    before = run(**base)
    with wg.patch(flux_pipe, recipe.replace("w=0.5", "w=0")):
        zero = run(**({} if true_cfg is None else base))
    with wg.patch(flux_pipe, recipe):
        patched = run(**({} if true_cfg is None else base))
    assert torch.equal(zero, before) and torch.equal(run(**base), before) and _untouched(flux_pipe.transformer)
    m = wg.from_pipeline(flux_pipe, guidance_embed=2.5)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="", max_sequence_length=6)
    g = wg.MSWG(0.5, window=10)
    if true_cfg is None:
        g = wg.CFG(2.0, null={k: v[0] for k, v in neg.items()}) + g
    with torch.no_grad():
        x = wg.sample(m.denoiser, shape, [7], sampler="flow_euler", sigmas=m.sigmas(3, shape=shape), cond=pos, guidance=g)
    assert (pack(x) - patched).abs().max() <= 1e-4


def test_pixart_patch():
    pipe = tiny_pixart()

    def run(**kw):
        with torch.no_grad():
            return pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=3,
                        latents=_latents((4, 16, 16)), output_type="latent", clean_caption=False,
                        max_sequence_length=6, use_resolution_binning=False, **kw).images
    before = run(guidance_scale=3.0)
    with wg.patch(pipe, "cfg:w=2+mswg:w=0,window=10"):
        zero = run()
    with wg.patch(pipe, "cfg:w=2+mswg:w=0.5,window=10"):
        patched = run()
    assert torch.equal(zero, before) and _untouched(pipe.transformer)
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=6)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(3), cond=pos,
                      guidance=wg.CFG(2, null={k: v[0] for k, v in neg.items()}) + wg.MSWG(0.5, window=10))
    assert (m.pipeline_latents(x, m.sigmas(3)) - patched).abs().max() <= 1e-4


def test_panorama_patch_guides_inside_each_view(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline
    sd = tiny_sd(tmp_path)
    pipe = StableDiffusionPanoramaPipeline(**{**sd.components, "scheduler": DDIMScheduler.from_config(sd.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.no_grad():
            return pipe("a red cat", negative_prompt="blue dog", height=512, width=768, num_inference_steps=2,
                        guidance_scale=3.0, latents=_latents((4, 64, 96)), output_type="latent", view_batch_size=2).images
    before = run()
    with wg.patch(pipe, "mswg:w=0,window=40"):
        zero = run()
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda mod, args: calls.append(tuple(args[0].shape)))
    try:
        with wg.patch(pipe, "mswg:w=0.5,window=40"):
            patched = run()
    finally:
        hook.remove()
    assert torch.equal(zero, before) and torch.equal(run(), before) and _untouched(pipe.unet)
    assert torch.isfinite(patched).all() and not torch.allclose(patched, before)
    # 64 x 96 latents, the pipeline's 5 views of 64 x 64 (stride 8), 2 views per call: each call of
    # views (uncond/cond interleaved) is followed by one call of the M-SWG crops of their cond rows
    per_step = [(4, 4, 64, 64), (8, 4, 40, 40)] * 2 + [(2, 4, 64, 64), (4, 4, 40, 40)]
    assert calls == per_step * 2


def test_flux_cfg_recipe_with_a_list_of_prompts_gets_one_negative_per_prompt(flux_pipe):
    """Replayed: pipe(["a", "b"]) under a cfg recipe failed "4 vs 2" with one injected negative prompt."""
    def run(**kw):
        with torch.no_grad():
            return flux_pipe(["a red cat", "a blue dog"], guidance_scale=2.5, height=32, width=32,
                             num_inference_steps=2, output_type="latent", max_sequence_length=6,
                             generator=torch.Generator().manual_seed(0), **kw).images
    with wg.patch(flux_pipe, "cfg:w=2"):
        patched = run()
    assert torch.equal(patched, run(true_cfg_scale=3.0, negative_prompt=["", ""]))


@pytest.mark.parametrize("scheduler", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_step_fractions_count_scheduler_steps_on_second_order_schedulers(tmp_path, scheduler):
    """Replayed: start=0.5 over 4 Heun steps guided evaluations 5-6 (of 0-6) instead of 4-6: the patch
    counted 2N - 1 network calls as steps. Steps 2 and 3 are evaluations 4, 5 (step 2 and its
    correction) and 6 (the last step, first order)."""
    import diffusers
    pipe = tiny_sd(tmp_path)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    sizes = []
    hook = pipe.unet.register_forward_pre_hook(lambda mod, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        with wg.patch(pipe, "swg:w=0.7,window=12,start=0.5,stop=1"):
            _run_sd(pipe)
    finally:
        hook.remove()
    full = [i for i, s in enumerate(sizes) if s == (16, 16)]
    crops = [i for i, s in enumerate(sizes) if s == (12, 12)]
    assert len(full) == 7 and len(crops) == 3
    guided = [full.index(i - 1) for i in crops]           # the full-size call each crop call follows
    assert guided == [4, 5, 6]


def test_windows_are_checked_at_the_first_call_even_for_a_term_not_yet_on(tmp_path):
    """Replayed: an impossible window failed only when its term first switched on (here at step 3)."""
    pipe = tiny_sd(tmp_path)
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        with pytest.raises(WindowguideError, match="not a multiple of 2"):
            with wg.patch(pipe, "swg:w=0.5,window=9,first=3,last=3"):
                _run_sd(pipe)
    finally:
        hook.remove()
    assert len(calls) == 1                        # refused at the first network call, not at step 3


def test_dynamic_cfg_callback_switches_cfg_off_mid_run(tmp_path):
    """Replayed: diffusers' documented dynamic-CFG callback (at step k: _guidance_scale = 0 and the prompt
    batch halved) left the patch guiding with the scale and row layout of the call's start (0.43-0.52
    off). The patch reads them at each network call: CFG on steps 0-1, the recipe's terms on all."""
    pipe = tiny_sd(tmp_path)

    def dynamic_cfg(p, i, t, kwargs):
        if i == 1:
            kwargs["prompt_embeds"] = kwargs["prompt_embeds"].chunk(2)[-1]
            p._guidance_scale = 0.0
        return kwargs
    with wg.patch(pipe, "swg:w=0.7,window=12"):
        patched = _run_sd(pipe, callback_on_step_end=dynamic_cfg, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=pos,
                      guidance=wg.Interval(wg.CFG(2.5, null=neg[0]), steps=(0, 1)) + wg.SWG(0.7, window=12))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4


def test_sd3_own_skip_layer_guidance_under_the_patch_adds_the_terms_once(sd3_pipe):
    """Replayed: with the pipeline's skip_guidance_layers, diffusers' SLG used the shifted P_text and the
    result was CFG + 1.35 x M-SWG + SLG (0.038 off). Now CFG + M-SWG + SLG, as windowguide's sampler."""
    steps, start, stop = 6, 0.01, 0.5
    on = [i for i in range(steps) if steps * start < i < steps * stop]
    with wg.patch(sd3_pipe, "cfg:w=3+mswg:w=0.5,window=10"):
        with torch.no_grad():
            patched = sd3_pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=steps,
                               latents=_latents((4, 16, 16)), output_type="latent", max_sequence_length=8,
                               skip_guidance_layers=[1], skip_layer_guidance_scale=2.8, skip_layer_guidance_start=start,
                               skip_layer_guidance_stop=stop).images
    m = wg.from_pipeline(sd3_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    g = (wg.CFG(3.0, null={k: v[0] for k, v in neg.items()}) + wg.MSWG(0.5, window=10)
         + wg.Custom(m.skip_layers([1]), 2.8, steps=wg.guidance.StepRange(on[0], on[-1])))
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="flow_euler", sigmas=m.sigmas(steps), cond=pos, guidance=g)
    assert (x - patched).abs().max() <= 1e-4


def test_every_argument_of_the_pipelines_call_reaches_the_crops(tmp_path):
    """Replayed: a LoRA scale (cross_attention_kwargs), LCM's timestep_cond and IP-adapter image_embeds
    never reached the crop calls, so M-SWG's negative ran another network than the positive (and
    IP-adapter pipelines crashed). Each crop call now gets the static ones as they are and the per-row
    ones of its own sample."""
    from types import SimpleNamespace
    from windowguide.adapters.sd import sd_unet_model
    from windowguide.adapters.netcall import read_call
    from windowguide.integrations.calls import guided_change
    pipe = tiny_sd(tmp_path)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((tuple(args[0].shape), kwargs.get("cross_attention_kwargs"))),
        with_kwargs=True)
    try:
        with wg.patch(pipe, "swg:w=0.5,window=12"):
            _run_sd(pipe, cross_attention_kwargs={"probe": 1})   # (a LoRA scale needs peft for the text encoder)
    finally:
        hook.remove()
    crops = [c for c in seen if c[0][-1] == 12]
    assert crops and all(c[1] == {"probe": 1} for c in crops)

    class FakeUNet:                            # records what each crop call receives
        dtype = torch.float32
        calls = []

        def __call__(self, x, t, encoder_hidden_states=None, **kwargs):
            self.calls.append(kwargs)
            return SimpleNamespace(sample=torch.zeros_like(x))
    x, embeds = torch.randn(2, 4, 16, 16), torch.randn(2, 8, 16)
    tcond = torch.arange(2.0)[:, None].expand(2, 4).clone()
    images = torch.arange(2.0)[:, None, None].expand(2, 1, 3).clone()
    call = read_call(pipe.unet, (x, 500), dict(encoder_hidden_states=embeds, timestep_cond=tcond,
                                               cross_attention_kwargs={"scale": 0.5},
                                               added_cond_kwargs={"image_embeds": [images]}))
    fake = FakeUNet()
    guided_change(wg.Guidance.of(wg.SWG(0.5, window=12)), sd_unet_model(fake), 2, call, torch.zeros_like(x),
                  torch.full((2,), 1.0))
    got = fake.calls[-1]
    assert got["cross_attention_kwargs"] == {"scale": 0.5}
    # 4 crops per sample in sample order, each with its own sample's rows
    assert torch.equal(got["timestep_cond"][:, 0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.equal(got["added_cond_kwargs"]["image_embeds"][0][:, 0, 0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_controlnet_residuals_reach_the_crops_cut_to_each_window(tmp_path):
    """Replayed: calls with ControlNet residuals were left alone (the guiders returned exactly CFG, no
    crop call, no warning). Each crop now gets the residuals cut to its window at every resolution; with
    a ControlNet whose residuals are zero the patched result equals the plain pipeline's patched result."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    base = tiny_sd(tmp_path)
    torch.manual_seed(3)
    control = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8)).eval()
    pipe = StableDiffusionControlNetPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                             unet=base.unet, controlnet=control, scheduler=base.scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = base.unet.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((tuple(args[0].shape), [tuple(r.shape) for r in
                                           (kw.get("down_block_additional_residuals") or ())])), with_kwargs=True)
    try:
        with wg.patch(pipe, "cfg:w=2.5+mswg:w=0.5,window=12"):
            with torch.no_grad():
                out = pipe("a red cat", image=image, negative_prompt="blue dog", height=32, width=32,
                           num_inference_steps=2, latents=_latents((4, 16, 16)), output_type="latent").images
    finally:
        hook.remove()
    crops = [s for s in seen if s[0][-1] == 12]
    assert crops and all(shapes and shapes[0][-2:] == (12, 12) and shapes[-1][-2:] == (6, 6) for _, shapes in crops)
    assert torch.isfinite(out).all()
    with torch.no_grad():                              # zero residuals: the ControlNet changes nothing
        for p in control.controlnet_down_blocks.parameters():
            p.zero_()
        for p in control.controlnet_mid_block.parameters():
            p.zero_()
    with wg.patch(pipe, "cfg:w=2.5+mswg:w=0.5,window=12"):
        with torch.no_grad():
            zero = pipe("a red cat", image=image, negative_prompt="blue dog", height=32, width=32,
                        num_inference_steps=2, latents=_latents((4, 16, 16)), output_type="latent").images
    with wg.patch(base, "cfg:w=2.5+mswg:w=0.5,window=12"):
        with torch.no_grad():
            plain = base("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=2,
                         latents=_latents((4, 16, 16)), output_type="latent").images
    assert (zero - plain).abs().max() <= 1e-5


def _calls_under_patch(pipe, net, recipe, record, **call_kwargs):
    """record(args, kwargs) of every call of ``net`` while ``pipe`` runs a 32 x 32 image under the patch."""
    seen = []
    hook = net.register_forward_pre_hook(lambda mod, args, kw: seen.append(record(args, kw)), with_kwargs=True)
    try:
        with wg.patch(pipe, recipe):
            with torch.no_grad():
                pipe("a red cat", height=32, width=32, latents=_latents((4, 16, 16)), output_type="latent",
                     **call_kwargs)
    finally:
        hook.remove()
    return seen


def test_sdxl_crops_keep_the_users_micro_conditions(tmp_path):
    """Replayed: with original_size 1024 and target 320 x 192 the crop ids came out (320, 192, 0, 0,
    192, 128): the crops replaced the user's original and crop origin and took the VAE factor from the
    target. A crop's ids are now the user's original, the user's origin plus the crop's offset and the
    crop's share of the user's target (``sdxl_crop_time_ids``)."""
    pipe = tiny_sdxl(tmp_path)
    seen = _calls_under_patch(pipe, pipe.unet, "mswg:w=0.5,window=12",
                              lambda args, kw: (tuple(args[0].shape), kw["added_cond_kwargs"]["time_ids"].clone()),
                              negative_prompt="blue dog", num_inference_steps=1, guidance_scale=3.0,
                              original_size=(1024, 1024), target_size=(320, 192), crops_coords_top_left=(8, 4))
    crops = [ids for shape, ids in seen if shape[-1] == 12]
    assert crops
    sy, sx = 320 / 16, 192 / 16                       # latent canvas 16 x 16 spans the user's target
    want = torch.tensor([[1024, 1024, 8 + top * sy, 4 + left * sx, 12 * sy, 12 * sx]
                         for top in (0, 4) for left in (0, 4)])
    assert torch.allclose(crops[0].float(), want.float())


def test_pixart_micro_conditions_follow_the_vae_factor():
    """Replayed: PixArt's factor was fixed at 8 (with a 4x VAE the patch and the sampler differed by 0.46);
    the patch reads it from the pipeline's VAE."""
    from types import SimpleNamespace
    from windowguide.adapters.netcall import network_model
    seen = []

    class FakePixArt(torch.nn.Module):
        config = SimpleNamespace(in_channels=4, sample_size=128)
        dtype = torch.float32

        def forward(self, x, encoder_hidden_states=None, encoder_attention_mask=None, timestep=None,
                    added_cond_kwargs=None):
            seen.append(added_cond_kwargs["resolution"][0].tolist())
            return SimpleNamespace(sample=torch.zeros(x.shape[0], 8, *x.shape[-2:]))
    cond = dict(embeds=torch.zeros(1, 2, 4), mask=torch.ones(1, 2))
    for factor in (4, 8):
        network_model(FakePixArt(), "pixart", vae_factor=factor)(torch.zeros(1, 4, 16, 12), torch.tensor([5]), cond)
    assert seen == [[64.0, 48.0], [128.0, 96.0]]


def _ip_adapter_sd(folder):
    """A tiny SD pipeline with an IP-adapter (image projection and decoupled cross-attention), built
    from diffusers' own classes (no weights file): image embeddings enter through added_cond_kwargs."""
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
    pipe = tiny_sd(folder)
    unet, ch = pipe.unet, pipe.unet.config.block_out_channels
    torch.manual_seed(5)
    procs = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            procs[name] = AttnProcessor2_0()
            continue
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else None
        hidden = ch[-1] if block is None else (ch[block] if name.startswith("down") else list(reversed(ch))[block])
        procs[name] = IPAdapterAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=unet.config.cross_attention_dim,
                                                num_tokens=(4,), scale=1.0)
    unet.set_attn_processor(procs)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([ImageProjection(cross_attention_dim=16, image_embed_dim=8,
                                                                           num_image_text_embeds=4)])
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    return pipe


def test_ip_adapter_pipeline_under_the_patch_equals_windowguides_sampler(tmp_path):
    """Replayed: with an IP-adapter the crop calls lacked added_cond_kwargs and SD failed ("argument of
    type 'NoneType' is not iterable"). The crops now get their sample's image embedding: the patched
    pipeline equals windowguide's sampler on the same UNet with the embeddings in the condition."""
    from windowguide.adapters.base import schedule_of
    pipe = _ip_adapter_sd(tmp_path)
    emb = torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(1))        # negative, positive
    with wg.patch(pipe, "cfg:w=2.5+mswg:w=0.5,window=12"):
        patched = _run_sd(pipe, ip_adapter_image_embeds=[emb])
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    unet = pipe.unet

    def model(x, t, cond):
        return unet(x, t, encoder_hidden_states=cond["embeds"], added_cond_kwargs={"image_embeds": [cond["image"]]}).sample
    den = wg.EpsDenoiser(model, schedule_of(pipe.scheduler), multiple=2)
    with torch.no_grad():
        x = wg.sample(den, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=dict(embeds=pos, image=emb[1:]),
                      guidance=wg.CFG(2.5, null=dict(embeds=neg[0], image=emb[0])) + wg.MSWG(0.5, window=12))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4


def test_lcm_timestep_cond_reaches_the_crops_and_equals_windowguides_sampler(tmp_path):
    """Replayed: LCM-style UNets (time_cond_proj_dim) get a guidance embedding as timestep_cond; the crops
    ran without it, another network than the positive. Now equal to windowguide's sampler with the
    embedding in the condition."""
    from diffusers import UNet2DConditionModel
    from windowguide.adapters.base import schedule_of
    pipe = tiny_sd(tmp_path)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**{**pipe.unet.config, "time_cond_proj_dim": 8}).eval()
    with wg.patch(pipe, "mswg:w=0.5,window=12"):
        patched = _run_sd(pipe)                    # guidance_scale 3.5: the embedding of w = 2.5, no CFG batch
    m = wg.from_pipeline(pipe)
    pos, _ = m.encode(prompt="a red cat", negative_prompt="blue dog")
    tc = pipe.get_guidance_scale_embedding(torch.tensor([2.5]), embedding_dim=8)
    unet = pipe.unet

    def model(x, t, cond):
        return unet(x, t, encoder_hidden_states=cond["embeds"], timestep_cond=cond["tc"]).sample
    den = wg.EpsDenoiser(model, schedule_of(pipe.scheduler), multiple=2)
    with torch.no_grad():
        x = wg.sample(den, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=dict(embeds=pos, tc=tc),
                      guidance=wg.MSWG(0.5, window=12))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4


def test_sd3_joint_attention_kwargs_reach_the_crops(sd3_pipe):
    """SD3's and FLUX's LoRA scale travels in joint_attention_kwargs: every crop call gets it as given."""
    seen = _calls_under_patch(sd3_pipe, sd3_pipe.transformer, "cfg:w=3+mswg:w=0.5,window=10",
                              lambda args, kw: (tuple(kw["hidden_states"].shape), kw.get("joint_attention_kwargs")),
                              negative_prompt="blue dog", num_inference_steps=2, max_sequence_length=8,
                              joint_attention_kwargs={"scale": 1.0})
    crops = [c for c in seen if c[0][-1] == 10]
    assert crops and all(c[1] == {"scale": 1.0} for c in crops)


def test_crop_residual_cuts_each_rows_window_at_the_residuals_resolution():
    from windowguide.adapters.sd import crop_residual
    from windowguide.windows import regions_of_call
    r = torch.randn(3, 2, 8, 8)                               # a residual at half the 16 x 16 canvas
    regions = torch.tensor([[0, 0, 16, 16], [4, 0, 16, 16], [4, 4, 16, 16]])
    with regions_of_call(regions):
        got = crop_residual(r, (12, 12))
    want = torch.stack([r[0, :, 0:6, 0:6], r[1, :, 2:8, 0:6], r[2, :, 2:8, 2:8]])
    assert torch.equal(got, want)
    with regions_of_call(torch.tensor([[0, 0, 16, 16]])):
        assert torch.equal(crop_residual(r[:1], (16, 16)), r[:1])          # the whole canvas: as it is
