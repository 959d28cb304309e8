"""DINOv2 ViT-L/14 features for FD-DINOv2, from a local transformers folder (never downloaded).

Protocol (EDM2's ``calculate_metrics.py``, itself after dgm-eval): uint8 images -> bicubic resize to
224 x 224 with antialiasing (on the 0..255 values) -> /255 -> ImageNet mean/std normalisation ->
the class token after the final layer norm (transformers' ``pooler_output``, the role of the hub
model's ``x_norm_clstoken``), 1024-d for ViT-L/14. Not the same vector at 224 x 224: transformers
interpolates the 37 x 37 positional grid to 16 x 16 with ``size=(16, 16)``, torch.hub's DINOv2 (which
EDM2 loads) with ``scale_factor=(16 + 0.1) / 37``; the features differ by about 1e-3 (on a magnitude
of 2.65), so an FD-DINOv2 from here is close to, not identical with, EDM2's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WindowguideError, missing_module
from ..files import pretrained_dir

ENV = "WINDOWGUIDE_DINOV2"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def hub_interpolate_pos_encoding(embeddings: nn.Module, offset: float = 0.1):
    """torch.hub's DINOv2 positional-embedding interpolation (``interpolate_offset`` 0.1, no antialias),
    for a transformers ``Dinov2Embeddings``: the M x M grid resized bicubically by the scale factor
    ((w0 + 0.1) / M, (h0 + 0.1) / M), where transformers resizes to the size (h0, w0). At 224 x 224 with
    patch 14 (w0 = 16, M = 37) the sampling grids differ and so do the features (about 1e-3)."""
    import math

    def interpolate(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        pos = embeddings.position_embeddings
        n = pos.shape[1] - 1
        if x.shape[1] - 1 == n and height == width:
            return pos
        patch = embeddings.patch_size if hasattr(embeddings, "patch_size") else embeddings.config.patch_size
        w0, h0, m = width // patch, height // patch, int(math.sqrt(n))
        grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, mode="bicubic", antialias=False,
                             scale_factor=((h0 + offset) / m, (w0 + offset) / m))
        if grid.shape[-2:] != (h0, w0):
            raise WindowguideError(f"DINOv2 positions: the hub's interpolation gave {tuple(grid.shape[-2:])}, "
                                   f"expected {(h0, w0)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
        return torch.cat([pos[:, :1].float(), grid], 1).to(pos.dtype)
    return interpolate


class DINOv2Features(nn.Module):
    """``features(u8)``: the normalised class token of a transformers ``Dinov2Model``.

    ``protocol`` 'edm2': the positional embeddings interpolated as torch.hub's DINOv2 (which EDM2's
    calculate_metrics.py loads) does (``hub_interpolate_pos_encoding``); 'pytorch-fid' (windowguide's
    default): transformers' own interpolation."""

    name = "dinov2"

    def __init__(self, model: nn.Module, size: int = 224, protocol: str = "pytorch-fid"):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.protocol = protocol
        if protocol == "edm2":
            model.embeddings.interpolate_pos_encoding = hub_interpolate_pos_encoding(model.embeddings)
        self.size = size
        self.feature_dim = model.config.hidden_size
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True)
        return (x / 255 - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocess(images)).pooler_output.float()


def load_dinov2(folder: str | None = None, device="cpu", protocol: str = "pytorch-fid") -> DINOv2Features:
    """DINOv2 from a local folder in transformers format (config.json + weights): ``folder``, else
    $WINDOWGUIDE_DINOV2; a clear error when missing."""
    folder, where = pretrained_dir(folder, ENV)
    if where:
        raise WindowguideError(
            f"FD-DINOv2 needs a local DINOv2 ViT-L/14 folder in transformers format (facebook/dinov2-large: "
            f"config.json and model.safetensors) and {where}. windowguide never downloads: save it with "
            f"transformers' Dinov2Model.from_pretrained('facebook/dinov2-large').save_pretrained(DIR) on a "
            f"machine with internet, then pass --dinov2 DIR or set {ENV}=DIR")
    try:
        from transformers import Dinov2Model
    except ImportError as exc:
        raise missing_module("FD-DINOv2", exc) from None
    model = Dinov2Model.from_pretrained(folder, local_files_only=True)
    return DINOv2Features(model, protocol=protocol).to(device)


__all__ = ["DINOv2Features", "load_dinov2", "ENV"]
