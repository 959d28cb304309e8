"""``windowguide sample``: one PNG per seed, a grid, an .npz of all samples and a JSON of the settings.

Everything is checked before anything is written. The per-seed PNGs are the truth: each is written
atomically, a seed whose PNG exists and decodes is not drawn again (an interrupted run continues
where it stopped; a PNG that does not decode is redrawn, with a warning), and ``samples.npz`` and
``grid.png`` and ``manifest.json`` are rebuilt from the PNGs on disk. Several processes may write into
one folder at once (disjoint or overlapping seeds): ``settings.json`` (the recipe, not the seeds) is
written once, under a lock, and every later run must match it. Under ``torchrun --nproc_per_node=K``
rank r draws the seeds at positions r, r + K, ... of the list (one generator per seed, so the images
are the same for any K and batch size) and rank 0 writes the summary files at the end.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from .. import spec
from ..errors import WindowguideError
from ..files import check_out_dir, read_png, write_json, write_npz, write_png
from ..generate import check_sampler_options, parse_seeds, sample, schedule_sigmas
from ..models.latents import pixel_decoder
from ..images import grid
from ..sampling import SAMPLERS
from ..train.w2s import describe
from .runfolder import claim
from .common import (MAX_STEPS, check_count, check_guidance, draw_missing, finish, labels_for, normalise_class, prepare,
                     rank_device)

GRID_LIMIT = 256        # grid.png shows the first 256 samples (by seed); samples.npz holds them all
_PNG = re.compile(r"^(\d+)\.png$")


def png_path(out: str, seed: int) -> str:
    return os.path.join(out, f"{seed:06d}.png")


def run(model: str, guidance: str = "none", seeds: Any = "0-63", out: str = "runs/sample", klass: Any = None,
        steps: int = 32, sampler: str = "heun", batch_size: int = 64, device: Any = "cpu",
        progress: bool = True, vae: str | None = None, preset: str | None = None, **sampler_options) -> dict:
    """Sample and write everything to ``out``; returns the settings record."""
    seeds = parse_seeds(seeds)
    check_count(steps, "--steps", maximum=MAX_STEPS)
    check_count(batch_size, "--batch-size")
    if sampler not in SAMPLERS:
        raise WindowguideError(f"--sampler {sampler!r}: accepted: {', '.join(sorted(SAMPLERS))}")
    check_sampler_options(sampler, sampler_options)
    r, device = rank_device(device)
    progress = progress and r.main
    check_out_dir(out)
    denoiser, net, info, g = prepare(model, guidance, device)
    shape = tuple(info["shape"])
    klass = normalise_class(klass, net.num_classes)
    check_guidance(g, denoiser, shape, klass)
    note = describe(info.get("w2s"))
    if note and progress:
        print(f"{model}: {note}" + (f"; --guidance {guidance} adds to it" if g.terms else ""), flush=True)
    schedule_sigmas(sampler, denoiser, steps, **{k: v for k, v in sampler_options.items() if k == "shift"})
    decode, image_shape = pixel_decoder(info, vae, device)
    settings = dict(model=model, model_record={k: info.get(k) for k in ("dataset", "preset", "steps_done")},
                    guidance=spec.canonical(guidance), klass=klass, steps=steps, sampler=sampler,
                    shape=list(shape), sampler_options=sampler_options, **({"preset": preset} if preset else {}))
    claim(out, "sample", settings)
    many = len(seeds) > batch_size * r.world          # then one bar over the seeds, not one per batch
    draw_missing(seeds, r, lambda s: png_path(out, s), batch_size,
                 lambda todo: _draw(todo, denoiser, net, g, shape, klass, out, steps, sampler, device,
                                    progress and not many, sampler_options, decode), progress)
    finish(out, r, lambda: collect(out, net.num_classes, klass, image_shape))
    return settings


def _draw(seeds, denoiser, net, g, shape, klass, out, steps, sampler, device, progress, options, decode) -> None:
    labels = labels_for(seeds, net.num_classes, klass)
    with torch.no_grad():
        x = sample(denoiser, shape, seeds, steps=steps, sampler=sampler, guidance=g, cond=labels, device=device,
                   progress=progress, **options)
    for s, im in zip(seeds, decode(x)):
        write_png(im, png_path(out, s))


def collect(out: str, num_classes: int, klass: Any, shape) -> int:
    """Rebuild samples.npz (every decodable PNG in ``out``, sorted by seed, each once), grid.png
    (the first ``GRID_LIMIT``) and manifest.json (seeds, files, labels); returns the number of samples."""
    seeds, images = [], []
    for name in sorted(os.listdir(out), key=lambda n: (len(n), n)):
        m = _PNG.match(name)
        if m:
            a = read_png(os.path.join(out, name))
            if a is not None and a.shape == (shape[1], shape[2], shape[0]):
                seeds.append(int(m.group(1)))
                images.append(a)
    if not images:
        return 0
    labels = labels_for(seeds, num_classes, klass)
    write_json(os.path.join(out, "manifest.json"), dict(
        count=len(seeds), seeds=seeds, files=[os.path.basename(png_path(out, s)) for s in seeds],
        labels=None if labels is None else labels.tolist(), settings="settings.json"))
    write_npz(os.path.join(out, "samples.npz"), images=np.stack(images), seeds=np.array(seeds, dtype=np.int64),
              labels=np.array([] if labels is None else labels.numpy()))
    x = torch.from_numpy(np.stack(images[:GRID_LIMIT])).permute(0, 3, 1, 2).float() / 127.5 - 1
    write_png(grid(x, scale=max(1, 96 // shape[1])), os.path.join(out, "grid.png"))
    return len(seeds)
