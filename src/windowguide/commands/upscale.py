"""``windowguide upscale IMAGE --model MODEL --scale 2 --strength 0.35 [--prompt ... | --class ...]``: the
image upscaled over windows (``windowguide.upscaling``), one PNG per seed in ``--out`` (a re-run skips the seeds
already written), with ``settings.json``. MODEL: a diffusers pipeline folder (SD, SDXL, SD3, FLUX, ...;
``--prompt``) or a bundled / EDM model (pixel space, windows of its size, ``--class``, Karras schedule)."""
from __future__ import annotations

import os
from typing import Any

from .. import distributed, spec
from ..errors import WindowguideError
from ..files import check_out_dir, write_png
from ..fusion import check_fusion
from ..generate import parse_seeds
from ..imageio import read_picture
from ..memory import check_fused_run
from .common import (MAX_STEPS, check_count, draw_missing, finish, labels_for, memory_view_batch, normalise_class,
                     prepare, rank_device)
from .runfolder import claim
from .sample_pipeline import is_pipeline_dir, load_pipeline


def run(image: str, folder: str, scale: float = 2, strength: float = 0.35, prompt: str | None = None,
        negative_prompt: str = "", guidance: str | None = None, seeds: Any = "0", steps: int = 50,
        mode: str = "gf", stride: int = 8, sampler: str | None = None, vcf: bool = False,
        filter: str = "lanczos", progressive: bool = False, out: str = "runs/upscale", device: Any = "cpu", dtype: str = "float32",
        klass: Any = None, max_batch: int | None = 8, progress: bool = True, view_batch: int | None = None,
        max_memory: float | None = None) -> dict:
    """Upscale IMAGE with the pipeline folder's model for each seed (module docstring); returns the settings.
    Every input is checked before the run folder is claimed (``runfolder.claim``); a re-run resumes."""
    from ..upscaling import check_filter, progressive_stages, start_step, upscaled_size
    seeds = parse_seeds(seeds)
    start_step(steps, strength)                       # refuse a bad strength or scale before anything is read
    stages = progressive_stages(scale) if progressive else [scale]
    check_count(steps, "--steps", maximum=MAX_STEPS)
    check_count(stride, "--stride")
    check_filter(filter)
    if max_batch is not None:
        check_count(max_batch, "--max-batch")
    if view_batch is not None:
        check_count(view_batch, "--view-batch")
    check_out_dir(out)
    r, device = rank_device(device)
    if not os.path.lexists(image):
        raise WindowguideError(f"IMAGE {image}: no such file")
    picture, notes = read_picture(image)
    size = picture.shape[:2]
    for factor in stages:                             # the output's size (and each stage's) is bounded up front
        size = upscaled_size(size, factor)
    src = (_pipeline(folder, picture, scale, progressive, prompt, guidance, sampler, klass, device, dtype)
           if is_pipeline_dir(folder) else
           _bundled(folder, picture, scale, progressive, prompt, guidance, sampler, klass, device))
    sampler, guidance, klass = src["sampler"], src["guidance"], src["klass"]
    check_fusion(mode, None, None, sampler, vcf, {})          # refuse a bad mode / sampler / VCF before writing
    if mode not in ("gf", "multidiffusion"):
        raise WindowguideError(f"--mode {mode!r}: upscale fuses window states; accepted: gf, multidiffusion")
    canvas = [v // src["factor"] for v in size]
    what = f"an upscale to {size[1]}x{size[0]}"
    view_batch = memory_view_batch(view_batch, max_memory, 1, src["channels"], canvas, src["window"], stride, device,
                                   what)
    check_fused_run(1, src["channels"], canvas, src["window"], stride, what, device, view_batch=view_batch)
    settings = dict(image=os.path.abspath(image), model=folder if not os.path.exists(folder) else
                    os.path.abspath(folder), klass=klass, scale=scale, strength=strength,
                    prompt=prompt, negative_prompt=negative_prompt, guidance=spec.canonical(guidance), steps=steps,
                    mode=mode, stride=stride, sampler=sampler, vcf=vcf, filter=filter, progressive=progressive,
                    read=notes, **({"view_batch": view_batch} if view_batch is not None else {}))
    claim(out, "upscale", settings, {"image": image})
    options = dict(strength=strength, steps=steps, prompt=prompt, negative_prompt=negative_prompt,
                   guidance=src["terms"], mode=mode, stride=stride, sampler=sampler, vcf=vcf, filter=filter,
                   max_batch=max_batch, progress=progress and r.main, view_batch=view_batch)
    path_of = lambda seed: os.path.join(out, f"upscaled_{seed:06d}.png")

    def draw(batch):                              # one seed at a time: a batch of one
        image = src["draw"](batch[0], **options)
        if distributed.writes():
            write_png(image, path_of(batch[0]))
    draw_missing(seeds, r, path_of, 1, draw, progress, fused=True)
    finish(out, r, lambda: None)
    return settings


def _pipeline(folder, picture, scale, progressive, prompt, guidance, sampler, klass, device, dtype):
    """A diffusers pipeline folder: its default guidance and sampler (the rule ``panorama`` uses)."""
    from ..adapters.registry import from_pipeline
    from ..adapters.registry import default_guidance
    from ..upscaling import progressive_upscale, upscale
    if klass is not None:
        raise WindowguideError(f"--class {klass}: a pipeline folder takes --prompt, not class labels")
    pipe = load_pipeline(folder, device, dtype)
    m = from_pipeline(pipe)
    guidance = guidance or default_guidance(pipe, m.flow)
    g = spec.build(guidance, spec.Context(net=None, load=no_weak))
    sampler = sampler or ("flow_euler" if m.flow else "ddim")
    fn = lambda seed, **o: (progressive_upscale if progressive else upscale)(pipe, picture, scale, seeds=[seed], **o)[0]
    return dict(draw=fn, terms=g, sampler=sampler, guidance=guidance, klass=None, channels=m.channels,
                factor=m.vae_factor, window=tuple(m.size))


def _bundled(folder, picture, scale, progressive, prompt, guidance, sampler, klass, device):
    """A bundled / EDM model in pixel space: windows of its size, class labels."""
    if prompt is not None:
        raise WindowguideError(f"--prompt: {folder!r} is a class-conditional model; use --class")
    guidance = guidance or "none"
    denoiser, net, info, g = prepare(folder, guidance, device)
    klass = normalise_class(klass if klass is not None else "none", net.num_classes)
    window = tuple(info["shape"][1:])
    fn = lambda seed, **o: _pixels(denoiser, picture, scale, seed, net.num_classes, klass, window, progressive, o)
    return dict(draw=fn, terms=g, sampler=sampler or "ddim", guidance=guidance, klass=klass, channels=info["shape"][0],
                factor=1, window=window)


def _pixels(denoiser, picture, scale, seed, num_classes, klass, window, progressive, options):
    """One seed's upscale by a pixel-space model, x2 stages when progressive."""
    from ..upscaling import progressive_stages, upscale_pixels
    options = {k: v for k, v in options.items() if k not in ("prompt", "negative_prompt")}
    cond = labels_for([seed], num_classes, klass)
    stages = progressive_stages(scale) if progressive else [scale]
    for factor in stages:
        picture = upscale_pixels(denoiser, picture, factor, seeds=[seed], cond=cond, window=window, **options)[0]
    return picture


def no_weak(name: str):
    raise WindowguideError(f"upscale takes no weak models yet ({name!r}): use cfg, swg, mswg in --guidance")


__all__ = ["run"]
