"""Our multidiffusion mode against diffusers' StableDiffusionPanoramaPipeline on the same inputs."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402

from windowguide import fusion  # noqa: E402
from windowguide.adapters.sd import sd_denoiser  # noqa: E402
from windowguide.guidance import CFG  # noqa: E402


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()


def diffusers_panorama(unet, scheduler, latents, pos, neg, steps, width, view_batch_size=1, circular=False):
    from diffusers import StableDiffusionPanoramaPipeline
    pipe = StableDiffusionPanoramaPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=512, width=width,
                num_inference_steps=steps, guidance_scale=7.5, latents=latents.clone(), output_type="latent",
                view_batch_size=view_batch_size, circular_padding=circular).images


@pytest.mark.parametrize("circular, view_batch", [(False, 1), (False, 4), (True, 1)])
def test_multidiffusion_reproduces_diffusers_panorama_latents(circular, view_batch):
    unet = tiny_unet()
    scheduler = DDIMScheduler(clip_sample=False)
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    steps, width = 3, 640                                 # latent canvas 64 x 80: 3 views at stride 8
    latents = torch.randn((4, 64, width // 8), generator=torch.Generator().manual_seed(7))[None]
    with torch.no_grad():
        ref = diffusers_panorama(unet, scheduler, latents, pos, neg, steps, width, view_batch, circular)
        denoiser, schedule = sd_denoiser(unet=unet, scheduler=scheduler)
        ours = fusion.panorama(denoiser, (4, 64, width // 8), seeds=[7], window=64, stride=8,
                               mode="multidiffusion", sampler="ddim", steps=steps, guidance=CFG(6.5, null=neg),
                               cond=pos, circular=circular, max_batch=2 * view_batch)
    assert ref.shape == ours.shape
    assert (ours - ref).abs().max() <= 1e-4


def test_vae_decode_tiles_large_latents_and_restores_the_vae():
    from diffusers import AutoencoderKL

    from windowguide.adapters.sd import decode
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32).eval()
    pipe = type("Pipe", (), {"vae": vae})()
    small = torch.randn(1, 4, 8, 8)
    wide = torch.randn(1, 4, 8, 40)
    with torch.no_grad():
        plain = decode(pipe, small, tile_above=96)
        direct = vae.decode(small / vae.config.scaling_factor).sample.clamp(-1, 1)
        tiled = decode(pipe, wide, tile_above=16)
        whole = vae.decode(wide / vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.equal(plain, direct)
    assert tiled.shape == (1, 3, 16, 80) and (tiled - whole).abs().max() < 1e-5   # the one-shot decode
    assert not vae.use_tiling


def test_sd_denoiser_reads_the_prediction_type():
    from windowguide.adapters.sd import sd_denoiser
    from windowguide.denoiser import EpsDenoiser, VDenoiser
    unet = tiny_unet()
    assert isinstance(sd_denoiser(unet=unet, scheduler=DDIMScheduler())[0], EpsDenoiser)
    assert isinstance(sd_denoiser(unet=unet, scheduler=DDIMScheduler(prediction_type="v_prediction"))[0], VDenoiser)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        sd_denoiser(unet=unet, scheduler=DDIMScheduler(prediction_type="sample"))
