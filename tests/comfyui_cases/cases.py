"""The windowguide ComfyUI nodes inside ComfyUI's own KSampler path, on tiny models built with ComfyUI's
classes (run in a subprocess by tests/test_comfyui.py)."""
import pytest
import torch

from harness import close, conditioning, counted, ksample, ours, tiny_sd15
import windowguide as wg
from windowguide.comfyui import nodes


@pytest.fixture(scope="module")
def sd15():
    return tiny_sd15()


def test_mswg_weight_zero_is_the_unpatched_sampler_bit_for_bit(sd15):
    pos, neg = conditioning(1), conditioning(2)
    plain = ksample(sd15, pos, neg, 3.0)
    (m,) = nodes.SlidingWindowGuidance.execute(sd15, 0.0, True, 0.625, 2, 0.0, 1.0)
    assert torch.equal(ksample(m, pos, neg, 3.0), plain)


def test_mswg_equals_windowguides_sampler_with_one_crop_call_per_step(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (m,) = nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 0.625, 2, 0.0, 1.0)
    m, calls = counted(m)
    out = ksample(m, pos, neg, 3.0)
    ref = ours(sd15, pos, neg, 3.0, wg.MSWG(0.5, window=10))
    assert close(sd15, out, ref)
    # per step: the conditional and unconditional batch in one call, then all 4 crops in one call
    assert calls == [(2, 4, 16, 16), (4, 4, 10, 10)] * 4


def test_sgg_is_cfg_above_the_split_and_mswg_below_with_two_evaluations_per_step(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (m,) = nodes.SegmentedGuidance.execute(sd15, 0.5, "mswg", 0.5, 0.625, 2, "7,8,9")
    m, calls = counted(m)
    out = ksample(m, pos, neg, 3.0)
    split = sd15.get_model_object("model_sampling").percent_to_sigma(0.5)
    g = wg.Segmented(wg.Guidance(), wg.MSWG(0.5, window=10), sigma_split=split)
    ref = ours(sd15, pos, neg, 3.0, g, cfg_above=split)
    assert close(sd15, out, ref)
    sigmas = [float(s) for s in __import__("comfy.samplers").samplers.calculate_sigmas(
        sd15.get_model_object("model_sampling"), "normal", 4)[:-1]]
    expected = []
    for s in sigmas:          # above: cond + uncond in one batch; below: cond alone, then the 4 crops
        expected += [(2, 4, 16, 16)] if s > split else [(1, 4, 16, 16), (4, 4, 10, 10)]
    assert calls == expected and any(s <= split for s in sigmas) and any(s > split for s in sigmas)


def test_two_model_autoguidance_and_its_interval(sd15):
    pos, neg = conditioning(1), conditioning(2)
    weak = tiny_sd15(seed=5)
    (m,) = nodes.TwoModelAutoguidance.execute(sd15, weak, 0.0, 0.0, 1.0)
    assert torch.equal(ksample(m, pos, neg, 1.0), ksample(sd15, pos, neg, 1.0))
    (m,) = nodes.TwoModelAutoguidance.execute(sd15, weak, 1.0, 0.25, 1.0)
    out = ksample(m, pos, neg, 1.0)
    hi = sd15.get_model_object("model_sampling").percent_to_sigma(0.25)
    from windowguide.integrations.comfyui import _WeakNet
    ref = ours(sd15, pos, neg, 1.0, wg.AutoGuidance(_WeakNet(weak, 2, load=True), 1.0, sigma_hi=hi), weak_conds=True)
    assert close(sd15, out, ref)


def test_cfg_interval_runs_cfg_only_inside_and_skips_the_uncond_outside(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (m,) = nodes.GuidanceInterval.execute(sd15, 0.0, 1.0)
    assert torch.equal(ksample(m, pos, neg, 3.0), ksample(sd15, pos, neg, 3.0))
    (m,) = nodes.GuidanceInterval.execute(sd15, 0.3, 0.8)
    m, calls = counted(m)
    out = ksample(m, pos, neg, 3.0)
    sampling = sd15.get_model_object("model_sampling")
    lo, hi = sampling.percent_to_sigma(0.8), sampling.percent_to_sigma(0.3)
    ref = ours(sd15, pos, neg, 1.0, wg.CFG(2.0, null={"which": torch.ones(1, dtype=torch.long)}, sigma_lo=lo, sigma_hi=hi))
    assert close(sd15, out, ref) and (1, 4, 16, 16) in calls and (2, 4, 16, 16) in calls


def test_recipe_node_and_the_clis_messages(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (m,) = nodes.Recipe.execute(sd15, "cfg:w=2+swg:w=0.3,window=12")
    out = ksample(m, pos, neg, 3.0)
    assert close(sd15, out, ours(sd15, pos, neg, 3.0, wg.SWG(0.3, window=12)))
    from windowguide.errors import WindowguideError
    (m,) = nodes.Recipe.execute(sd15, "cfg:w=2+mswg:w=0.5")
    with pytest.raises(WindowguideError, match="cfg:w=2 is the sampler's cfg = 1 \\+ w = 3"):
        ksample(m, pos, neg, 5.0)
    for bad, match in ((lambda: nodes.Recipe.execute(sd15, "mswg:w=0.5,first=2"), "step ranges"),
                       (lambda: nodes.Recipe.execute(sd15, "mswg:w=abc"), "w"),
                       (lambda: nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 0.625, 1, 0.0, 1.0),
                        "windows_per_side 1"),
                       (lambda: nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 0.625, 2, 0.7, 0.2),
                        "start_percent 0.7 must be below"),
                       (lambda: nodes.SegmentedGuidance.execute(sd15, 0.5, "autoguidance", 0.5, 0.6, 2, "7"),
                        "needs the weak model")):
        with pytest.raises(WindowguideError, match=match):
            bad()
    (m,) = nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 16.0, 2, 0.0, 1.0)    # 16 + 16 = 16: no overlap
    with pytest.raises(WindowguideError, match="window"):
        ksample(m, pos, neg, 3.0)


