"""What every command checks before it writes or computes anything: the device, counts, the class
choice, and the guidance SPEC against the model (weak models of the same shape and classes)."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from .. import spec
from ..errors import WindowguideError
from ..files import locked
from ..generate import MAX_STEPS
from ..guidance import CFG, Guidance, GuidedDenoiser
from ..models.checkpoint import bundled_names, load_denoiser, load_matching_denoiser


def rank_device(device: Any):
    """(this process's place under torchrun, its device): the process group is opened here, and
    'cuda' becomes the GPU of the process's LOCAL_RANK."""
    from .. import distributed
    dev = check_device(device)
    r = distributed.init(dev)
    return r, distributed.local_device(dev, r)


def check_device(device: Any) -> torch.device:
    """A torch.device that exists on this machine (cuda needs a visible GPU, mps Apple's backend)."""
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise WindowguideError(f"--device {device!r}: not a device; accepted: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WindowguideError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WindowguideError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise WindowguideError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise WindowguideError(f"--device {device}: accepted: cpu, cuda, cuda:N, mps")
    return dev


def check_count(value: Any, flag: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (bools refused), or a WindowguideError naming the flag."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f"an integer in {minimum}..{maximum}" if maximum is not None else f"an integer >= {minimum}"
        raise WindowguideError(f"{flag} {value!r}: accepted: {bound}")
    return value


def normalise_class(klass: Any, num_classes: int) -> Any:
    """--class as recorded: 'all' (the default on a conditional model: seed mod K), 'none', an index
    in 0..K-1; None for an unconditional model."""
    if not num_classes:
        if klass not in (None, "none", "all"):
            raise WindowguideError(f"--class {klass}: this model is unconditional; leave --class out")
        return None
    if klass in (None, "all", "none"):
        return klass or "all"
    try:
        k = int(klass)
    except (TypeError, ValueError):
        raise WindowguideError(f"--class {klass!r}: accepted 'all', 'none' or 0..{num_classes - 1}") from None
    if not 0 <= k < num_classes:
        raise WindowguideError(f"--class {k} out of range: this model has classes 0..{num_classes - 1}")
    return k


def labels_for(seeds, num_classes: int, klass: Any) -> torch.Tensor | None:
    """Labels of the seeds: 'all' = seed mod K (every class equally often), 'none' = the null label
    (unconditional), or one class index for all."""
    klass = normalise_class(klass, num_classes)
    if klass is None:
        return None
    if klass == "all":
        return torch.tensor([s % num_classes for s in seeds])
    return torch.full((len(seeds),), num_classes if klass == "none" else klass)


def _weak_loader(main_info: dict, device: Any):
    """Load a weak model by name or path, refusing one that cannot guide the main model."""
    return lambda name: load_matching_denoiser(name, main_info.get("shape", []),
                                               main_info["config"].get("num_classes", 0), device)


def prepare(model: str, guidance: str, device: Any = "cpu"):
    """(denoiser, net, model record, Guidance) for a model name/path and a SPEC string; weak models
    named in the SPEC are loaded and checked against the main model."""
    denoiser, info, net = load_denoiser(model, device)
    if info["kind"] == "video":
        raise WindowguideError(f"--model {model} is a video model: use windowguide video --model {model}")
    name = model if model in bundled_names() else None
    ctx = spec.Context(net=net, load=_weak_loader(info, device), model_name=name,
                       load_unconditional=lambda path: load_matching_denoiser(path, info.get("shape", []), 0, device))
    return denoiser, net, info, spec.build(guidance, ctx)


def check_guidance(g: Guidance, denoiser, shape, klass: Any) -> None:
    """Refuse guidance that cannot run: CFG without a class condition, windows the model cannot take."""
    if klass is None and any(isinstance(t, CFG) for t in g):
        raise WindowguideError("cfg needs a class-conditional model; this model is unconditional (use "
                               "swg/mswg, or ag with a weak model)")
    GuidedDenoiser(denoiser, g).check(tuple(shape))


def memory_view_batch(view_batch: int | None, max_memory: float | None, n: int, channels: int, sizes, window,
                      stride, device: Any, what: str) -> int | None:
    """The view batch of a fused command: the one given, capped by what ``max_memory`` GiB allow
    (``memory.view_batch_for``; a canvas that cannot fit even one window at a time is refused now); on a
    GPU without either, the one its free memory allows. None: every window at once."""
    import torch
    from ..memory import GIB, available_bytes, view_batch_for
    if max_memory is not None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) or not 0 < max_memory < 1e6:
            raise WindowguideError(f"--max-memory {max_memory!r}: accepted: a number of GiB above 0 and below 1e6")
        limit = int(max_memory * GIB)
    elif view_batch is None and torch.device(device).type == "cuda":
        limit = available_bytes(device)
    else:
        return view_batch
    v = view_batch_for(n, channels, sizes, window, stride, limit, what)
    return v if view_batch is None else view_batch if v is None else min(view_batch, v)


def draw_missing(seeds, r, path_of: Callable[[int], str], batch_size: int, draw: Callable[[list[int]], None],
                 progress: bool = True, finished: Callable[[int], bool] | None = None, fused: bool = False) -> int:
    """Draw the batches of this rank whose files are not all on disk; returns the seeds drawn.

    The batch is the unit: the seed list is cut into batches of ``batch_size`` in order, and batch j
    belongs to rank j mod K. A network's float results depend (in the last bits) on the batch it runs
    in, so keeping every seed in the same batch makes the images identical byte for byte whatever
    the number of ranks and however often a run was interrupted. A batch with some files missing
    is drawn whole (its present files come out the same and are replaced atomically). ``finished(seed)``:
    whether a seed's results are all there (default: its file decodes). A ``fused`` command (panorama,
    upscale, video) with fewer seeds than ranks draws every seed on all ranks together, each step's windows
    split over them (``distributed.one_canvas``: rank 0 writes); with as many seeds or more they shard."""
    from tqdm import tqdm
    from .. import distributed
    from .runfolder import done
    finished = finished or (lambda s: done(path_of(s)))
    joint = fused and r.active and len(seeds) < r.world
    bar = tqdm(total=len(seeds) if hasattr(seeds, "__len__") else None, desc="seeds", unit="img",
               disable=not (progress and r.main), leave=False)
    drawn = 0
    batches = _batches(seeds, batch_size)
    for batch in (batches if joint else distributed.shard(batches, r)):
        if not all(finished(s) for s in batch):      # a missing or broken file: the batch again
            with (distributed.one_canvas(r) if joint else distributed.alone()):
                draw(batch)
            drawn += len(batch)
        bar.update(len(batch) * (1 if joint else r.world))
    bar.close()
    if drawn == 0 and progress and r.world == 1:     # a finished run re-run: say so instead of nothing
        first = next(iter(seeds), None)
        where = os.path.dirname(path_of(first)) if first is not None else "the folder"
        print(f"all {len(seeds)} seeds already in {where}; nothing to draw", flush=True)
    return drawn


def _batches(seeds, size: int):
    batch = []
    for s in seeds:                      # lazily: a range of 10^10 seeds is never listed
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def finish(out: str, r, collect: Callable[[], Any]) -> None:
    """Wait for every rank, then rank 0 rebuilds the folder's summary files under the folder's lock."""
    from .. import distributed
    distributed.barrier()
    if r.main:
        with locked(out):
            collect()
    distributed.close()


__all__ = ["MAX_STEPS", "rank_device", "draw_missing", "finish", "check_device", "check_count", "normalise_class", "labels_for", "prepare", "check_guidance"]
