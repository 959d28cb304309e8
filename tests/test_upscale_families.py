"""Upscaling with SDXL and the flow families: one window covering the image equals the family's own diffusers
img2img pipeline on the same latents and noise (to 1e-4 on the latents); several windows run."""
import numpy as np
import pytest
import torch

import windowguide as wg
from pipes import tiny_flux, tiny_sd, tiny_sd3, tiny_sdxl
from windowguide.upscaling import encode_image, resize, start_step, upscale


def _image(h, w, seed=0):
    return (torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed)) * 255).round().to(torch.uint8).numpy()


def _noise_like(z, seed):
    return torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))


def test_start_step_is_diffusers_convention():
    # VP img2img: N - int(N s); flow img2img: int(N - N s); they differ where N s is not whole
    assert start_step(50, 0.35) == 33 and start_step(50, 0.35, flow=True) == 32
    assert start_step(10, 0.6) == 4 == start_step(10, 0.6, flow=True) and start_step(10, 0.0) == 10


def test_sd_one_window_is_img2img_on_the_latents(tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline
    sd = tiny_sd(tmp_path)
    image = _image(8, 8, seed=3)
    ours = upscale(sd, image, 2, strength=0.6, seeds=[5], steps=10, prompt="a red cat", negative_prompt="blue dog",
                   guidance=wg.CFG(2.0), output_type="latent")
    z = encode_image(sd, resize(image, 2))
    ref = StableDiffusionImg2ImgPipeline(**sd.components)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = ref("a red cat", image=z, strength=0.6, num_inference_steps=10, guidance_scale=3.0,
                   negative_prompt="blue dog", generator=torch.Generator().manual_seed(5), output_type="latent").images
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


def test_sdxl_one_window_is_sdxl_img2img(tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    sdxl = tiny_sdxl(tmp_path)
    image = _image(8, 8, seed=1)
    ours = upscale(sdxl, image, 2, strength=0.6, seeds=[2], steps=10, prompt="a red cat", negative_prompt="blue dog",
                   guidance=wg.CFG(2.0), output_type="latent")
    z = encode_image(sdxl, resize(image, 2))
    ref = StableDiffusionXLImg2ImgPipeline(**sdxl.components, requires_aesthetics_score=False)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = ref("a red cat", image=z, strength=0.6, num_inference_steps=10, guidance_scale=3.0,
                   negative_prompt="blue dog", generator=torch.Generator().manual_seed(2), output_type="latent").images
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    several = upscale(sdxl, _image(8, 16), 2, strength=0.5, seeds=[0], steps=4, stride=4, prompt="a cat")
    assert several.shape == (1, 16, 32, 3)


def test_sd3_one_window_is_sd3_img2img(tmp_path):
    from diffusers import StableDiffusion3Img2ImgPipeline
    sd3 = tiny_sd3(tmp_path)
    image = _image(8, 8, seed=4)
    ours = upscale(sd3, image, 2, strength=0.35, seeds=[7], steps=10, prompt="a red cat", negative_prompt="blue dog",
                   guidance=wg.CFG(2.0), output_type="latent")
    z = encode_image(sd3, resize(image, 2))
    ref = StableDiffusion3Img2ImgPipeline(**sd3.components)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = ref("a red cat", image=z, strength=0.35, num_inference_steps=10, guidance_scale=3.0,
                   negative_prompt="blue dog", generator=torch.Generator().manual_seed(7), output_type="latent").images
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


def test_flux_one_window_is_flux_img2img(tmp_path):
    from diffusers import FluxImg2ImgPipeline
    from windowguide.adapters.flux import unpack
    flux = tiny_flux(tmp_path)
    image = _image(8, 8, seed=6)
    ours = upscale(flux, image, 2, strength=0.6, seeds=[3], steps=8, prompt="a red cat", output_type="latent")
    z = encode_image(flux, resize(image, 2))
    ref = FluxImg2ImgPipeline(**flux.components)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = ref("a red cat", image=z, strength=0.6, num_inference_steps=8, guidance_scale=3.5, height=16, width=16,
                   generator=torch.Generator().manual_seed(3), output_type="latent").images
    torch.testing.assert_close(ours, unpack(want, *ours.shape[-2:]), atol=1e-4, rtol=1e-4)
