"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``, its panorama and ControlNet pipelines): a
``UNet2DConditionModel`` predicting eps or v on a VP schedule; the condition is the prompt embedding
[N, L, D], or a dict {embeds, timestep_cond, image_embeds.i, residual.i, mid_residual} when a
pipeline's call carried LCM's timestep embedding, IP-adapter images or ControlNet residuals.

This module reads every ``UNet2DConditionModel`` call, SDXL's too (``kind`` 'sdxl' when the call
carries SDXL's pooled text embedding); ``sdxl`` builds on it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from ..errors import WindowguideError
from ..denoiser import EpsDenoiser, VDenoiser
from .base import PipelineModel, negative_list, schedule_of, unet_multiple, vae_decoder, vae_factor, vp_denoiser
from .netcall import Call, current_static, rows_t, sample_of, same_dtype_write
from .registry import Family, Patched
from ..presets import Preset, GVCF_PAPER


def unet_extras(cond: dict, size: tuple[int, int] | None = None) -> dict:
    """The UNet keyword arguments a call's condition carries besides the text embeddings: LCM's
    ``timestep_cond``, IP-adapter ``image_embeds`` (stored as image_embeds.0, .1, ...), ControlNet's
    residuals (residual.0, ..., mid_residual; cut to the crops of ``size``), plus the static ones of the
    call in progress."""
    kwargs = dict(current_static())
    if "timestep_cond" in cond:
        kwargs["timestep_cond"] = cond["timestep_cond"]
    images = [cond[k] for k in sorted(k for k in cond if k.startswith("image_embeds."))]
    if images:
        kwargs["added_cond_kwargs"] = {"image_embeds": images}
    residuals = [cond[k] for k in sorted((k for k in cond if k.startswith("residual.")), key=lambda k: int(k[9:]))]
    if residuals:
        kwargs["down_block_additional_residuals"] = tuple(crop_residual(r, size) for r in residuals)
    if "mid_residual" in cond:
        kwargs["mid_block_additional_residual"] = crop_residual(cond["mid_residual"], size)
    return kwargs


def crop_residual(r: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ControlNet residual of the whole canvas, cut to each row's crop of ``size`` latent pixels
    (``current_regions``: top, left, canvas height, width) at the residual's own resolution, canvas /
    f with f = canvas height / residual height (windows are multiples of the UNet's factor, so the cut
    is exact). The whole image (no regions, or the canvas itself) is the residual as it is."""
    from ..windows import current_regions
    regions = current_regions()
    if regions is None or tuple(size) == tuple(regions[0, 2:].tolist()):
        return r
    regions = regions.long().to(r.device)
    f = regions[:, 2] // r.shape[-2]                             # the residual's factor, per row
    rows = (regions[:, 0] // f)[:, None] + torch.arange(size[0] // int(f[0]), device=r.device)
    cols = (regions[:, 1] // f)[:, None] + torch.arange(size[1] // int(f[0]), device=r.device)
    batch = torch.arange(r.shape[0], device=r.device)[:, None, None]
    return r[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)     # [N, h, w, C] -> [N, C, h, w]


def sd_unet_model(unet) -> Callable:
    """Stable Diffusion's UNet as model(x_vp, t, embeds) -> its prediction (eps or v); ``cond`` may be a
    dict {embeds, timestep_cond, image_embeds.i} when the pipeline's call carried those (the patch)."""
    def model(x, t, cond):
        if isinstance(cond, dict):
            return unet(x.to(unet.dtype), t, encoder_hidden_states=cond["embeds"],
                        **unet_extras(cond, x.shape[-2:])).sample.float()
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond, **unet_extras({})).sample.float()
    return model


