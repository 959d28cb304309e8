"""``windowguide panorama``: a canvas wider (or taller) than the model, from fused windows.

Writes ``panorama_SEED.png`` per seed, ``panoramas.png`` (all of them stacked) and ``settings.json``
(every setting and seed). Built-in models are EDM nets: the schedule is Karras's (0.002..80).
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..fusion import panorama
from ..generate import parse_seeds
from ..images import grid, save_png, to_uint8
from ..sampling import karras_sigmas
from .sample import labels_for, prepare


def run(model: str = "scenes", width: int = 96, height: int | None = None, stride: int = 8,
        mode: str = "multidiffusion", fuse: str | None = None, sampler: str = "ddim", steps: int = 32,
        vcf: bool = False, style_alpha: float = 0.0, circular: bool = False, guidance: str = "none",
        klass: Any = None, seeds: Any = "0-3", out: str = "runs/panorama", max_batch: int | None = None,
        device: Any = "cpu", progress: bool = True, **sampler_options) -> dict:
    """Sample the panoramas and write them to ``out``; returns the settings record."""
    seeds = parse_seeds(seeds)
    denoiser, net, info, g = prepare(model, guidance, device)
    c, h, w = info["shape"]
    height = height or h
    cond = labels_for(seeds, net.num_classes, klass)
    settings = dict(model=model, canvas=[c, height, width], window=[h, w], stride=stride, mode=mode, fuse=fuse,
                    sampler=sampler, steps=steps, vcf=vcf, style_alpha=style_alpha, circular=circular,
                    guidance=guidance, terms=[repr(t) for t in g], klass=klass, seeds=seeds,
                    labels=None if cond is None else cond.tolist(), max_batch=max_batch,
                    sampler_options=sampler_options, schedule="karras 0.002..80 rho 7")
    with torch.no_grad():
        x = panorama(denoiser, (c, height, width), seeds, window=(h, w), stride=stride, mode=mode, fuse=fuse,
                     sampler=sampler, sigmas=karras_sigmas(steps, 0.002, 80.0), guidance=g, cond=cond, vcf=vcf,
                     style_alpha=style_alpha, circular=circular, max_batch=max_batch, device=device,
                     progress=progress, **sampler_options)
    os.makedirs(out, exist_ok=True)
    for s, im in zip(seeds, to_uint8(x)):
        save_png(im, os.path.join(out, f"panorama_{s:06d}.png"))
    save_png(grid(x, nrow=1, scale=max(1, 96 // height)), os.path.join(out, "panoramas.png"))
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
    return settings
