"""From a latent model's samples to pixels: EDM2's latent space (Stable Diffusion's VAE,
``stabilityai/sd-vae-ft-mse``, with EDM2's per-channel whitening), read from a local diffusers folder.

EDM2 (``training/encoders.py``, StabilityVAEEncoder) encodes images in [0, 1] with the VAE, keeps the
latent means unscaled ("raw latents") and whitens them per channel: z = raw * scale + bias with
scale = 0.5 / raw_std, bias = -raw_mean * scale (raw_mean = [5.81, 3.25, 0.12, -2.15], raw_std =
[4.17, 4.62, 3.71, 3.28]). Decoding inverts it: raw = (z - bias) / scale, image = VAE.decode(raw)
clamped to [0, 1], times 255, truncated to uint8, 8 latents at a time (as the authors do).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import WindowguideError, missing_module
from ..files import pretrained_dir

ENV = "WINDOWGUIDE_VAE"


def load_vae(folder: str | None, device: Any = "cpu"):
    """A diffusers AutoencoderKL from a local folder (``folder`` or $WINDOWGUIDE_VAE); never downloaded."""
    folder, where = pretrained_dir(folder, ENV)
    if where:
        raise WindowguideError(
            f"this model makes latents of Stable Diffusion's VAE (stabilityai/sd-vae-ft-mse) and {where}: pass "
            f"--vae DIR (a local diffusers AutoencoderKL folder, e.g. saved with AutoencoderKL.from_pretrained("
            f"'stabilityai/sd-vae-ft-mse').save_pretrained(DIR) where there is internet) or set {ENV}=DIR")
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise missing_module("decoding latents", exc) from None
    return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False).to(device)


class EDM2Latents:
    """``decode(z)``: EDM2 final latents [N, 4, h, w] -> uint8 images [N, H, W, 3]."""

    def __init__(self, scale, bias, vae, batch_size: int = 8):
        self.scale = torch.tensor(np.asarray(scale, np.float32)).view(1, -1, 1, 1)
        self.bias = torch.tensor(np.asarray(bias, np.float32)).view(1, -1, 1, 1)
        self.vae, self.batch_size = vae, batch_size

    def image_shape(self, shape) -> tuple[int, int, int]:
        """(C, H, W) of the images of latents of ``shape``."""
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.out_channels, shape[1] * f, shape[2] * f)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        dev = next(self.vae.parameters()).device
        raw = (z.float().to(dev) - self.bias.to(dev)) / self.scale.to(dev)
        x = torch.cat([self.vae.decode(b).sample for b in raw.split(self.batch_size)])
        return x.clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def pixel_decoder(info: dict, vae: str | None = None, device: Any = "cpu"):
    """(decode, image shape (C, H, W)): the function from a model's samples to uint8 NHWC images
    ([-1, 1] pixels for pixel models, the VAE for EDM2's latent models; ``vae``: the local folder)."""
    from ..images import to_uint8
    encoder = info.get("encoder") or {}
    shape = tuple(info["shape"])
    if encoder.get("kind") == "StabilityVAEEncoder":
        latents = EDM2Latents(encoder["scale"], encoder["bias"], load_vae(vae, device))
        return latents.decode, latents.image_shape(shape)
    if vae:
        raise WindowguideError("--vae: this model makes pixels, not latents; drop --vae")
    if encoder.get("kind") == "StandardRGBEncoder":
        return edm2_rgb_decode, shape
    return to_uint8, shape


def edm2_rgb_decode(x):
    """EDM2's pixel decode (``StandardRGBEncoder.decode``): uint8(clip(x * 127.5 + 128, 0, 255)), a
    truncation, where windowguide's own models round (x + 1) * 127.5; half-way values differ by one level."""
    return (x.detach().float().cpu() * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


__all__ = ["load_vae", "EDM2Latents", "pixel_decoder", "edm2_rgb_decode", "ENV"]
