"""Long videos from a short-clip model: window fusion along time (and space) on a (C, T, H, W) latent.

Overlapping clip-length windows over a longer video (``windows.layout_nd``: the last one flush with the
end, or circular for a loop) each take one sampler step from their crop; the video becomes the weighted
mean of the window states, exactly as the panoramas fuse them (``fusion.sample_fused_states``):

    x' = sum_k m_k x'_k / sum_k m_k,    x'_k = step(crop_k x, D, z_k),

m_k uniform (MultiDiffusion), a cone (GF) or gaussian over (t, h, w); under a stochastic sampler VCF
rescales the window noise by W / sqrt(S) (``fusion.vcf_fuse``); SA mixes one reference clip's noise into
every window (``fusion.style_aligned_noise``); guidance terms (CFG, temporal / spatial M-SWG) act inside
each window. Networks that take positions (Wan's 3-D RoPE) see each window at its place in the video.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import WindowguideError


def long_video(denoiser: Any, canvas: Sequence[int], seeds: Any, window: Sequence[int], stride: Any = 4,
               mode: str = "gf", sampler: str = "ddim", steps: int = 32, sigmas: Any = None, guidance: Any = None,
               cond: Any = None, vcf: bool = False, style_alpha: float = 0.0, circular: bool = False,
               max_batch: int | None = None, device: Any = None, progress: bool = False,
               view_batch: int | None = None, **sampler_options) -> torch.Tensor:
    """Sample a (C, T, H, W) video longer (or larger) than the model's clip from fused windows of
    ``window`` = (t, h, w) (module docstring). stride: between windows, an int for every axis or one per
    axis; circular: loop along time. Returns [len(seeds), C, T, H, W]."""
    from .conds import cond_to
    from .denoiser import as_denoiser, check_size
    from .fusion import canvas_layout, check_fusion, per_window_nulls, run_fused, style_aligned_noise
    from .generate import check_cond, parse_seeds, schedule_sigmas
    from .guidance import guided
    from .sampling import PerSampleNoise, check_sigmas, init_noise_scale
    fuse, weighting, options = check_fusion(mode, None, None, sampler, vcf, dict(sampler_options))
    c, *sizes = (int(v) for v in canvas)
    if len(sizes) != 3 or len(tuple(window)) != 3:
        raise WindowguideError(f"a video canvas is (C, T, H, W) and its window (t, h, w); got {tuple(canvas)} and "
                               f"{tuple(window)}")
    seeds = parse_seeds(seeds)
    check_cond(cond, len(seeds))
    lay = canvas_layout(len(seeds), c, sizes, tuple(window), stride, (bool(circular), False, False), device,
                        "the video")
    base = as_denoiser(denoiser)
    inner = guided(base, per_window_nulls(guidance, len(seeds), lay.n), max_batch)
    check_size(base, (c, *lay.window), "window")
    if hasattr(inner, "check"):
        inner.check((c, *lay.window))
    sigmas = check_sigmas(sigmas) if sigmas is not None else schedule_sigmas(sampler, base, steps)
    device = torch.device(device) if device is not None else torch.device("cpu")
    noise = PerSampleNoise.from_seeds(seeds)
    z = noise(torch.empty(len(seeds), c, *sizes, device=device))
    x = style_aligned_noise(z, lay.window, style_alpha, noise.generators) * init_noise_scale(base, sigmas[0].item())
    return run_fused(inner, x, sigmas, cond_to(cond, device), lay, fuse, weighting, sampler, noise, vcf, seeds,
                     progress, options, view_batch)


__all__ = ["long_video"]
