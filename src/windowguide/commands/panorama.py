"""``windowguide panorama``: a canvas wider (or taller) than the model, from fused windows.

Writes ``panorama_SEED.png`` per seed, ``panoramas.png`` (the first 16 stacked), ``manifest.json``
(seeds and files) and ``settings.json`` (the recipe). As with ``sample``, everything is checked before anything is written, seeds are drawn
in batches (memory does not grow with their number), each PNG is written atomically, and a seed
whose PNG exists and decodes is not drawn again; under ``torchrun`` the seeds are split across ranks
as in ``sample``. Built-in models are EDM nets: the schedule is
Karras's (0.002..80).
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from .. import distributed
from .. import spec
from ..errors import WindowguideError
from ..files import check_out_dir, read_png, write_json, write_png
from ..fusion import canvas_layout, check_fusion, panorama
from ..regional import check_regions, regional_panorama
from ..generate import parse_seeds
from ..images import grid, to_uint8
from ..sampling import karras_sigmas
from .runfolder import claim, region_inputs
from .common import (MAX_STEPS, check_count, check_guidance, draw_missing, finish, labels_for, normalise_class, prepare,
                     memory_view_batch, rank_device)

STACK_LIMIT = 16       # panoramas.png stacks the first 16 panoramas (by seed)
_PNG = re.compile(r"^panorama_(\d+)\.png$")


def run(model: str = "scenes", width: int = 96, height: int | None = None, stride: int = 8,
        mode: str = "multidiffusion", fuse: str | None = None, sampler: str = "ddim", steps: int = 32,
        vcf: bool = False, style_alpha: float = 0.0, circular: bool = False, guidance: str = "none",
        klass: Any = None, seeds: Any = "0-3", out: str = "runs/panorama", max_batch: int | None = None,
        device: Any = "cpu", progress: bool = True, batch_size: int = 4, regions: list[dict] | None = None,
        **sampler_options) -> dict:
    """Sample the panoramas and write them to ``out``; returns the settings record."""
    seeds = parse_seeds(seeds)
    check_count(steps, "--steps", maximum=MAX_STEPS)
    check_count(batch_size, "--batch-size")
    check_count(width, "--width")
    if max_batch is not None:
        check_count(max_batch, "--max-batch")
    view_batch = sampler_options.pop("view_batch", None)
    max_memory = sampler_options.pop("max_memory", None)
    if view_batch is not None:
        check_count(view_batch, "--view-batch")
    check_fusion(mode, fuse, None, sampler, vcf, sampler_options)
    if not (0 <= style_alpha <= 1):
        raise WindowguideError(f"--style-alpha {style_alpha}: accepted: a number in [0, 1]")
    r, device = rank_device(device)
    progress = progress and r.main
    check_out_dir(out)
    denoiser, net, info, g = prepare(model, guidance, device)
    c, h, w = info["shape"]
    height = height or h
    check_count(height, "--height")
    view_batch = memory_view_batch(view_batch, max_memory, min(batch_size, len(seeds)), c, (height, width), (h, w),
                                   stride, device, f"a {width}x{height} panorama")
    canvas_layout(min(batch_size, len(seeds)), c, (height, width), (h, w), stride, circular, device,
                  f"a {width}x{height} panorama", view_batch)   # refuses a bad canvas or stride, or one too large, now
    klass = normalise_class(klass, net.num_classes)
    check_guidance(g, denoiser, (c, h, w), klass)
    settings = dict(model=model, canvas=[c, height, width], window=[h, w], stride=stride, mode=mode, fuse=fuse,
                    sampler=sampler, steps=steps, vcf=vcf, style_alpha=style_alpha, circular=circular,
                    guidance=spec.canonical(guidance), klass=klass, max_batch=max_batch,
                    sampler_options=sampler_options, schedule="karras 0.002..80 rho 7")
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    if regions:
        regs = class_regions(regions, klass, net.num_classes, (height, width))
        check_regions(regs, (height, width))
        settings["regions"] = regions
        draw = lambda batch: regional_panorama(denoiser, (c, height, width), batch, regs, window=(h, w), stride=stride,
                                               mode=mode, sampler=sampler, sigmas=sigmas, guidance=g,
                                               circular=circular, device=device, progress=progress, max_batch=max_batch,
                                               view_batch=view_batch, **sampler_options)
    else:
        draw = lambda batch: panorama(denoiser, (c, height, width), batch, window=(h, w), stride=stride, mode=mode,
                                      fuse=fuse, sampler=sampler, sigmas=sigmas, guidance=g,
                                      cond=labels_for(batch, net.num_classes, klass), vcf=vcf,
                                      style_alpha=style_alpha, circular=circular, max_batch=max_batch, device=device,
                                      view_batch=view_batch,
                                      progress=progress, **sampler_options)
    if view_batch is not None:                 # recorded when given (a view batch can move the last float bits)
        settings["view_batch"] = view_batch
    claim(out, "panorama", settings, region_inputs(regions))

    def draw_and_write(todo):
        with torch.no_grad():
            x = draw(todo)
        for seed, im in zip(todo, to_uint8(x)):
            if distributed.writes():
                write_png(im, panorama_path(out, seed))

    draw_missing(seeds, r, lambda s: panorama_path(out, s), batch_size, draw_and_write, progress, fused=True)
    finish(out, r, lambda: write_stack(out, height))
    return settings


def class_regions(entries: list[dict], klass, num_classes: int, canvas: tuple[int, int]):
    """Regions of a class model's entries ({"class": K | "none", "box" | "mask"}, pixels); an explicit
    --class K is a background region over the whole canvas, beneath the others."""
    from ..regional import regions_from_entries
    for i, e in enumerate(entries):
        if "prompt" in e:
            raise WindowguideError(f"region {i}: this model takes class labels ({{\"class\": 0..{num_classes - 1}}}), "
                                   f"not a prompt")
    if klass not in (None, "all"):
        entries = [{"class": klass, "box": [0, 0, *canvas]}] + list(entries)
    null = num_classes

    def cond_of(e):
        k = normalise_class(e["class"], num_classes)
        if k == "all":
            raise WindowguideError("a region's class must be one class or 'none', not 'all'")
        return torch.tensor([null if k in (None, "none") else k])
    return regions_from_entries(entries, canvas, 1, cond_of)


def panorama_path(out: str, seed: int) -> str:
    return os.path.join(out, f"panorama_{seed:06d}.png")


def write_stack(out: str, height: int) -> None:
    """panoramas.png (the first 16 by seed) and manifest.json (every decodable panorama: seeds, files)."""
    names = sorted((n for n in os.listdir(out) if _PNG.match(n)), key=lambda n: (len(n), n))
    good = [n for n in names if read_png(os.path.join(out, n)) is not None]
    write_json(os.path.join(out, "manifest.json"), dict(count=len(good), seeds=[int(_PNG.match(n).group(1)) for n in good],
                                                        files=good, settings="settings.json"))
    names = good[:STACK_LIMIT]
    images = [a for a in (read_png(os.path.join(out, n)) for n in names) if a is not None]
    if images and len({a.shape for a in images}) == 1:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        write_png(grid(x, nrow=1, scale=max(1, 96 // height)), os.path.join(out, "panoramas.png"))
