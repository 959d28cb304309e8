"""Timing helpers the benchmarks share: interleaved medians and FLOP counts (its own module, so that the
benchmark modules import it and not each other)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_interleaved(fns: dict[str, Callable], repeats: int, device) -> dict[str, float]:
    """The median seconds of each function, run ``repeats`` times in alternating order after a warm-up (GPU
    work synchronised), so that every method is timed beside the same neighbours on a noisy machine."""
    times = {k: [] for k in fns}
    for fn in fns.values():      # warm-up: allocator, oneDNN/cuDNN algorithm choice
        fn()
    order = list(fns)
    for r in range(repeats):
        # alternate the order (ABC, CBA, ...) so no method always follows the same neighbour
        for k in (order if r % 2 == 0 else order[::-1]):
            fn = fns[k]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def flops(net, x, sigma, labels) -> int:
    """The FLOPs of one network call (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, sigma, labels)
    return counter.get_total_flops()


__all__ = ["time_interleaved", "flops"]