def read_unet_call(net, kwargs: dict) -> Call | None:
    """A UNet2DConditionModel call: SD's (kind 'sd') or, with a pooled text embedding, SDXL's ('sdxl')."""
    x, t, embeds = kwargs["sample"], kwargs["timestep"], kwargs["encoder_hidden_states"]
    added = kwargs.get("added_cond_kwargs") or {}
    extras = {}                               # per-row arguments the crops need too (LCM, IP-adapter, ControlNet)
    for i, r in enumerate(kwargs.get("down_block_additional_residuals") or []):
        extras[f"residual.{i}"] = r           # ControlNet: each crop gets the residuals' crop (unet_extras)
    if kwargs.get("mid_block_additional_residual") is not None:
        extras["mid_residual"] = kwargs["mid_block_additional_residual"]
    if kwargs.get("timestep_cond") is not None:
        extras["timestep_cond"] = kwargs["timestep_cond"]
    for i, e in enumerate(added.get("image_embeds") or []):
        extras[f"image_embeds.{i}"] = e
    static = {k: kwargs[k] for k in ("cross_attention_kwargs",) if kwargs.get(k) is not None}
    if "text_embeds" in added:               # SDXL: pooled embedding; time ids are made per crop
        cond, kind = dict(embeds=embeds, pooled=added["text_embeds"], **extras), "sdxl"
        ids = added["time_ids"]                # the user's micro-conditions, per row: crops derive theirs
        cond["time_ids"] = ids.reshape(1, -1).expand(x.shape[0], -1) if ids.shape[0] == 1 else ids
    else:
        cond, kind = (dict(embeds=embeds, **extras) if extras else embeds), "sd"
    return Call(kind, x, rows_t(t, x.shape[0], x.device), cond, sample_of, same_dtype_write, static)


def vp_sigma(t: torch.Tensor, schedule=None) -> torch.Tensor:
    """The VE sigma of a VP network's timestep on the pipeline's schedule (``schedule``), or on SD's
    scaled-linear beta 0.00085..0.012 over 1000 steps (SD 1.x, 2.x and SDXL) when none is given."""
    return (schedule if schedule is not None else sd_schedule()).sigma_at(t.double().round().cpu()).to(t.device)


@functools.lru_cache(maxsize=1)
def sd_schedule():
    """SD's scaled-linear VP schedule (beta 0.00085..0.012, 1000 steps)."""
    from diffusers import DDPMScheduler
    return schedule_of(DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))


def no_lcm(pipe) -> bool:
    """A UNet with LCM's guidance embedding (``time_cond_proj_dim``) runs no CFG batch."""
    return pipe.unet.config.time_cond_proj_dim is None


def control_crop(image: torch.Tensor, size: tuple[int, int], factor: int) -> torch.Tensor:
    """Each row's crop of a canvas-sized control image (pixels, ``factor`` per latent pixel) at its
    window's place (``windows.current_regions``); the image itself for the whole canvas."""
    from ..windows import current_regions
    regions = current_regions()
    if regions is None or tuple(size) == tuple(regions[0, 2:].tolist()):
        return image
    h, w = size[0] * factor, size[1] * factor
    return torch.stack([image[i, :, int(t) * factor:int(t) * factor + h, int(l) * factor:int(l) * factor + w]
                        for i, (t, l) in enumerate(regions[:, :2].tolist())])


def controlnet_model(unet, controlnet, factor: int, scale: float = 1.0) -> Callable:
    """SD's UNet with a diffusers ControlNet as model(x_vp, t, {embeds, control}): every call (each window
    of a panorama or an upscale, each crop of M-SWG) gets the control image's crop at its place."""
    def model(x, t, cond):
        image = control_crop(cond["control"], tuple(x.shape[-2:]), factor).to(x.device, controlnet.dtype)
        down, mid = controlnet(x.to(controlnet.dtype), t, encoder_hidden_states=cond["embeds"], controlnet_cond=image,
                               conditioning_scale=scale, return_dict=False)
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond["embeds"], down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, **unet_extras({})).sample.float()
    return model


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    unet = pipe.unet
    factor = unet_multiple(unet)
    model = sd_unet_model(unet)
    control = getattr(pipe, "controlnet", None)
    if control is not None:
        if not isinstance(control, torch.nn.Module) or type(control).__name__ != "ControlNetModel":
            raise WindowguideError(f"{type(control).__name__}: one ControlNetModel is supported (not a multi-ControlNet)")
        model = controlnet_model(unet, control, vae_factor(getattr(pipe, "vae", None)))

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, control_image=None):
        if class_labels is not None:
            raise WindowguideError("Stable Diffusion takes a prompt, not class labels")
        if prompt is None:
            raise WindowguideError("Stable Diffusion needs a prompt (--prompt)")
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            raise WindowguideError("this pipeline has no text encoder or tokenizer, so a prompt cannot be encoded")
        n = 1 if isinstance(prompt, str) else len(prompt)
        negatives = negative_list(negative_prompt, n)
        pos, neg = pipe.encode_prompt(prompt, unet.device, 1, True, negatives if n > 1 else negatives[0])
        if control is not None:
            if control_image is None:
                raise WindowguideError("a ControlNet pipeline needs control_image=: a [1, 3, H, W] tensor in [0, 1] of "
                                       "the canvas's size in pixels")
            return dict(embeds=pos, control=control_image), dict(embeds=neg, control=control_image)
        return pos, neg

    vae = getattr(pipe, "vae", None)
    size = unet.config.sample_size
    denoiser = vp_denoiser(model, pipe.scheduler, factor)
    denoiser.canvas_positions = control is not None      # panorama windows need their place: the control image's crop
    return PipelineModel("stable-diffusion", denoiser, unet.config.in_channels,
                         (size, size), factor, encode, vae_decoder(vae) if vae else None,
                         vae_factor=vae_factor(vae))


