"""``windowguide sample --model PIPELINE_DIR``: a local diffusers pipeline folder (never downloaded),
sampled with windowguide's guidance and samplers, written like every ``sample`` run (per-seed PNGs,
manifest, npz, grid, settings; resumable; torchrun-sharded).

The pipeline's own scheduler gives the schedule (VP models: its timesteps; SD3: the shifted flow
schedule); the default sampler is DDIM for VP models and flow-Euler for flow models, 50 and 28 steps
as the pipelines default. CFG's null condition is the negative prompt (``--negative-prompt``,
default empty) or DiT's null class.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .. import spec
from ..errors import WindowguideError, missing_module
from ..files import check_out_dir, write_png
from ..generate import parse_seeds, sample
from .common import check_count, claim, draw_missing, finish, labels_for, normalise_class, rank_device
from .sample import collect, png_path

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def is_pipeline_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "model_index.json"))


def load_pipeline(folder: str, device, dtype: str = "float32"):
    if dtype not in DTYPES:
        raise WindowguideError(f"--dtype {dtype!r}: accepted: {', '.join(DTYPES)}")
    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:
        raise missing_module("a pipeline folder", exc) from None
    import json
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    # components saved as absent (e.g. SD3 without T5) must be passed as None explicitly
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=DTYPES[dtype], **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(folder: str, guidance: str = "none", seeds: Any = "0-3", out: str = "runs/sample", prompt: str | None = None,
        negative_prompt: str = "", klass: Any = None, steps: int | None = None, sampler: str | None = None,
        batch_size: int = 4, device: Any = "cpu", dtype: str = "float32", height: int | None = None,
        width: int | None = None, progress: bool = True, crop_positions: str = "slice") -> dict:
    from ..adapters.pipelines import from_pipeline, sample_dit_learned_variance
    seeds = parse_seeds(seeds)
    check_count(batch_size, "--batch-size")
    r, device = rank_device(device)
    progress = progress and r.main
    check_out_dir(out)
    m = from_pipeline(load_pipeline(folder, device, dtype), crop_positions=crop_positions)
    flow = m.family in ("sd3", "flux")
    sampler = sampler or ("flow_euler" if flow else "ddim")
    if sampler == "dit_ddpm" and m.family != "dit":
        raise WindowguideError(f"--sampler dit_ddpm is DiT's learned-variance DDPM; this is a {m.family} pipeline")
    steps = steps or (28 if flow else 50)
    check_count(steps, "--steps")
    factor = m.extras.get("vae_factor", 8) if m.family != "unet2d" else 1
    shape = m.shape(height // factor if height else None, width // factor if width else None)
    klass, cond_of, g = conditions_and_guidance(m, guidance, prompt, negative_prompt, klass)
    from ..guidance import GuidedDenoiser
    GuidedDenoiser(m.denoiser, g).check(shape)
    sigmas = m.sigmas(steps) if sampler != "dit_ddpm" else None
    settings = dict(model=os.path.abspath(folder), family=m.family, prompt=prompt, negative_prompt=negative_prompt,
                    klass=klass, guidance=spec.canonical(guidance), steps=steps, sampler=sampler, shape=list(shape),
                    dtype=dtype, crop_positions=crop_positions)
    claim(out, settings)

    def draw(batch):
        with torch.no_grad():
            if sampler == "dit_ddpm":           # DiT's own: respaced DDPM with the learned variance
                x = sample_dit_learned_variance(m, batch, steps, g, cond_of(batch), device)
                images = m.decode(x)
            else:
                x = sample(m.denoiser, shape, batch, sampler=sampler, sigmas=sigmas, guidance=g, cond=cond_of(batch),
                           device=device, progress=progress)
                images = m.decode(m.pipeline_latents(x, sigmas))
        for s, im in zip(batch, images):
            write_png(im, png_path(out, s))

    draw_missing(seeds, r, lambda s: png_path(out, s), batch_size, draw, progress)
    first = png_path(out, next(iter(seeds)))
    image_shape = None
    if os.path.exists(first):
        from ..files import read_png
        a = read_png(first)
        image_shape = (a.shape[2], a.shape[0], a.shape[1]) if a is not None else None
    finish(out, r, lambda: collect(out, m.num_classes, klass if m.num_classes else None, image_shape or shape))
    return settings


def conditions_and_guidance(m, guidance: str, prompt, negative_prompt, klass):
    """(class choice, seeds -> condition, Guidance) for a pipeline model: DiT's classes with its null
    class, or the prompt's embeddings with the negative prompt's as CFG's null; the SPEC built with the
    model's skip-layer negative."""
    if m.num_classes:
        klass = normalise_class(klass, m.num_classes)
        null, cond_of = torch.tensor(m.num_classes), (lambda batch: labels_for(batch, m.num_classes, klass))
    elif m.family == "unet2d":
        null, cond_of = None, (lambda batch: None)
    else:
        pos, neg = m.encode(prompt=prompt, negative_prompt=negative_prompt)
        null = {k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0]
        cond_of = lambda batch: _repeat(pos, len(batch))
    m.denoiser.null_cond = null
    return klass, cond_of, spec.build(guidance, spec.Context(net=None, load=_no_weak, skip=_skipper(m)))


def _repeat(cond, n: int):
    if isinstance(cond, dict):
        return {k: _repeat(v, n) for k, v in cond.items()}
    return cond.expand(n, *cond.shape[1:]).clone() if cond.shape[0] == 1 else cond


def _no_weak(name: str):
    raise WindowguideError("a pipeline folder cannot take weak models by name yet (ag/wd); use cfg, swg, mswg, slg, sgg")


def _skipper(m):
    if not hasattr(m, "skip_layers"):
        return None

    def skip(blocks):
        try:
            layers = [int(b) for b in blocks]
        except ValueError:
            raise WindowguideError(f"slg on {m.family}: skip= takes layer indices such as 7/8/9, got {'/'.join(blocks)}") from None
        return m.skip_layers(layers)
    return skip


__all__ = ["run", "is_pipeline_dir", "load_pipeline"]
