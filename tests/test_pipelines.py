"""from_pipeline on tiny randomly initialised diffusers pipelines, against the pipelines' own outputs."""
import numpy as np
import pytest
import torch

import windowguide as wg
from windowguide.errors import WindowguideError
from windowguide.guidance import StepRange
from pipes import tiny_flux, tiny_pixart, tiny_sd, tiny_sd3, tiny_sdxl, tiny_vae


@pytest.fixture(scope="module")
def sd3_pipe(tmp_path_factory):
    return tiny_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def sdxl_pipe(tmp_path_factory):
    return tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def flux_pipe(tmp_path_factory):
    return tiny_flux(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def dit_pipe(tmp_path_factory):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000).eval()
    with torch.no_grad():                     # adaLN-Zero starts at zero: give the blocks something to do
        for name, p in dit.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                p.normal_(0, 0.05)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=scheduler)
    folder = tmp_path_factory.mktemp("dit") / "pipe"
    pipe.save_pretrained(folder)              # the path a user's checkpoint takes
    return DiTPipeline.from_pretrained(folder)


def _decode_float(pipe, latents):
    with torch.no_grad():
        x = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_dit_sampling_equals_dit_pipeline(dit_pipe, scale):
    m = wg.from_pipeline(dit_pipe)
    assert m.family == "dit" and m.shape() == (4, 8, 8) and m.multiple == 2
    cond, null = m.encode(class_labels=[3])
    guidance = wg.CFG(scale - 1.0, null=null) if scale > 1 else None        # diffusers' scale s = our w + 1
    with torch.no_grad():
        x = wg.sample(m.denoiser, m.shape(), [0], sampler="ddim", sigmas=m.sigmas(6), guidance=guidance, cond=cond)
        ref = dit_pipe(class_labels=[3], guidance_scale=scale, num_inference_steps=6,
                       generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.abs(_decode_float(dit_pipe, x) - ref).max() <= 1e-4
    assert m.decode(x).shape == (1, 16, 16, 3)


def test_dit_crops_must_be_multiples_of_the_patch(dit_pipe):
    m = wg.from_pipeline(dit_pipe)
    with pytest.raises(WindowguideError, match="multiple of 2"):
        wg.GuidedDenoiser(m.denoiser, wg.MSWG(0.5, window=5)).check((4, 8, 8))
    cond, _ = m.encode(class_labels=[1, 2])
    with torch.no_grad():
        x = wg.sample(m.denoiser, m.shape(), [0, 1], sampler="ddim", sigmas=m.sigmas(3),
                      guidance=wg.MSWG(0.5, window=6), cond=cond)
    assert torch.isfinite(x).all()


@pytest.fixture(scope="module")
def ddim_pipe():
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    return DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False))


def test_unet2d_sampling_equals_ddim_pipeline(ddim_pipe):
    m = wg.from_pipeline(ddim_pipe)
    with torch.no_grad():
        x = wg.sample(m.denoiser, m.shape(), [5], sampler="ddim", sigmas=m.sigmas(5))
        ref = ddim_pipe(batch_size=1, num_inference_steps=5, eta=0.0, output_type="np",
                        generator=torch.Generator().manual_seed(5), use_clipped_model_output=False).images
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref).max() <= 1e-4
    with pytest.raises(WindowguideError, match="unconditional"):
        m.encode(class_labels=[1])


def test_unsupported_pipelines_are_named():
    class FluxLikePipeline:
        pass
    with pytest.raises(WindowguideError, match="FluxLikePipeline is not supported.*DiTPipeline"):
        wg.from_pipeline(FluxLikePipeline())


@pytest.mark.parametrize("prediction, scale", [("epsilon", 3.5), ("v_prediction", 3.5), ("epsilon", 1.0)])
def test_stable_diffusion_sampling_equals_the_pipeline(tmp_path, prediction, scale):
    pipe = tiny_sd(tmp_path, prediction)
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat at dusk", negative_prompt="blue dog")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe("a red cat at dusk", negative_prompt="blue dog", height=16, width=16, num_inference_steps=5,
                   guidance_scale=3.5, latents=latents.clone(), output_type="latent").images
        x = wg.sample(m.denoiser, m.shape(), [7], sampler="ddim", sigmas=m.sigmas(5), cond=pos,
                      guidance=wg.CFG(2.5, null=neg))
    # diffusers' latents are x_vp at t = 0 (set_alpha_to_one=False); ours the VE state there
    assert (m.pipeline_latents(x, m.sigmas(5)) - ref).abs().max() <= 1e-4
    pipe.text_encoder = None
    with pytest.raises(WindowguideError, match="no text encoder"):
        wg.from_pipeline(pipe).encode(prompt="a cat")


