"""Upscaling an image with a small model: resize, encode without seams, noise to ``strength``, and denoise
over overlapping windows fused as in the panoramas (img2img window fusion, the "MultiDiffusion upscaler").

    import windowguide as wg
    from windowguide.upscale import upscale
    images = upscale(pipe, image, scale=2, strength=0.35, prompt="a photo", guidance=wg.CFG(6.5))

1. The image (uint8 [H, W, 3]) is resized by ``scale`` with a named filter (Pillow's LANCZOS by default).
2. It is encoded by the pipeline's VAE with the exact tiled encode (``vae_tiling.encode_tiled``: the
   whole image's GroupNorm statistics): z = mean * scaling_factor.
3. It is noised to the schedule's step that ``strength`` starts at, as diffusers' img2img does (the last
   int(N strength) of the N steps run): x = z + sigma_start eps, eps from one generator per seed.
4. The steps run over windows of the model's trained size (``fusion``: GF / MultiDiffusion / gaussian,
   VCF for stochastic samplers), any guidance inside each window, and the result is decoded with the exact
   tiled decode.

Families: those whose VAE is an ``AutoencoderKL`` without a latent shift (SD 1.x/2.x, SDXL). ``progressive``
(DemoFusion's stages): x2 at a time, each stage upscaling the previous one's output. CLI: ``windowguide
upscale IMAGE --model DIR --scale 2 --strength 0.35 --prompt ...`` (``commands/upscale.py``). Not done yet:
regional prompts, ControlNet in every window.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import WindowguideError

FILTERS = ("lanczos", "bicubic", "bilinear", "nearest")


def resize(image: np.ndarray, scale: float, filter: str = "lanczos") -> np.ndarray:
    """uint8 [H, W, 3] -> [round(H scale), round(W scale), 3] with Pillow's filter of that name."""
    from PIL import Image
    if filter not in FILTERS:
        raise WindowguideError(f"filter {filter!r}: accepted: {', '.join(FILTERS)}")
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise WindowguideError(f"the image must be uint8 [H, W, 3] (RGB), got {getattr(image, 'dtype', type(image))} "
                               f"{getattr(image, 'shape', '')}")
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise WindowguideError(f"scale {scale!r}: accepted: a positive number (2 for twice the size)")
    h, w = image.shape[:2]
    size = (int(round(w * scale)), int(round(h * scale)))
    method = getattr(Image.Resampling, filter.upper())
    return np.asarray(Image.fromarray(image).resize(size, method))


def encode_image(pipe, image: np.ndarray) -> torch.Tensor:
    """The image's latents z = E(x).mean * scaling_factor, x = image / 127.5 - 1, by the exact tiled encode."""
    from .adapters.vae_tiling import encode_tiled
    vae = pipe.vae
    if (vae.config.get("shift_factor") or 0.0) != 0.0:
        raise WindowguideError(f"{type(pipe).__name__}: upscaling takes SD / SDXL's VAE (no latent shift) for now")
    x = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    moments = encode_tiled(vae, x)
    return moments[:, : moments.shape[1] // 2] * vae.config.scaling_factor


def progressive_upscale(pipe: Any, image: np.ndarray, scale: float = 4, seeds=(0,), **options) -> np.ndarray:
    """DemoFusion-style stages: x2 per stage (the last stage the remainder), each from the previous output;
    one chain of stages per seed. Returns uint8 [len(seeds), H scale, W scale, 3]."""
    import math
    stages = max(1, int(round(math.log2(scale))))
    if not math.isclose(2 ** stages, scale):
        raise WindowguideError(f"progressive scale {scale!r}: accepted: a power of two (2, 4, 8)")
    outs = []
    for seed in seeds:
        current = image
        for _ in range(stages):
            current = upscale(pipe, current, 2, seeds=[seed], **options)[0]
        outs.append(current)
    return np.stack(outs)


def upscale(pipe: Any, image: np.ndarray, scale: float = 2, strength: float = 0.35, seeds=(0,), steps: int = 50,
            prompt: str | None = None, negative_prompt: str = "", guidance=None, mode: str = "gf", stride: int = 8,
            window: int | None = None, sampler: str = "ddim", vcf: bool = False, filter: str = "lanczos",
            **sampler_options) -> np.ndarray:
    """Upscaled images, uint8 [len(seeds), H scale, W scale, 3] (module docstring). ``guidance``: windowguide
    terms whose CFG takes the negative prompt as its null; ``window``: latent pixels (default the model's)."""
    from .adapters.pipelines import from_pipeline
    from .fusion import check_fusion, sample_fused_states
    from .guidance import CFG, Guidance, guided
    from .sampling import PerSampleNoise
    from .windows import layout
    if not 0 <= float(strength) <= 1:
        raise WindowguideError(f"strength {strength!r}: accepted: [0, 1] (0 returns the resized image's round trip)")
    m = from_pipeline(pipe)
    big = resize(image, scale, filter)
    factor = int(m.extras.get("vae_factor", 8)) * m.multiple
    if big.shape[0] % factor or big.shape[1] % factor:
        h, w = big.shape[:2]
        raise WindowguideError(f"an upscaled size of {w}x{h} is not a multiple of {factor} pixels; accepted sizes: "
                               f"{w // factor * factor}x{h // factor * factor} or {(w // factor + 1) * factor}x"
                               f"{(h // factor + 1) * factor} (resize the input first)")
    z = encode_image(pipe, big)
    seeds = list(seeds)
    sigmas = m.sigmas(steps, sampler=sampler)
    start = steps - min(int(steps * strength), steps)            # diffusers' img2img: the last int(N s) steps
    if start >= steps:
        return m.decode(z.repeat(len(seeds), 1, 1, 1))
    sigmas = sigmas[start:]
    noise = PerSampleNoise.from_seeds(seeds)
    x = z + float(sigmas[0]) * noise(torch.empty(len(seeds), *z.shape[1:]))
    g = Guidance.of(guidance)
    pos, neg = m.encode(prompt=prompt, negative_prompt=negative_prompt)   # refuses a missing prompt by name
    cond = _repeat(pos, len(seeds))
    null = {k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0]
    from dataclasses import replace
    g = Guidance(tuple(replace(t, null=null) if isinstance(t, CFG) and t.null is None else t for t in g))
    size = window or m.size[0]
    lay = layout(x.shape[-2], x.shape[-1], (min(size, x.shape[-2]), min(size, x.shape[-1])), stride=stride)
    fuse, weighting, options = check_fusion(mode, None, None, sampler, vcf, dict(sampler_options))
    if fuse != "state":
        raise WindowguideError("upscale fuses window states (mode gf or multidiffusion)")
    with torch.no_grad():
        x = sample_fused_states(guided(m.denoiser, g), x, sigmas, cond, lay, weighting, sampler, noise, vcf, **options)
        return m.decode(m.pipeline_latents(x, sigmas))


def _repeat(cond, n: int):
    if isinstance(cond, dict):
        return {k: _repeat(v, n) for k, v in cond.items()}
    return cond.expand(n, *cond.shape[1:]).clone() if cond.shape[0] == 1 else cond
