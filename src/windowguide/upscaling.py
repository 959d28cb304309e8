"""Upscaling an image with a small model: resize, encode without seams, noise to ``strength``, and denoise
over overlapping windows fused as in the panoramas (img2img window fusion, the "MultiDiffusion upscaler").

    import windowguide as wg
    from windowguide.upscaling import upscale
    images = upscale(pipe, image, scale=2, strength=0.35, prompt="a photo", guidance=wg.CFG(6.5))

1. The image (uint8 [H, W, 3]) is resized by ``scale`` with a named filter (Pillow's LANCZOS by default).
2. It is encoded by the pipeline's VAE with the exact tiled encode (``vae_tiling.encode_tiled``: the
   whole image's GroupNorm statistics): z = mean * scaling_factor.
3. It is noised to the schedule's step that ``strength`` starts at, as diffusers' img2img does (the last
   int(N strength) of the N steps run): x = z + sigma_start eps, eps from one generator per seed.
4. The steps run over windows of the model's trained size (``fusion``: GF / MultiDiffusion / gaussian,
   VCF for stochastic samplers), any guidance inside each window, and the result is decoded with the exact
   tiled decode.

Families: those whose VAE is an ``AutoencoderKL`` (SD 1.x/2.x, SDXL, SD3, FLUX, Chroma, PixArt, Z-Image); the
flow families noise as their img2img pipelines do, x = (1 - s) z + s eps at the step int(N - N strength).
Pixel-space models (the bundled nets): ``upscale_pixels``. ``progressive``
(DemoFusion's stages): x2 at a time, each stage upscaling the previous one's output. CLI: ``windowguide
upscale IMAGE --model DIR --scale 2 --strength 0.35 --prompt ...`` (``commands/upscale.py``).
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
    check_filter(filter)
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise WindowguideError(f"the image must be uint8 [H, W, 3] (RGB), got {getattr(image, 'dtype', type(image))} "
                               f"{getattr(image, 'shape', '')}")
    height, width = upscaled_size(image.shape[:2], scale)
    method = getattr(Image.Resampling, filter.upper())
    return np.asarray(Image.fromarray(image).resize((width, height), method))


def check_filter(filter: str) -> str:
    """A resize filter's name, or the error naming the accepted ones."""
    if filter not in FILTERS:
        raise WindowguideError(f"filter {str(filter)[:40]!r}: accepted: {', '.join(FILTERS)}")
    return filter


def upscaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(round(H scale), round(W scale)) of an H x W image, refusing a scale that is not a positive finite
    number or an output past ``imageio.MAX_PIXELS`` (named with the input's size)."""
    from .imageio import MAX_PIXELS
    h, w = (int(v) for v in size)
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise WindowguideError(f"scale {str(scale)[:40]}: accepted: a positive number (2 for twice the size)")
    out = (int(round(h * scale)), int(round(w * scale)))
    if out[0] < 1 or out[1] < 1 or out[0] * out[1] > MAX_PIXELS:
        raise WindowguideError(f"scale {scale:g} makes the {w}x{h} input {out[1]}x{out[0]} pixels; accepted: 1 pixel to "
                               f"{MAX_PIXELS} pixels ({int(MAX_PIXELS ** 0.5)} x {int(MAX_PIXELS ** 0.5)})")
    return out


def encode_image(pipe, image: np.ndarray) -> torch.Tensor:
    """The image's latents z = (E(x).mean - shift) * scaling_factor, x = image / 127.5 - 1, by the exact tiled
    encode (AutoencoderKL VAEs: SD, SDXL, SD3, FLUX, Chroma, PixArt, Z-Image)."""
    from .adapters.vae_tiling import encode_tiled
    vae = pipe.vae
    if type(vae).__name__ != "AutoencoderKL":
        raise WindowguideError(f"{type(pipe).__name__}: upscaling needs an AutoencoderKL VAE (SD, SDXL, SD3, FLUX, "
                               f"Chroma, PixArt, Z-Image), this one is {type(vae).__name__}")
    x = torch.tensor(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    moments = encode_tiled(vae, x.to(vae.device, vae.dtype)).float()
    shift = vae.config.get("shift_factor") or 0.0
    return (moments[:, : moments.shape[1] // 2] - shift) * vae.config.scaling_factor


def start_step(steps: int, strength: float, flow: bool = False) -> int:
    """The first of the N steps that img2img runs, as diffusers computes it: N - int(N s) for the VP
    pipelines (SD, SDXL), int(N - N s) for the flow pipelines (SD3, FLUX); strength 0 runs none."""
    if not 0 <= float(strength) <= 1:
        raise WindowguideError(f"strength {strength!r}: accepted: [0, 1] (0 returns the resized image's round trip)")
    if flow:
        return int(max(steps - steps * strength, 0))
    return steps - min(int(steps * strength), steps)


def denoise_windows(denoiser: Any, z: torch.Tensor, sigmas: torch.Tensor, seeds, cond=None, guidance=None,
                    window: tuple[int, int] | None = None, stride: int = 8, mode: str = "gf", sampler: str = "ddim",
                    vcf: bool = False, progress: bool = False, max_batch: int | None = 8,
                    view_batch: int | None = None, **sampler_options) -> torch.Tensor:
    """img2img over windows: x = z + sigma_0 eps (one generator per seed; the VE form of both VP's
    sqrt(a) z + sqrt(1-a) eps and flow's (1-s) z + s eps), then the ``sigmas`` over windows of ``window``
    whose states are fused by ``mode`` (GF / MultiDiffusion; VCF for stochastic samplers), ``guidance``
    inside each window. z: [1, C, H, W] (the clean canvas); returns [len(seeds), C, H, W] at sigmas[-1].
    ``max_batch``: window-sized inputs per network call (diffusers' view batch), so the network's
    activations are held for that many windows at a time, never for all of them."""
    from .denoiser import check_size
    from .fusion import canvas_layout, check_fusion, per_window_nulls, run_fused
    from .guidance import guided
    from .sampling import PerSampleNoise
    seeds = list(seeds)
    fuse, weighting, options = check_fusion(mode, None, None, sampler, vcf, dict(sampler_options))
    if fuse != "state":
        raise WindowguideError(f"upscale fuses window states: mode {mode!r} is not accepted; accepted: gf, "
                               f"multidiffusion")
    h, w = window or z.shape[-2:]
    lay = canvas_layout(len(seeds), z.shape[1], z.shape[-2:], (min(h, z.shape[-2]), min(w, z.shape[-1])), stride,
                        device=z.device, what="the upscale")
    noise = PerSampleNoise.from_seeds(seeds)
    x = z.expand(len(seeds), *z.shape[1:]) + float(sigmas[0]) * noise(torch.empty(len(seeds), *z.shape[1:]))
    check_size(denoiser, (z.shape[1], *lay.window), "window")
    inner = guided(denoiser, per_window_nulls(guidance, len(seeds), lay.n), max_batch)
    return run_fused(inner, x.to(z), sigmas, cond, lay, "state", weighting, sampler, noise, vcf, seeds, progress,
                     options, view_batch)


def upscale_pixels(denoiser: Any, image: np.ndarray, scale: float = 2, strength: float = 0.35, seeds=(0,),
                   steps: int = 32, sigmas: Any = None, cond=None, guidance=None, window: Any = None,
                   stride: int = 8, mode: str = "gf", sampler: str = "ddim", vcf: bool = False,
                   filter: str = "lanczos", max_batch: int | None = 8, progress: bool = False,
                   view_batch: int | None = None, **sampler_options) -> np.ndarray:
    """A pixel-space model's upscale (the bundled EDM nets): x0 = resize(image) / 127.5 - 1, noised to the
    Karras schedule's step of ``strength`` (``start_step``) and denoised over windows (``denoise_windows``;
    ``window``: the model's (h, w); default one window over the image). ``cond``: class labels [len(seeds)] or None (the null label).
    Returns uint8 [len(seeds), H scale, W scale, 3]."""
    from .denoiser import as_denoiser
    from .images import to_uint8
    from .sampling import check_sigmas, karras_sigmas
    base = as_denoiser(denoiser)
    big = resize(image, scale, filter)
    multiple = max(1, int(getattr(base, "multiple", 1)))
    check_multiple(big.shape[:2], multiple, image.shape[:2])
    sigmas = check_sigmas(sigmas) if sigmas is not None else karras_sigmas(steps, base.sigma_min, base.sigma_max)
    start = start_step(len(sigmas) - 1, strength)
    z = torch.tensor(big).permute(2, 0, 1)[None].float() / 127.5 - 1
    seeds = list(seeds)
    if start >= len(sigmas) - 1:
        return np.stack([big] * len(seeds))
    window = (window, window) if isinstance(window, int) else window
    with torch.no_grad():
        x = denoise_windows(base, z, sigmas[start:], seeds, cond, guidance, window, stride, mode, sampler, vcf,
                            progress, max_batch, view_batch, **sampler_options)
    return to_uint8(x)


def check_multiple(size: tuple[int, int], factor: int, source: tuple[int, int] | None = None) -> None:
    """Refuse an upscaled H x W that is not a multiple of ``factor`` pixels, naming the nearest two sizes
    (and the input's size it came from)."""
    h, w = size
    if h % factor or w % factor:
        came = f", {source[1]}x{source[0]}," if source is not None else ""
        raise WindowguideError(f"an upscaled size of {w}x{h} is not a multiple of {factor} pixels; accepted sizes: "
                               f"{w // factor * factor}x{h // factor * factor} or {(w // factor + 1) * factor}x"
                               f"{(h // factor + 1) * factor} (resize the input{came} first, or change --scale)")


def progressive_stages(scale: float) -> list[int]:
    """The x2 factors of a progressive upscale by ``scale`` (a power of two: 4 -> [2, 2])."""
    import math
    stages = max(1, int(round(math.log2(scale)))) if scale > 0 else 0
    if not stages or not math.isclose(2 ** stages, scale):
        raise WindowguideError(f"progressive scale {scale!r}: accepted: a power of two (2, 4, 8)")
    return [2] * stages


def progressive_upscale(pipe: Any, image: np.ndarray, scale: float = 4, seeds=(0,), **options) -> np.ndarray:
    """DemoFusion-style stages: x2 per stage, each from the previous output;
    one chain of stages per seed. Returns uint8 [len(seeds), H scale, W scale, 3]."""
    outs = []
    for seed in seeds:
        current = image
        for factor in progressive_stages(scale):
            current = upscale(pipe, current, factor, seeds=[seed], **options)[0]
        outs.append(current)
    return np.stack(outs)


def upscale(pipe: Any, image: np.ndarray, scale: float = 2, strength: float = 0.35, seeds=(0,), steps: int = 50,
            prompt: str | None = None, negative_prompt: str = "", guidance=None, mode: str = "gf", stride: int = 8,
            window: int | None = None, sampler: str | None = None, vcf: bool = False, filter: str = "lanczos",
            output_type: str = "np", progress: bool = False, max_batch: int | None = 8, view_batch: int | None = None,
            **sampler_options):
    """Upscaled images, uint8 [len(seeds), H scale, W scale, 3] (module docstring); ``output_type='latent'``
    gives the pipeline's latents instead. ``guidance``: windowguide terms whose CFG takes the negative
    prompt as its null; ``window``: latent pixels (default the model's); ``sampler`` default ddim for the
    VP families, flow_euler for the flow ones."""
    from dataclasses import replace
    from .adapters.registry import from_pipeline
    from .conds import cond_repeat
    from .guidance import CFG, Guidance
    if output_type not in ("np", "latent"):
        raise WindowguideError(f"output_type {output_type!r}: accepted: np, latent")
    m = from_pipeline(pipe)
    sampler = sampler or ("flow_euler" if m.flow else "ddim")
    start = start_step(steps, strength, m.flow)
    big = resize(image, scale, filter)
    check_multiple(big.shape[:2], m.vae_factor * m.multiple, image.shape[:2])
    z = encode_image(pipe, big)
    seeds = list(seeds)
    size = window or m.size[0]
    sigmas = m.sigmas(steps, sampler=sampler, shape=(z.shape[1], min(size, z.shape[-2]), min(size, z.shape[-1])))
    if start >= steps:
        x = z.repeat(len(seeds), 1, 1, 1)
    else:
        pos, neg = m.encode(prompt=prompt, negative_prompt=negative_prompt)   # refuses a missing prompt by name
        null = cond_repeat(neg, len(seeds))        # one row per seed (the encoder gives one)
        g = m.family_guidance(Guidance(tuple(replace(t, null=null) if isinstance(t, CFG) and t.null is None else t
                                             for t in Guidance.of(guidance))))
        options = {**m.sampler_options(sampler, steps), **sampler_options}
        if "targets" in options:
            options["targets"] = options["targets"][start:]
        with torch.no_grad():
            x = denoise_windows(m.denoiser, z, sigmas[start:], seeds, cond_repeat(pos, len(seeds)), g, (size, size),
                                stride, mode, sampler, vcf, progress, max_batch, view_batch, **options)
        x = m.pipeline_latents(x, sigmas)
    return x if output_type == "latent" else m.decode(x)
