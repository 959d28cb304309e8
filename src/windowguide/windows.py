"""Layer 2: window geometry. Positions, crops, folds with weights, overlap counts and masks.

No model inside. A layout of K windows of size h x w on an H x W canvas crops a batch [N, C, H, W]
into one stacked tensor [N*K, C, h, w] (sample-major: all windows of sample 0 first) and folds window
outputs back as the weighted average

    fold(y)[p] = sum_k  m_k[p] * y_k[p]  /  sum_k m_k[p],

m_k the window's weight map (uniform, guided-fusion cone or gaussian) placed at its position. The last
window along an axis always sits flush with the edge, so every pixel is covered (the released SWG
and MultiDiffusion code can leave border pixels uncovered). Along the width the layout may be
circular (wrap-around) for 360-degree canvases.
"""
from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from .errors import WindowguideError

WEIGHTINGS = ("uniform", "cone", "gaussian")
CONE_EPS = 1e-4  # guided-fusion cone: no pixel gets zero total weight (the released code zeroes corners)


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise WindowguideError(f"{name} must be an int or a pair (h, w), got {v!r}")
        a, b = v
    else:
        a = b = v
    if isinstance(a, bool) or isinstance(b, bool) or int(a) != a or int(b) != b or a < 1 or b < 1:
        raise WindowguideError(f"{name} must be positive integers, got {v!r}")
    return int(a), int(b)


