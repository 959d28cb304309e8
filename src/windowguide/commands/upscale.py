"""``windowguide upscale IMAGE --model MODEL --scale 2 --strength 0.35 [--prompt ... | --class ...]``: the
image upscaled over windows (``windowguide.upscale``), one PNG per seed in ``--out`` (a re-run skips the seeds
already written), with ``settings.json``. MODEL: a diffusers pipeline folder (SD, SDXL, SD3, FLUX, ...;
``--prompt``) or a bundled / EDM model (pixel space, windows of its size, ``--class``, Karras schedule)."""
from __future__ import annotations

import os
from typing import Any

from .. import spec
from ..errors import WindowguideError
from ..files import check_out_dir, write_json, write_png
from ..fusion import check_fusion
from ..generate import parse_seeds
from ..imageio import read_uint8
from .common import MAX_STEPS, check_count, labels_for, normalise_class, prepare
from .sample_pipeline import is_pipeline_dir, load_pipeline


def run(image: str, folder: str, scale: float = 2, strength: float = 0.35, prompt: str | None = None,
        negative_prompt: str = "", guidance: str | None = None, seeds: Any = "0", steps: int = 50,
        mode: str = "gf", stride: int = 8, sampler: str | None = None, vcf: bool = False,
        filter: str = "lanczos", progressive: bool = False, out: str = "runs/upscale", device: Any = "cpu", dtype: str = "float32",
        klass: Any = None, max_batch: int | None = 8) -> dict:
    """Upscale IMAGE with the pipeline folder's model for each seed (module docstring); returns the settings."""
    from ..upscale import progressive_stages, progressive_upscale, start_step, upscale
    seeds = parse_seeds(seeds)
    start_step(steps, strength)                       # refuse a bad strength or scale before anything is read
    if progressive:
        progressive_stages(scale)
    check_count(steps, "--steps", maximum=MAX_STEPS)
    check_count(stride, "--stride")
    if max_batch is not None:
        check_count(max_batch, "--max-batch")
    check_out_dir(out)
    if not os.path.isfile(image):
        raise WindowguideError(f"IMAGE {image}: no such file")
    picture = read_uint8(image)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise WindowguideError(f"IMAGE {image}: an RGB image is needed, got shape {picture.shape}")
    if is_pipeline_dir(folder):
        if klass is not None:
            raise WindowguideError(f"--class {klass}: a pipeline folder takes --prompt, not class labels")
        pipe = load_pipeline(folder, device, dtype)
        guidance = guidance or "cfg:w=6.5"
        g = spec.build(guidance, spec.Context(net=None, load=_no_weak))
        sampler = sampler or ("flow_euler" if _is_flow(pipe) else "ddim")
        draw = lambda seed, **o: (progressive_upscale if progressive else upscale)(pipe, picture, scale,
                                                                                   seeds=[seed], **o)[0]
    else:
        if prompt is not None:
            raise WindowguideError(f"--prompt: {folder!r} is a class-conditional model; use --class")
        guidance = guidance or "none"
        denoiser, net, info, g = prepare(folder, guidance, device)
        sampler = sampler or "ddim"
        klass = normalise_class(klass if klass is not None else "none", net.num_classes)
        window = tuple(info["shape"][1:])
        draw = lambda seed, **o: _pixels(denoiser, picture, scale, seed, net.num_classes, klass, window,
                                         progressive, o)
    check_fusion(mode, None, None, sampler, vcf, {})          # refuse a bad mode / sampler / VCF before writing
    if mode not in ("gf", "multidiffusion"):
        raise WindowguideError(f"--mode {mode!r}: upscale fuses window states; accepted: gf, multidiffusion")
    settings = dict(image=os.path.abspath(image), model=folder if not os.path.exists(folder) else
                    os.path.abspath(folder), klass=klass, scale=scale, strength=strength,
                    prompt=prompt, negative_prompt=negative_prompt, guidance=spec.canonical(guidance), steps=steps,
                    mode=mode, stride=stride, sampler=sampler, vcf=vcf, filter=filter, progressive=progressive)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "settings.json"), settings)
    options = dict(strength=strength, steps=steps, prompt=prompt, negative_prompt=negative_prompt, guidance=g,
                   mode=mode, stride=stride, sampler=sampler, vcf=vcf, filter=filter, max_batch=max_batch)
    for seed in seeds:
        path = os.path.join(out, f"upscaled_{seed:06d}.png")
        if os.path.exists(path):
            continue
        write_png(draw(seed, **options), path)
    return settings


def _pixels(denoiser, picture, scale, seed, num_classes, klass, window, progressive, options):
    """One seed's upscale by a pixel-space model, x2 stages when progressive."""
    from ..upscale import progressive_stages, upscale_pixels
    options = {k: v for k, v in options.items() if k not in ("prompt", "negative_prompt")}
    cond = labels_for([seed], num_classes, klass)
    stages = progressive_stages(scale) if progressive else [scale]
    for factor in stages:
        picture = upscale_pixels(denoiser, picture, factor, seeds=[seed], cond=cond, window=window, **options)[0]
    return picture


def _is_flow(pipe) -> bool:
    from ..adapters.pipelines import from_pipeline
    return from_pipeline(pipe).flow


def _no_weak(name: str):
    raise WindowguideError(f"upscale takes no weak models yet ({name!r}): use cfg, swg, mswg in --guidance")


__all__ = ["run"]
