"""Layer 4: sigma schedules and samplers as plain functions of a denoiser (docs/algorithms.md §5).

Every sampler works on the VE state x = x0 + sigma * n and takes ``sigmas`` (descending, ending in
0). Stochastic samplers draw their noise from ``noise(like)``; ``PerSampleNoise`` draws each sample's
noise from its own generator, so a sample never depends on the batch it was drawn in.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from tqdm.auto import trange

from .denoiser import flow_t_to_sigma
from .errors import NonFiniteError, WindowguideError


# ---------------------------------------------------------------------------------------------- schedules

def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM schedule, then 0: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    if steps < 1:
        raise WindowguideError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise WindowguideError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise WindowguideError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def flow_shift(t: float, shift: float) -> float:
    """SD3's time shift: t' = shift t / (1 + (shift - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(steps: int, shift: float = 1.0, train_steps: int = 1000) -> torch.Tensor:
    """Flow-matching schedule of SD3 / diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps(N)``:

        t_min = shift(1 / T),   t_i = shift(linspace(1, t_min, N)_i),   then 0,

    (the training grid's last time, already shifted, is shifted once more, as diffusers does), as VE
    sigma = t / (1 - t)."""
    if steps < 1:
        raise WindowguideError(f"steps must be >= 1, got {steps}")
    if not (shift > 0 and math.isfinite(shift)):
        raise WindowguideError(f"shift must be finite and > 0, got {shift}")
    t_min = flow_shift(1 / train_steps, shift)
    ramp = torch.linspace(1.0, t_min, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    return sigmas_from_flow_t([flow_shift(t, shift) for t in ramp.tolist()] + [0.0])


def sigmas_from_flow_t(ts) -> torch.Tensor:
    """VE sigmas sigma = t / (1 - t) of flow times t (e.g. a diffusers flow scheduler's ``sigmas``);
    t = 1 is held at 1 - 1e-6, t = 0 gives 0."""
    return torch.tensor([flow_t_to_sigma(t) if t > 0 else 0.0 for t in torch.as_tensor(ts).tolist()],
                        dtype=torch.float64)


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A schedule as float64 [N+1]: finite, strictly decreasing, positive but for a final 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2 or not torch.isfinite(sigmas).all() or (sigmas[:-1] <= 0).any() or sigmas[-1] < 0:
        raise WindowguideError("sigmas must be finite, positive, and may end in 0; got "
                         f"{sigmas.tolist()[:6]}{'...' if sigmas.numel() > 6 else ''}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise WindowguideError("sigmas must be strictly decreasing")
    return sigmas


# ---------------------------------------------------------------------------------------------- noise

class PerSampleNoise:
    """Standard normal noise, each sample's from its own generator (EDM2's way).

    Generators live on the CPU and the noise is moved to x's device, so a seed gives the same noise
    on any device and in any batch.
    """

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int]) -> "PerSampleNoise":
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds])

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise WindowguideError(f"noise for {like.shape[0]} samples asked from {len(self.generators)} generators")
        z = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in self.generators])
        return z.to(device=like.device, dtype=like.dtype)


def finite_check(seeds=None, steps: int | None = None, what: str = "prediction") -> Callable:
    """A sampler callback that raises ``NonFiniteError`` when a step's prediction holds NaN or inf,
    naming the step, its sigma and the seeds affected. One reduction per step; the seeds are only
    looked up when it fails."""
    def callback(i, x, denoised, sigma):
        if not bool(torch.isfinite(denoised).all()):
            raise NonFiniteError(f"step {i + 1}{f'/{steps}' if steps else ''} (sigma={float(sigma):.4g}): the "
                                 f"{what} is NaN or infinite for seeds {_bad_samples(denoised, seeds)}")
    return callback


