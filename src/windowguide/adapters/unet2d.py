"""Unconditional pixel-space models (``DDPMPipeline``, ``DDIMPipeline``): a ``UNet2DModel`` predicting
eps or v on a VP schedule, no condition."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import WindowguideError
from .base import PipelineModel, to_uint8, unet_multiple, vp_denoiser
from .registry import Family


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    unet = pipe.unet
    factor = unet_multiple(unet)

    def model(x, t, cond):
        return unet(x.to(unet.dtype), t).sample.float()

    def encode(prompt=None, negative_prompt=None, class_labels=None):
        raise WindowguideError(f"{type(pipe).__name__} is unconditional: it takes no prompt or class")

    @torch.no_grad()
    def decode(x: torch.Tensor) -> np.ndarray:
        return to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return PipelineModel("unet2d", vp_denoiser(model, pipe.scheduler, factor), unet.config.in_channels, size, factor,
                         encode, decode, vae_factor=1, unconditional=True)



FAMILY = Family(kind="unet2d", pipelines=("DDPMPipeline", "DDIMPipeline"), build=build,
                multiple=unet_multiple, net_attr="unet")