def test_nodes_chain_with_each_other(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (m,) = nodes.SlidingWindowGuidance.execute(sd15, 0.4, True, 0.625, 2, 0.0, 1.0)
    (m,) = nodes.GuidanceInterval.execute(m, 0.0, 0.5)
    out = ksample(m, pos, neg, 3.0)
    sampling = sd15.get_model_object("model_sampling")
    lo = sampling.percent_to_sigma(0.5)
    g = wg.CFG(2.0, null={"which": torch.ones(1, dtype=torch.long)}, sigma_lo=lo) + wg.MSWG(0.4, window=10)
    assert close(sd15, out, ours(sd15, pos, neg, 1.0, g))


def test_sdxl_crops_get_their_own_size_conditioning():
    """SDXL's ADM vector of each crop: the user's original size, crop coordinates at the crop's place and
    the crop's size, in the user's target units (here ComfyUI's default: 128 pixels for a 16-pixel latent)."""
    from harness import tiny_sdxl
    from windowguide.adapters.sdxl import comfy_crop_cond as sdxl_crop_cond
    from windowguide.windows import layout
    model = tiny_sdxl()
    pos, neg = conditioning(1, pooled=True), conditioning(2, pooled=True)
    (m,) = nodes.SlidingWindowGuidance.execute(model, 0.5, True, 0.625, 2, 0.0, 1.0)
    out = ksample(m, pos, neg, 3.0)
    assert close(model, out, ours(model, pos, neg, 3.0, wg.MSWG(0.5, window=10)))
    from harness import captured
    cond = captured(model, pos, neg, 3.0)["cond"][0]
    regions = layout(16, 16, 10, windows_per_side=2).regions(1)
    y = sdxl_crop_cond(model.model, cond, regions, (10, 10))["model_conds"]["y"].cond
    for row, (top, left, _, _) in zip(y, regions.tolist()):
        want = model.model.encode_adm(pooled_output=cond["pooled_output"], height=128, width=128, crop_h=top * 8,
                                      crop_w=left * 8, target_height=80, target_width=80)[0]
        assert torch.allclose(row, want)
    assert not torch.allclose(y[0], cond["model_conds"]["y"].cond[0])      # the whole image's differs


def test_flux_crops_are_placed_on_the_canvas_through_rope_options():
    """A FLUX-style transformer's crop calls (one per place) get the canvas's RoPE ids at the crop's place."""
    from harness import tiny_flux
    model = tiny_flux()
    pos, neg = conditioning(1, pooled=True), conditioning(2, pooled=True)
    net = model.model.diffusion_model
    seen, original = [], net.process_img

    def process_img(x, *args, **kw):
        img, ids = original(x, *args, **kw)
        seen.append((tuple(x.shape[-2:]), ids[0].clone()))
        return img, ids
    (m,) = nodes.SlidingWindowGuidance.execute(model, 0.5, True, 0.625, 2, 0.0, 1.0)
    net.process_img = process_img
    try:
        out = ksample(m, pos, neg, 2.0, steps=2)
        full = original(torch.zeros(1, 4, 16, 16))[1][0].reshape(8, 8, 3)
    finally:
        del net.process_img
    crops = [ids for size, ids in seen if size == (10, 10)]
    assert len(crops) == 4 * 2                       # 4 places a step, 2 steps
    places = set()
    for ids in crops:
        top, left = int(ids[0, 1]), int(ids[0, 2])
        assert torch.equal(ids.reshape(5, 5, 3), full[top:top + 5, left:left + 5])
        places.add((top, left))
    assert places == {(0, 0), (0, 3), (3, 0), (3, 3)}
    assert close(model, out, ours(model, pos, neg, 2.0, wg.MSWG(0.5, window=10), steps=2))


def _fused_reference(model, pos, neg, cfg, sigmas, shape, seed, mode, sampler, vcf, options):
    """windowguide's fusion (its own state / prediction fusion) on windowguide's CFG of the same network."""
    from harness import captured
    from windowguide.fusion import FusedDenoiser, check_fusion, sample_fused_states
    from windowguide.integrations.comfyui import ComfyDenoiser
    from windowguide.sampling import SAMPLERS, PerSampleNoise
    from windowguide.windows import layout
    seen = captured(model, pos, neg, cfg, shape=shape, seed=seed)
    den = wg.guidance.guided(ComfyDenoiser(model.model, [seen["cond"], seen["uncond"]], {"transformer_options": {}}),
                             wg.CFG(cfg - 1, null={"which": torch.tensor(1)}))
    which = {"which": torch.zeros(1, dtype=torch.long)}
    noise = PerSampleNoise.from_seeds([seed])
    x = noise(torch.empty(shape)) * (1 + float(sigmas[0]) ** 2) ** 0.5       # ComfyUI's max-denoise scaling
    lay = layout(shape[2], shape[3], 16, stride=8)
    fuse, weighting, opts = check_fusion(mode, None, None, sampler, vcf, dict(options))
    model.pre_run()
    try:
        with torch.no_grad():
            if fuse == "prediction":
                return SAMPLERS[sampler](FusedDenoiser(den, lay, weighting), x, sigmas.double(), which, noise=noise, **opts)
            return sample_fused_states(den, x, sigmas.double(), which, lay, weighting, sampler, noise, vcf, **opts)
    finally:
        model.cleanup()


@pytest.mark.parametrize("mode, sampler, vcf, eta", [("gf", "euler", False, 0.0), ("multidiffusion", "ddpm", True, 0.0),
                                                      ("gaussian", "heun", False, 0.0), ("gf", "ddim", True, 0.5)])
def test_fusion_sampler_equals_windowguides_fusion(sd15, mode, sampler, vcf, eta):
    import comfy.sample
    import comfy.samplers
    pos, neg = conditioning(1), conditioning(2)
    (ks,) = nodes.FusionSampler.execute(sampler, mode, 16, 8, vcf, eta, 0.0, False)
    shape, seed = (1, 4, 16, 40), 11
    sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 3)
    noise = comfy.sample.prepare_noise(torch.zeros(shape), seed)
    out = comfy.sample.sample_custom(sd15, noise, 3.0, ks, sigmas, pos, neg, torch.zeros(shape), seed=seed,
                                     disable_pbar=True)
    ref = _fused_reference(sd15, pos, neg, 3.0, sigmas, shape, seed, mode, sampler, vcf,
                           {"eta": eta} if sampler == "ddim" else {})
    assert close(sd15, out, sd15.model.process_latent_out(ref))