def check_finite(x: torch.Tensor, seeds=None, what: str = "sample") -> torch.Tensor:
    """x itself, or ``NonFiniteError`` naming the seeds whose values are NaN or infinite."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"the {what} is NaN or infinite for seeds {_bad_samples(x, seeds)}")
    return x


def _bad_samples(x: torch.Tensor, seeds) -> list:
    bad = (~torch.isfinite(x.flatten(1))).any(1).nonzero().flatten().tolist()
    return [seeds[i] for i in bad] if seeds is not None else bad


def _noise_or_default(noise):
    if noise is not None:
        return noise
    return lambda like: torch.randn_like(like)


# ---------------------------------------------------------------------------------------------- samplers

def begin_step(denoiser, i: int, sigmas: list[float]) -> None:
    """Tell a denoiser that step i of ``sigmas`` starts (guidance with step ranges or weight ramps
    listens; plain callables do not have to)."""
    hook = getattr(denoiser, "begin_step", None)
    if hook is not None:
        hook(i, sigmas)


def _steps(sigmas, progress, desc):
    return trange(len(sigmas) - 1, disable=not progress, desc=desc, leave=False)


def check_churn(churn: float, s_noise: float = 1.0) -> None:
    """Refuse a churn or s_noise that is not a finite number >= 0."""
    for name, v in (("churn", churn), ("s_noise", s_noise)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise WindowguideError(f"{name} {v!r}: accepted: a finite number >= 0 (0 = deterministic)")


def churn_step(x, sigma, n_steps, churn, s_tmin, s_tmax, s_noise, noise):
    """EDM's stochastic 'churn': raise sigma to sigma_hat = sigma (1 + gamma) by adding fresh noise,
    gamma = min(churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax]."""
    check_churn(churn, s_noise)
    gamma = min(churn / n_steps, math.sqrt(2) - 1) if churn > 0 and s_tmin <= sigma <= s_tmax else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * noise(x), sigma_hat


@torch.no_grad()
def sample_euler(denoiser: Callable, x: torch.Tensor, sigmas, cond=None, noise=None, churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma, optionally with churn:

        x_{i+1} = D + (sigma_{i+1} / sigma_i) (x_i - D).
    """
    sigmas = check_sigmas(sigmas).tolist()
    noise = _noise_or_default(noise)
    for i in _steps(sigmas, progress, "euler"):
        begin_step(denoiser, i, sigmas)
        x, s = churn_step(x, sigmas[i], len(sigmas) - 1, churn, s_tmin, s_tmax, s_noise, noise)
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback(i, x, denoised, s)
        x = denoised + (sigmas[i + 1] / s) * (x - denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: Callable, x: torch.Tensor, sigmas, cond=None, noise=None, churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 2): an Euler step, corrected by the mean of
    the slopes d = (x - D) / sigma at both ends; no correction on the last step (sigma_{i+1} = 0)."""
    sigmas = check_sigmas(sigmas).tolist()
    noise = _noise_or_default(noise)
    for i in _steps(sigmas, progress, "heun"):
        begin_step(denoiser, i, sigmas)
        x, s = churn_step(x, sigmas[i], len(sigmas) - 1, churn, s_tmin, s_tmax, s_noise, noise)
        s_next = sigmas[i + 1]
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback(i, x, denoised, s)
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next, cond)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        else:
            x_next = denoised
        x = x_next
    return x


def ddim_coefficients(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM step in VE form.

    diffusers' DDIM step x_prev = sqrt(a') x0 + sqrt(1 - a' - s_t^2) eps + s_t z, divided by sqrt(a'):
        sigma_up   = eta * sigma' * sqrt(sigma^2 - sigma'^2) / sigma,
        sigma_down = sqrt(sigma'^2 - sigma_up^2),
        x' = D + sigma_down * (x - D) / sigma + sigma_up * z.
    eta = 1 is DDPM's ancestral step with the posterior variance ("fixed_small").
    """
    up = eta * sigma_next * math.sqrt(max(sigma ** 2 - sigma_next ** 2, 0.0)) / sigma
    return math.sqrt(max(sigma_next ** 2 - up ** 2, 0.0)), up


def clip_x0(x0: torch.Tensor, clip: dict | None) -> torch.Tensor:
    """A diffusers scheduler's treatment of its x0 prediction, on our D (the same x0):
    {'kind': 'clip', 'range': r}: clamp to [-r, r] (``clip_sample``); {'kind': 'threshold', 'ratio': p,
    'max': m}: dynamic thresholding (Imagen; ``thresholding``): per sample s = clamp(quantile_p |x0|, 1, m),
    x0 = clamp(x0, -s, s) / s. None: unchanged."""
    if clip is None:
        return x0
    need = {"clip": ("range",), "threshold": ("ratio", "max")}
    kind = clip.get("kind") if isinstance(clip, dict) else None
    if kind not in need or not all(k in clip for k in need[kind]):
        raise WindowguideError(f"x0_clip {clip!r}: accepted None, {{'kind': 'clip', 'range': r}} or "
                               f"{{'kind': 'threshold', 'ratio': p, 'max': m}}")
    if kind == "clip":
        return x0.clamp(-clip["range"], clip["range"])
    flat = x0.float().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), clip["ratio"], dim=1).clamp(min=1, max=clip["max"])[:, None]
    return (flat.clamp(-s, s) / s).reshape(x0.shape).to(x0.dtype)