_PATCHED = Patched(net="unet", rows="batched", reads_cfg=True, cfg_possible=no_lcm)

# the panorama benchmark's and the earliest API's direct use of an SD pipeline's parts
def sd_denoiser(pipe: Any = None, unet: Any = None, scheduler: Any = None):
    """(denoiser, schedule) for a pipeline's UNet, eps- or v-prediction as its scheduler says."""
    unet = unet if unet is not None else pipe.unet
    scheduler = scheduler if scheduler is not None else pipe.scheduler
    schedule = schedule_of(scheduler)
    factor = unet_multiple(unet)

    def model(x, t, cond):
        return unet(x, t, encoder_hidden_states=cond).sample

    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return EpsDenoiser(model, schedule, multiple=factor), schedule
    if kind == "v_prediction":
        return VDenoiser(model, schedule, multiple=factor), schedule
    raise WindowguideError(f"prediction_type {kind!r} is not supported; accepted: 'epsilon', 'v_prediction'")


@torch.no_grad()
def encode_prompt(pipe: Any, prompt: str | list[str], negative: str | list[str] = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings, negative embeddings) from the pipeline's own text encoder."""
    pos, neg = pipe.encode_prompt(prompt, pipe.device, 1, True, negative)
    return pos, neg


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor, tile_above: int = 96) -> torch.Tensor:
    """VAE decode of final latents to images in [-1, 1]. Latents larger than ``tile_above`` on a side
    are decoded layer by layer with whole-image GroupNorm statistics and tiled convolutions
    (``vae_tiling.decode_tiled``: the one-shot decode, no seams or colour shifts between tiles)."""
    from .vae_tiling import decode_tiled
    vae = pipe.vae
    z = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    if max(latents.shape[-2:]) > tile_above:
        return decode_tiled(vae, z).to(latents.device).clamp(-1, 1)
    return vae.decode(z).sample.clamp(-1, 1)

FAMILY = Family(
    kind="sd", pipelines=("StableDiffusionPipeline", "StableDiffusionPanoramaPipeline", "StableDiffusionControlNetPipeline"),
    networks=("UNet2DConditionModel",), build=build, read_call=read_unet_call,
    model=lambda net, crop_positions="slice", vae_factor=None: sd_unet_model(net), multiple=unet_multiple,
    sigma=vp_sigma, net_attr="unet",
    patched={"StableDiffusionPipeline": _PATCHED, "StableDiffusionControlNetPipeline": _PATCHED,
             "StableDiffusionPanoramaPipeline": Patched(net="unet", rows="interleaved", cfg_possible=no_lcm)})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "gvcf-sd2-panorama": Preset("cfg:w=6.5", "Stable Diffusion 2.x base 512 (pipeline folder, panorama)",
                                f"{GVCF_PAPER}: 512 x 3584, stride 48 latent pixels, GF + VCF under DDPM",
                                "SD's guidance_scale 7.5 -> w 6.5; the paper's DDPM has 1000 steps",
                                steps=1000, sampler="ddpm",
                                panorama=dict(height=512, width=3584, stride=48, mode="gf", vcf=True)),
}
