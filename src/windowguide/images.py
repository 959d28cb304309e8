"""Images in [-1, 1] to PNG files and grids (Pillow, which matplotlib already needs)."""
from __future__ import annotations

import math

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8, round((x + 1) * 127.5) after clipping."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile [N, C, H, W] into one uint8 image with ``nrow`` images per row (default ~sqrt N),
    ``pad`` pixels of white between them, each pixel repeated ``scale`` times."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = im
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def save_png(array: np.ndarray, path: str) -> str:
    """Write an [H, W, C] uint8 array (C = 1 or 3) as PNG, atomically; returns the path."""
    from .files import write_png
    return write_png(array, path)


def save_images(x, path: str, nrow: int | None = None, scale: int = 1) -> str:
    """Write images as one PNG grid: x is [N, C, H, W] in [-1, 1] (a sample batch) or uint8 [N, H, W, C]
    (decoded images); returns the path."""
    from .files import write_png
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    return write_png(grid(x.detach().float().cpu(), nrow=nrow, scale=scale), path)