@torch.no_grad()
def sample_ddim(denoiser: Callable, x: torch.Tensor, sigmas, cond=None, eta: float = 0.0, noise=None,
                callback: Callable | None = None, progress: bool = False, targets=None,
                x0_clip: dict | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) with stochasticity eta; eta = 0 is deterministic, eta = 1 is DDPM.

        x' = clip(D) + sigma_down (x - D) / sigma + sigma_up z     (see ``ddim_coefficients``)

    as diffusers' DDIM: the direction term keeps the model's own (unclipped) prediction; ``x0_clip``
    (``clip_x0``) treats only the x0 term. ``targets``: where each step goes when that is not the next
    sigma (diffusers' DDIM steps to t - T // N, ``VPSchedule.ddim_targets``); the next evaluation is at
    the next sigma with the same VP latents, x <- x sqrt(1 + sigma_next^2) / sqrt(1 + target^2) (VP models).
    """
    if not 0 <= eta <= 1:
        raise WindowguideError(f"eta must be in [0, 1], got {eta}")
    sigmas = check_sigmas(sigmas).tolist()
    targets = None if targets is None else [float(t) for t in targets]
    if targets is not None and len(targets) != len(sigmas) - 1:
        raise WindowguideError(f"targets: one per step ({len(sigmas) - 1}), got {len(targets)}")
    noise = _noise_or_default(noise)
    for i in _steps(sigmas, progress, "ddim" if eta < 1 else "ddpm"):
        begin_step(denoiser, i, sigmas)
        s = sigmas[i]
        if targets is not None and i > 0:
            x = x * math.sqrt((1 + s ** 2) / (1 + targets[i - 1] ** 2))
        s_next = sigmas[i + 1] if targets is None else targets[i]
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback(i, x, denoised, s)
        down, up = ddim_coefficients(s, s_next, eta)
        x = clip_x0(denoised, x0_clip) + (down / s) * (x - denoised)
        if up > 0:
            x = x + up * noise(x)
    return x


@torch.no_grad()
def sample_ddpm(denoiser: Callable, x: torch.Tensor, sigmas, cond=None, noise=None,
                callback: Callable | None = None, progress: bool = False, x0_clip: dict | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020): each step draws from the posterior
    q(x' | x, x0 = clip(D)):  x' = clip(D) + (sigma'^2 / sigma^2)(x - clip(D)) + sigma' sqrt(sigma^2 - sigma'^2)/sigma z,
    as diffusers' DDPMScheduler (its posterior mean takes the treated x0 and x_t; ``clip_x0``)."""
    sigmas = check_sigmas(sigmas).tolist()
    noise = _noise_or_default(noise)
    for i in _steps(sigmas, progress, "ddpm"):
        begin_step(denoiser, i, sigmas)
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, s, cond)
        if callback is not None:
            callback(i, x, denoised, s)
        x0 = clip_x0(denoised, x0_clip)
        down, up = ddim_coefficients(s, s_next, 1.0)
        x = x0 + (down / s) * (x - x0)
        if up > 0:
            x = x + up * noise(x)
    return x


def sample_flow_euler(denoiser: Callable, x: torch.Tensor, sigmas, cond=None, noise=None,
                      callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """Flow-matching Euler, x_t' = x_t + (t' - t) u with u = (x_t - D) / t.

    In VE coordinates (x = x_t / (1 - t), sigma = t / (1 - t)) this is exactly the Euler step
    x' = D + (sigma'/sigma)(x - D), so it runs ``sample_euler`` on the flow schedule."""
    return sample_euler(denoiser, x, sigmas, cond, noise=noise, callback=callback, progress=progress)


SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "flow_euler": sample_flow_euler,
}

STOCHASTIC = {"ddpm"}  # and euler/heun with churn > 0, ddim with eta > 0


def init_noise_scale(denoiser, sigma_max: float) -> float:
    """Scale of the initial noise x = scale * z: the denoiser's rule (``Denoiser.init_noise_scale``:
    sigma for EDM/VE nets, sqrt(1 + sigma^2) for VP eps/v nets, 1 + sigma for flow nets), whatever
    the sampler; a plain callable counts as an EDM denoiser."""
    base = getattr(denoiser, "denoiser", denoiser)      # a GuidedDenoiser asks the net it guides
    rule = getattr(base, "init_noise_scale", None)
    return float(rule(sigma_max)) if callable(rule) else float(sigma_max)


__all__= ["karras_sigmas", "flow_sigmas", "flow_shift", "check_sigmas", "PerSampleNoise", "sample_euler",
           "sample_heun", "sigmas_from_flow_t", "sample_ddim", "sample_ddpm", "sample_flow_euler", "ddim_coefficients", "SAMPLERS",
           "init_noise_scale", "begin_step", "finite_check", "check_finite"]
