"""``windowguide upscale IMAGE --model PIPELINE_DIR --scale 2 --strength 0.35 --prompt ...``: the image
upscaled over windows (``windowguide.upscale``), one PNG per seed in ``--out`` (a re-run skips the seeds
already written), with ``settings.json``."""
from __future__ import annotations

import os
from typing import Any

from .. import spec
from ..errors import WindowguideError
from ..files import check_out_dir, write_json, write_png
from ..generate import parse_seeds
from ..imageio import read_uint8
from .common import MAX_STEPS, check_count
from .sample_pipeline import load_pipeline


def run(image: str, folder: str, scale: float = 2, strength: float = 0.35, prompt: str | None = None,
        negative_prompt: str = "", guidance: str = "cfg:w=6.5", seeds: Any = "0", steps: int = 50,
        mode: str = "gf", stride: int = 8, sampler: str = "ddim", vcf: bool = False, filter: str = "lanczos",
        progressive: bool = False, out: str = "runs/upscale", device: Any = "cpu", dtype: str = "float32") -> dict:
    """Upscale IMAGE with the pipeline folder's model for each seed (module docstring); returns the settings."""
    from ..upscale import progressive_upscale, upscale
    seeds = parse_seeds(seeds)
    check_count(steps, "--steps", maximum=MAX_STEPS)
    check_count(stride, "--stride")
    check_out_dir(out)
    if not os.path.isfile(image):
        raise WindowguideError(f"IMAGE {image}: no such file")
    picture = read_uint8(image)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise WindowguideError(f"IMAGE {image}: an RGB image is needed, got shape {picture.shape}")
    pipe = load_pipeline(folder, device, dtype)
    g = spec.build(guidance, spec.Context(net=None, load=_no_weak))
    settings = dict(image=os.path.abspath(image), model=os.path.abspath(folder), scale=scale, strength=strength,
                    prompt=prompt, negative_prompt=negative_prompt, guidance=spec.canonical(guidance), steps=steps,
                    mode=mode, stride=stride, sampler=sampler, vcf=vcf, filter=filter, progressive=progressive)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "settings.json"), settings)
    options = dict(strength=strength, steps=steps, prompt=prompt, negative_prompt=negative_prompt, guidance=g,
                   mode=mode, stride=stride, sampler=sampler, vcf=vcf, filter=filter)
    for seed in seeds:
        path = os.path.join(out, f"upscaled_{seed:06d}.png")
        if os.path.exists(path):
            continue
        if progressive:
            result = progressive_upscale(pipe, picture, scale, seeds=[seed], **options)[0]
        else:
            result = upscale(pipe, picture, scale, seeds=[seed], **options)[0]
        write_png(result, path)
    return settings


def _no_weak(name: str):
    raise WindowguideError(f"upscale takes no weak models yet ({name!r}): use cfg, swg, mswg in --guidance")


__all__ = ["run"]
