"""diffusers Stable-Diffusion-style pipelines as windowguide denoisers (latent space, eps or v).

    denoiser, schedule = sd_denoiser(pipe)                  # pipe.unet + pipe.scheduler's betas
    pos, neg = encode_prompt(pipe, "a mountain range at dusk")
    latents = fusion.panorama(denoiser, (4, 64, 256), seeds=[0], window=64, stride=8,
                              guidance=CFG(6.5, null=neg), cond=pos)
    images = decode(pipe, latents)                          # tiled VAE decode when large

The condition is the prompt embedding tensor [N, L, D] (``encoder_hidden_states``).
"""
from __future__ import annotations

from typing import Any

import torch

from ..denoiser import EpsDenoiser, VDenoiser, VPSchedule
from ..errors import WindowguideError


def schedule_of(scheduler: Any) -> VPSchedule:
    """The VP schedule of a diffusers scheduler (its ``alphas_cumprod``)."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise WindowguideError(f"{type(scheduler).__name__} has no alphas_cumprod; a discrete VP scheduler "
                         f"(DDIM, DDPM, Euler, ...) is needed")
    c = scheduler.config
    return VPSchedule(scheduler.alphas_cumprod, getattr(c, "timestep_spacing", "leading"),
                      getattr(c, "steps_offset", 0), getattr(c, "set_alpha_to_one", True))


def sd_denoiser(pipe: Any = None, unet: Any = None, scheduler: Any = None):
    """(denoiser, schedule) for a pipeline's UNet, eps- or v-prediction as its scheduler says."""
    unet = unet if unet is not None else pipe.unet
    scheduler = scheduler if scheduler is not None else pipe.scheduler
    schedule = schedule_of(scheduler)
    factor = 2 ** (len(unet.config.block_out_channels) - 1)

    def model(x, t, cond):
        return unet(x, t, encoder_hidden_states=cond).sample

    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return EpsDenoiser(model, schedule, multiple=factor), schedule
    if kind == "v_prediction":
        return VDenoiser(model, schedule, multiple=factor), schedule
    raise WindowguideError(f"prediction_type {kind!r} is not supported; accepted: 'epsilon', 'v_prediction'")


@torch.no_grad()
def encode_prompt(pipe: Any, prompt: str | list[str], negative: str | list[str] = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings, negative embeddings) from the pipeline's own text encoder."""
    pos, neg = pipe.encode_prompt(prompt, pipe.device, 1, True, negative)
    return pos, neg


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor, tile_above: int = 96) -> torch.Tensor:
    """VAE decode of final latents to images in [-1, 1]. Latents larger than ``tile_above`` on a side
    are decoded layer by layer with whole-image GroupNorm statistics and tiled convolutions
    (``vae_tiling.decode_tiled``: the one-shot decode, no seams or colour shifts between tiles)."""
    from .vae_tiling import decode_tiled
    vae = pipe.vae
    z = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    if max(latents.shape[-2:]) > tile_above:
        return decode_tiled(vae, z).to(latents.device).clamp(-1, 1)
    return vae.decode(z).sample.clamp(-1, 1)
