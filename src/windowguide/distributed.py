"""torch.distributed, the small part windowguide needs: rank and world size from torchrun's
environment, seed sharding, barriers, float64 all-reduce and row gathering.

Started with plain ``python`` (no ``WORLD_SIZE`` in the environment) everything is one process and
every function here is a no-op. Under ``torchrun --nproc_per_node=K`` the process group is opened
once (NCCL for CUDA devices, gloo on the CPU); rank r owns the seeds whose position in the seed list
is r mod K. Since every seed has its own generator, the images do not depend on K or the batch size.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """This process's place, from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (one process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device | str = "cpu") -> Ranks:
    """Open the process group once (when started by torchrun) and return this process's place;
    on CUDA each process uses the GPU of its LOCAL_RANK."""
    r = ranks()
    if r.active and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(r.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return r


def local_device(device: torch.device | str, r: Ranks) -> torch.device:
    """'cuda' means this rank's GPU under torchrun; anything else is kept."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and r.active:
        return torch.device("cuda", r.local_rank)
    return device


def shard(items: Iterable, r: Ranks) -> Iterator:
    """The items at positions rank, rank + K, rank + 2K, ... (lazily)."""
    for i, item in enumerate(items):
        if i % r.world == r.rank:
            yield item


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone)."""
    t = t.clone()
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate [n_r, ...] tensors of every rank in rank order (n_r may differ)."""
    if not dist.is_initialized():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    width = int(max(c.item() for c in counts))
    padded = torch.zeros((width,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)])


# One canvas across processes: under an open process group the fused loop splits each step's windows over
# the ranks (``window_ranks``) unless this process draws samples of its own (``alone``, seed sharding); in a
# joint draw only rank 0 writes (``writes``).
_ALONE: ContextVar = ContextVar("windowguide_alone", default=False)
_SILENT: ContextVar = ContextVar("windowguide_silent", default=False)


@contextmanager
def alone():
    """Within the block this process draws its own samples: the fused loop splits no windows over ranks."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


@contextmanager
def one_canvas(r: Ranks):
    """Within the block every rank draws the same samples together (each step's windows split over the
    ranks), and only rank 0 writes them."""
    token = _SILENT.set(not r.main)
    try:
        yield
    finally:
        _SILENT.reset(token)


def writes() -> bool:
    """Whether this process writes what it draws (False for ranks other than 0 in a joint draw)."""
    return not _SILENT.get()


def window_ranks() -> Ranks:
    """The ranks a fused step's windows are split over: every rank of the open process group, or this
    process alone (no group, or inside ``alone``)."""
    if _ALONE.get() or not dist.is_initialized() or dist.get_world_size() < 2:
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size())


def reduce_canvas(t: torch.Tensor) -> None:
    """Sum a canvas-sized tensor over the ranks in place; a rank that stopped is said, with what to do."""
    from .errors import WindowguideError
    try:
        dist.all_reduce(t)
    except RuntimeError as exc:
        raise WindowguideError(f"a process of this run stopped while the ranks combined a step's windows "
                               f"(torch.distributed: {str(exc).splitlines()[0][:200]}); the finished results are "
                               f"kept: run the same command again to resume") from exc


def close() -> None:
    """Wait for every rank, then close the process group (so a command can run again in-process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["Ranks", "ranks", "init", "local_device", "shard", "barrier", "all_reduce_sum", "gather_rows", "close",
           "alone", "one_canvas", "writes", "window_ranks", "reduce_canvas"]
