"""The one-call API: ``sample(denoiser, shape, seeds, ...)``.

Seeds are processed in batches; each sample has its own generator for its initial noise and for
every stochastic step, so a sample is the same whatever the batch size or the process that draws it.
"""
from __future__ import annotations

import bisect
import inspect
from typing import Any, Sequence

import numpy as np
import torch

from .conds import Cond, check_cond, cond_select, cond_to
from .denoiser import check_size, VPSchedule, as_denoiser
from .guidance import GuidedDenoiser, guided
from .sampling import (SAMPLERS, PerSampleNoise, check_finite, check_sigmas, finite_check, flow_sigmas,
                       init_noise_scale, karras_sigmas)
from .errors import WindowguideError


SEED_LIMIT = 2 ** 63
MAX_STEPS = 10_000
SEED_SYNTAX = "accepted: '7', '0-63', '1,5,7-9' (integers in [0, 2^63), ranges ascending)"


class Seeds(Sequence):
    """An ordered list of seeds held as ranges, so '0-9999999999' costs nothing until it is used.

    Indexing and iteration give ints; ``str(seeds)`` is the canonical text ('0-63' or '1,5,7-9').
    """

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = [(int(a), int(b)) for a, b in ranges]       # inclusive
        self._starts = [0]
        for a, b in self.ranges:
            self._starts.append(self._starts[-1] + b - a + 1)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if i < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self._starts, i) - 1
        return self.ranges[k][0] + i - self._starts[k]

    def __iter__(self):
        for a, b in self.ranges:
            yield from range(a, b + 1)

    def __eq__(self, other) -> bool:
        if isinstance(other, Seeds):
            return self.ranges == other.ranges or list(self) == list(other)
        return isinstance(other, (list, tuple)) and len(other) == len(self) and list(self) == list(other)

    def __str__(self) -> str:
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges)

    def __repr__(self) -> str:
        return f"Seeds({str(self)!r})"


def _seed_int(v: Any, text: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise WindowguideError(f"seed {v!r} in {text!r} is not an integer; {SEED_SYNTAX}")
    if not 0 <= int(v) < SEED_LIMIT:
        raise WindowguideError(f"seed {int(v)} in {text!r} is outside [0, 2^63); {SEED_SYNTAX}")
    return int(v)


def _parse_part(part: str, text: str) -> tuple[int, int]:
    a, dash, b = part.partition("-")
    try:
        lo, hi = int(a), int(b) if dash else int(a)
    except ValueError:
        raise WindowguideError(f"bad seed range {part!r} in {text!r}; {SEED_SYNTAX}") from None
    lo, hi = _seed_int(lo, text), _seed_int(hi, text)
    if hi < lo:
        raise WindowguideError(f"seed range {part!r} in {text!r} is descending; write {hi}-{lo}")
    return lo, hi


def parse_seeds(seeds: Any) -> Seeds:
    """Seeds from an int, a list of ints, or a string such as '0-63' or '1,5,7-9'.

    Refused: empty, non-integers (1.5, True), descending ranges ('5-1'), values outside [0, 2^63)."""
    if isinstance(seeds, Seeds):
        return seeds
    if isinstance(seeds, str):
        ranges = [_parse_part(p.strip(), seeds) for p in seeds.split(",")]
    elif isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        ranges = [(_seed_int(seeds, seeds),) * 2]
    elif isinstance(seeds, torch.Tensor) and not seeds.dtype.is_floating_point and seeds.dtype != torch.bool:
        ranges = [(_seed_int(int(v), "seeds"),) * 2 for v in seeds.flatten().tolist()]
    elif isinstance(seeds, (list, tuple, range, np.ndarray)):
        ranges = [(_seed_int(v, list(seeds)[:8]),) * 2 for v in seeds]
    else:
        raise WindowguideError(f"seeds must be an int, a list of ints or a string, got {type(seeds).__name__}; "
                               f"{SEED_SYNTAX}")
    if not ranges:
        raise WindowguideError(f"no seeds given; {SEED_SYNTAX}")
    order = sorted(ranges)
    for (a0, b0), (a1, b1) in zip(order, order[1:]):
        if a1 <= b0:
            raise WindowguideError(f"seed {a1} is given twice in {seeds!r}; each seed makes one sample")
    merged = [ranges[0]]
    for a, b in ranges[1:]:    # adjacent ranges and single seeds merge, so a list of ints stays small
        if a == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return Seeds(merged)


def schedule_sigmas(sampler: str, denoiser: Any, steps: int, sigma_min: float | None = None,
                    sigma_max: float | None = None, rho: float = 7.0, shift: float = 1.0,
                    spacing: str | None = None, steps_offset: int | None = None,
                    set_alpha_to_one: bool | None = None) -> torch.Tensor:
    """The default schedule of a sampler: Karras for euler/heun, the model's discrete VP timesteps
    for ddim/ddpm (diffusers' ``timestep_spacing``, ``steps_offset`` and ``set_alpha_to_one``, the
    model schedule's own unless given), the shifted flow schedule for flow_euler."""
    base = denoiser.denoiser if isinstance(denoiser, GuidedDenoiser) else denoiser
    if sampler in ("ddim", "ddpm"):
        schedule = getattr(base, "schedule", None) or VPSchedule.linear()
        return schedule.step_sigmas(steps, spacing, steps_offset, set_alpha_to_one)
    if sampler == "flow_euler":
        return flow_sigmas(steps, shift)
    smin = getattr(base, "sigma_min", 0.002) if sigma_min is None else sigma_min
    smax = getattr(base, "sigma_max", 80.0) if sigma_max is None else sigma_max
    return karras_sigmas(steps, smin, smax, rho)


def check_sampler_options(sampler: str, options: dict) -> dict:
    fn = SAMPLERS[sampler]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("denoiser", "x", "sigmas", "cond",
                                                                          "noise", "callback", "progress")]
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise WindowguideError(f"sampler {sampler!r} does not take {bad}; it accepts {accepted}")
    return options


