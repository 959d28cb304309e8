"""Silent wrong results that independent checks found through ``from_pipeline`` (#39 items 0-3, 18), each
replayed against the diffusers pipeline or scheduler on a tiny pipeline."""
import warnings

import numpy as np
import pytest
import torch

import windowguide as wg
from windowguide.errors import WindowguideError
from pipes import tiny_sana, tiny_sd, tiny_sd3, tiny_vae, tiny_zimage


def _dit(scheduler):
    from diffusers import DiTPipeline, DiTTransformer2DModel
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000).eval()
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                p.normal_(0, 0.3)                 # large enough that x0 leaves [-1, 1] and clipping matters
    pipe = DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_natural_call_takes_the_schedulers_clip_sample_and_ddim_targets():
    """Replayed: a DiT pipeline saved with diffusers' default DDIMScheduler() (clip_sample=True) sampled by
    wg.sample(m.denoiser, ..., sigmas=m.sigmas(N)) without m.sampler_options differed from DiTPipeline."""
    from diffusers import DDIMScheduler
    pipe = _dit(DDIMScheduler())
    m = wg.from_pipeline(pipe)
    cond, null = m.encode(class_labels=[3])
    with torch.no_grad():
        ref = pipe(class_labels=[3], guidance_scale=3.0, num_inference_steps=6,
                   generator=torch.Generator().manual_seed(0), output_type="np").images
        x = wg.sample(m.denoiser, m.shape(), [0], sampler="ddim", sigmas=m.sigmas(6), cond=cond,
                      guidance=wg.CFG(2.0, null=null))
        unclipped = wg.sample(m.denoiser, m.shape(), [0], sampler="ddim", sigmas=m.sigmas(6), cond=cond,
                              guidance=wg.CFG(2.0, null=null), x0_clip=None)
    assert np.abs(_decode(pipe, x) - ref).max() <= 1e-4
    assert np.abs(_decode(pipe, unclipped) - ref).max() > 1e-2     # the clipping is what made the difference


def _decode(pipe, latents):
    with torch.no_grad():
        x = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_zimage_encodes_a_list_of_negatives_one_per_prompt():
    """Replayed: m.encode(prompt=[...], negative_prompt=[...]) wrapped the list in another list, so every
    negative was encoded as the empty prompt."""
    pipe = tiny_zimage()
    m = wg.from_pipeline(pipe)
    prompts, negatives = ["a red cat", "a blue dog at dusk"], ["blue dog", "red cat at dusk"]
    _, neg = m.encode(prompt=prompts, negative_prompt=negatives, max_sequence_length=12)
    with torch.no_grad():
        _, ref = pipe.encode_prompt(prompts, negative_prompt=negatives, max_sequence_length=12)
        _, empty = pipe.encode_prompt(prompts, negative_prompt=["", ""], max_sequence_length=12)
    for i in range(2):
        n = ref[i].shape[0]
        got = neg["embeds"][i][:n]
        assert torch.allclose(got.float(), ref[i].float()) and bool(neg["mask"][i][:n].all()), i
        assert got.shape != empty[i].shape or not torch.allclose(got.float(), empty[i].float())
    with pytest.raises(WindowguideError, match="3 entries for 2"):
        m.encode(prompt=prompts, negative_prompt=["a", "b", "c"])


@pytest.mark.parametrize("option", [dict(shift_terminal=0.1), dict(use_karras_sigmas=True),
                                    dict(use_dynamic_shifting=True)])
def test_sd3_reads_its_schedule_from_the_scheduler(tmp_path, option):
    """Replayed: SD3's m.sigmas was flow_sigmas(steps, shift), ignoring shift_terminal, dynamic shifting and
    Karras sigmas (3.8e-3 .. 1.3e-2 from the pipeline)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    pipe = tiny_sd3(tmp_path)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **option)
    m = wg.from_pipeline(pipe)
    pos, _ = m.encode(prompt="a red cat", max_sequence_length=8)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe("a red cat", height=16, width=16, num_inference_steps=6, guidance_scale=1.0,
                   latents=latents.clone(), output_type="latent", max_sequence_length=8).images
        x = wg.sample(m.denoiser, m.shape(), [7], sampler="flow_euler", sigmas=m.sigmas(6), cond=pos)
    assert (x - ref).abs().max() <= 1e-4


def test_a_scheduler_windowguide_does_not_reproduce_is_said():
    """Replayed: SANA's DPMSolverMultistep (and a stochastic flow Euler) were replaced by the flow Euler
    without a word. from_pipeline now says which sampler runs."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    with pytest.warns(UserWarning, match="DPMSolverMultistepScheduler, whose update windowguide's samplers do not"):
        m = wg.from_pipeline(tiny_sana(scheduler="dpm"))
    assert "flow_euler" in m.extras["scheduler_note"]
    pipe = tiny_sana()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # the reproduced scheduler: nothing to say
        wg.from_pipeline(pipe)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    with pytest.warns(UserWarning, match="stochastic_sampling=True"):
        wg.from_pipeline(pipe)