def test_fusion_sampler_refuses_what_it_cannot_do(sd15):
    from windowguide.errors import WindowguideError
    with pytest.raises(WindowguideError, match="VCF corrects noise added after the fused update"):
        nodes.FusionSampler.execute("euler", "gf", 16, 8, True, 0.0, 0.0, False)
    with pytest.raises(WindowguideError, match="sampler 'dpmpp_2m'"):
        nodes.FusionSampler.execute("dpmpp_2m", "gf", 16, 8, False, 0.0, 0.0, False)
    with pytest.raises(WindowguideError, match="style_alpha 1.5"):
        nodes.FusionSampler.execute("euler", "gf", 16, 8, False, 0.0, 1.5, False)


def test_max_batch_splits_the_crops_and_changes_nothing_else(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (a,) = nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 0.625, 2, 0.0, 1.0)
    (b,) = nodes.SlidingWindowGuidance.execute(sd15, 0.5, True, 0.625, 2, 0.0, 1.0, max_batch=1)
    b, calls = counted(b)
    assert close(sd15, ksample(b, pos, neg, 3.0), ksample(a, pos, neg, 3.0), 1e-6)
    assert calls == [(2, 4, 16, 16)] + [(1, 4, 10, 10)] * 4 + [(2, 4, 16, 16)] + [(1, 4, 10, 10)] * 4 + \
        [(2, 4, 16, 16)] + [(1, 4, 10, 10)] * 4 + [(2, 4, 16, 16)] + [(1, 4, 10, 10)] * 4