def test_sd3_without_guidance_equals_the_pipeline(sd3_pipe):
    m = wg.from_pipeline(sd3_pipe)
    pos, _ = m.encode(prompt="a red cat", max_sequence_length=8)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = sd3_pipe("a red cat", height=16, width=16, num_inference_steps=6, guidance_scale=1.0,
                       latents=latents.clone(), output_type="latent", max_sequence_length=8).images
        x = wg.sample(m.denoiser, m.shape(), [7], sampler="flow_euler", sigmas=m.sigmas(6), cond=pos)
    assert (x - ref).abs().max() <= 1e-4


def test_sd3_cfg_and_skip_layer_guidance_equal_the_pipeline(sd3_pipe):
    m = wg.from_pipeline(sd3_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    steps, start, stop = 10, 0.01, 0.3
    # the pipeline skips layers at steps i with N * start < i < N * stop: here i = 1, 2
    on = [i for i in range(steps) if steps * start < i < steps * stop]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    g = wg.CFG(3.0, null=neg) + wg.Custom(m.skip_layers([1]), 2.8, steps=StepRange(on[0], on[-1]))
    with torch.no_grad():
        ref = sd3_pipe("a red cat", negative_prompt="blue dog", height=16, width=16, num_inference_steps=steps,
                       guidance_scale=4.0, latents=latents.clone(), output_type="latent", max_sequence_length=8,
                       skip_guidance_layers=[1], skip_layer_guidance_scale=2.8, skip_layer_guidance_start=start,
                       skip_layer_guidance_stop=stop).images
        x = wg.sample(m.denoiser, m.shape(), [7], sampler="flow_euler", sigmas=m.sigmas(steps), cond=pos, guidance=g)
        no_slg = wg.sample(m.denoiser, m.shape(), [7], sampler="flow_euler", sigmas=m.sigmas(steps), cond=pos,
                           guidance=wg.CFG(3.0, null=neg))
    assert (x - ref).abs().max() <= 1e-4
    assert (no_slg - ref).abs().max() > 1e-3          # the skipped layers did change the result


def test_cli_samples_a_dit_pipeline_folder_like_the_pipeline(dit_pipe, tmp_path):
    from windowguide.cli import main
    from windowguide.files import read_png
    folder = tmp_path / "dit"
    dit_pipe.save_pretrained(folder)
    out = tmp_path / "s"
    assert main(["sample", "--model", str(folder), "--class", "3", "--guidance", "cfg:w=3", "--steps", "6",
                 "--seeds", "0-1", "--out", str(out)]) == 0
    with torch.no_grad():
        ref = dit_pipe(class_labels=[3], guidance_scale=4.0, num_inference_steps=6,
                       generator=torch.Generator().manual_seed(1), output_type="np").images
    ours = read_png(str(out / "000001.png")).astype(float)
    assert np.abs(ours - ref[0] * 255).max() <= 1.0              # the same image, to the 8-bit rounding
    assert (out / "manifest.json").exists()


def test_cli_samples_an_sd3_folder_with_skip_layer_guidance(sd3_pipe, tmp_path, capsys):
    from windowguide.cli import main
    from windowguide.files import read_png
    folder = tmp_path / "sd3"
    sd3_pipe.save_pretrained(folder)
    out = tmp_path / "s"
    assert main(["sample", "--model", str(folder), "--prompt", "a red cat", "--steps", "4", "--seeds", "0",
                 "--guidance", "cfg:w=3+slg:w=2.8,skip=1,first=1,last=2", "--out", str(out)]) == 0
    assert read_png(str(out / "000000.png")).shape == (16, 16, 3)
    assert main(["sample", "--model", str(folder), "--steps", "4", "--seeds", "0", "--out", str(tmp_path / "t")]) == 2
    assert "needs a prompt" in capsys.readouterr().err
    assert main(["sample", "--model", str(folder), "--prompt", "a cat", "--guidance", "slg:w=1,skip=mid",
                 "--out", str(tmp_path / "u")]) == 2
    assert "layer indices" in capsys.readouterr().err


def test_dit_crop_positions_stretch_or_slice(dit_pipe):
    """'slice' gives a crop the rows of the canvas's embedding at its place; 'stretch' is diffusers' own.
    On the whole image both are the trained embedding, so unguided sampling is unchanged."""
    from windowguide.adapters.dit import sliced_position_embedding
    pe = dit_pipe.transformer.pos_embed
    full = pe.pos_embed[0].reshape(4, 4, -1)                     # the trained 8 x 8 latent, patch 2
    assert torch.allclose(sliced_position_embedding(pe, (2, 4, 8, 8), (6, 4)), full[1:4, 2:4].reshape(6, -1))
    stretch, sliced = wg.from_pipeline(dit_pipe, crop_positions="stretch"), wg.from_pipeline(dit_pipe)
    cond, _ = stretch.encode(class_labels=[1])
    with torch.no_grad():
        plain = [wg.sample(m.denoiser, (4, 8, 8), [0], sampler="ddim", sigmas=m.sigmas(3), cond=cond)
                 for m in (stretch, sliced)]
        guided = [wg.sample(m.denoiser, (4, 8, 8), [0], sampler="ddim", sigmas=m.sigmas(3), cond=cond,
                            guidance=wg.MSWG(1.0, window=6)) for m in (stretch, sliced)]
    assert torch.allclose(plain[0], plain[1], atol=1e-6)
    assert not torch.allclose(guided[0], guided[1], atol=1e-4)   # the crops saw different positions
    assert pe.pos_embed is not None and not pe._forward_hooks     # the model is left as it was
    with pytest.raises(WindowguideError, match="crop_positions"):
        wg.from_pipeline(dit_pipe, crop_positions="resize")


@pytest.mark.parametrize("scale", [3.0, 1.0])
def test_sdxl_sampling_equals_the_pipeline(sdxl_pipe, scale):
    m = wg.from_pipeline(sdxl_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = sdxl_pipe("a red cat", negative_prompt="blue dog", height=16, width=16, num_inference_steps=5,
                        guidance_scale=scale, latents=latents.clone(), output_type="latent").images
        x = wg.sample(m.denoiser, m.shape(), [7], sampler="ddim", sigmas=m.sigmas(5), cond=pos,
                      guidance=wg.CFG(scale - 1, null={k: v[0] for k, v in neg.items()}) if scale > 1 else None)
    assert (m.pipeline_latents(x, m.sigmas(5)) - ref).abs().max() <= 1e-4


def test_sdxl_time_ids_describe_each_crop():
    from windowguide.adapters.sdxl import sdxl_time_ids
    from windowguide.windows import layout
    assert sdxl_time_ids(None, (128, 128), 8).tolist() == [[1024, 1024, 0, 0, 1024, 1024]]
    lay = layout(128, 128, 80, windows_per_side=2)
    ids = sdxl_time_ids(lay.regions(1), (80, 80), 8)
    assert ids.tolist() == [[1024, 1024, t * 8, l * 8, 640, 640] for t, l in lay.positions]


def test_sdxl_crops_reach_the_unet_with_their_time_ids(sdxl_pipe):
    m = wg.from_pipeline(sdxl_pipe)
    pos, _ = m.encode(prompt="a red cat", negative_prompt="")
    seen = []
    hook = sdxl_pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            wg.sample(m.denoiser, (4, 16, 16), [0], sampler="ddim", sigmas=m.sigmas(1), cond=pos,
                      guidance=wg.MSWG(0.5, window=8, windows_per_side=3))
    finally:
        hook.remove()
    full, crops = seen[0], seen[1]
    assert full.tolist() == [[32, 32, 0, 0, 32, 32]]
    assert crops.tolist() == [[32, 32, t * 2, l * 2, 16, 16] for t in (0, 4, 8) for l in (0, 4, 8)]


@pytest.mark.parametrize("scale", [3.0, 1.0])
def test_pixart_sampling_equals_the_pipeline(scale):
    pipe = tiny_pixart()
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=6)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe("a red cat", negative_prompt="blue dog", height=16, width=16, num_inference_steps=5, guidance_scale=scale,
                   latents=latents.clone(), output_type="latent", clean_caption=False, max_sequence_length=6,
                   use_resolution_binning=False).images
        x = wg.sample(m.denoiser, m.shape(), [7], sampler="ddim", sigmas=m.sigmas(5), cond=pos,
                      guidance=wg.CFG(scale - 1, null={k: v[0] for k, v in neg.items()}) if scale > 1 else None)
    assert (m.pipeline_latents(x, m.sigmas(5)) - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("true_cfg", [1.0, 3.0])
def test_flux_sampling_equals_the_pipeline(flux_pipe, true_cfg):
    from windowguide.adapters.flux import pack
    m = wg.from_pipeline(flux_pipe, guidance_embed=2.5)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=6)
    shape = m.shape(16, 16)
    z = torch.randn(1, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = flux_pipe("a red cat", negative_prompt="blue dog", true_cfg_scale=true_cfg, guidance_scale=2.5, height=32,
                        width=32, num_inference_steps=4, latents=pack(z), output_type="latent",
                        max_sequence_length=6).images
        g = wg.CFG(true_cfg - 1, null={k: v[0] for k, v in neg.items()}) if true_cfg > 1 else None
        x = wg.sample(m.denoiser, shape, [7], sampler="flow_euler", sigmas=m.sigmas(4, shape=shape), cond=pos, guidance=g)
    assert (pack(x) - ref).abs().max() <= 1e-4


def test_flux_crop_ids_local_or_true_location(flux_pipe):
    from windowguide.adapters.flux import flux_image_ids
    assert flux_image_ids(4, 6, 2, 4).tolist()[0] == [0, 1, 2] and flux_image_ids(4, 6).shape == (6, 3)
    pos, _ = wg.from_pipeline(flux_pipe).encode(prompt="a red cat", max_sequence_length=6)
    out = []
    for mode in ("stretch", "slice"):
        m = wg.from_pipeline(flux_pipe, crop_positions=mode)
        with torch.no_grad():
            out.append(wg.sample(m.denoiser, (4, 16, 16), [0], sampler="flow_euler", sigmas=m.sigmas(2, shape=(4, 16, 16)),
                                 cond=pos, guidance=wg.MSWG(1.0, window=10)))
    assert torch.isfinite(out[0]).all() and not torch.allclose(out[0], out[1], atol=1e-5)


def test_cli_panorama_of_an_sd_pipeline_folder(tmp_path):
    from windowguide.cli import main
    from windowguide.files import read_png
    pipe = tiny_sd(tmp_path, sd_schedule=False)
    pipe.save_pretrained(tmp_path / "sd")
    out = tmp_path / "p"
    assert main(["panorama", "--model", str(tmp_path / "sd"), "--prompt", "a mountain at dusk", "--width", "48",
                 "--stride", "4", "--steps", "3", "--seeds", "0", "--mode", "gf", "--out", str(out)]) == 0
    assert read_png(str(out / "panorama_000000.png")).shape == (16, 48, 3)
    assert (out / "manifest.json").exists()


def test_panorama_preset_is_the_gvcf_setting():
    from windowguide.presets import expand
    p = expand("gvcf-sd2-panorama")
    assert p.panorama == dict(height=512, width=3584, stride=48, mode="gf", vcf=True)
    assert (p.sampler, p.steps, p.guidance) == ("ddpm", 1000, "cfg:w=6.5")


def test_ddpm_learned_variance_step_equals_diffusers_learned_range():
    from diffusers import DDPMScheduler
    from windowguide.adapters.dit import ddpm_learned_step
    sch = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range", clip_sample=False,
                        timestep_spacing="linspace")
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x_vp, eps, var = (torch.randn(2, 4, 6, 6, generator=g) for _ in range(3))
    var = var.clamp(-1, 1)
    for i in (0, 4):                                   # a first step and a middle one
        t, t_prev = int(sch.timesteps[i]), int(sch.timesteps[i + 1])
        ref = sch.step(torch.cat([eps, var], 1), t, x_vp, generator=torch.Generator().manual_seed(3)).prev_sample
        ab_t, ab_s = sch.alphas_cumprod[t].double(), sch.alphas_cumprod[t_prev].double()
        sigma, nxt = float(((1 - ab_t) / ab_t).sqrt()), float(((1 - ab_s) / ab_s).sqrt())
        d = (x_vp - (1 - ab_t).sqrt().float() * eps) / ab_t.sqrt().float()
        z = torch.randn(eps.shape, generator=torch.Generator().manual_seed(3))
        ours = ddpm_learned_step(x_vp / ab_t.sqrt().float(), d, (var + 1) / 2, sigma, nxt, z) * ab_s.sqrt().float()
        assert (ours - ref).abs().max() <= 1e-4


def test_dit_learned_variance_sampler_with_guidance(dit_pipe):
    from windowguide.adapters.dit import sample_dit_learned_variance
    m = wg.from_pipeline(dit_pipe)
    cond, null = m.encode(class_labels=[1, 2])
    a = sample_dit_learned_variance(m, [0, 1], steps=5, guidance=wg.CFG(1.0, null=null) + wg.MSWG(0.5, window=6),
                                    cond=cond)
    b = sample_dit_learned_variance(m, [1], steps=5, guidance=wg.CFG(1.0, null=null[1:]) + wg.MSWG(0.5, window=6),
                                    cond=cond[1:])
    assert torch.isfinite(a).all() and torch.allclose(a[1:], b, atol=1e-5)   # per-seed noise: batch-independent
    assert m.extras["variance_probe"]["values"] is None


def test_cli_dit_folder_with_the_learned_variance_sampler(dit_pipe, tmp_path):
    from windowguide.cli import main
    dit_pipe.save_pretrained(tmp_path / "dit")
    assert main(["sample", "--model", str(tmp_path / "dit"), "--sampler", "dit_ddpm", "--steps", "4", "--seeds", "0",
                 "--guidance", "cfg:w=0.6+mswg:w=0.5,window=6", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "000000.png").exists()


def test_dit_refuses_shapes_and_windows_it_cannot_run_before_any_work(dit_pipe):
    """Replayed: m.shape(12, 10) and MSWG(window=(8, 6)) were accepted, then failed inside diffusers."""
    m = wg.from_pipeline(dit_pipe)
    with pytest.raises(WindowguideError, match="square"):
        m.shape(8, 6)
    with pytest.raises(WindowguideError, match="square"):
        m.shape(12, 12)                                   # past the 8 x 8 positional embedding
    with pytest.raises(WindowguideError, match="square windows"):
        wg.sample(m.denoiser, m.shape(), [0], steps=2, sampler="ddim", sigmas=m.sigmas(2),
                  cond=torch.tensor([1]), guidance=wg.MSWG(0.5, window=(6, 4)))
    with torch.no_grad():
        x = wg.sample(m.denoiser, m.shape(), [0], steps=2, sampler="ddim", sigmas=m.sigmas(2),
                      cond=torch.tensor([1]), guidance=wg.MSWG(0.5))          # the default window: 6 x 6
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("config", [dict(clip_sample=True), dict(timestep_spacing="trailing", clip_sample=True),
                                    dict(thresholding=True, sample_max_value=1.2, dynamic_thresholding_ratio=0.8)])
def test_ddim_pipeline_with_its_scheduler_options_equals_windowguide(ddim_pipe, config):
    """DDIMScheduler() clips x0 by default; trailing spacing steps to t - T // N: both reproduced through
    from_pipeline's sampler options, on the pipeline's own UNet (the CLI passes the same)."""
    from diffusers import DDIMPipeline, DDIMScheduler
    pipe = DDIMPipeline(unet=ddim_pipe.unet, scheduler=DDIMScheduler(num_train_timesteps=1000, **config))
    m = wg.from_pipeline(pipe)
    with torch.no_grad():
        x = wg.sample(m.denoiser, m.shape(), [5], sampler="ddim", sigmas=m.sigmas(7, sampler="ddim"),
                      **m.sampler_options("ddim", 7))
        ref = pipe(batch_size=1, num_inference_steps=7, eta=0.0, output_type="np",
                   generator=torch.Generator().manual_seed(5), use_clipped_model_output=False).images
    ours = (m.pipeline_latents(x, m.sigmas(7, sampler="ddim")) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref).max() <= 1e-4