def scheduler_defaults(base: Any, sampler: str, options: dict, steps: int, sigmas: torch.Tensor | None,
                       spacing=None, steps_offset=None, set_alpha_to_one=None) -> dict:
    """The sampler options that make ``sampler`` take the model's own scheduler's steps, under the
    options given (which win): a pipeline scheduler's x0 clipping or thresholding (``x0_clip``, set on the
    denoiser by ``from_pipeline``; DDIM and DDPM), and DDIM's targets t - T // N (diffusers' DDIM) when
    the schedule is the model's own: none given, or the one its ``step_sigmas`` gives for that many steps."""
    options = dict(options)
    clip = getattr(base, "x0_clip", None)
    if clip is not None and sampler in ("ddim", "ddpm") and "x0_clip" not in options:
        options["x0_clip"] = clip
    schedule = getattr(base, "schedule", None)
    if sampler != "ddim" or schedule is None or "targets" in options:
        return options
    n = steps if sigmas is None else len(sigmas) - 1
    if sigmas is not None and not _is_own_schedule(schedule, sigmas, n, spacing):
        return options
    targets = schedule.ddim_targets(n, spacing, steps_offset, set_alpha_to_one)
    if targets is not None:
        options["targets"] = targets if sigmas is None else targets.to(sigmas.dtype)
    return options


def _is_own_schedule(schedule: Any, sigmas: torch.Tensor, n: int, spacing) -> bool:
    """Whether ``sigmas`` are the scheduler's own n steps (``step_sigmas``; the last value may differ)."""
    try:
        own = schedule.step_sigmas(n, spacing).to(sigmas.dtype)
    except (AttributeError, TypeError, ValueError):
        return False
    return own.shape == sigmas.shape and bool(torch.allclose(own[:-1], sigmas[:-1], rtol=1e-5, atol=0))


