"""How many CPU threads a run should use now.

PyTorch's CPU kernels run every operation on all of their threads and wait for the slowest. When
another program already keeps one of two cores busy, two threads take 2-5x longer than one (measured
on a 2-core machine with one busy loop beside a 24 x 24 UNet: 35-74 s with 2 threads, 14-15 s with 1;
alone: 8-9 s with 2, 13-14 s with 1). So a short interactive run counts the cores that are idle now and
uses that many threads.
"""
from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies summed over all cores, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)       # idle + iowait
    return idle, sum(fields[:8])


def cores_available() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores(window: float = 0.25) -> float | None:
    """Cores idle during the next ``window`` seconds, measured from /proc/stat (None off Linux).
    The caller sleeps meanwhile, so its own process does not count as busy."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(window)
    b = _cpu_times()
    total = b[1] - a[1]
    if total <= 0:
        return None
    return (b[0] - a[0]) / total * (os.cpu_count() or 1)


def free_threads(window: float = 0.25) -> int:
    """Threads for a run now: the idle cores rounded to the nearest integer, at least 1, at most the
    cores this process may use. Where idleness cannot be measured: torch's own default."""
    import torch
    idle = idle_cores(window)
    if idle is None:
        return torch.get_num_threads()
    return max(1, min(cores_available(), int(idle + 0.5)))


def use_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads for this run and return the count: ``threads`` if given, else
    $WINDOWGUIDE_THREADS, else the idle cores now (``free_threads``), shared among the processes torchrun
    started on this machine."""
    import torch
    if threads is None and os.environ.get("WINDOWGUIDE_THREADS", "").isdigit():
        threads = max(1, int(os.environ["WINDOWGUIDE_THREADS"]))          # a fixed count for every command
    if threads is None:
        threads = max(1, free_threads() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    torch.set_num_threads(int(threads))
    return int(threads)


__all__ = ["free_threads", "idle_cores", "cores_available", "use_threads"]
