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
import math
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
    """K = len(tops) * len(lefts) windows of size (h, w) on an H x W canvas, row-major order."""

    height: int
    width: int
    window: tuple[int, int]
    tops: tuple[int, ...]
    lefts: tuple[int, ...]
    circular: bool = False

    @property
    def n(self) -> int:
        return len(self.tops) * len(self.lefts)

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(t, l) for t in self.tops for l in self.lefts]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-2:] != (self.height, self.width):
            raise WindowguideError(f"tensor of shape {tuple(x.shape)} does not fit this layout's canvas "
                             f"{self.height}x{self.width} (expected NCHW)")

    def _wrapped(self, x: torch.Tensor) -> torch.Tensor:
        """x with the first w-1 columns appended, so wrapping windows are plain slices."""
        w = self.window[1]
        if self.circular and max(self.lefts) + w > self.width:
            return torch.cat([x, x[..., : w - 1]], dim=-1)
        return x

    def regions(self, n: int) -> torch.Tensor:
        """[N*K, 4] (top, left, canvas height, canvas width) of the crops of ``crop`` for N samples."""
        one = torch.tensor([(t, l, self.height, self.width) for t, l in self.positions], dtype=torch.long)
        return one.repeat(n, 1)

    def window_conds(self, cond):
        """The condition of every window: each sample's repeated for its K windows (``conds.cond_repeat``)."""
        from .conds import cond_repeat
        return cond_repeat(cond, self.n)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N*K, C, h, w], one stacked tensor, windows of sample 0 first."""
        return self.crop_windows(x, range(self.n))

    def crop_windows(self, x: torch.Tensor, ks: list[int]) -> torch.Tensor:
        """The crops of windows ``ks`` only: [N, C, H, W] -> [N*len(ks), C, h, w], sample-major."""
        self._check(x)
        h, w = self.window
        xx = self._wrapped(x)
        pos = self.positions
        crops = torch.stack([xx[:, :, pos[k][0]:pos[k][0] + h, pos[k][1]:pos[k][1] + w] for k in ks], dim=1)
        return crops.reshape(-1, *crops.shape[2:])

    def accumulator(self, like: torch.Tensor) -> torch.Tensor:
        """Zeros for ``accumulate``: [N, C, H, W + (w - 1 if circular)] (``like``: the canvas state)."""
        return like.new_zeros(like.shape[0], like.shape[1], self.height,
                              self.width + (self.window[1] - 1 if self.circular else 0))

    def accumulate(self, out: torch.Tensor, windows: torch.Tensor, ks: list[int],
                   weighting: str | torch.Tensor = "uniform") -> None:
        """out += m_k y_k at window k's place for the windows ``ks`` ([N*len(ks), C, h, w], sample-major):
        the same additions, in the same order, as ``fold`` makes."""
        h, w = self.window
        m = window_weights(weighting, h, w, windows.device, windows.dtype)
        y = windows.reshape(-1, len(ks), *windows.shape[1:]) * m
        pos = self.positions
        for j, k in enumerate(ks):
            t, l = pos[k]
            out[:, :, t:t + h, l:l + w] += y[:, j]

    def finish(self, out: torch.Tensor, weighting: str | torch.Tensor = "uniform") -> torch.Tensor:
        """The fold of everything accumulated: unwrap(out) / sum_k m_k."""
        return self.unwrap(out) / self.total_weight(weighting, out.device, out.dtype)

    def fold(self, windows: torch.Tensor, weighting: str | torch.Tensor = "uniform") -> torch.Tensor:
        """[N*K, C, h, w] -> [N, C, H, W]: sum_k m_k * y_k / sum_k m_k at every pixel."""
        h, w = self.window
        if windows.dim() != 4 or windows.shape[0] % self.n or windows.shape[-2:] != (h, w):
            raise WindowguideError(f"windows of shape {tuple(windows.shape)} do not fit this layout "
                             f"({self.n} windows of {h}x{w} per sample)")
        out = self.accumulator(windows[: windows.shape[0] // self.n])      # [N, C, ...] zeros
        self.accumulate(out, windows, range(self.n), weighting)
        return self.finish(out, weighting)

    def unwrap(self, ext: torch.Tensor) -> torch.Tensor:
        if ext.shape[-1] == self.width:
            return ext
        out = ext[..., : self.width].clone()
        over = ext.shape[-1] - self.width
        out[..., :over] += ext[..., self.width:]
        return out

    def total_weight(self, weighting: str | torch.Tensor = "uniform", device=None, dtype=torch.float32) -> torch.Tensor:
        """sum_k m_k at every pixel, [H, W] (the overlap count for uniform weights)."""
        if isinstance(weighting, torch.Tensor):
            return self._total(weighting.to(device=device, dtype=dtype))
        return _cached_total(self, weighting, device, dtype)

    def _total(self, m: torch.Tensor) -> torch.Tensor:
        h, w = self.window
        ext = self.width + (w - 1 if self.circular else 0)
        tot = m.new_zeros(self.height, ext)
        for t, l in self.positions:
            tot[t:t + h, l:l + w] += m
        return self.unwrap(tot)

    def count(self, device=None) -> torch.Tensor:
        """How many windows cover each pixel, [H, W] (int64)."""
        return self.total_weight("uniform", device, torch.float32).round().long()

    def overlap_mask(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """M-SWG's mask M = (count > 1), [H, W]."""
        return (self.count(device) > 1).to(dtype)


