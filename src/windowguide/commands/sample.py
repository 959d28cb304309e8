"""``windowguide sample``: one PNG per seed, a grid, an .npz of all samples and a JSON of the settings.

Seeds whose PNG already exists (from a run with the same settings) are not drawn again, so an
interrupted run continues where it stopped.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from .. import spec
from ..generate import parse_seeds, sample
from ..images import grid, save_png, to_uint8
from ..models.checkpoint import bundled_names, load_denoiser
from ..errors import WindowguideError


def labels_for(seeds: list[int], num_classes: int, klass: Any) -> torch.Tensor | None:
    """Labels of the seeds: 'all' = seed mod K (every class equally often), 'none' = the null label
    (unconditional), or one class index for all."""
    if not num_classes:
        if klass not in (None, "none", "all"):
            raise WindowguideError(f"--class {klass}: this model is unconditional")
        return None
    if klass in (None, "all"):
        return torch.tensor([s % num_classes for s in seeds])
    if klass == "none":
        return torch.full((len(seeds),), num_classes)
    try:
        k = int(klass)
    except (TypeError, ValueError):
        raise WindowguideError(f"--class {klass!r}: accepted 'all', 'none' or 0..{num_classes - 1}") from None
    if not 0 <= k < num_classes:
        raise WindowguideError(f"--class {k} out of range: this model has classes 0..{num_classes - 1}")
    return torch.full((len(seeds),), k)


def prepare(model: str, guidance: str, device: Any = "cpu"):
    """(denoiser, net, model record, Guidance) for a model name/path and a SPEC string."""
    denoiser, info, net = load_denoiser(model, device)
    name = model if model in bundled_names() else None
    ctx = spec.Context(net=net, load=lambda n: load_denoiser(n, device)[0], model_name=name)
    return denoiser, net, info, spec.build(guidance, ctx)


def run(model: str, guidance: str = "none", seeds: Any = "0-63", out: str = "runs/sample", klass: Any = None,
        steps: int = 32, sampler: str = "heun", batch_size: int = 64, device: Any = "cpu",
        progress: bool = True, **sampler_options) -> dict:
    """Sample and write everything to ``out``; returns the settings record."""
    seeds = parse_seeds(seeds)
    denoiser, net, info, g = prepare(model, guidance, device)
    labels = labels_for(seeds, net.num_classes, klass)
    shape = tuple(info["shape"])
    settings = dict(model=model, model_record={k: info.get(k) for k in ("dataset", "preset", "steps_done")},
                    guidance=guidance, terms=[repr(t) for t in g], seeds=seeds, klass=klass, steps=steps,
                    sampler=sampler, shape=list(shape), sampler_options=sampler_options)
    os.makedirs(out, exist_ok=True)
    settings_path = os.path.join(out, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            old = json.load(f)
        if {k: v for k, v in old.items() if k != "seeds"} != {k: v for k, v in settings.items() if k != "seeds"}:
            raise WindowguideError(f"{out} holds samples made with other settings; choose another --out")
    with open(settings_path, "w") as f:
        json.dump(settings, f, indent=1)
    png = lambda s: os.path.join(out, f"{s:06d}.png")
    todo = [i for i, s in enumerate(seeds) if not os.path.exists(png(s))]
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        cond = None if labels is None else labels[idx]
        with torch.no_grad():
            x = sample(denoiser, shape, [seeds[i] for i in idx], steps=steps, sampler=sampler, guidance=g,
                       cond=cond, device=device, progress=progress, **sampler_options)
        for i, im in zip(idx, to_uint8(x)):
            save_png(im, png(seeds[i]))
    images = np.stack([_read(png(s)) for s in seeds])
    np.savez(os.path.join(out, "samples.npz"), images=images, seeds=np.array(seeds),
             labels=np.array([] if labels is None else labels.numpy()))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    save_png(grid(x, scale=max(1, 96 // shape[1])), os.path.join(out, "grid.png"))
    return settings


def _read(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a