def test_fusion_view_batch_caps_the_windows_per_call(sd15):
    import comfy.sample
    import comfy.samplers
    pos, neg = conditioning(1), conditioning(2)
    shape, seed = (1, 4, 16, 40), 11
    sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 2)
    noise = comfy.sample.prepare_noise(torch.zeros(shape), seed)
    outs, counts = [], []
    for view_batch in (0, 2):
        (ks,) = nodes.FusionSampler.execute("euler", "gf", 16, 8, False, 0.0, 0.0, False, view_batch)
        m, calls = counted(sd15)
        outs.append(comfy.sample.sample_custom(m, noise, 3.0, ks, sigmas, pos, neg, torch.zeros(shape), seed=seed,
                                               disable_pbar=True))
        counts.append(calls)
    assert close(sd15, outs[1], outs[0], 1e-6)
    assert {c[0] for c in counts[0]} == {8} and {c[0] for c in counts[1]} == {4}     # 4 windows x (cond, uncond)


def test_sgg_with_skip_layer_on_a_flux_transformer():
    from harness import tiny_flux
    from windowguide.integrations.comfyui import skip_negative
    model = tiny_flux()
    pos, neg = conditioning(1, pooled=True), conditioning(2, pooled=True)
    (m,) = nodes.SegmentedGuidance.execute(model, 0.5, "skip_layer", 3.0, 0.625, 2, "0")
    out = ksample(m, pos, neg, 2.0, steps=4)
    split = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    g = wg.Custom(skip_negative([0]), 3.0, name="skip_layer", sigma_hi=split)
    ref = ours(model, pos, neg, 2.0, g, steps=4, cfg_above=split)
    assert close(model, out, ref)
    plain = ksample(model, pos, neg, 2.0, steps=4)           # the term changes the result far beyond round-off
    assert (out - plain).abs().max() > 100 * max((out - ref).abs().max(), 1e-7)
    from windowguide.errors import WindowguideError
    (bad,) = nodes.SegmentedGuidance.execute(model, 0.5, "skip_layer", 1.5, 0.625, 2, "5")
    with pytest.raises(WindowguideError, match="skip-layer blocks \\[5\\]: this model has 1"):
        ksample(bad, pos, neg, 2.0, steps=4)


@pytest.mark.parametrize("vcf", [False, True])
def test_fusion_under_comfyuis_euler_ancestral_with_vcf(sd15, vcf):
    """ComfyUI's own euler_ancestral inside window fusion, against the step written out by hand: per
    window D (windowguide's CFG), Euler to sigma_down, plus the window's noise times sigma_up; fused
    uniformly or by VCF (the same step with zero noise as the mean)."""
    import comfy.sample
    import comfy.samplers
    from harness import captured
    from windowguide.fusion import WindowNoise, vcf_fuse
    from windowguide.integrations.comfyui import ComfyDenoiser
    from windowguide.sampling import PerSampleNoise
    from windowguide.windows import layout
    pos, neg = conditioning(1), conditioning(2)
    shape, seed = (1, 4, 16, 40), 11
    sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 3)
    (ks,) = nodes.FusionSampler.execute("euler_ancestral", "multidiffusion", 16, 8, vcf, 0.0, 0.0, False)
    out = comfy.sample.sample_custom(sd15, comfy.sample.prepare_noise(torch.zeros(shape), seed), 3.0, ks, sigmas,
                                     pos, neg, torch.zeros(shape), seed=seed, disable_pbar=True)
    seen = captured(sd15, pos, neg, 3.0, shape=shape, seed=seed)
    den = wg.guidance.guided(ComfyDenoiser(sd15.model, [seen["cond"], seen["uncond"]], {"transformer_options": {}}),
                             wg.CFG(2.0, null={"which": torch.tensor(1)}))
    lay = layout(16, 40, 16, stride=8)
    noise = PerSampleNoise.from_seeds([seed])
    x = noise(torch.empty(shape)) * (1 + float(sigmas[0]) ** 2) ** 0.5
    wnoise = WindowNoise(noise, lay)        # unscaled: the paper's VCF (vcf_fuse) corrects the fused states
    sd15.pre_run()
    with torch.no_grad():
        for s0, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            crops = lay.crop(x)
            d = den(crops, torch.full((crops.shape[0],), s0), {"which": torch.zeros(crops.shape[0], dtype=torch.long)})
            up = min(s1, (s1 ** 2 * (s0 ** 2 - s1 ** 2) / s0 ** 2) ** 0.5)
            down = (s1 ** 2 - up ** 2) ** 0.5
            mean = d if down == 0 else crops + (crops - d) / s0 * (down - s0)
            states = mean + wnoise(crops) * up
            x = vcf_fuse(states, mean, lay, "uniform") if vcf else lay.fold(states, "uniform")
    sd15.cleanup()
    assert close(sd15, out, sd15.model.process_latent_out(x))


