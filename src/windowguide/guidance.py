"""Layer 3: guidance as data, and one evaluator of the guided denoiser (ALGORITHMS.md §1-3).

    D_guided = D_pos + sum_i  w_i(sigma) * M_i ⊙ (D_pos - D_neg,i)

Each term says how its negative prediction D_neg,i is made (null condition, weaker model, sliding
windows, any callable), its weight w_i (0 = off), its mask M_i and the sigma range (lo, hi] where it
is active. Terms add up with ``+``; ``Interval`` and ``Segmented`` restrict their sigma ranges.

``GuidedDenoiser`` evaluates all that with as few network calls as possible: every prediction that
shares a network and a spatial size goes into one batch (cond and uncond together; all crops of all
samples together), split into chunks of at most ``max_batch``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import torch

from .conds import Cond, broadcast_null, cond_cat, cond_repeat, cond_select
from .denoiser import Denoiser, as_denoiser
from .windows import Layout, layout
from .errors import WindowguideError

INF = math.inf


def _check_weight(weight: Any, name: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise WindowguideError(f"{name}: weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w) or w < 0:
        raise WindowguideError(f"{name}: weight must be finite and >= 0 (0 = off), got {weight!r}")
    return w


def _check_range(lo: float, hi: float, name: str) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or not lo < hi:
        raise WindowguideError(f"{name}: sigma range ({lo}, {hi}] is empty or invalid; need 0 <= lo < hi")
    return lo, hi


class Term:
    """A guidance term ``w * M ⊙ (D_pos - D_neg)``, active for sigma in (sigma_lo, sigma_hi].

    Subclasses are frozen dataclasses with fields ``weight``, ``sigma_lo``, ``sigma_hi`` and
    implement ``negative(ctx, x, sigma, cond) -> _Plan``.
    """

    weight: float
    sigma_lo: float
    sigma_hi: float
    mask: torch.Tensor | None

    def __post_init__(self):
        object.__setattr__(self, "weight", _check_weight(self.weight, type(self).__name__))
        lo, hi = _check_range(self.sigma_lo, self.sigma_hi, type(self).__name__)
        object.__setattr__(self, "sigma_lo", lo)
        object.__setattr__(self, "sigma_hi", hi)

    def __add__(self, other) -> "Guidance":
        return Guidance((self,)) + other

    def __radd__(self, other) -> "Guidance":
        return Guidance.of(other) + self

    def restrict(self, lo: float, hi: float) -> "Term":
        """The same term, active only where also lo < sigma <= hi (intersection of ranges)."""
        new_lo, new_hi = max(self.sigma_lo, lo), min(self.sigma_hi, hi)
        if not new_lo < new_hi:
            raise WindowguideError(f"{type(self).__name__}: restricting ({self.sigma_lo}, {self.sigma_hi}] to "
                             f"({lo}, {hi}] leaves an empty sigma range")
        return replace(self, sigma_lo=new_lo, sigma_hi=new_hi)

    def active(self, sigma: torch.Tensor) -> torch.Tensor:
        """Which samples this term guides at their sigma: bool [N]."""
        on = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)
        return on if self.weight != 0 else torch.zeros_like(on)

    def term_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """M for an image like x, or None for M = 1."""
        if self.mask is None:
            return None
        m = self.mask.to(device=x.device, dtype=x.dtype)
        try:
            torch.broadcast_shapes(m.shape, x.shape)
        except RuntimeError:
            raise WindowguideError(f"{type(self).__name__}: mask of shape {tuple(m.shape)} does not broadcast to "
                             f"the image shape {tuple(x.shape)}") from None
        return m

    def check(self, denoiser: Denoiser, shape: tuple[int, int, int]) -> None:
        """Raise if the term cannot run on images of this (C, H, W) shape; cheap, before sampling."""

    def negative(self, ctx: "GuidedDenoiser", x, sigma, cond) -> "_Plan":
        raise NotImplementedError


@dataclass
class _Request:
    """One batch of predictions from one network at one spatial size."""

    net: Denoiser
    x: torch.Tensor
    sigma: torch.Tensor
    cond: Cond
    result: torch.Tensor | None = None


@dataclass
class _Plan:
    """The requests a term needs, and how to turn their results into D_neg."""

    requests: list[_Request]
    finish: Callable[[], torch.Tensor]
    mask: torch.Tensor | None = None


def _same_net_plan(ctx, x, sigma, cond) -> _Plan:
    req = _Request(ctx.denoiser, x, sigma, cond)
    return _Plan([req], lambda: req.result)


@dataclass(frozen=True, eq=False)
class CFG(Term):
    """Classifier-free guidance: D_neg = D(x, sigma, null condition).

    ``null``: the null condition, once (broadcast) or per sample; None asks the denoiser's
    ``null_cond``. Weight w = scale - 1 in the diffusers/SD convention.
    """

    weight: float
    null: Cond = None
    sigma_lo: float = 0.0
    sigma_hi: float = INF
    mask: torch.Tensor | None = None

    def negative(self, ctx, x, sigma, cond):
        if cond is None:
            raise WindowguideError("CFG needs a condition: pass cond=... (one per sample)")
        n = x.shape[0]
        null = ctx.denoiser.null_condition(cond, n) if self.null is None else broadcast_null(self.null, cond, n)
        return _same_net_plan(ctx, x, sigma, null)


@dataclass(frozen=True, eq=False)
class AutoGuidance(Term):
    """Autoguidance (Karras et al. 2024): D_neg = a weaker model with the same condition.

    The weak model may be smaller, less trained, or trained with much larger weight decay (the
    M-SWG paper's "same error, but stronger"). Karras's gamma = 1 + w.
    """

    weak: Any
    weight: float
    sigma_lo: float = 0.0
    sigma_hi: float = INF
    mask: torch.Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "weak", as_denoiser(self.weak))
        super().__post_init__()

    def negative(self, ctx, x, sigma, cond):
        req = _Request(self.weak, x, sigma, cond)
        return _Plan([req], lambda: req.result)


@dataclass(frozen=True, eq=False)
class Custom(Term):
    """A negative from any callable ``negative(x, sigma, cond) -> D_neg`` (skip-layer guidance,
    attention perturbation, ...). It is called as is, outside the shared batches."""

    negative_fn: Callable
    weight: float
    sigma_lo: float = 0.0
    sigma_hi: float = INF
    mask: torch.Tensor | None = None
    name: str = "custom"

    def negative(self, ctx, x, sigma, cond):
        def finish():
            out = self.negative_fn(x, sigma, cond)
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                raise WindowguideError(f"{self.name}: negative returned {getattr(out, 'shape', type(out))}, "
                                 f"expected a tensor of shape {tuple(x.shape)}")
            return out
        return _Plan([], finish)


@dataclass(frozen=True, eq=False)
class SWG(Term):
    """Sliding-window guidance: D_neg = the model itself on overlapping crops, averaged.

    Crops of size ``window`` (int or (h, w)), ``windows_per_side`` per side (or a ``stride``), go to
    the model at their native size with the same sigma and condition; the crop predictions are
    averaged uniformly where they overlap (ALGORITHMS.md §2).

    SWG:   D = D_pos + w (D_pos - D_swg)
    M-SWG: D = D_pos + w M ⊙ (D_pos - D_swg),  M = (window count > 1)   (``masked=True``)
    """

    weight: float
    window: Any = 40
    windows_per_side: Any = 2
    stride: Any = None
    masked: bool = False
    sigma_lo: float = 0.0
    sigma_hi: float = INF
    mask: torch.Tensor | None = None

    def layout(self, height: int, width: int) -> Layout:
        per_side = None if self.stride is not None else self.windows_per_side
        return layout(height, width, self.window, stride=self.stride, windows_per_side=per_side)

    def check(self, denoiser, shape):
        _, H, W = shape
        lay = self.layout(H, W)
        h, w = lay.window
        m = getattr(denoiser, "multiple", 1)
        if h % m or w % m:
            raise WindowguideError(f"SWG window {h}x{w} is not a multiple of {m}, the factor the model needs; "
                             f"accepted: window sizes divisible by {m}")
        if self.masked and lay.overlap_mask().sum() == 0:
            raise WindowguideError(f"M-SWG mask is empty for window {h}x{w} with {lay.tops}/{lay.lefts} on "
                             f"{H}x{W}: no pixel is covered twice, so it would not guide; use a larger "
                             f"window or more windows per side")

    def term_mask(self, x, lay: Layout | None = None):
        """M = (count > 1) for M-SWG (times a user mask, if any); ``lay`` reuses a cached layout."""
        base = super().term_mask(x)
        if not self.masked:
            return base
        lay = lay or self.layout(*x.shape[-2:])
        m = lay.overlap_mask(x.device, x.dtype)
        return m if base is None else m * base

    def negative(self, ctx, x, sigma, cond):
        lay = ctx.layout_for(self, x)
        req = _Request(ctx.denoiser, lay.crop(x), sigma.repeat_interleave(lay.n), cond_repeat(cond, lay.n))
        return _Plan([req], lambda: lay.fold(req.result, "uniform"), self.term_mask(x, lay))


def MSWG(weight: float, window: Any = 40, windows_per_side: Any = 2, **kwargs) -> SWG:
    """Masked sliding-window guidance: ``SWG(..., masked=True)``."""
    return SWG(weight, window, windows_per_side, masked=True, **kwargs)


@dataclass(frozen=True)
class Guidance:
    """A sum of terms. ``Guidance()`` (no terms) is no guidance."""

    terms: tuple[Term, ...] = field(default_factory=tuple)

    @staticmethod
    def of(g: Any) -> "Guidance":
        """None, 0, a Term, a Guidance or an iterable of those, as a Guidance."""
        if g is None or (isinstance(g, (int, float)) and not isinstance(g, bool) and g == 0):
            return Guidance()
        if isinstance(g, Guidance):
            return g
        if isinstance(g, Term):
            return Guidance((g,))
        if isinstance(g, Iterable) and not isinstance(g, (str, bytes)):
            out = Guidance()
            for item in g:
                out = out + item
            return out
        raise TypeError(f"guidance must be built from windowguide.guidance terms, got {type(g).__name__}")

    def __add__(self, other) -> "Guidance":
        return Guidance(self.terms + Guidance.of(other).terms)

    def __radd__(self, other) -> "Guidance":
        return Guidance.of(other) + self

    def __iter__(self):
        return iter(self.terms)

    def __len__(self):
        return len(self.terms)

    def restrict(self, lo: float, hi: float) -> "Guidance":
        return Guidance(tuple(t.restrict(lo, hi) for t in self.terms))


def Interval(guidance: Any, sigma_lo: float = 0.0, sigma_hi: float = INF) -> Guidance:
    """Guidance interval (Kynkäänniemi et al. 2024): terms active only for sigma in (lo, hi]."""
    _check_range(sigma_lo, sigma_hi, "Interval")
    return Guidance.of(guidance).restrict(sigma_lo, sigma_hi)


def Segmented(high: Any, low: Any, sigma_split: float) -> Guidance:
    """Segmented guidance (SGG): ``high`` terms where sigma > sigma_split (condition-dependent, e.g.
    CFG), ``low`` terms where sigma <= sigma_split (condition-agnostic: autoguidance, SWG, ...).
    With one term each side it stays at 2 network evaluations per step."""
    split = float(sigma_split)
    if not (math.isfinite(split) and split > 0):
        raise WindowguideError(f"Segmented: sigma_split must be finite and > 0, got {sigma_split!r}")
    return Guidance.of(high).restrict(split, INF) + Guidance.of(low).restrict(0.0, split)


class GuidedDenoiser(Denoiser):
    """The guided denoiser D_guided(x, sigma, cond) of a base denoiser and a Guidance.

    Predictions that share a network and a spatial size are stacked into one batch and split into
    chunks of at most ``max_batch`` samples. ``calls`` and ``evaluations`` count network calls and
    the samples they held, per network, for benchmarks and for tests of "no wasted evaluations".
    """

    def __init__(self, denoiser: Any, guidance: Any = None, max_batch: int | None = None):
        self.denoiser = as_denoiser(denoiser)
        self.guidance = Guidance.of(guidance)
        if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) != max_batch or max_batch < 1):
            raise WindowguideError(f"max_batch must be a positive integer or None, got {max_batch!r}")
        self.max_batch = None if max_batch is None else int(max_batch)
        self.multiple = self.denoiser.multiple
        self.sigma_min, self.sigma_max = self.denoiser.sigma_min, self.denoiser.sigma_max
        self.null_cond = self.denoiser.null_cond
        self._layouts: dict = {}
        self.calls: dict[int, int] = {}
        self.evaluations: dict[int, int] = {}

    def check(self, shape: tuple[int, int, int]) -> None:
        """Validate every term for images of shape (C, H, W) before sampling starts."""
        for term in self.guidance:
            term.check(self.denoiser, tuple(shape))

    def layout_for(self, term: SWG, x: torch.Tensor) -> Layout:
        key = (id(term), tuple(x.shape[-2:]))
        if key not in self._layouts:
            term.check(self.denoiser, tuple(x.shape[1:]))
            self._layouts[key] = term.layout(*x.shape[-2:])
        return self._layouts[key]

    def forward(self, x, sigma, cond):
        pos = _Request(self.denoiser, x, sigma, cond)
        plans = []
        for term in self.guidance:
            on = term.active(sigma)
            if not on.any():
                continue
            idx = None if on.all() else on.nonzero().flatten()
            xs = x if idx is None else x[idx]
            plan = term.negative(self, xs, sigma if idx is None else sigma[idx], cond_select(cond, idx))
            if plan.mask is None:
                plan.mask = term.term_mask(xs)
            plans.append((term, idx, plan))
        self._run([pos] + [r for _, _, p in plans for r in p.requests])
        if not plans:
            return pos.result
        d_pos, out = pos.result, pos.result.clone()
        for term, idx, plan in plans:
            diff = (d_pos if idx is None else d_pos[idx]) - plan.finish()
            step = term.weight * (diff if plan.mask is None else plan.mask * diff)
            if idx is None:
                out += step
            else:
                out[idx] += step
        return out

    def _run(self, requests: list[_Request]) -> None:
        """Evaluate all requests, one stacked batch per (network, spatial size, dtype)."""
        groups: dict[tuple, list[_Request]] = {}
        for r in requests:
            groups.setdefault((id(r.net), tuple(r.x.shape[1:]), r.x.dtype), []).append(r)
        for group in groups.values():
            net = group[0].net
            x = torch.cat([r.x for r in group]) if len(group) > 1 else group[0].x
            sigma = torch.cat([r.sigma for r in group]) if len(group) > 1 else group[0].sigma
            cond = cond_cat([r.cond for r in group]) if len(group) > 1 else group[0].cond
            out = self._call_chunked(net, x, sigma, cond)
            for r, res in zip(group, out.split([r.x.shape[0] for r in group])):
                r.result = res

    def _call_chunked(self, net: Denoiser, x, sigma, cond) -> torch.Tensor:
        n = x.shape[0]
        size = n if self.max_batch is None else self.max_batch
        outs = []
        for start in range(0, n, size):
            idx = None if size >= n else torch.arange(start, min(start + size, n), device=x.device)
            xs = x if idx is None else x[start:start + size]
            outs.append(net(xs, sigma if idx is None else sigma[start:start + size], cond_select(cond, idx)))
            self.calls[id(net)] = self.calls.get(id(net), 0) + 1
            self.evaluations[id(net)] = self.evaluations.get(id(net), 0) + xs.shape[0]
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def guided(denoiser: Any, guidance: Any = None, max_batch: int | None = None) -> Denoiser:
    """The guided denoiser; the plain denoiser itself when there is nothing to guide."""
    g = Guidance.of(guidance)
    if not len(g) and max_batch is None:
        return as_denoiser(denoiser)
    return GuidedDenoiser(denoiser, g, max_batch)


__all__ = ["Term", "CFG", "AutoGuidance", "SWG", "MSWG", "Custom", "Guidance", "Interval", "Segmented",
           "GuidedDenoiser", "guided"]

