"""What a fused run needs in memory, known from its sizes before anything is allocated, and what the
device has: a run that cannot fit is refused before it starts, with the figures, instead of failing
out of memory minutes later (or in the middle of building its window layout).

The estimate of a fused run (float32 unless said) of N samples of C channels on a canvas of P entries
covered by K windows of p entries each:

    bytes = b N C (STATE_COPIES P + WINDOW_COPIES K p)

STATE_COPIES counts the canvas-sized tensors alive in one step (the state, the fold's numerator and
denominator, the fused prediction, the noise); WINDOW_COPIES the window-sized ones (the crops, their
step's states and predictions). The network's activations come on top and are bounded by the view
batch (``max_batch``), so they are not counted here.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import WindowguideError

STATE_COPIES = 6
WINDOW_COPIES = 4
GIB = 1 << 30


def window_count(sizes: Sequence[int], window: Sequence[int], stride: Any) -> int:
    """How many windows of ``window`` cover a canvas of ``sizes`` at ``stride`` (an int or one per axis),
    the last flush with the edge, computed without listing them."""
    strides = [stride] * len(sizes) if isinstance(stride, int) else list(stride)
    return math.prod(1 if s <= w else math.ceil((s - w) / max(1, st)) + 1
                     for s, w, st in zip(sizes, window, strides))


def fused_bytes(n: int, channels: int, sizes: Sequence[int], window: Sequence[int], stride: Any,
                bytes_per_value: int = 4, view_batch: int | None = None) -> int:
    """The memory a fused run holds at once, besides the network (module docstring); with a view batch
    only that many windows' states are held (K replaced by min(K, view batch))."""
    p, k = math.prod(sizes), window_count(sizes, window, stride)
    k = k if view_batch is None else min(k, int(view_batch))
    w = math.prod(min(a, b) for a, b in zip(window, sizes))
    return bytes_per_value * n * channels * (STATE_COPIES * p + WINDOW_COPIES * k * w)


def view_batch_for(n: int, channels: int, sizes: Sequence[int], window: Sequence[int], stride: Any,
                   limit: int, what: str, bytes_per_value: int = 4) -> int | None:
    """The largest view batch v whose fused run fits in ``limit`` bytes (``--max-memory``, or a GPU's free
    memory): b N C (STATE_COPIES P + WINDOW_COPIES v p) <= limit; None when every window fits at once. A
    canvas that cannot fit even with one window at a time is refused before it starts, with the figure."""
    one = fused_bytes(n, channels, sizes, window, stride, bytes_per_value, view_batch=1)
    if one > limit:
        raise WindowguideError(f"{what}: its canvas alone needs about {amount(one)} besides the network (one window "
                               f"at a time), over the {amount(limit)} allowed; accepted: a smaller canvas, fewer seeds "
                               f"at once, or more memory")
    k = window_count(sizes, window, stride)
    per_window = bytes_per_value * n * channels * WINDOW_COPIES * math.prod(min(a, b) for a, b in zip(window, sizes))
    v = 1 + (limit - one) // per_window
    return None if v >= k else int(v)


def available_bytes(device: Any = "cpu") -> int:
    """Memory free for this run: a GPU's free memory (``torch.cuda.mem_get_info``), else the machine's
    available memory (``MemAvailable``; psutil where /proc is missing)."""
    import torch
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        return 1 << 62


def amount(n_bytes: float) -> str:
    """A memory figure in GiB, or MiB below one GiB."""
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / (1 << 20):.2f} MiB"


def check_fits(need: int, what: str, device: Any = "cpu", limit: int | None = None) -> None:
    """Refuse a run that needs more than the device has free (or than ``limit`` bytes, --max-memory)."""
    have = available_bytes(device) if limit is None else int(limit)
    if need > have:
        source = "the limit given" if limit is not None else f"free on {device if device is not None else 'cpu'}"
        raise WindowguideError(f"{what} needs about {amount(need)} besides the network, and {amount(have)} "
                               f"is {source}; accepted: a smaller size, fewer seeds at once, or a larger machine")


def check_fused_run(n: int, channels: int, sizes: Sequence[int], window: Sequence[int], stride: Any, what: str,
                    device: Any = "cpu", bytes_per_value: int = 4, view_batch: int | None = None) -> int:
    """``check_fits`` for a fused run of these sizes (``view_batch`` windows at a time); returns the
    estimate in bytes."""
    need = fused_bytes(n, channels, sizes, window, stride, bytes_per_value, view_batch)
    check_fits(need, what, device)
    return need


__all__ = ["window_count", "fused_bytes", "view_batch_for", "available_bytes", "check_fits", "check_fused_run"]
