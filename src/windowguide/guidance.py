"""Layer 3: guidance as data, and one evaluator of the guided denoiser (docs/algorithms.md §1-3).

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
from .windows import AUTO, Layout, current_regions, current_samples, default_window, layout, layout_nd, regions_of_call
from .errors import WindowguideError

INF = math.inf


MAX_WEIGHT = 1000.0      # a CFG scale of 1001; CFG(1e308) would turn every prediction into inf


def check_weight(weight: Any, name: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise WindowguideError(f"{name}: weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w) or w < 0 or w > MAX_WEIGHT:
        raise WindowguideError(f"{name}: weight must be finite and >= 0, at most {MAX_WEIGHT:g} (0 = off), got {weight!r}")
    return w


def _positive_ints(value: Any, name: str, allow_auto: bool = False) -> None:
    """An int >= 1, a pair of them, (windows) a list of those or 'auto'; else a clear error."""
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1
    items = value if isinstance(value, list) else [value]
    for v in items:
        if allow_auto and v == AUTO:
            continue
        if not (ok(v) or (isinstance(v, tuple) and len(v) in (2, 3) and all(ok(u) for u in v))):
            raise WindowguideError(f"{name} {value!r}: accepted: an integer >= 1, a pair (h, w) or (video) a triple "
                                   f"(t, h, w) of them"
                                   f"{', a list of those, or ' + repr(AUTO) if allow_auto else ''}")


def _check_range(lo: float, hi: float, name: str) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or not lo < hi:
        raise WindowguideError(f"{name}: sigma range ({lo}, {hi}] is empty or invalid; need 0 <= lo < hi")
    return lo, hi


@dataclass(frozen=True)
class StepRange:
    """Where a term is on by sampler step, for a schedule of N steps (i = 0 .. N-1):

    - ``StepRange(first, last)``: inclusive step indices, first <= i <= last (the M-SWG and
      autoguidance authors' code);
    - ``StepRange(start, stop, fraction=True)``: diffusers guiders' start/stop, on for
      int(start N) <= i < int(stop N).

    Every evaluation inside step i (Heun's correction included) follows step i's decision.
    """

    lo: float
    hi: float
    fraction: bool = False

    def __post_init__(self):
        lo, hi = self.lo, self.hi
        if self.fraction:
            if not (0 <= lo < hi <= 1):
                raise WindowguideError(f"step fractions ({lo}, {hi}): need 0 <= start < stop <= 1")
        elif (isinstance(lo, bool) or isinstance(hi, bool) or int(lo) != lo or int(hi) != hi
              or not 0 <= lo <= hi):
            raise WindowguideError(f"step indices ({lo}, {hi}): need integers 0 <= first <= last")

    def on(self, i: int, n: int) -> bool:
        if self.fraction:
            return int(self.lo * n) <= i < int(self.hi * n)
        return self.lo <= i <= self.hi

    def __and__(self, other: "StepRange | None") -> "StepRange":
        if other is None:
            return self
        if other.fraction != self.fraction:
            raise WindowguideError("cannot intersect a step-index range with a step-fraction range")
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        if lo > hi or (self.fraction and lo == hi):
            raise WindowguideError(f"step ranges {self} and {other} do not overlap")
        return StepRange(lo, hi, self.fraction)


def flow_t_range(t_lo: float, t_hi: float) -> tuple[float, float]:
    """A flow-time interval (t_lo, t_hi] as the VE sigma interval, sigma = t / (1 - t) (t = 1: inf)."""
    if not 0 <= t_lo < t_hi <= 1:
        raise WindowguideError(f"flow time range ({t_lo}, {t_hi}]: need 0 <= t_lo < t_hi <= 1")
    to_sigma = lambda t: INF if t >= 1 else t / (1 - t)
    return to_sigma(t_lo), to_sigma(t_hi)


class Term:
    """A guidance term ``w * M ⊙ (D_pos - D_neg)``, active for sigma in (sigma_lo, sigma_hi].

    Subclasses are frozen dataclasses with fields ``weight``, ``sigma_lo``, ``sigma_hi``, ``mask``,
    ``steps`` (a ``StepRange`` or None) and ``weight_end`` (None, or the weight reached at the last step
    where the term is on: the weight then ramps linearly in the step index across the term's steps),
    and implement ``negative(ctx, x, sigma, cond) -> _Plan``.
    """

    weight: float
    sigma_lo: float
    sigma_hi: float
    mask: torch.Tensor | None
    steps: StepRange | None
    weight_end: float | None

    def __post_init__(self):
        object.__setattr__(self, "weight", check_weight(self.weight, type(self).__name__))
        lo, hi = _check_range(self.sigma_lo, self.sigma_hi, type(self).__name__)
        object.__setattr__(self, "sigma_lo", lo)
        object.__setattr__(self, "sigma_hi", hi)
        if self.weight_end is not None:
            object.__setattr__(self, "weight_end", check_weight(self.weight_end, type(self).__name__))
        if self.steps is not None and not isinstance(self.steps, StepRange):
            object.__setattr__(self, "steps", StepRange(*self.steps))
        if self.mask is not None:
            if not isinstance(self.mask, torch.Tensor):
                raise WindowguideError(f"{type(self).__name__}: mask must be a tensor, got {type(self.mask).__name__}")
            if not bool(torch.isfinite(self.mask).all()):
                raise WindowguideError(f"{type(self).__name__}: mask holds NaN or inf; it must be finite")

    def __add__(self, other) -> "Guidance":
        return Guidance((self,)) + other

    def __radd__(self, other) -> "Guidance":
        return Guidance.of(other) + self

    def restrict(self, lo: float = 0.0, hi: float = INF, steps: StepRange | None = None) -> "Term":
        """The same term, active only where also lo < sigma <= hi and within ``steps``."""
        new_lo, new_hi = max(self.sigma_lo, lo), min(self.sigma_hi, hi)
        if not new_lo < new_hi:
            raise WindowguideError(f"{type(self).__name__}: restricting ({self.sigma_lo}, {self.sigma_hi}] to "
                             f"({lo}, {hi}] leaves an empty sigma range")
        new_steps = self.steps if steps is None else steps & self.steps
        return replace(self, sigma_lo=new_lo, sigma_hi=new_hi, steps=new_steps)

    @property
    def needs_step(self) -> bool:
        """Whether the term needs the sampler's step index (a step range or a weight ramp)."""
        return self.steps is not None or self.weight_end is not None

    def on_at(self, j: int, sigmas: list[float]) -> bool:
        """Whether the term is on at step j of the schedule ``sigmas`` (by its step range and sigma range)."""
        return ((self.steps is None or self.steps.on(j, len(sigmas) - 1))
                and self.sigma_lo < sigmas[j] <= self.sigma_hi)

    def weight_at(self, step: tuple[int, list[float]] | None) -> float:
        """w at step i: ``weight``, or with ``weight_end`` the linear ramp over the steps where it is on,
            w_i = weight + (weight_end - weight) (i - a) / (b - a),   a, b its first and last step."""
        if self.weight_end is None:
            return self.weight
        i, sigmas = step
        on = [j for j in range(len(sigmas) - 1) if self.on_at(j, sigmas)]
        if len(on) < 2:
            return self.weight
        return self.weight + (self.weight_end - self.weight) * (i - on[0]) / (on[-1] - on[0])

    def active(self, sigma: torch.Tensor, step: tuple[int, list[float]] | None = None) -> torch.Tensor:
        """Which samples this term guides at their sigma (and at sampler step ``(i, sigmas)``): bool [N]."""
        on = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)
        if self.needs_step and step is None:
            raise WindowguideError(f"{type(self).__name__} has a step range or a weight ramp: it needs the "
                                   f"sampler's step index; run it through a windowguide sampler")
        if self.steps is not None and not self.steps.on(step[0], len(step[1]) - 1):
            on = torch.zeros_like(on)
        return on if (self.weight != 0 or self.weight_end) else torch.zeros_like(on)

    def term_mask(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor | None:
        """The user's M for the samples ``idx`` of the batch (x holds only those), or None for M = 1.
        A per-sample mask ([N, ...] with N > 1) is indexed to the active samples."""
        if self.mask is None:
            return None
        m = self.mask.to(device=x.device, dtype=x.dtype)
        if idx is not None and m.dim() == x.dim() and m.shape[0] > 1:
            m = m[idx.to(m.device)]
        try:
            torch.broadcast_shapes(m.shape, x.shape)
        except RuntimeError:
            raise WindowguideError(f"{type(self).__name__}: mask of shape {tuple(self.mask.shape)} does not "
                                   f"broadcast to the image shape {tuple(x.shape)}") from None
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
    region: torch.Tensor | None = None     # [n, 2D] crop placement (starts, canvas); None = the whole input
    source: torch.Tensor | None = None     # [n] the row of the guided denoiser's input each row comes from
    samples: torch.Tensor | None = None    # [n] the canvas sample each row belongs to (``current_samples``)

    def regions(self) -> torch.Tensor:
        if self.region is not None:
            return self.region
        sizes = tuple(self.x.shape[2:])
        return torch.tensor([(0,) * len(sizes) + sizes], dtype=torch.long).repeat(self.x.shape[0], 1)


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
    ``null_cond``. Weight w = scale - 1 in the diffusers/SD convention. ``channels``: guide only the
    first k channels (M = 1 on channels < k): DiT's own ``forward_with_cfg`` (facebookresearch's
    models.py) guides the first 3 of the 4 latent channels; None (all channels) is diffusers' DiT
    pipeline and the M-SWG authors' DiT code. ``renorm(x, sigma, D, D_ref) -> D``: a family's
    correction of the guided result (Qwen-Image's norm CFG), applied after all terms with the
    reference D_ref = D_pos + (D - D_cfg) / (1 + w), the conditional prediction shifted by the other
    terms' change divided by the CFG scale (what the family's pipeline renormalises to under the patch).
    """

    weight: float
    null: Cond = None
    sigma_lo: float = 0.0
    sigma_hi: float = INF
    mask: torch.Tensor | None = None
    steps: StepRange | None = None
    weight_end: float | None = None
    channels: int | None = None
    renorm: Any = None

    def __post_init__(self):
        if self.channels is not None and (isinstance(self.channels, bool) or not isinstance(self.channels, int)
                                          or self.channels < 1):
            raise WindowguideError(f"CFG channels {self.channels!r}: accepted: an integer >= 1 or None (all)")
        super().__post_init__()

    def check(self, denoiser, shape):
        if self.channels is not None and self.channels > shape[0]:
            raise WindowguideError(f"CFG channels={self.channels}: this model's samples have {shape[0]} channels; "
                                   f"accepted: 1..{shape[0]}")
        super().check(denoiser, shape)

    def term_mask(self, x, idx=None):
        m = super().term_mask(x, idx)
        if self.channels is None or self.channels >= x.shape[1]:
            return m
        c = torch.zeros(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
        c[:, :self.channels] = 1
        return c if m is None else m * c

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
    steps: StepRange | None = None
    weight_end: float | None = None

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
    steps: StepRange | None = None
    weight_end: float | None = None
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

    Crops of size ``window`` (an int or (h, w); a list of those averages several crop sizes, as the
    M-SWG authors' code allows; ``"auto"``, the default: 5/8 of each side rounded up to the model's
    factor, ``windows.default_window``: 40 on 64 x 64, 16 on 24 x 24, never an empty M-SWG mask), ``windows_per_side`` per side (or a ``stride``), go to the model at
    their native size with the same sigma and condition; the crop predictions are averaged uniformly
    where they overlap, then over the sizes. ``net``: evaluate the crops on another (e.g. weaker)
    denoiser instead of the model itself (the M-SWG paper's "SWG with a weak model").

    SWG:   D = D_pos + w (D_pos - D_swg)
    M-SWG: D = D_pos + w M ⊙ (D_pos - D_swg),  M = (window count > 1)   (``masked=True``;
           with several sizes, M = 1 where some size covers the pixel twice)
    """

    weight: float
    window: Any = AUTO
    windows_per_side: Any = 2
    stride: Any = None
    masked: bool = False
    sigma_lo: float = 0.0
    sigma_hi: float = INF
    mask: torch.Tensor | None = None
    steps: StepRange | None = None
    weight_end: float | None = None
    net: Any = None

    def __post_init__(self):
        if self.net is not None:
            object.__setattr__(self, "net", as_denoiser(self.net))
        if isinstance(self.window, list) and not self.window:
            raise WindowguideError("SWG: an empty list of window sizes")
        _positive_ints(self.window, "SWG window", allow_auto=True)
        if self.stride is not None:
            _positive_ints(self.stride, "SWG stride")
        else:
            _positive_ints(self.windows_per_side, "SWG windows_per_side")
        super().__post_init__()

    @property
    def sizes(self) -> list:
        return list(self.window) if isinstance(self.window, list) else [self.window]

    def layouts(self, shape: tuple[int, ...], multiple: int = 1) -> list[Layout]:
        """The window layouts on a latent of ``shape``: (H, W) for an image, (T, H, W) for a video
        (``multiple``: the model's factor, for "auto"). On a video a (t, h, w) window crops in time and
        space, an (h, w), int or "auto" window in space only (t = T); an axis whose window is the whole
        side has one window. Windows per side (or the stride) apply to every cropped axis."""
        shape = tuple(shape)
        per_side = None if self.stride is not None else self.windows_per_side
        spatial = lambda k: (default_window(shape[-2], multiple), default_window(shape[-1], multiple)) \
            if k == AUTO else (k, k) if isinstance(k, int) else tuple(k)
        out = []
        for k in self.sizes:
            k = spatial(k)
            if len(shape) == 2:
                out.append(layout(*shape, k, stride=self.stride, windows_per_side=per_side))
            else:
                k = (shape[0], *k) if len(k) == 2 else k
                out.append(layout_nd(shape, k, stride=self.stride, windows_per_side=per_side))
        return out

    def check(self, denoiser, shape):
        """(C, H, W) or a video's (C, T, H, W): windows multiples of the network's factor, smaller than
        the image, square where the network needs it, and a non-empty M-SWG mask."""
        m = getattr(self.net or denoiser, "multiple", 1)
        canvas = tuple(shape[1:])
        lays = self.layouts(canvas, m)
        for lay in lays:
            h, w = lay.window[-2:]
            if h % m or w % m:
                raise WindowguideError(f"SWG window {'x'.join(map(str, lay.window))} is not a multiple of {m} in height "
                                       f"and width, the factor the model needs; accepted: window sizes divisible by {m}")
            if lay.window == canvas and self.net is None:
                what = "image" if len(canvas) == 2 else "video"
                raise WindowguideError(f"SWG window {'x'.join(map(str, lay.window))} covers the whole "
                                       f"{'x'.join(map(str, canvas))} {what}: every crop would be the {what}, and the "
                                       f"term would add nothing; accepted: a window smaller than the {what} on some "
                                       f"side (e.g. 5/8 of it, the default)")
            if getattr(self.net or denoiser, "square_only", False) and h != w:
                raise WindowguideError(f"SWG window {h}x{w}: this network (diffusers' DiT) runs square inputs only; "
                                       f"accepted: square windows")
        if self.masked and self.overlap_mask(torch.zeros(1, 1, *canvas), lays).sum() == 0:
            raise WindowguideError(f"M-SWG mask is empty for window {self.window} at starts {lays[0].starts} on "
                                   f"{'x'.join(map(str, canvas))}: no entry is covered twice, so it would not "
                                   f"guide; use a larger window or more windows per side")

    def overlap_mask(self, x, lays: list[Layout] | None = None):
        """M-SWG's M = (count > 1) (any size), or None for SWG; ``lays`` reuses cached layouts."""
        if not self.masked:
            return None
        lays = lays or self.layouts(tuple(x.shape[2:]))
        return torch.stack([lay.overlap_mask(x.device, x.dtype) for lay in lays]).amax(0)

    def negative(self, ctx, x, sigma, cond):
        lays = ctx.layout_for(self, x)
        net = self.net or ctx.denoiser
        reqs = [_Request(net, lay.crop(x), sigma.repeat_interleave(lay.n), cond_repeat(cond, lay.n),
                         region=lay.regions(x.shape[0])) for lay in lays]
        finish = lambda: sum(lay.fold(r.result, "uniform") for lay, r in zip(lays, reqs)) / len(lays)
        return _Plan(reqs, finish, self.overlap_mask(x, lays))


def MSWG(weight: float, window: Any = AUTO, windows_per_side: Any = 2, **kwargs) -> SWG:
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

    def restrict(self, lo: float = 0.0, hi: float = INF, steps: StepRange | None = None) -> "Guidance":
        return Guidance(tuple(t.restrict(lo, hi, steps) for t in self.terms))


def Interval(guidance: Any, sigma_lo: float = 0.0, sigma_hi: float = INF, *, t: tuple | None = None,
             steps: tuple | None = None, fraction: tuple | None = None) -> Guidance:
    """Guidance interval (Kynkäänniemi et al. 2024): terms active only for sigma in (lo, hi].

    The interval may instead be given in the units other codes use, converted here:
    ``t=(t_lo, t_hi)`` flow time (sigma = t / (1 - t)); ``steps=(first, last)`` inclusive step
    indices; ``fraction=(start, stop)`` diffusers' step fractions, on for int(start N) <= i < int(stop N).
    """
    if t is not None:
        sigma_lo, sigma_hi = flow_t_range(*t)
    _check_range(sigma_lo, sigma_hi, "Interval")
    rng = StepRange(*steps) if steps is not None else StepRange(*fraction, True) if fraction is not None else None
    return Guidance(tuple(term.restrict(sigma_lo, sigma_hi, rng) for term in Guidance.of(guidance)))


def Segmented(high: Any, low: Any, sigma_split: float | None = None, *, t_split: float | None = None,
              step_split: int | None = None, fraction_split: float | None = None) -> Guidance:
    """Segmented guidance (SGG): ``high`` terms at high noise (condition-dependent, e.g. CFG), ``low``
    terms at low noise (condition-agnostic: autoguidance, SWG, skip-layer, ...). With one term each
    side it stays at 2 network evaluations per step. The split, given once, in one of four units:

        sigma_split:    high where sigma > split, low where sigma <= split (VE sigma);
        t_split:        the same in flow time t (SD3's "0.75" is t, sigma = t / (1 - t) = 3);
        step_split:     high on steps i < split, low on i >= split (0-based step indices);
        fraction_split: high on i < int(f N), low on i >= int(f N) (diffusers' fractions).
    """
    given = [v is not None for v in (sigma_split, t_split, step_split, fraction_split)]
    if sum(given) != 1:
        raise WindowguideError("Segmented: give exactly one of sigma_split, t_split, step_split, fraction_split")
    if t_split is not None:
        if not 0 < t_split < 1:
            raise WindowguideError(f"Segmented: t_split must be in (0, 1), got {t_split!r}")
        sigma_split = t_split / (1 - t_split)
    if sigma_split is not None:
        split = float(sigma_split)
        if not (math.isfinite(split) and split > 0):
            raise WindowguideError(f"Segmented: sigma_split must be finite and > 0, got {sigma_split!r}")
        return Guidance.of(high).restrict(split, INF) + Guidance.of(low).restrict(0.0, split)
    if step_split is not None:
        if isinstance(step_split, bool) or int(step_split) != step_split or step_split < 1:
            raise WindowguideError(f"Segmented: step_split must be an integer >= 1, got {step_split!r}")
        hi_rng, lo_rng = StepRange(0, int(step_split) - 1), StepRange(int(step_split), 2 ** 62)
    else:
        if not 0 < fraction_split < 1:
            raise WindowguideError(f"Segmented: fraction_split must be in (0, 1), got {fraction_split!r}")
        hi_rng, lo_rng = StepRange(0.0, fraction_split, True), StepRange(fraction_split, 1.0, True)
    return (Guidance(tuple(t.restrict(steps=hi_rng) for t in Guidance.of(high)))
            + Guidance(tuple(t.restrict(steps=lo_rng) for t in Guidance.of(low))))


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
        """Validate the size and every term for images of shape (C, H, W) before sampling starts."""
        from .denoiser import check_size
        check_size(self.denoiser, shape)
        for term in self.guidance:
            term.check(self.denoiser, tuple(shape))

    def layout_for(self, term: SWG, x: torch.Tensor) -> list[Layout]:
        key = (id(term), tuple(x.shape[2:]))
        if key not in self._layouts:
            term.check(self.denoiser, tuple(x.shape[1:]))
            multiple = getattr(term.net or self.denoiser, "multiple", 1)
            self._layouts[key] = term.layouts(tuple(x.shape[2:]), multiple)
        return self._layouts[key]

    def begin_step(self, i: int, sigmas: list[float]) -> None:
        """Called by the samplers before step i of the schedule ``sigmas``: step ranges and weight
        ramps follow it (Heun's second evaluation inside step i included)."""
        self.step = (int(i), list(sigmas))

    def forward(self, x, sigma, cond):
        pos = _Request(self.denoiser, x, sigma, cond)
        plans = []
        step = getattr(self, "step", None)
        for term in self.guidance:
            on = term.active(sigma, step)
            if not on.any():
                continue
            idx = None if on.all() else on.nonzero().flatten()
            xs = x if idx is None else x[idx]
            plan = term.negative(self, xs, sigma if idx is None else sigma[idx], cond_select(cond, idx))
            rows = torch.arange(x.shape[0]) if idx is None else idx.cpu()
            for r in plan.requests:             # crops come sample-major: k crops of row 0, then of row 1, ...
                r.source = rows.repeat_interleave(r.x.shape[0] // len(rows))
            user = term.term_mask(xs, idx)
            if user is not None:
                plan.mask = user if plan.mask is None else plan.mask * user
            plans.append((term, idx, plan))
        self._run([pos] + [r for _, _, p in plans for r in p.requests])
        if not plans:
            return pos.result
        d_pos, out = pos.result, pos.result.clone()
        renorms = []
        for term, idx, plan in plans:
            diff = (d_pos if idx is None else d_pos[idx]) - plan.finish()
            update = term.weight_at(step) * (diff if plan.mask is None else plan.mask * diff)
            if idx is None:
                out += update
            else:
                out[idx] += update
            if getattr(term, "renorm", None) is not None:
                renorms.append((term, idx, update))
        for term, idx, update in renorms:          # after every term: the reference needs their sum
            rows = slice(None) if idx is None else idx
            d, o = d_pos[rows], out[rows]
            out[rows] = term.renorm(x[rows], sigma[rows], o, d + (o - d - update) / (1 + term.weight_at(step)))
        return out

    def _run(self, requests: list[_Request]) -> None:
        """Evaluate all requests, one stacked batch per (network, spatial size, dtype). When the input
        itself is placed on a larger canvas (a fusion window: ``current_regions`` of this call), each
        request's placement is composed with its row's: (top + top_i, left + left_i, canvas H, W), on every
        axis of the latent; each row also carries its canvas sample (``current_samples``)."""
        outer, outer_samples = current_regions(), current_samples()
        for r in requests:
            src = torch.arange(r.x.shape[0]) if r.source is None else r.source
            r.samples = src if outer_samples is None else outer_samples[src.to(outer_samples.device)]
            if outer is not None:
                inner = r.regions()
                o = outer[src].to(inner.dtype)
                d = inner.shape[1] // 2            # starts add up on every axis; the canvas is the outer one's
                r.region = torch.cat([o[:, :d] + inner[:, :d], o[:, d:]], 1)
        groups: dict[tuple, list[_Request]] = {}
        for r in requests:
            groups.setdefault((id(r.net), tuple(r.x.shape[1:]), r.x.dtype), []).append(r)
        for group in groups.values():
            net = group[0].net
            x = torch.cat([r.x for r in group]) if len(group) > 1 else group[0].x
            sigma = torch.cat([r.sigma for r in group]) if len(group) > 1 else group[0].sigma
            cond = cond_cat([r.cond for r in group]) if len(group) > 1 else group[0].cond
            regions = torch.cat([r.regions() for r in group])
            samples = torch.cat([r.samples for r in group])
            out = self._call_chunked(net, x, sigma, cond, regions, samples)
            for r, res in zip(group, out.split([r.x.shape[0] for r in group])):
                r.result = res

    def _call_chunked(self, net: Denoiser, x, sigma, cond, regions=None, samples=None) -> torch.Tensor:
        n = x.shape[0]
        size = n if self.max_batch is None else self.max_batch
        outs = []
        for start in range(0, n, size):
            idx = None if size >= n else torch.arange(start, min(start + size, n), device=x.device)
            xs = x if idx is None else x[start:start + size]
            part = slice(start, start + xs.shape[0])
            with regions_of_call(None if regions is None else regions[part], None if samples is None else samples[part]):
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


__all__ = ["Term", "StepRange", "flow_t_range", "CFG", "AutoGuidance", "SWG", "MSWG", "Custom", "Guidance", "Interval", "Segmented",
           "GuidedDenoiser", "guided"]