def sample(denoiser: Any, shape: Sequence[int], seeds: Any, steps: int = 32, sampler: str = "heun",
           guidance: Any = None, cond: Cond = None, sigmas: Any = None, sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float = 7.0, shift: float = 1.0, spacing: str | None = None,
           steps_offset: int | None = None, set_alpha_to_one: bool | None = None, batch_size: int | None = None,
           max_batch: int | None = None, device: Any = None, dtype: torch.dtype = torch.float32,
           progress: bool = False, **sampler_options) -> torch.Tensor:
    """Draw one sample per seed: x_0 = scale(sigma_0) * z(seed), then ``sampler`` on the guided denoiser.

    shape: (C, H, W) of one sample ((C, T, H, W) for a video). seeds: ints or a string '0-63'. guidance: terms from
    ``windowguide.guidance`` summed with ``+``, or a SPEC string ('cfg:w=1+mswg:w=0.5'; None = unguided).
    cond: one condition per seed
    (first dimension len(seeds)). sigmas: an explicit schedule (descending, ending in 0), else the
    sampler's default (``schedule_sigmas``; spacing, steps_offset, set_alpha_to_one: diffusers' DDIM
    options, taken from the model's schedule unless given). batch_size: seeds per batch (results do not depend on it).
    max_batch: cap on samples per network call. Extra keywords go to the sampler (churn, eta, ...).
    Returns [len(seeds), C, H, W]. Each step's prediction is checked to be finite: a NaN or inf
    raises ``NonFiniteError`` naming the step, its sigma and the seeds.
    """
    if sampler not in SAMPLERS:
        raise WindowguideError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}")
    if sigmas is None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
        raise WindowguideError(f"steps {steps!r}: accepted: an integer in 1..{MAX_STEPS}")
    shape = tuple(shape)
    if len(shape) not in (3, 4) or any(isinstance(v, bool) or int(v) != v or v < 1 for v in shape):
        raise WindowguideError(f"shape must be (C, H, W) or, a video, (C, T, H, W) of positive ints, got {shape!r}")
    seeds = parse_seeds(seeds)
    check_cond(cond, len(seeds))
    options = check_sampler_options(sampler, sampler_options)
    base = as_denoiser(denoiser)
    if isinstance(guidance, str):                     # a SPEC, as wg.patch takes: 'cfg:w=1+mswg:w=0.5'
        from . import spec
        guidance = spec.build(guidance, spec.Context(net=getattr(base, "net", None), load=spec.no_weak_models))
    model = guided(base, guidance, max_batch)
    check_size(base, shape, "shape")
    if isinstance(model, GuidedDenoiser):
        model.check(shape)
    sigmas = check_sigmas(sigmas) if sigmas is not None else None
    options = scheduler_defaults(base, sampler, options, steps, sigmas, spacing, steps_offset, set_alpha_to_one)
    sigmas = (sigmas if sigmas is not None else
              schedule_sigmas(sampler, base, steps, sigma_min, sigma_max, rho, shift, spacing, steps_offset,
                              set_alpha_to_one))
    if "targets" in options and options["targets"] is not None and len(options["targets"]) == len(sigmas) - 1:
        sigmas = sigmas.clone()
        sigmas[-1] = float(options["targets"][-1])        # the state ends where the last step went
    device = torch.device(device) if device is not None else torch.device("cpu")
    size = len(seeds) if batch_size is None else int(batch_size)
    if size < 1:
        raise WindowguideError(f"batch_size must be >= 1, got {batch_size}")
    scale = init_noise_scale(base, sigmas[0].item())
    out = []
    for start in range(0, len(seeds), size):
        chunk = seeds[start:start + size]
        noise = PerSampleNoise.from_seeds(chunk)
        x = noise(torch.empty(len(chunk), *shape, device=device, dtype=dtype)) * scale
        idx = None if cond is None else torch.arange(start, start + len(chunk))
        c = cond_to(cond_select(cond, idx), device)
        x = SAMPLERS[sampler](model, x, sigmas, c, noise=noise, progress=progress,
                              callback=finite_check(chunk, len(sigmas) - 1), **options)
        out.append(check_finite(x, chunk))
    return torch.cat(out)


__all__ = ["sample", "parse_seeds", "Seeds", "schedule_sigmas", "scheduler_defaults"]
