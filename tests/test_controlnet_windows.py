"""ControlNet in every window (from_pipeline of StableDiffusionControlNetPipeline): one window over the
canvas is diffusers' ControlNet pipeline; with several windows each call gets the control image's crop."""
import torch

import windowguide as wg
import windowguide.fusion
from pipes import tiny_sd


def _control_pipe(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    base = tiny_sd(tmp_path)
    torch.manual_seed(3)
    control = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8)).eval()
    with torch.no_grad():
        for p in list(control.controlnet_down_blocks.parameters()) + list(control.controlnet_mid_block.parameters()):
            p.normal_(0, 0.05)
    pipe = StableDiffusionControlNetPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                             unet=base.unet, controlnet=control, scheduler=base.scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_one_window_equals_diffusers_controlnet_pipeline(tmp_path):
    pipe = _control_pipe(tmp_path)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe("a red cat", image=image, negative_prompt="blue dog", height=32, width=32, num_inference_steps=4,
                   guidance_scale=3.0, latents=z, output_type="latent").images
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", control_image=image)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4, sampler="ddim"), cond=pos,
                      guidance=wg.CFG(2.0, null={k: v[0] for k, v in neg.items()}), **m.sampler_options("ddim", 4))
    assert (m.pipeline_latents(x, m.sigmas(4, sampler="ddim")) - ref).abs().max() <= 1e-4


def test_each_window_gets_the_control_images_crop(tmp_path):
    pipe = _control_pipe(tmp_path)
    image = torch.rand(1, 3, 16, 48, generator=torch.Generator().manual_seed(1))
    m = wg.from_pipeline(pipe)
    pos, _ = m.encode(prompt="a red cat", control_image=image)
    seen = []
    hook = pipe.controlnet.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["controlnet_cond"].clone()),
                                                     with_kwargs=True)
    try:
        with torch.no_grad():
            wg.fusion.panorama(m.denoiser, (4, 8, 24), [0], window=8, stride=8, sampler="ddim",
                               sigmas=m.sigmas(1), cond=pos)
    finally:
        hook.remove()
    crops = seen[0]
    assert crops.shape == (3, 3, 16, 16)
    for k in range(3):
        assert torch.equal(crops[k], image[0, :, :, 16 * k:16 * k + 16])


def _sdxl_control_pipe(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from pipes import tiny_sdxl
    base = tiny_sdxl(tmp_path)
    torch.manual_seed(4)
    control = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8)).eval()
    with torch.no_grad():
        for p in list(control.controlnet_down_blocks.parameters()) + list(control.controlnet_mid_block.parameters()):
            p.normal_(0, 0.05)
    parts = {k: v for k, v in base.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusionXLControlNetPipeline(**parts, controlnet=control)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_one_window_equals_diffusers_sdxl_controlnet_pipeline_and_crops(tmp_path):
    pipe = _sdxl_control_pipe(tmp_path)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe("a red cat", image=image, negative_prompt="blue dog", height=16, width=16, num_inference_steps=4,
                   guidance_scale=3.0, latents=z, output_type="latent").images
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", control_image=image)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 8, 8), [7], sampler="ddim", sigmas=m.sigmas(4, sampler="ddim"), cond=pos,
                      guidance=wg.CFG(2.0, null={k: v[0] for k, v in neg.items()}), **m.sampler_options("ddim", 4))
    assert (m.pipeline_latents(x, m.sigmas(4, sampler="ddim")) - ref).abs().max() <= 1e-4
    wide = torch.rand(1, 3, 16, 48, generator=torch.Generator().manual_seed(1))
    pos, _ = m.encode(prompt="a red cat", control_image=wide)
    seen = []
    hook = pipe.controlnet.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["controlnet_cond"].clone()),
                                                     with_kwargs=True)
    try:
        with torch.no_grad():
            wg.fusion.panorama(m.denoiser, (4, 8, 24), [0], window=8, stride=8, sampler="ddim", sigmas=m.sigmas(1),
                               cond=pos)
    finally:
        hook.remove()
    assert seen[0].shape == (3, 3, 16, 16)
    for k in range(3):
        assert torch.equal(seen[0][k], wide[0, :, :, 16 * k:16 * k + 16])
