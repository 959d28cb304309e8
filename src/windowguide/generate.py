"""The one-call API: ``sample(denoiser, shape, seeds, ...)``.

Seeds are processed in batches; each sample has its own generator for its initial noise and for
every stochastic step, so a sample is the same whatever the batch size or the process that draws it.
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from .conds import Cond, check_cond, cond_select, cond_to
from .denoiser import VPSchedule, as_denoiser
from .guidance import GuidedDenoiser, guided
from .sampling import SAMPLERS, PerSampleNoise, check_sigmas, flow_sigmas, init_noise_scale, karras_sigmas
from .errors import WindowguideError


def parse_seeds(seeds: Any) -> list[int]:
    """A list of non-negative ints from an int, a list, or a string such as '0-63' or '1,5,7-9'."""
    if isinstance(seeds, str):
        out = []
        for part in seeds.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    a, b = part.split("-")
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise WindowguideError(f"bad seed range {part!r}; accepted: '7', '0-63', '1,5,7-9'") from None
        seeds = out
    elif isinstance(seeds, int):
        seeds = [seeds]
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise WindowguideError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    return seeds


def schedule_sigmas(sampler: str, denoiser: Any, steps: int, sigma_min: float | None = None,
                    sigma_max: float | None = None, rho: float = 7.0, shift: float = 1.0,
                    spacing: str = "leading", offset: int = 0) -> torch.Tensor:
    """The default schedule of a sampler: Karras for euler/heun, the model's discrete VP timesteps
    for ddim/ddpm (diffusers' spacing), the shifted flow schedule for flow_euler."""
    base = denoiser.denoiser if isinstance(denoiser, GuidedDenoiser) else denoiser
    if sampler in ("ddim", "ddpm"):
        schedule = getattr(base, "schedule", None) or VPSchedule.linear()
        return schedule.step_sigmas(steps, spacing, offset)
    if sampler == "flow_euler":
        return flow_sigmas(steps, shift)
    smin = getattr(base, "sigma_min", 0.002) if sigma_min is None else sigma_min
    smax = getattr(base, "sigma_max", 80.0) if sigma_max is None else sigma_max
    return karras_sigmas(steps, smin, smax, rho)


def _sampler_options(sampler: str, options: dict) -> dict:
    fn = SAMPLERS[sampler]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("denoiser", "x", "sigmas", "cond",
                                                                          "noise", "callback", "progress")]
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise WindowguideError(f"sampler {sampler!r} does not take {bad}; it accepts {accepted}")
    return options


def sample(denoiser: Any, shape: Sequence[int], seeds: Any, steps: int = 32, sampler: str = "heun",
           guidance: Any = None, cond: Cond = None, sigmas: Any = None, sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float = 7.0, shift: float = 1.0, batch_size: int | None = None,
           max_batch: int | None = None, device: Any = None, dtype: torch.dtype = torch.float32,
           progress: bool = False, **sampler_options) -> torch.Tensor:
    """Draw one sample per seed: x_0 = scale(sigma_0) * z(seed), then ``sampler`` on the guided denoiser.

    shape: (C, H, W) of one sample. seeds: ints or a string '0-63'. guidance: terms from
    ``windowguide.guidance`` summed with ``+`` (None = unguided). cond: one condition per seed
    (first dimension len(seeds)). sigmas: an explicit schedule (descending, ending in 0), else the
    sampler's default (``schedule_sigmas``). batch_size: seeds per batch (results do not depend on it).
    max_batch: cap on samples per network call. Extra keywords go to the sampler (churn, eta, ...).
    Returns [len(seeds), C, H, W].
    """
    if sampler not in SAMPLERS:
        raise WindowguideError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}")
    shape = tuple(shape)
    if len(shape) != 3 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in shape):
        raise WindowguideError(f"shape must be (C, H, W) of positive ints, got {shape!r}")
    seeds = parse_seeds(seeds)
    check_cond(cond, len(seeds))
    options = _sampler_options(sampler, sampler_options)
    base = as_denoiser(denoiser)
    model = guided(base, guidance, max_batch)
    if isinstance(model, GuidedDenoiser):
        model.check(shape)
    sigmas = (check_sigmas(sigmas) if sigmas is not None else
              schedule_sigmas(sampler, base, steps, sigma_min, sigma_max, rho, shift))
    device = torch.device(device) if device is not None else torch.device("cpu")
    size = len(seeds) if batch_size is None else int(batch_size)
    if size < 1:
        raise WindowguideError(f"batch_size must be >= 1, got {batch_size}")
    scale = init_noise_scale(sampler, sigmas[0].item())
    out = []
    for start in range(0, len(seeds), size):
        chunk = seeds[start:start + size]
        noise = PerSampleNoise.from_seeds(chunk)
        x = noise(torch.empty(len(chunk), *shape, device=device, dtype=dtype)) * scale
        idx = None if cond is None else torch.arange(start, start + len(chunk))
        c = cond_to(cond_select(cond, idx), device)
        out.append(SAMPLERS[sampler](model, x, sigmas, c, noise=noise, progress=progress, **options))
    return torch.cat(out)


__all__ = ["sample", "parse_seeds", "schedule_sigmas"]