def test_vcf_under_comfyuis_samplers_reuses_the_predictions_and_refuses_what_has_no_mean(sd15):
    import comfy.sample
    import comfy.samplers
    from windowguide.errors import WindowguideError
    pos, neg = conditioning(1), conditioning(2)
    shape = (1, 4, 16, 40)
    sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 2)
    counts = []
    for vcf in (False, True):
        (ks,) = nodes.FusionSampler.execute("euler_ancestral", "gf", 16, 8, vcf, 0.0, 0.0, False)
        m, calls = counted(sd15)
        comfy.sample.sample_custom(m, comfy.sample.prepare_noise(torch.zeros(shape), 1), 3.0, ks, sigmas, pos, neg,
                                   torch.zeros(shape), seed=1, disable_pbar=True)
        counts.append(calls)
    assert counts[0] == counts[1] == [(8, 4, 16, 16)] * 2        # one batched call of 4 windows x (cond, uncond)
    with pytest.raises(WindowguideError, match="VCF with 'dpm_2'"):
        nodes.FusionSampler.execute("dpm_2", "gf", 16, 8, True, 0.0, 0.0, False)
    with pytest.raises(WindowguideError, match="mode 'gaussian'"):
        nodes.FusionSampler.execute("euler_ancestral", "gaussian", 16, 8, False, 0.0, 0.0, False)


@pytest.mark.parametrize("sampler", ["dpm_2", "lcm", "dpm_2_ancestral"])
def test_fusion_runs_every_offered_comfy_sampler_through_the_one_loop(sd15, sampler):
    # each offered one-step sampler runs inside windowguide's fused loop (dpm_2 takes no noise sampler)
    import comfy.sample
    import comfy.samplers
    pos, neg = conditioning(1), conditioning(2)
    shape = (1, 4, 16, 40)
    sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 2)
    (ks,) = nodes.FusionSampler.execute(sampler, "gf", 16, 8, False, 0.0, 0.0, False)
    out = comfy.sample.sample_custom(sd15, comfy.sample.prepare_noise(torch.zeros(shape), 3), 3.0, ks, sigmas, pos,
                                     neg, torch.zeros(shape), seed=3, disable_pbar=True)
    assert out.shape == shape and bool(torch.isfinite(out).all())


def test_fusion_sampler_stops_on_a_non_finite_state_with_a_message(sd15):
    # the one loop's check reaches ComfyUI's fusion sampler: a network that overflows is an error, not a NaN latent
    import comfy.sample
    import comfy.samplers
    from windowguide.errors import WindowguideError
    m = sd15.clone()
    m.set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"]) * float("inf"))
    pos, neg = conditioning(1), conditioning(2)
    shape = (1, 4, 16, 40)
    sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 2)
    (ks,) = nodes.FusionSampler.execute("euler", "gf", 16, 8, False, 0.0, 0.0, False)
    with pytest.raises(WindowguideError, match="prediction is NaN or infinite for seeds \\[3\\]"):
        comfy.sample.sample_custom(m, comfy.sample.prepare_noise(torch.zeros(shape), 3), 3.0, ks, sigmas, pos, neg,
                                   torch.zeros(shape), seed=3, disable_pbar=True)
