"""Layer 1: one denoiser protocol and the converters to it (docs/algorithms.md §0).

Every model is reduced to the variance-exploding (EDM) denoiser

    D(x, sigma, cond) -> estimate of x0,    x = x0 + sigma * n,

with ``x`` of shape [N, C, H, W] and ``sigma`` of shape [N]. Guidance, windows and samplers below
speak only this language. eps, v and flow-velocity predictions are affine in D for a fixed
(x, sigma), so a weighted combination in D-space is the same combination in any of those spaces.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .conds import Cond, check_cond
from .errors import WindowguideError


def as_sigma(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a tensor of shape [N] on x's device and dtype; a scalar is broadcast to all samples."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise WindowguideError(f"sigma has shape {tuple(sigma.shape)}; expected a scalar or shape ({x.shape[0]},) "
                         f"to match x of shape {tuple(x.shape)}")
    if not torch.isfinite(sigma).all() or (sigma <= 0).any():
        raise WindowguideError(f"sigma must be finite and > 0, got {sigma.tolist()}")
    return sigma


class Denoiser:
    """Base class: ``D(x, sigma, cond) -> x0``.

    Attributes a subclass may set:
      multiple:   spatial sizes the network accepts are multiples of this (8 for EDM2's UNet, the
                  patch size for DiT); window sizes of SWG are checked against it.
      sigma_min, sigma_max: the noise range the model was trained on (defaults for samplers).
      null_cond:  the condition CFG uses when a term does not give its own.
    """

    multiple: int = 1
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    null_cond: Cond = None

    def __call__(self, x: torch.Tensor, sigma: Any, cond: Cond = None) -> torch.Tensor:
        if x.dim() not in (4, 5):
            raise WindowguideError(f"x must be NCHW (4 dims) or, a video, NCTHW (5 dims), got shape {tuple(x.shape)}")
        sigma = as_sigma(sigma, x)
        check_cond(cond, x.shape[0])
        out = self.forward(x, sigma, cond)
        if out.shape != x.shape:
            raise WindowguideError(f"{type(self).__name__} returned shape {tuple(out.shape)} for input "
                             f"{tuple(x.shape)}; a denoiser must return x0 of the input's shape")
        return out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        raise NotImplementedError

    def init_noise_scale(self, sigma: float) -> float:
        """The VE state a sampler starts from is this times z ~ N(0, I), at the schedule's first sigma.

        The rule follows the model's parameterization (its reference samplers' starting point), never
        the sampler: EDM/VE nets start at sigma z (EDM's sampler); VP (eps, v) at x_vp = z, i.e.
        sqrt(1 + sigma^2) z (diffusers' DDPM/DDIM); flow at x_t = z, i.e. (1 + sigma) z.
        """
        return float(sigma)

    def null_condition(self, cond: Cond, n: int) -> Cond:
        """The condition of the unconditional prediction for n samples (CFG's negative)."""
        from .conds import broadcast_null
        if self.null_cond is None:
            raise WindowguideError(f"{type(self).__name__} has no null condition: pass CFG(w, null=...) or "
                             f"build the denoiser with null_cond=...")
        return broadcast_null(self.null_cond, cond, n)


class EDMDenoiser(Denoiser):
    """An EDM/EDM2-style net that already is D: ``net(x, sigma, cond) -> x0``."""

    def __init__(self, net: Callable, multiple: int = 1, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 null_cond: Cond = None):
        self.net, self.multiple = net, int(multiple)
        self.sigma_min, self.sigma_max, self.null_cond = float(sigma_min), float(sigma_max), null_cond

    def forward(self, x, sigma, cond):
        return self.net(x, sigma, cond)


class UnconditionalDenoiser(Denoiser):
    """A separately trained unconditional network as CFG's negative: ``D(x, sigma, cond) = net(x, sigma)``
    whatever the condition (EDM2 trains without label dropout; its CFG presets guide with an
    unconditional XS network, ``edm2-img512-xs-uncond-*``)."""

    def __init__(self, denoiser: Any):
        self.denoiser = as_denoiser(denoiser)
        self.multiple, self.sigma_min, self.sigma_max = (self.denoiser.multiple, self.denoiser.sigma_min,
                                                         self.denoiser.sigma_max)

    def forward(self, x, sigma, cond):
        return self.denoiser(x, sigma, None)


class VPSchedule:
    """A discrete variance-preserving schedule alpha_bar_t, t = 0..T-1, seen in VE form:

        sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),   x_vp = x / sqrt(1 + sigma^2).

    ``timestep(sigma)`` interpolates t linearly in log-sigma between grid points (as k-diffusion
    does), so a sigma that is not on the training grid still gets a sensible timestep.
    """

    def __init__(self, alphas_cumprod: Any, spacing: str = "leading", steps_offset: int = 0,
                 set_alpha_to_one: bool = True):
        """``spacing``, ``steps_offset`` and ``set_alpha_to_one`` are the defaults of ``step_sigmas``,
        as a diffusers scheduler config names them (SD 1.x/2.x: leading, 1, False)."""
        self.spacing, self.steps_offset, self.set_alpha_to_one = spacing, int(steps_offset), bool(set_alpha_to_one)
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().clone()
        # zero terminal SNR (rescale_betas_zero_snr): alpha_bar = 0 at t = T-1 is sigma = inf, which no VE
        # state holds; like diffusers' Euler schedulers (which take 2^-24) it becomes a tiny alpha_bar,
        # min(2^-24, alpha_bar_{T-2} / 4) so the schedule stays decreasing: a start from noise to sqrt(alpha_bar)
        self.zero_terminal_snr = bool(a.numel() >= 2 and a[-1] == 0 and a[-2] > 0)
        if self.zero_terminal_snr:
            a[-1] = min(2.0 ** -24, float(a[-2]) / 4)
        if a.numel() < 2 or not ((a > 0) & (a < 1)).all() or not (a[1:] < a[:-1]).all():
            raise WindowguideError("alphas_cumprod must be strictly decreasing values in (0, 1) (a last 0, zero "
                                   "terminal SNR, is accepted), at least two")
        self.alphas_cumprod = a
        self.sigmas = ((1 - a) / a).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000) -> "VPSchedule":
        """DDPM's linear betas (diffusers' ``beta_schedule='linear'``)."""
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32).double()
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, T: int = 1000) -> "VPSchedule":
        """Stable Diffusion's betas: linear in sqrt(beta)."""
        betas = (torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32) ** 2).double()
        return cls(torch.cumprod(1 - betas, 0))

    @property
    def T(self) -> int:
        return self.alphas_cumprod.numel()

    def timestep(self, sigma: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """t(sigma), linear in log-sigma between grid points; float64.

        Below the grid t is clamped to 0; above it a ValueError (the model was never trained there).
        Values within 1e-3 of an integer are snapped to it so that sigmas taken from the grid (and
        rounded to float32 on the way) give the exact training timestep.
        """
        s = sigma.detach().double().cpu()
        top = self.sigmas[-1].item()
        if (s > top * (1 + 1e-4)).any():
            raise WindowguideError(f"sigma {s.max().item():.4g} is above the schedule's largest sigma {top:.4g}; "
                             f"use sigma_max <= {top:.4g} for this model")
        log_s = s.clamp(min=self.sigmas[0].item(), max=top).log()
        hi = torch.searchsorted(self.log_sigmas, log_s).clamp(1, self.T - 1)
        lo = hi - 1
        w = (log_s - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        t = lo + w.clamp(0, 1)
        near = t.round()
        t = torch.where((t - near).abs() < 1e-3, near, t)
        return near if quantize else t

    def sigma_at(self, t: torch.Tensor | int) -> torch.Tensor:
        """sigma of integer timestep(s) t."""
        return self.sigmas[torch.as_tensor(t, dtype=torch.long)]

    def timesteps(self, steps: int, spacing: str = "leading", offset: int = 0) -> list[int]:
        """Descending inference timesteps, as diffusers' schedulers space them."""
        T = self.T
        if not 1 <= steps <= T:
            raise WindowguideError(f"steps must be in 1..{T} for this schedule, got {steps}")
        if spacing == "leading":
            ts = [i * (T // steps) + offset for i in range(steps)][::-1]
        elif spacing == "trailing":
            ratio = T / steps
            ts = [int(round(T - i * ratio)) - 1 for i in range(steps)]
        elif spacing == "linspace":
            ts = [int(round(v)) for v in torch.linspace(0, T - 1, steps, dtype=torch.float64).tolist()][::-1]
        else:
            raise WindowguideError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
        return ts

    def step_sigmas(self, steps: int, spacing: str | None = None, offset: int | None = None,
                    final_alpha_one: bool | None = None) -> torch.Tensor:
        """Sigmas of the inference timesteps, then the final sigma: 0 (alpha_bar = 1, diffusers'
        ``set_alpha_to_one``) or sigma at t = 0. Float64, shape [steps + 1]. Arguments left None
        take the schedule's own (``spacing``, ``steps_offset``, ``set_alpha_to_one``)."""
        spacing = self.spacing if spacing is None else spacing
        offset = self.steps_offset if offset is None else offset
        final_alpha_one = self.set_alpha_to_one if final_alpha_one is None else final_alpha_one
        ts = self.timesteps(steps, spacing, offset)
        final = torch.zeros(1, dtype=torch.float64) if final_alpha_one else self.sigmas[:1]
        return torch.cat([self.sigmas[torch.tensor(ts)], final])


    def ddim_targets(self, steps: int, spacing: str | None = None, offset: int | None = None,
                     final_alpha_one: bool | None = None) -> torch.Tensor | None:
        """Where diffusers' DDIM steps to from each inference timestep: t - T // steps (its
        ``prev_timestep``), the final alpha below 0, as sigmas [steps]. With 'trailing' and 'linspace'
        spacing that is not the next timestep of the list (which is where the next evaluation is); with
        'leading' it is, and this returns None (nothing to correct)."""
        spacing = self.spacing if spacing is None else spacing
        offset = self.steps_offset if offset is None else offset
        final_alpha_one = self.set_alpha_to_one if final_alpha_one is None else final_alpha_one
        ts = self.timesteps(steps, spacing, offset)
        final = torch.zeros(1, dtype=torch.float64) if final_alpha_one else self.sigmas[:1]
        prev = [t - self.T // steps for t in ts]
        targets = torch.cat([self.sigmas[p:p + 1] if p >= 0 else final for p in prev])
        return None if prev[:-1] == ts[1:] and prev[-1] < 0 else targets


class _VPModelDenoiser(Denoiser):
    """Shared plumbing of eps- and v-prediction models on a discrete VP schedule."""

    def __init__(self, model: Callable, schedule: VPSchedule | None = None, multiple: int = 1,
                 null_cond: Cond = None, quantize: bool = False):
        self.model, self.multiple, self.null_cond, self.quantize = model, int(multiple), null_cond, quantize
        self.schedule = schedule if schedule is not None else VPSchedule.linear()
        self.sigma_min = self.schedule.sigmas[0].item()
        self.sigma_max = self.schedule.sigmas[-1].item()

    def init_noise_scale(self, sigma: float) -> float:
        """x_vp = z at the start: x = sqrt(1 + sigma^2) z."""
        return math.sqrt(1 + float(sigma) ** 2)

    def _inputs(self, x, sigma):
        t = self.schedule.timestep(sigma, self.quantize).to(device=x.device, dtype=x.dtype)
        s = sigma.view(-1, *[1] * (x.dim() - 1))
        x_vp = x / (1 + s ** 2).sqrt()
        return x_vp, t, s


class EpsDenoiser(_VPModelDenoiser):
    """eps-prediction on a VP schedule (DDPM, SD 1.x/2.x, DiT): ``model(x_vp, t, cond) -> eps``.

        x_vp = x / sqrt(1 + sigma^2),   D = x - sigma * eps(x_vp, t(sigma)).
    """

    def forward(self, x, sigma, cond):
        x_vp, t, s = self._inputs(x, sigma)
        return x - s * self.model(x_vp, t, cond)


class VDenoiser(_VPModelDenoiser):
    """v-prediction on a VP schedule: ``model(x_vp, t, cond) -> v``.

    With alpha = 1/sqrt(1+sigma^2), sigma_vp = sigma*alpha and x_vp = alpha*x0 + sigma_vp*eps,
    v = alpha*eps - sigma_vp*x0, hence x0 = alpha*x_vp - sigma_vp*v.
    """

    def forward(self, x, sigma, cond):
        x_vp, t, s = self._inputs(x, sigma)
        alpha = 1 / (1 + s ** 2).sqrt()
        return alpha * x_vp - s * alpha * self.model(x_vp, t, cond)


# t = 1 (pure noise) has sigma = inf in VE form; it is represented by t = 1 - FLOW_T_EPS.
FLOW_T_EPS = 1e-6


class FlowDenoiser(Denoiser):
    """Flow matching / rectified flow (SD3, SiT): x_t = (1-t) x0 + t n, ``model(x_t, t*time_scale, cond) -> u``
    with velocity u = n - x0.

        sigma = t / (1 - t),  x_t = x / (1 + sigma),  D = x_t - t * u.
    """

    sigma_min = 1e-3
    sigma_max = (1 - FLOW_T_EPS) / FLOW_T_EPS

    def __init__(self, model: Callable, time_scale: float = 1.0, multiple: int = 1, null_cond: Cond = None):
        self.model, self.time_scale, self.multiple, self.null_cond = model, float(time_scale), int(multiple), null_cond

    def init_noise_scale(self, sigma: float) -> float:
        """x_t = z at the start: x = (1 + sigma) z."""
        return 1 + float(sigma)

    def forward(self, x, sigma, cond):
        s = sigma.view(-1, *[1] * (x.dim() - 1))
        t = s / (1 + s)
        x_t = x / (1 + s)
        return x_t - t * self.model(x_t, sigma / (1 + sigma) * self.time_scale, cond)


def flow_t_to_sigma(t: float) -> float:
    """VE sigma of flow time t (t = 1 is represented by 1 - FLOW_T_EPS)."""
    t = min(float(t), 1 - FLOW_T_EPS)
    return t / (1 - t)


def as_denoiser(model: Any) -> Denoiser:
    """A Denoiser as is; a plain callable ``f(x, sigma, cond) -> x0`` wrapped as an EDM denoiser."""
    if isinstance(model, Denoiser):
        return model
    if callable(model):
        return EDMDenoiser(model)
    raise TypeError(f"expected a Denoiser or a callable D(x, sigma, cond), got {type(model).__name__}")



def check_size(denoiser, shape, what: str = "image") -> None:
    """Refuse an input of ``shape`` (C, H, W) or (C, T, H, W) whose height or width is not a multiple of
    the denoiser's ``multiple`` (a UNet's downsampling, a transformer's patch), naming the nearest sizes."""
    m = int(getattr(denoiser, "multiple", 1) or 1)
    h, w = (int(v) for v in tuple(shape)[-2:])
    if m > 1 and (h % m or w % m):
        raise WindowguideError(f"{what} {h}x{w} is not a multiple of {m}, the factor this model needs; accepted: "
                               f"{h // m * m or m}x{w // m * m or m} or {(h // m + 1) * m}x{(w // m + 1) * m}")

__all__ = ["check_size", "Denoiser", "EDMDenoiser", "EpsDenoiser", "VDenoiser", "FlowDenoiser", "VPSchedule",
           "as_denoiser", "as_sigma", "flow_t_to_sigma", "FLOW_T_EPS"]