@functools.lru_cache(maxsize=256)
def _cached_total(layout: Layout, weighting: str, device, dtype) -> torch.Tensor:
    return layout._total(window_weights(weighting, *layout.window, device, dtype))


AUTO = "auto"


def default_window(side: int, multiple: int = 1) -> int:
    """The default window of sliding-window guidance on a side of ``side`` latent pixels:
    k = ceil(5/8 side / multiple) * multiple, the M-SWG paper's 5/8 of the side (40 of 64 on EDM2,
    20 of 32 on DiT) rounded *up* to the network's factor. Rounding up keeps k > side / 2, so two
    windows per side always overlap and the M-SWG mask is never empty. A side too small for any
    window below it (k >= side) is refused, naming the side and the factor."""
    if side < 1 or multiple < 1:
        raise WindowguideError(f"default window: need a side and a factor >= 1, got {side} and {multiple}")
    k = -(-5 * side // (8 * multiple)) * multiple
    if k >= side:
        raise WindowguideError(f"a latent side of {side} is too small for sliding-window guidance with the network's "
                               f"factor {multiple}: its default window (5/8 of the side, rounded up to {multiple}) "
                               f"would be the whole side; accepted: sides of at least {2 * multiple} latent pixels "
                               f"with a window that fits, or give window= explicitly")
    return k


def layout(height: int, width: int, window, stride=None, windows_per_side=None, circular: bool = False) -> Layout:
    """Build a Layout. ``window``, ``stride`` and ``windows_per_side`` are ints or (h, w) pairs;
    give exactly one of stride and windows_per_side. ``circular`` wraps along the width."""
    h, w = _pair(window, "window")
    if (stride is None) == (windows_per_side is None):
        raise WindowguideError("give exactly one of stride and windows_per_side")
    sh, sw = _pair(stride, "stride") if stride is not None else (None, None)
    nh, nw = _pair(windows_per_side, "windows_per_side") if windows_per_side is not None else (None, None)
    if circular and w > width:
        raise WindowguideError(f"window width {w} is larger than the canvas width {width}")
    tops = axis_positions(height, h, sh, nh)
    lefts = axis_positions(width, w, sw, nw, circular=circular)
    return Layout(int(height), int(width), (h, w), tops, lefts, bool(circular))


def window_weights(weighting: str | torch.Tensor, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """A window's weight map m, [h, w].

    uniform:  m = 1.
    cone:     guided fusion, m = 1 - d / d_corner + 1e-4, d the Euclidean distance from the centre
              ((h-1)/2, (w-1)/2), d_corner = that distance at a corner (sqrt(2) c for a square).
    gaussian: Mixture of Diffusers, m = exp(-(i-ci)^2 / (2 (0.1 h)^2) - (j-cj)^2 / (2 (0.1 w)^2)).
    A tensor of shape [h, w] is used as given (it must be positive).
    """
    if isinstance(weighting, torch.Tensor):
        if weighting.shape != (h, w) or not (weighting > 0).all():
            raise WindowguideError(f"a weight map must be positive with shape ({h}, {w}), got {tuple(weighting.shape)}")
        return weighting.to(device=device, dtype=dtype)
    ci, cj = (h - 1) / 2, (w - 1) / 2
    i = torch.arange(h, dtype=torch.float64).view(-1, 1) - ci
    j = torch.arange(w, dtype=torch.float64).view(1, -1) - cj
    if weighting == "uniform":
        m = torch.ones(h, w, dtype=torch.float64)
    elif weighting == "cone":
        corner = math.hypot(ci, cj)
        m = (1 - (i ** 2 + j ** 2).sqrt() / corner if corner > 0 else torch.ones(h, w, dtype=torch.float64)) + CONE_EPS
    elif weighting == "gaussian":
        m = torch.exp(-(i ** 2) / (2 * (0.1 * h) ** 2) - (j ** 2) / (2 * (0.1 * w) ** 2))
    else:
        raise WindowguideError(f"weighting must be one of {WEIGHTINGS} or a tensor, got {weighting!r}")
    return m.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class GridLayout:
    """Windows over the last D axes of a tensor (D = 3 for video: T, H, W), the N-D form of ``Layout``:
    K = prod_a len(starts[a]) windows of size ``window`` on a canvas of size ``shape``, in row-major
    order of their starts; any axis may be ``circular`` (wrap-around: a looping video along T)."""

    shape: tuple[int, ...]
    window: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    circular: tuple[bool, ...]

    @property
    def n(self) -> int:
        return math.prod(len(s) for s in self.starts)

    @property
    def positions(self) -> list[tuple[int, ...]]:
        import itertools
        return list(itertools.product(*self.starts))

    def _check(self, x: torch.Tensor) -> None:
        d = len(self.shape)
        if x.dim() != d + 2 or tuple(x.shape[-d:]) != self.shape:
            raise WindowguideError(f"tensor of shape {tuple(x.shape)} does not fit this layout's canvas {self.shape} "
                                   f"(expected N, C, {', '.join('THW'[-d:] if d <= 3 else 'axes')})")

    def _wrapped(self, x: torch.Tensor) -> torch.Tensor:
        """x with the first window-1 entries appended along each circular axis whose windows wrap."""
        d = len(self.shape)
        for a in range(d):
            k = self.window[a]
            if self.circular[a] and max(self.starts[a]) + k > self.shape[a]:
                x = torch.cat([x, x.narrow(x.dim() - d + a, 0, k - 1)], dim=x.dim() - d + a)
        return x

    def _slices(self, p) -> tuple:
        return (Ellipsis,) + tuple(slice(s, s + k) for s, k in zip(p, self.window))

    def regions(self, n: int) -> torch.Tensor:
        """[N*K, 2D] (the window's start on each axis, then the canvas's size on each axis); for D = 2
        this is ``Layout.regions``' (top, left, H, W)."""
        one = torch.tensor([(*p, *self.shape) for p in self.positions], dtype=torch.long)
        return one.repeat(n, 1)

    def window_conds(self, cond):
        """The condition of every window: each sample's repeated for its K windows (``conds.cond_repeat``)."""
        from .conds import cond_repeat
        return cond_repeat(cond, self.n)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, *shape] -> [N*K, C, *window], windows of sample 0 first."""
        return self.crop_windows(x, range(self.n))

    def weights(self, weighting, device=None, dtype=torch.float32) -> torch.Tensor:
        """One window's weight map [*window] (``window_weights_nd``)."""
        return window_weights_nd(weighting, self.window, device, dtype)

    def crop_windows(self, x: torch.Tensor, ks: list[int]) -> torch.Tensor:
        """The crops of windows ``ks`` only: [N, C, *shape] -> [N*len(ks), C, *window], sample-major."""
        self._check(x)
        xx = self._wrapped(x)
        pos = self.positions
        crops = torch.stack([xx[self._slices(pos[k])] for k in ks], dim=1)
        return crops.reshape(-1, *crops.shape[2:])

    def accumulator(self, like: torch.Tensor) -> torch.Tensor:
        """Zeros for ``accumulate``: [N, C, *extended shape] (``like``: the canvas state)."""
        return like.new_zeros(like.shape[0], like.shape[1], *self._extended())

    def accumulate(self, out: torch.Tensor, windows: torch.Tensor, ks: list[int],
                   weighting: str | torch.Tensor = "uniform") -> None:
        """out += m_k y_k at window k's place for the windows ``ks``, as ``fold`` adds them."""
        m = self.weights(weighting, windows.device, windows.dtype)
        y = windows.reshape(-1, len(ks), *windows.shape[1:]) * m
        pos = self.positions
        for j, k in enumerate(ks):
            out[self._slices(pos[k])] += y[:, j]

    def finish(self, out: torch.Tensor, weighting: str | torch.Tensor = "uniform") -> torch.Tensor:
        """The fold of everything accumulated: unwrap(out) / sum_k m_k."""
        return self.unwrap(out) / self.total_weight(weighting, out.device, out.dtype)

    def fold(self, windows: torch.Tensor, weighting: str | torch.Tensor = "uniform") -> torch.Tensor:
        """[N*K, C, *window] -> [N, C, *shape]: sum_k m_k y_k / sum_k m_k at every entry."""
        d = len(self.shape)
        if windows.dim() != d + 2 or windows.shape[0] % self.n or tuple(windows.shape[-d:]) != self.window:
            raise WindowguideError(f"windows of shape {tuple(windows.shape)} do not fit this layout ({self.n} windows "
                                   f"of {self.window} per sample)")
        out = self.accumulator(windows[: windows.shape[0] // self.n])      # [N, C, ...] zeros
        self.accumulate(out, windows, range(self.n), weighting)
        return self.finish(out, weighting)

    def _extended(self) -> tuple[int, ...]:
        return tuple(s + (k - 1 if c else 0) for s, k, c in zip(self.shape, self.window, self.circular))

    def unwrap(self, ext: torch.Tensor) -> torch.Tensor:
        d = len(self.shape)
        for a in range(d):
            dim = ext.dim() - d + a
            over = ext.shape[dim] - self.shape[a]
            if over:
                body = ext.narrow(dim, 0, self.shape[a]).clone()
                body.narrow(dim, 0, over).add_(ext.narrow(dim, self.shape[a], over))
                ext = body
        return ext

    def total_weight(self, weighting: str | torch.Tensor = "uniform", device=None, dtype=torch.float32):
        """sum_k m_k at every entry, [*shape]."""
        m = self.weights(weighting, device, dtype)
        tot = m.new_zeros(self._extended())
        for p in self.positions:
            tot[self._slices(p)] += m
        return self.unwrap(tot)

    def count(self, device=None) -> torch.Tensor:
        """How many windows cover each entry, [*shape] (int64)."""
        return self.total_weight("uniform", device, torch.float32).round().long()

    def overlap_mask(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """M-SWG's mask M = (count > 1), [*shape]."""
        return (self.count(device) > 1).to(dtype)


def layout_nd(shape, window, stride=None, windows_per_side=None, circular=False) -> GridLayout:
    """A GridLayout over ``shape`` (e.g. (T, H, W)); ``window``, ``stride``, ``windows_per_side`` are
    ints or one value per axis, exactly one of stride and windows_per_side; an axis whose window is the
    whole side has one window. ``circular``: a bool for the last axis or one per axis."""
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
        if window[a] == shape[a] and not circ[a]:
            starts.append((0,))
            continue
        starts.append(axis_positions(shape[a], window[a], strides[a], counts[a], circular=circ[a]))
    return GridLayout(shape, window, tuple(starts), circ)


def window_weights_nd(weighting, window: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """A window's weight map over D axes: ``window_weights``' uniform / cone (1 - d / d_corner + 1e-4, d
    the Euclidean distance from the centre over every axis) / gaussian (a product of 0.1-size gaussians);
    for D = 2 exactly ``window_weights``. A tensor of the window's shape is used as given."""
    if len(window) == 2:
        return window_weights(weighting, *window, device, dtype)
    if isinstance(weighting, torch.Tensor):
        if tuple(weighting.shape) != tuple(window) or not (weighting > 0).all():
            raise WindowguideError(f"a weight map must be positive with shape {tuple(window)}, got "
                                   f"{tuple(weighting.shape)}")
        return weighting.to(device=device, dtype=dtype)
    axes = torch.meshgrid(*[torch.arange(k, dtype=torch.float64) - (k - 1) / 2 for k in window], indexing="ij")
    if weighting == "uniform":
        m = torch.ones(window, dtype=torch.float64)
    elif weighting == "cone":
        corner = math.sqrt(sum(((k - 1) / 2) ** 2 for k in window))
        d = torch.sqrt(sum(a ** 2 for a in axes))
        m = (1 - d / corner if corner > 0 else torch.ones(window, dtype=torch.float64)) + CONE_EPS
    elif weighting == "gaussian":
        m = torch.exp(-sum(a ** 2 / (2 * (0.1 * k) ** 2) for a, k in zip(axes, window)))
    else:
        raise WindowguideError(f"weighting must be one of {WEIGHTINGS} or a tensor, got {weighting!r}")
    return m.to(device=device, dtype=dtype)


__all__ = ["Layout", "layout", "axis_positions", "window_weights", "WEIGHTINGS", "CONE_EPS", "GridLayout", "layout_nd",
           "window_weights_nd"]


# Where the samples of the network call in progress sit on their canvas: set by the guided denoiser
# around each call, read by model adapters whose conditioning depends on it (SDXL's crop time ids, a
# transformer's positional embedding). None outside windowguide's calls.
_REGIONS: ContextVar = ContextVar("windowguide_regions", default=None)


def current_regions() -> torch.Tensor | None:
    """[N, 4] (top, left, canvas height, canvas width) of each sample of the network call in progress,
    in the denoiser's pixels; a full image is (0, 0, H, W). None when not called by windowguide."""
    return _REGIONS.get()


@contextmanager
def regions_of_call(regions: torch.Tensor | None):
    token = _REGIONS.set(regions)
    try:
        yield
    finally:
        _REGIONS.reset(token)

