"""Synthetic clips with exactly known long-range temporal structure, and exact metrics of it.

A bright gaussian blob (std ``BLOB`` pixels) moves with constant speed on a dark background and bounces
off the walls (perfect reflection: the speed never changes, only the signs of the velocity's
components). A model trained on short clips must keep that speed across a longer video, which is what
temporal guidance and fusion along time are for. Metrics, from the blob's intensity-weighted centroid
c_t in each frame:

- speed_cv: std_t |c_{t+1} - c_t| / mean_t |c_{t+1} - c_t| per video (0 for a perfect constant speed);
- drift: |mean speed over the last third - over the first third| / mean speed (long-range consistency);
- jerk: median_t |v_{t+1} - v_t| (pixels / frame^2; bounces are rare, so the median ignores them);
- presence: the share of frames whose peak brightness shows a blob (a vanished object fails it).
The real clips give each metric's floor (centroids near walls are slightly biased by the blob's cut).
"""
from __future__ import annotations

import math

import torch

BLOB = 0.9            # blob std in pixels
SPEEDS = (0.6, 1.1)   # pixels per frame, uniform


def bouncing_clips(n: int, frames: int = 12, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips [n, 1, frames, size, size] in [-1, 1], centroid paths [n, frames, 2]) of one blob each."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = 1.5, size - 2.5
    pos = lo + torch.rand(n, 2, generator=g) * (hi - lo)
    speed = SPEEDS[0] + torch.rand(n, generator=g) * (SPEEDS[1] - SPEEDS[0])
    angle = torch.rand(n, generator=g) * 2 * math.pi
    vel = torch.stack([speed * angle.cos(), speed * angle.sin()], 1)
    path = torch.empty(n, frames, 2)
    for t in range(frames):
        path[:, t] = pos
        pos = pos + vel
        for _ in range(2):                                   # reflect off both walls
            below, above = pos < lo, pos > hi
            pos = torch.where(below, 2 * lo - pos, torch.where(above, 2 * hi - pos, pos))
            vel = torch.where(below | above, -vel, vel)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    d2 = (yy[None, None] - path[..., 0, None, None]) ** 2 + (xx[None, None] - path[..., 1, None, None]) ** 2
    clips = torch.exp(-d2 / (2 * BLOB ** 2)) * 2 - 1
    return clips[:, None], path


def centroids(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(intensity-weighted centroids [n, T, 2] of the brightness above 0.25, peak brightness [n, T])."""
    b = ((video[:, 0].clamp(-1, 1) + 1) / 2)
    w = (b - 0.25).clamp_min(0)
    size_h, size_w = b.shape[-2:]
    yy = torch.arange(size_h, dtype=b.dtype).view(1, 1, -1, 1)
    xx = torch.arange(size_w, dtype=b.dtype).view(1, 1, 1, -1)
    total = w.sum(dim=(-2, -1)).clamp_min(1e-6)
    c = torch.stack([(w * yy).sum(dim=(-2, -1)) / total, (w * xx).sum(dim=(-2, -1)) / total], -1)
    return c, b.amax(dim=(-2, -1))


def temporal_metrics(video: torch.Tensor) -> dict:
    """The module docstring's metrics, each the mean over videos [n, 1, T, H, W] in [-1, 1]."""
    c, peak = centroids(video)
    v = c[:, 1:] - c[:, :-1]
    speed = v.norm(dim=-1)
    mean = speed.mean(1).clamp_min(1e-6)
    third = max(1, speed.shape[1] // 3)
    return dict(speed_cv=(speed.std(1) / mean).mean().item(),
                drift=((speed[:, -third:].mean(1) - speed[:, :third].mean(1)).abs() / mean).mean().item(),
                jerk=(v[:, 1:] - v[:, :-1]).norm(dim=-1).median(dim=1).values.mean().item(),
                presence=(peak > 0.6).float().mean().item())


__all__ = ["bouncing_clips", "centroids", "temporal_metrics", "BLOB", "SPEEDS"]
