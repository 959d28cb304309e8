"""SDXL (``StableDiffusionXLPipeline`` and its ControlNet pipeline): a text-time UNet on a VP schedule;
the condition is {embeds, pooled[, time_ids]}; a crop's micro-conditioning time ids describe the
crop: the canvas as the original size, the crop's offset and size (``sdxl_time_ids``), or derived
from the user's own ids when the pipeline's call carried them (``sdxl_crop_time_ids``). Its calls are
read by ``sd`` (one network class)."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import WindowguideError
from ..windows import current_regions
from .base import PipelineModel, vae_decoder, vae_factor, vp_denoiser
from .registry import Family, Patched
from .sd import no_lcm, unet_extras, unet_multiple, vp_sigma


def sdxl_time_ids(regions: torch.Tensor | None, size, factor: int) -> torch.Tensor:
    """SDXL's micro-conditioning per sample, in image pixels: (original h, original w, crop top, crop
    left, target h, target w). The whole image: (H, W, 0, 0, H, W), the pipeline's default; a crop of a
    canvas: the canvas as the original, the crop's offset, the crop's size as the target (what SDXL's
    training crops meant)."""
    h, w = size
    if regions is None:
        return torch.tensor([[h * factor, w * factor, 0, 0, h * factor, w * factor]], dtype=torch.float32)
    r = regions.float()
    return torch.stack([r[:, 2], r[:, 3], r[:, 0], r[:, 1], torch.full_like(r[:, 0], h), torch.full_like(r[:, 0], w)],
                       dim=1) * factor


def sdxl_crop_time_ids(ids: torch.Tensor, regions: torch.Tensor | None, size) -> torch.Tensor:
    """A crop's micro-conditions from the pipeline call's own (original h, w, crop top, left, target h,
    w), per row: the original and its crop origin are the user's; the canvas of H x W latent pixels
    spans the user's target, so a crop at (top, left) of h x w latent pixels gets crop origin
    (top0 + top th / H, left0 + left tw / W) and target (h th / H, w tw / W). With SDXL's defaults
    (original = target = the image) this is ``sdxl_time_ids``: the canvas as the original, the crop's
    offset and size."""
    if regions is None:
        return ids
    r, ids = regions.to(ids.device, torch.float64), ids.double()
    sy, sx = ids[:, 4] / r[:, 2], ids[:, 5] / r[:, 3]
    h, w = size
    return torch.stack([ids[:, 0], ids[:, 1], ids[:, 2] + r[:, 0] * sy, ids[:, 3] + r[:, 1] * sx, h * sy, w * sx],
                       1).float()


def sdxl_unet_model(unet, vae_factor: int | None) -> Callable:
    """SDXL's UNet as model(x_vp, t, {embeds, pooled}) -> eps; the time ids describe the call's crops
    (``windows.current_regions()``): from the call's own ids when the condition carries them
    (``sdxl_crop_time_ids``, the patch and the guiders), else from the canvas (``sdxl_time_ids``)."""
    def model(x, t, cond):
        if "time_ids" in cond:
            ids = sdxl_crop_time_ids(cond["time_ids"], current_regions(), x.shape[-2:]).to(x.device, x.dtype)
        else:
            ids = sdxl_time_ids(current_regions(), x.shape[-2:], vae_factor).to(x.device, x.dtype)
        ids = ids.expand(x.shape[0], -1) if ids.shape[0] == 1 else ids
        added = dict(text_embeds=cond["pooled"].to(unet.dtype), time_ids=ids.to(unet.dtype))
        extra = unet_extras(cond, x.shape[-2:])
        added.update(extra.pop("added_cond_kwargs", {}))
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond["embeds"].to(unet.dtype),
                    added_cond_kwargs=added, **extra).sample.float()
    return model


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    unet = pipe.unet
    factor = unet_multiple(unet)
    vf = vae_factor(pipe.vae)
    model = sdxl_unet_model(unet, vf)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None):
        if class_labels is not None or prompt is None:
            raise WindowguideError("SDXL needs a prompt (--prompt), not class labels")
        if getattr(pipe, "text_encoder_2", None) is None:
            raise WindowguideError("this SDXL pipeline has no text_encoder_2, so a prompt cannot be encoded")
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, None, unet.device, 1, True, negative_prompt)
        return dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)

    size = unet.config.sample_size
    return PipelineModel("sdxl", vp_denoiser(model, pipe.scheduler, factor), unet.config.in_channels, (size, size),
                         factor, encode, vae_decoder(pipe.vae), extras=dict(vae_factor=vf))


_PATCHED = Patched(net="unet", rows="batched", reads_cfg=True, cfg_possible=no_lcm)
FAMILY = Family(
    kind="sdxl", pipelines=("StableDiffusionXLPipeline",), build=build,
    model=lambda net, crop_positions="slice", vae_factor=None: sdxl_unet_model(net, None), multiple=unet_multiple,
    sigma=vp_sigma, net_attr="unet",
    patched={"StableDiffusionXLPipeline": _PATCHED, "StableDiffusionXLControlNetPipeline": _PATCHED})
