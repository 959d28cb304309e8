"""Exact pixel statistics of images in [-1, 1] (NCHW), one value per image."""
from __future__ import annotations

import torch


def asymmetry(x: torch.Tensor) -> torch.Tensor:
    """Mirror error in [0, 1]: mean |x - flip_w(x)| / 2 over pixels and channels (0 = symmetric)."""
    return (x - x.flip(-1)).abs().mean(dim=(1, 2, 3)) / 2


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of RGB (or the single channel of grey images), in [0, 1]."""
    x = (x.clamp(-1, 1) + 1) / 2
    if x.shape[1] == 1:
        return x[:, 0]
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def contrast(x: torch.Tensor) -> torch.Tensor:
    """RMS contrast: standard deviation of the luminance over pixels."""
    return luminance(x).flatten(1).std(dim=1)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation (max - min) / max of RGB in [0, 1]; 0 for grey images."""
    if x.shape[1] == 1:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x = (x.clamp(-1, 1) + 1) / 2
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    return ((hi - lo) / hi.clamp_min(1e-6)).flatten(1).mean(dim=1)


def clipped_fraction(x: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """Share of values outside [-limit, limit] before clipping: over-saturation."""
    return (x.abs() > limit).flatten(1).double().mean(dim=1).to(x.dtype)