def axis_positions(size: int, window: int, stride: int | None = None, n: int | None = None,
                   circular: bool = False) -> tuple[int, ...]:
    """Start positions of windows along one axis; give exactly one of ``stride`` and ``n``.

    Non-circular, n windows: p_i = floor(i * (size - window) / (n - 1)), which is the official SWG
    stride (size - window) // (n - 1) whenever it divides, and otherwise spreads the remainder so the
    last window is flush with the edge. With a stride: 0, s, 2s, ... and a last window at
    size - window. Circular: windows start at 0, s, ... < size and wrap around the edge.
    """
    if window > size:
        raise WindowguideError(f"window {window} is larger than the image side {size}; accepted: window <= {size}")
    if (stride is None) == (n is None):
        raise WindowguideError("give exactly one of stride and windows per side")
    if circular:
        if n is None:
            if not 1 <= stride <= window:
                raise WindowguideError(f"stride {stride} must be in 1..{window} (the window) so windows cover the canvas")
            n = math.ceil(size / stride)
            return tuple(i * stride for i in range(n))
        if n > size:
            raise WindowguideError(f"{n} circular windows on a side of {size}: at most {size} distinct positions")
        if n < 1 or n * window < size:
            raise WindowguideError(f"{n} circular windows of {window} cannot cover a side of {size}; "
                             f"need at least {math.ceil(size / window)}")
        return tuple((i * size) // n for i in range(n))
    if n is not None:
        if n < 1:
            raise WindowguideError(f"windows per side must be >= 1, got {n}")
        if n == 1:
            if window != size:
                raise WindowguideError(f"one window of {window} cannot cover a side of {size}; use >= 2 windows")
            return (0,)
        if (n - 1) * window + window < size:
            raise WindowguideError(f"{n} windows of {window} cannot cover a side of {size}")
        if n > size - window + 1:     # more windows than distinct positions: repeats, and unbounded memory
            raise WindowguideError(f"{n} windows per side of {window} on a side of {size}: there are only "
                                   f"{size - window + 1} distinct positions; accepted: n <= {size - window + 1}")
        return tuple((i * (size - window)) // (n - 1) for i in range(n))
    if not 1 <= stride <= window:
        raise WindowguideError(f"stride {stride} must be in 1..{window} (the window) so windows cover the image")
    pos = list(range(0, size - window + 1, stride))
    if pos[-1] != size - window:
        pos.append(size - window)  # flush with the edge
    return tuple(pos)


@dataclass(frozen=True)
class Layout:
    """K = prod_a len(starts[a]) windows of size ``window`` over the last D axes of a canvas of size
    ``shape`` (D = 2: (H, W) for images, D = 3: (T, H, W) for video), in row-major order of their starts.
    An axis flagged in ``wraps`` is circular: its windows wrap around the edge (a 360-degree panorama
    along W, a looping video along T)."""

    shape: tuple[int, ...]
    window: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    wraps: tuple[bool, ...]

    @property
    def n(self) -> int:
        return math.prod(len(s) for s in self.starts)

    @property
    def positions(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*self.starts))

    # the image axes by name (the last two), as the 2-D code and its messages speak of them
    height = property(lambda self: self.shape[-2])
    width = property(lambda self: self.shape[-1])
    tops = property(lambda self: self.starts[-2])
    lefts = property(lambda self: self.starts[-1])
    circular = property(lambda self: any(self.wraps), doc="whether any axis wraps around")

    def _check(self, x: torch.Tensor) -> None:
        d = len(self.shape)
        if x.dim() != d + 2 or tuple(x.shape[-d:]) != self.shape:
            axes = "HW" if d == 2 else "THW" if d == 3 else "axes"
            raise WindowguideError(f"tensor of shape {tuple(x.shape)} does not fit this layout's canvas "
                                   f"{'x'.join(map(str, self.shape))} (expected N, C, {', '.join(axes)})")

    def _wrapped(self, x: torch.Tensor) -> torch.Tensor:
        """x with the first window-1 entries appended along each circular axis whose windows wrap, so
        wrapping windows are plain slices."""
        d = len(self.shape)
        for a in range(d):
            k = self.window[a]
            if self.wraps[a] and max(self.starts[a]) + k > self.shape[a]:
                x = torch.cat([x, x.narrow(x.dim() - d + a, 0, k - 1)], dim=x.dim() - d + a)
        return x

    def window_slices(self, p) -> tuple:
        """The index of the window starting at ``p`` (one start per axis) in a [..., *shape] tensor."""
        return (Ellipsis,) + tuple(slice(s, s + k) for s, k in zip(p, self.window))

    def extended_shape(self) -> tuple[int, ...]:
        """The canvas shape with window-1 more entries along each wrapping axis (where wrapped windows land)."""
        return tuple(s + (k - 1 if c else 0) for s, k, c in zip(self.shape, self.window, self.wraps))

    def regions(self, n: int) -> torch.Tensor:
        """[N*K, 2D]: each window's start on every axis, then the canvas's size on every axis, for N
        samples (for images: (top, left, H, W))."""
        one = torch.tensor([(*p, *self.shape) for p in self.positions], dtype=torch.long)
        return one.repeat(n, 1)

    def window_conds(self, cond, ks=None):
        """The condition of every window (of windows ``ks`` only when given): each sample's repeated for
        its windows, sample-major (``conds.cond_repeat``)."""
        from .conds import cond_repeat
        return cond_repeat(cond, self.n if ks is None else len(ks))

    def weights(self, weighting, device=None, dtype=torch.float32) -> torch.Tensor:
        """One window's weight map m, [*window] (``window_weights``)."""
        return window_weights(weighting, self.window, device, dtype)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, *shape] -> [N*K, C, *window], one stacked tensor, windows of sample 0 first."""
        return self.crop_windows(x, range(self.n))

    def crop_windows(self, x: torch.Tensor, ks: list[int]) -> torch.Tensor:
        """The crops of windows ``ks`` only: [N, C, *shape] -> [N*len(ks), C, *window], sample-major."""
        self._check(x)
        xx = self._wrapped(x)
        pos = self.positions
        crops = torch.stack([xx[self.window_slices(pos[k])] for k in ks], dim=1)
        return crops.reshape(-1, *crops.shape[2:])

    def accumulator(self, like: torch.Tensor) -> torch.Tensor:
        """Zeros for ``accumulate``: [N, C, *shape extended by window-1 along wrapping axes] (``like``:
        the canvas state)."""
        return like.new_zeros(like.shape[0], like.shape[1], *self.extended_shape())

    def accumulate(self, out: torch.Tensor, windows: torch.Tensor, ks: list[int],
                   weighting: str | torch.Tensor = "uniform") -> None:
        """out += m_k y_k at window k's place for the windows ``ks`` ([N*len(ks), C, *window],
        sample-major): the same additions, in the same order, as ``fold`` makes."""
        m = self.weights(weighting, windows.device, windows.dtype)
        y = windows.reshape(-1, len(ks), *windows.shape[1:]) * m
        pos = self.positions
        for j, k in enumerate(ks):
            out[self.window_slices(pos[k])] += y[:, j]

    def finish(self, out: torch.Tensor, weighting: str | torch.Tensor = "uniform") -> torch.Tensor:
        """The fold of everything accumulated: unwrap(out) / sum_k m_k."""
        return self.unwrap(out) / self.total_weight(weighting, out.device, out.dtype)

    def fold(self, windows: torch.Tensor, weighting: str | torch.Tensor = "uniform") -> torch.Tensor:
        """[N*K, C, *window] -> [N, C, *shape]: sum_k m_k y_k / sum_k m_k at every entry."""
        d = len(self.shape)
        if windows.dim() != d + 2 or windows.shape[0] % self.n or tuple(windows.shape[-d:]) != self.window:
            raise WindowguideError(f"windows of shape {tuple(windows.shape)} do not fit this layout ({self.n} windows "
                                   f"of {'x'.join(map(str, self.window))} per sample)")
        out = self.accumulator(windows[: windows.shape[0] // self.n])      # [N, C, ...] zeros
        self.accumulate(out, windows, range(self.n), weighting)
        return self.finish(out, weighting)

    def unwrap(self, ext: torch.Tensor) -> torch.Tensor:
        """Fold the entries appended along wrapping axes back onto the axes' starts."""
        d = len(self.shape)
        for a in range(d):
            dim = ext.dim() - d + a
            over = ext.shape[dim] - self.shape[a]
            if over:
                body = ext.narrow(dim, 0, self.shape[a]).clone()
                body.narrow(dim, 0, over).add_(ext.narrow(dim, self.shape[a], over))
                ext = body
        return ext

    def total_weight(self, weighting: str | torch.Tensor = "uniform", device=None, dtype=torch.float32) -> torch.Tensor:
        """sum_k m_k at every entry, [*shape] (the overlap count for uniform weights)."""
        if isinstance(weighting, torch.Tensor):
            return self._total(weighting.to(device=device, dtype=dtype))
        return _cached_total(self, weighting, device, dtype)

    def _total(self, m: torch.Tensor) -> torch.Tensor:
        tot = m.new_zeros(self.extended_shape())
        for p in self.positions:
            tot[self.window_slices(p)] += m
        return self.unwrap(tot)

    def count(self, device=None) -> torch.Tensor:
        """How many windows cover each entry, [*shape] (int64)."""
        return self.total_weight("uniform", device, torch.float32).round().long()

    def overlap_mask(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """M-SWG's mask M = (count > 1), [*shape]."""
        return (self.count(device) > 1).to(dtype)


@functools.lru_cache(maxsize=256)
def _cached_total(layout: Layout, weighting: str, device, dtype) -> torch.Tensor:
    return layout._total(window_weights(weighting, layout.window, device, dtype))


AUTO = "auto"


def default_window(side: int, multiple: int = 1, fraction: float = 0.625) -> int:
    """The window of sliding-window guidance on a side of ``side`` latent pixels:
    k = ceil(f side / multiple) * multiple, by default f = 5/8, the M-SWG paper's (40 of 64 on EDM2,
    20 of 32 on DiT), rounded *up* to the network's factor. Rounding up keeps k > side / 2 for f = 5/8,
    so two windows per side always overlap and the M-SWG mask is never empty. A window that would be
    the whole side (k >= side) is refused, naming the side and the factor. The fraction is taken as an
    exact ratio (0.625 = 5/8), so no float rounding moves k."""
    if side < 1 or multiple < 1:
        raise WindowguideError(f"default window: need a side and a factor >= 1, got {side} and {multiple}")
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise WindowguideError(f"window {fraction!r}: accepted: a fraction in (0, 1) of the latent side")
    f = Fraction(fraction).limit_denominator(1 << 20)
    k = -(-f.numerator * side // (f.denominator * multiple)) * multiple
    if k >= side:
        raise WindowguideError(f"a latent side of {side} is too small for a window of {float(fraction):g} of it with the "
                               f"network's factor {multiple}: rounded up, the window is {k} latent pixels, so one window "
                               f"would cover it all and guide nothing; accepted: sides of at least {2 * multiple} latent "
                               f"pixels, a smaller fraction, or window= in latent pixels")
    return k


def layout(height: int, width: int, window, stride=None, windows_per_side=None, circular: bool = False) -> Layout:
    """The 2-D layout on an H x W image: ``layout_nd((height, width), ...)``, ``circular`` along the width.
    ``window``, ``stride`` and ``windows_per_side`` are ints or (h, w) pairs; give exactly one of
    stride and windows_per_side."""
    h, w = _pair(window, "window")
    if (stride is None) == (windows_per_side is None):
        raise WindowguideError("give exactly one of stride and windows_per_side")
    stride = _pair(stride, "stride") if stride is not None else None
    windows_per_side = _pair(windows_per_side, "windows_per_side") if windows_per_side is not None else None
    if circular and w > width:
        raise WindowguideError(f"window width {w} is larger than the canvas width {width}")
    return layout_nd((height, width), (h, w), stride, windows_per_side, circular=(False, bool(circular)),
                     whole_side_once=False)


def layout_nd(shape, window, stride=None, windows_per_side=None, circular=False,
              whole_side_once: bool = True) -> Layout:
    """A Layout over ``shape`` (e.g. (T, H, W)); ``window``, ``stride``, ``windows_per_side`` are
    ints or one value per axis, exactly one of stride and windows_per_side; an axis whose window is the
    whole side has one window (``whole_side_once``). ``circular``: a bool for the last axis or one per
    axis. Positions along each axis: ``axis_positions``."""
    shape = tuple(int(v) for v in shape)
    d = len(shape)
    per = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * d
    window = per(window)
    if len(window) != d or any(isinstance(k, bool) or int(k) != k or k < 1 for k in window):
        raise WindowguideError(f"window must be a positive int or {d} of them, got {window!r}")
    window = tuple(int(k) for k in window)
    if (stride is None) == (windows_per_side is None):
        raise WindowguideError("give exactly one of stride and windows_per_side")
    strides = per(stride) if stride is not None else (None,) * d
    counts = per(windows_per_side) if windows_per_side is not None else (None,) * d
    circ = tuple(circular) if isinstance(circular, (tuple, list)) else (False,) * (d - 1) + (bool(circular),)
    if len(strides) != d or len(counts) != d or len(circ) != d:
        raise WindowguideError(f"stride, windows_per_side and circular take one value per axis ({d})")
    starts = []
    for a in range(d):
        if whole_side_once and window[a] == shape[a] and not circ[a]:
            starts.append((0,))
            continue
        starts.append(axis_positions(shape[a], window[a], strides[a], counts[a], circular=circ[a]))
    return Layout(shape, window, tuple(starts), tuple(bool(c) for c in circ))


def window_weights(weighting, *window, device=None, dtype=torch.float32) -> torch.Tensor:
    """A window's weight map m over its D axes, [*window] (``window``: the sizes, or one tuple of them).

    uniform:  m = 1.
    cone:     guided fusion, m = 1 - d / d_corner + 1e-4, d the Euclidean distance from the centre
              ((k_a - 1) / 2 on every axis), d_corner = that distance at a corner (sqrt(2) c for a square).
    gaussian: Mixture of Diffusers, m = exp(-sum_a (i_a - c_a)^2 / (2 (0.1 k_a)^2)).
    A tensor of the window's shape is used as given (it must be positive).
    """
    window, device, dtype = _weights_args(window, device, dtype)
    if isinstance(weighting, torch.Tensor):
        if tuple(weighting.shape) != window or not (weighting > 0).all():
            raise WindowguideError(f"a weight map must be positive with shape {window}, got {tuple(weighting.shape)}")
        return weighting.to(device=device, dtype=dtype)
    half = [(k - 1) / 2 for k in window]
    axes = torch.meshgrid(*[torch.arange(k, dtype=torch.float64) - c for k, c in zip(window, half)], indexing="ij")
    if weighting == "uniform":
        m = torch.ones(window, dtype=torch.float64)
    elif weighting == "cone":
        corner = math.hypot(*half)
        m = (1 - sum(a ** 2 for a in axes).sqrt() / corner if corner > 0 else torch.ones(window, dtype=torch.float64)) + CONE_EPS
    elif weighting == "gaussian":
        m = torch.exp(-sum(a ** 2 / (2 * (0.1 * k) ** 2) for a, k in zip(axes, window)))
    else:
        raise WindowguideError(f"weighting must be one of {WEIGHTINGS} or a tensor, got {weighting!r}")
    return m.to(device=device, dtype=dtype)


def _weights_args(window, device, dtype):
    """``window_weights``' sizes given as (h, w, [device, dtype]) or ((h, w), [device, dtype])."""
    if window and isinstance(window[0], (tuple, list)):
        window, rest = tuple(window[0]), window[1:]
    else:
        n_sizes = next((i for i, v in enumerate(window) if not isinstance(v, int) or isinstance(v, bool)), len(window))
        window, rest = tuple(window[:n_sizes]), window[n_sizes:]
    if rest:
        device = rest[0]
        dtype = rest[1] if len(rest) > 1 else dtype
    return tuple(int(k) for k in window), device, dtype


__all__ = ["Layout", "layout", "axis_positions", "window_weights", "WEIGHTINGS", "CONE_EPS", "layout_nd"]


# Where the samples of the network call in progress sit on their canvas: set by the guided denoiser
# around each call, read by model adapters whose conditioning depends on it (SDXL's crop time ids, a
# transformer's positional embedding, ComfyUI's area / mask / ControlNet conditioning). None outside
# windowguide's calls.
_REGIONS: ContextVar = ContextVar("windowguide_regions", default=None)
_SAMPLES: ContextVar = ContextVar("windowguide_samples", default=None)


def current_regions() -> torch.Tensor | None:
    """[N, 4] (top, left, canvas height, canvas width) of each sample of the network call in progress,
    in the denoiser's pixels; a full image is (0, 0, H, W). None when not called by windowguide."""
    return _REGIONS.get()


def current_samples() -> torch.Tensor | None:
    """[N] the sample of the canvas batch each row of the network call in progress belongs to (the
    canvas's own batch index, whatever windows or crops the row went through); None when unknown."""
    return _SAMPLES.get()


@contextmanager
def regions_of_call(regions: torch.Tensor | None, samples: torch.Tensor | None = None):
    """Within the block, ``current_regions`` is ``regions`` ([N, 2D]: each row's starts on the D axes, then
    the canvas's sizes) and ``current_samples`` is ``samples`` ([N] canvas batch indices, or None)."""
    tokens = _REGIONS.set(regions), _SAMPLES.set(None if regions is None else samples)
    try:
        yield
    finally:
        _REGIONS.reset(tokens[0])
        _SAMPLES.reset(tokens[1])


def rows_of_call(idx: torch.Tensor):
    """``regions_of_call`` narrowed to the rows ``idx`` of the call in progress (a call split in parts)."""
    regions, samples = current_regions(), current_samples()
    if regions is None:
        return regions_of_call(None)
    return regions_of_call(regions[idx.to(regions.device)], None if samples is None else samples[idx.to(samples.device)])