def test_sd_encodes_two_prompts_without_negatives(tmp_path):
    """Replayed: m.encode(prompt=[a, b]) without negatives crashed inside diffusers."""
    m = wg.from_pipeline(tiny_sd(tmp_path))
    pos, neg = m.encode(prompt=["a red cat", "a blue dog"])
    assert pos.shape[0] == 2 and neg.shape[0] == 2
    one, empty = m.encode(prompt="a red cat")
    assert torch.equal(neg[0], empty[0]) and torch.equal(pos[0], one[0])
    _, two = m.encode(prompt=["a red cat", "a blue dog"], negative_prompt=["blue dog", "red cat"])
    assert two.shape[0] == 2                 # (the tiny tokenizer maps every word alike: no content to compare)
    assert np.isfinite(pos.numpy()).all()


def test_the_patch_refuses_what_it_would_guide_wrongly(tmp_path):
    """Replayed (#39 item 19): Wan 2.2 TI2V (expand_timesteps) ran unguided, a two-expert Wan 2.2 guided one
    expert, transformer=None raised AttributeError, and FLUX under a diffusers cache crashed mid-run."""
    from diffusers import FirstBlockCacheConfig
    from pipes import tiny_flux, tiny_wan
    pipe = tiny_wan()
    pipe.register_to_config(expand_timesteps=True)
    with pytest.raises(WindowguideError, match="expand_timesteps"):
        with wg.patch(pipe, "mswg:w=0.5"):
            pass
    pipe.register_to_config(expand_timesteps=False)
    pipe.transformer_2 = pipe.transformer
    with pytest.raises(WindowguideError, match="two experts"):
        with wg.patch(pipe, "mswg:w=0.5"):
            pass
    pipe.transformer_2, transformer = None, pipe.transformer
    pipe.transformer = None
    with pytest.raises(WindowguideError, match="no transformer"):
        with wg.patch(pipe, "mswg:w=0.5"):
            pass
    pipe.transformer = transformer
    with wg.patch(pipe, "mswg:w=0.5"):                       # the plain Wan 2.1 pipeline is accepted
        pass
    flux = tiny_flux(tmp_path)
    flux.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(WindowguideError, match="cache hooks .*fbc_"):
        with wg.patch(flux, "mswg:w=0.5"):
            pass


def test_circular_qwen_image_and_wide_z_image_canvases():
    """Replayed (#39 item 10): a circular Qwen-Image panorama asked its RoPE for columns past the canvas
    (RuntimeError); a Z-Image canvas wider than its RoPE table failed with IndexError at step 0."""
    from pipes import tiny_qwen_image
    from windowguide.fusion import panorama
    m = wg.from_pipeline(tiny_qwen_image())
    pos, _ = m.encode(prompt="a red cat")
    with torch.no_grad():
        x = panorama(m.denoiser, (4, 16, 40), [0], window=16, stride=8, circular=True, sampler="flow_euler",
                     sigmas=m.sigmas(2, shape=(4, 16, 16)), cond=pos)
    assert x.shape == (1, 4, 16, 40) and bool(torch.isfinite(x).all())
    z = wg.from_pipeline(tiny_zimage())
    zpos, _ = z.encode(prompt="a red cat", max_sequence_length=12)
    assert z.extras["max_latent"] == (128, 128)
    with pytest.raises(WindowguideError, match="accepted: canvases up to 128 x 128 latent pixels"), torch.no_grad():
        panorama(z.denoiser, (4, 16, 144), [0], window=16, stride=16, sampler="flow_euler",
                 sigmas=z.sigmas(1, shape=(4, 16, 16)), cond=zpos)


def test_a_broken_component_is_named_with_its_folder(tmp_path, capsys):
    """Replayed (#39 item 14): a tokenizer that raises TypeError while loading ended as an internal error."""
    from windowguide.cli import main
    folder = tmp_path / "sd"
    tiny_sd(tmp_path).save_pretrained(folder)
    (folder / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": "eight", "bos_token": 5}')
    assert main(["sample", "--model", str(folder), "--prompt", "a", "--steps", "1", "--seeds", "0",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: the pipeline does not load (its component 'tokenizer')" in err, err


def test_upscale_and_panorama_share_the_pipelines_default_guidance(tmp_path):
    """Replayed (#39 item 9): upscale defaulted to cfg:w=6.5 on every pipeline, FLUX too (true CFG, two
    evaluations a step), while panorama used the pipeline's own default."""
    import json
    from pipes import tiny_flux
    from windowguide.adapters.registry import default_guidance
    from windowguide.cli import main
    from windowguide.files import write_png
    assert default_guidance(tiny_flux(tmp_path), flow=True) == "none"        # guidance-distilled: no CFG
    sd = tiny_sd(tmp_path)
    assert default_guidance(sd, flow=False) == "cfg:w=6.5"                   # diffusers' SD scale 7.5
    sd.save_pretrained(tmp_path / "sd")
    write_png(np.full((8, 8, 3), 100, np.uint8), str(tmp_path / "in.png"))
    assert main(["upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "sd"), "--prompt", "a cat",
                 "--steps", "2", "--strength", "0.5", "--out", str(tmp_path / "u")]) == 0
    assert json.loads((tmp_path / "u" / "settings.json").read_text())["guidance"] == "cfg:w=6.5"
