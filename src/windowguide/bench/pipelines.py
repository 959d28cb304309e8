"""Rows of ``windowguide bench speed`` for diffusers families (tiny random models built from configs):

- loop_ratio: windowguide's sampling loop (CFG, DDIM on the pipeline's schedule) plus the decode over
  the pipeline's own call at the same number of network evaluations (a one-level VAE), interleaved, medians;
- mswg_cost_vs_floor (DiT, a transformer): M-SWG sampling over unguided sampling, divided by the
  FLOP floor (FLOPs of the full pass plus the crops' over the full pass, FlopCounterMode).
"""
from __future__ import annotations

import torch


def _tiny_dit(size: int, device):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8,
                                num_layers=4, sample_size=size, patch_size=2, num_embeds_ada_norm=1000).eval()
    vae = AutoencoderKL(latent_channels=4, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    pipe = DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def measure_dit(size: int, steps: int, repeats: int, device) -> dict:
    from ..adapters.registry import from_pipeline
    from ..generate import sample
    from ..guidance import CFG, MSWG
    from ..windows import layout
    from .timing import flops, time_interleaved
    pipe = _tiny_dit(size, device)
    ours = from_pipeline(pipe)
    cond, null = ours.encode(class_labels=[1])
    sigmas = ours.sigmas(steps)
    window = size * 5 // 8 // 2 * 2
    lay = layout(size, size, window, windows_per_side=2)
    with torch.no_grad():
        t = time_interleaved(dict(
            pipeline=lambda: pipe(class_labels=[1], guidance_scale=2.0, num_inference_steps=steps, output_type="np",
                                  generator=torch.Generator().manual_seed(0)),
            windowguide=lambda: ours.decode(sample(ours.denoiser, ours.shape(), [0], sampler="ddim", sigmas=sigmas,
                                                   cond=cond, guidance=CFG(1.0, null=null), device=device)),
            unguided=lambda: sample(ours.denoiser, ours.shape(), [0], sampler="ddim", sigmas=sigmas, cond=cond,
                                    device=device),
            mswg=lambda: sample(ours.denoiser, ours.shape(), [0], sampler="ddim", sigmas=sigmas, cond=cond,
                                guidance=MSWG(0.5, window=window), device=device)), repeats, torch.device(device))
        x = torch.randn(1, 4, size, size, device=device)
        f = lambda z: pipe.transformer(z, timestep=torch.full((z.shape[0],), 500, device=device),
                                       class_labels=torch.ones(z.shape[0], dtype=torch.long, device=device)).sample
        full, crops = flops(lambda a, s, c: f(a), x, None, None), flops(lambda a, s, c: f(a), lay.crop(x), None, None)
    floor = (full + crops) / full
    return {"model": f"DiT (4 layers, width 128) {size}x{size} latent", "steps": steps,
            "seconds": {k: round(v, 4) for k, v in t.items()}, "loop_ratio": t["windowguide"] / t["pipeline"],
            "mswg_cost_ratio": t["mswg"] / t["unguided"], "flop_floor": floor,
            "mswg_cost_vs_floor": t["mswg"] / t["unguided"] / floor}


def measure_sd(size: int, steps: int, repeats: int, device) -> dict:
    """Our loop against StableDiffusionPipeline's own (CFG, DDIM, latents out) on a tiny random SD."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from ..adapters.registry import from_pipeline
    from ..generate import sample
    from ..guidance import CFG
    from .timing import time_interleaved
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False,
                                   scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False)).to(device)
    pipe.set_progress_bar_config(disable=True)
    m = from_pipeline(pipe)
    pos, neg = torch.randn(1, 8, 32, device=device), torch.randn(1, 8, 32, device=device)
    sigmas = m.sigmas(steps)
    with torch.no_grad():
        t = time_interleaved(dict(
            pipeline=lambda: pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=size * 8, width=size * 8,
                                  num_inference_steps=steps, guidance_scale=2.0, output_type="latent",
                                  generator=torch.Generator().manual_seed(0)),
            windowguide=lambda: sample(m.denoiser, m.shape(), [0], sampler="ddim", sigmas=sigmas, cond=pos,
                                       guidance=CFG(1.0, null=neg[0]), device=device)), repeats, torch.device(device))
        def patched():
            from ..integrations.patch import patch
            with patch(pipe, "mswg:w=0,window=20"):     # 5/8 of 32: two windows that overlap
                return t_pipe()

        t_pipe = lambda: pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=size * 8, width=size * 8,
                              num_inference_steps=steps, guidance_scale=2.0, output_type="latent",
                              generator=torch.Generator().manual_seed(0))
        p = time_interleaved(dict(unpatched=t_pipe, patched_w0=patched), repeats, torch.device(device))
    return {"model": f"SD UNet (32/64 channels) {size}x{size} latent", "steps": steps,
            "seconds": {k: round(v, 4) for k, v in {**t, **p}.items()}, "loop_ratio": t["windowguide"] / t["pipeline"],
            "patch_overhead_w0": p["patched_w0"] / p["unpatched"]}


def _quiet(block) -> None:
    """No progress bars in any nested block (ModularPipeline's own setter reaches only the top level)."""
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
    for sub in getattr(block, "sub_blocks", {}).values():
        _quiet(sub)


def measure_modular_sdxl(size: int, steps: int, repeats: int, device) -> dict:
    """A tiny random SDXL modular pipeline (denoise blocks only, embeddings given): diffusers'
    ClassifierFreeGuidance against windowguide's SlidingWindowGuidance at weight 0 and at 0.5."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks
    from ..integrations.guiders import SlidingWindowGuidance
    from .timing import time_interleaved
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8).eval()
    blocks = StableDiffusionXLAutoBlocks()
    for name in ("text_encoder", "decode"):          # embeddings in, latents out: the loop is what is timed
        blocks.sub_blocks.pop(name)
    pipe = blocks.init_pipeline()
    pipe.update_components(unet=unet.to(device), scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False))
    emb = dict(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32),
               pooled_prompt_embeds=torch.randn(1, 16), negative_pooled_prompt_embeds=torch.randn(1, 16))
    emb = {k: v.to(device) for k, v in emb.items()}
    guiders = dict(cfg=ClassifierFreeGuidance(guidance_scale=2.0),
                   guider_w0=SlidingWindowGuidance(guidance_scale=2.0, swg_scale=0.0),
                   guider_mswg=SlidingWindowGuidance(guidance_scale=2.0, swg_scale=0.5))

    def run(g):
        pipe.update_components(guider=g)
        return pipe(**emb, height=size * 8, width=size * 8, num_inference_steps=steps, output="latents",
                    generator=torch.Generator().manual_seed(0))
    from diffusers.utils import logging as dlogging
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()                 # update_components logs on every swap
    try:
        _quiet(pipe._blocks)
        with torch.no_grad():
            t = time_interleaved({k: (lambda g=g: run(g)) for k, g in guiders.items()}, repeats, torch.device(device))
    finally:
        dlogging.set_verbosity(verbosity)
    return {"model": f"SDXL modular UNet (32/64 channels) {size}x{size} latent", "steps": steps,
            "seconds": {k: round(v, 4) for k, v in t.items()}, "guider_overhead_w0": t["guider_w0"] / t["cfg"],
            "guider_mswg_ratio": t["guider_mswg"] / t["cfg"]}


__all__ = ["measure_dit", "measure_sd", "measure_modular_sdxl"]
