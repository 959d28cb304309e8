"""``windowguide panorama --model PIPELINE_DIR --prompt ... --width 2048``: a canvas wider than a
diffusers pipeline's model, fused from windows of its native size (MultiDiffusion / GF / gaussian,
VCF for DDPM, style alignment), on the pipeline's own schedule, decoded without tile seams. Every
family ``from_pipeline`` accepts: VP ones (SD, SDXL, PixArt, DiT; DDIM by default) and flow ones
(SD3, FLUX, FLUX.2, Chroma, Qwen-Image, Z-Image, SANA; flow Euler, 28 steps, the schedule of one
window's size, their own default CFG scale). Each window's network call gets the window's place on
the canvas (positional ids / RoPE, SDXL's crop coordinates, DiT's sin-cos slice).
Written like ``panorama`` (per-seed PNGs, resumable, settings, manifest, torchrun-sharded)."""
from __future__ import annotations

import os
from typing import Any

import torch

from .. import distributed
from .. import spec
from ..errors import WindowguideError
from ..files import check_out_dir, write_png
from ..fusion import check_fusion, panorama
from ..generate import parse_seeds
from ..regional import check_regions, regional_panorama
from .runfolder import claim, region_inputs
from .common import MAX_STEPS, check_count, draw_missing, finish, rank_device
from .panorama import panorama_path, write_stack
from .sample_pipeline import conditions_and_guidance, latent_factor, latent_side, load_pipeline


def run(folder: str, prompt: str | None = None, negative_prompt: str = "", width: int = 2048,
        height: int | None = None, stride: int = 8, mode: str = "multidiffusion", fuse: str | None = None,
        sampler: str | None = None, steps: int | None = None, vcf: bool = False, style_alpha: float = 0.0,
        circular: bool = False, guidance: str | None = None, klass: Any = None, seeds: Any = "0", out: str = "runs/panorama",
        max_batch: int | None = None, device: Any = "cpu", dtype: str = "float32", batch_size: int = 1,
        progress: bool = True, regions: list[dict] | None = None, **sampler_options) -> dict:
    from ..adapters.registry import from_pipeline
    from ..adapters.registry import default_guidance
    seeds = parse_seeds(seeds)
    if steps is not None:
        check_count(steps, "--steps", maximum=MAX_STEPS)
    for v, flag in ((batch_size, "--batch-size"), (width, "--width"), (stride, "--stride")):
        check_count(v, flag)
    r, device = rank_device(device)
    progress = progress and r.main
    check_out_dir(out)
    pipe = load_pipeline(folder, device, dtype)
    m = from_pipeline(pipe)
    sampler = sampler or ("flow_euler" if m.flow else "ddim")
    steps = steps or (28 if m.flow else 50)
    guidance = guidance or default_guidance(pipe, m.flow)
    check_fusion(mode, fuse, None, sampler, vcf, sampler_options)
    factor = latent_factor(m, pipe)
    c, (wh, ww) = m.channels, m.size
    canvas = (c, latent_side(height, factor, m.multiple, "--height") or wh,
              latent_side(width, factor, m.multiple, "--width"))
    from ..fusion import canvas_layout
    wh, ww = min(wh, canvas[1]), min(ww, canvas[2])     # a canvas below the trained size: windows of its size
    limit = m.max_latent                   # a position table's extent (Z-Image's RoPE axes_lens)
    if limit and (canvas[1] > limit[0] or canvas[2] + (ww - 1 if circular else 0) > limit[1]):
        raise WindowguideError(f"a {canvas[2] * factor}x{canvas[1] * factor} canvas runs past this {m.family} model's "
                               f"positions; accepted: up to {(limit[1] - (ww - 1 if circular else 0)) * factor}x"
                               f"{limit[0] * factor} pixels")
    canvas_layout(min(batch_size, len(seeds)), c, canvas[1:], (wh, ww), stride, circular, device,
                  f"a {canvas[2] * factor}x{canvas[1] * factor} panorama")
    if regions and (m.num_classes or m.unconditional):
        raise WindowguideError(f"--region/--regions on a pipeline take prompts; this {m.family} pipeline takes "
                               f"{'class labels' if m.num_classes else 'no condition'}")
    first = prompt if prompt is not None or not regions else regions[0].get("prompt")
    klass, cond_of, g = conditions_and_guidance(m, guidance, first, negative_prompt, klass)
    sigmas = m.sigmas(steps, shape=(c, wh, ww))          # a window's schedule (its tokens: dynamic shifts)
    scheduler_options = m.sampler_options(sampler, steps)
    if "targets" in scheduler_options:
        raise WindowguideError("this scheduler's DDIM steps go to t - T // N, off its trailing/linspace timesteps; "
                               "window fusion does not reproduce that yet: use --sampler ddpm, or a scheduler with "
                               "timestep_spacing='leading'")
    sampler_options = {**scheduler_options, **sampler_options}     # the scheduler's clip_sample / thresholding
    settings = dict(model=os.path.abspath(folder), family=m.family, prompt=prompt, negative_prompt=negative_prompt,
                    canvas=list(canvas), window=[wh, ww], stride=stride, mode=mode, fuse=fuse, sampler=sampler,
                    steps=steps, vcf=vcf, style_alpha=style_alpha, circular=circular, guidance=spec.canonical(guidance),
                    klass=klass, dtype=dtype, sampler_options=sampler_options)
    regs = prompt_regions(m, regions, prompt, negative_prompt, (canvas[1] * factor, canvas[2] * factor), factor) \
        if regions else None
    if regions:
        check_regions(regs, canvas[1:])
        settings["regions"] = regions
    claim(out, "panorama", settings, region_inputs(regions))

    def fused(batch):
        if regs:
            return regional_panorama(m.denoiser, canvas, batch, regs, window=(wh, ww), stride=stride, mode=mode,
                                     sampler=sampler, sigmas=sigmas, guidance=g, circular=circular, device=device,
                                     progress=progress, max_batch=max_batch, **sampler_options)
        return panorama(m.denoiser, canvas, batch, window=(wh, ww), stride=stride, mode=mode, fuse=fuse,
                         sampler=sampler, sigmas=sigmas, guidance=g, cond=cond_of(batch), vcf=vcf,
                         style_alpha=style_alpha, circular=circular, max_batch=max_batch, device=device,
                         progress=progress, **sampler_options)

    def draw(batch):
        with torch.no_grad():
            images = m.decode(m.pipeline_latents(fused(batch), sigmas))
        for s, im in zip(batch, images):
            if distributed.writes():
                write_png(im, panorama_path(out, s))

    draw_missing(seeds, r, lambda s: panorama_path(out, s), batch_size, draw, progress, fused=True)
    finish(out, r, lambda: write_stack(out, canvas[1] * factor))
    return settings


def prompt_regions(m, entries: list[dict], prompt, negative_prompt: str, canvas_px: tuple[int, int], factor: int):
    """Regions of a pipeline's entries ({"prompt", "box" | "mask"}, image pixels); --prompt, when given, is
    a background region over the whole canvas, beneath the others."""
    from ..regional import regions_from_entries
    for i, e in enumerate(entries):
        if "class" in e:
            raise WindowguideError(f"region {i}: this pipeline takes prompts ({{\"prompt\": ...}}), not class labels")
    if prompt is not None:
        entries = [{"prompt": prompt, "box": [0, 0, *canvas_px]}] + list(entries)
    return regions_from_entries(entries, canvas_px, factor,
                                lambda e: m.encode(prompt=str(e["prompt"]), negative_prompt=negative_prompt)[0])


__all__ = ["run", "prompt_regions"]
