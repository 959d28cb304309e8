"""SDXL (``StableDiffusionXLPipeline`` and its ControlNet pipeline, a ControlNet in every window): a text-time UNet on a VP schedule;
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
from .base import unet_multiple
from .sd import control_crop, no_lcm, unet_extras, vp_sigma


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
    return crop_time_ids64(ids, regions, size).float()


def crop_time_ids64(ids: torch.Tensor, regions: torch.Tensor, size) -> torch.Tensor:
    """``sdxl_crop_time_ids`` in float64 (ComfyUI's ADM encoder takes them as Python numbers)."""
    r, ids = regions.to(ids.device, torch.float64), ids.double()
    sy, sx = ids[:, 4] / r[:, 2], ids[:, 5] / r[:, 3]
    h, w = size
    return torch.stack([ids[:, 0], ids[:, 1], ids[:, 2] + r[:, 0] * sy, ids[:, 3] + r[:, 1] * sx, h * sy, w * sx], 1)


def comfy_crop_cond(model, cond: dict, regions: torch.Tensor, size: tuple[int, int]) -> dict:
    """SDXL in ComfyUI: a cond whose ADM vector describes each row's crop (``sdxl_crop_time_ids``): the
    user's original size (ComfyUI's ``width``/``height``; its default the latent's size x 8) kept, the
    crop origin and target size in the user's target frame. ``model``: ComfyUI's SDXL model (its
    ``encode_adm``); the ComfyUI host calls this for windows and crops."""
    import comfy.conds
    kw = {k: v for k, v in cond.items() if k not in ("model_conds", "uuid", "cross_attn", "area", "mask")}
    own = []
    for _, _, ch, cw in regions.tolist():
        height, width = kw.get("height", ch * 8), kw.get("width", cw * 8)
        own.append([height, width, kw.get("crop_h", 0), kw.get("crop_w", 0), kw.get("target_height", height),
                    kw.get("target_width", width)])
    ids = crop_time_ids64(torch.tensor(own, dtype=torch.float64), regions, size).tolist()
    rows = [model.encode_adm(**{**kw, "height": h, "width": w, "crop_h": ct, "crop_w": cl, "target_height": th,
                                "target_width": tw}) for h, w, ct, cl, th, tw in ids]
    y = torch.cat(rows).to(cond["model_conds"]["y"].cond.device, cond["model_conds"]["y"].cond.dtype)
    return {**cond, "model_conds": {**cond["model_conds"], "y": comfy.conds.CONDRegular(y)}}


def sdxl_unet_model(unet, vae_factor: int | None, controlnet=None, scale: float = 1.0) -> Callable:
    """SDXL's UNet as model(x_vp, t, {embeds, pooled[, control]}) -> eps; the time ids describe the call's
    crops (``windows.current_regions()``): from the call's own ids when the condition carries them
    (``sdxl_crop_time_ids``, the patch and the guiders), else from the canvas (``sdxl_time_ids``). With a
    diffusers ``controlnet``, its residuals (of the control image's crop at each row's place, ``control_crop``)
    are added to the UNet's, as ``StableDiffusionXLControlNetPipeline`` does."""
    def model(x, t, cond):
        if "time_ids" in cond:
            ids = sdxl_crop_time_ids(cond["time_ids"], current_regions(), x.shape[-2:]).to(x.device, x.dtype)
        else:
            ids = sdxl_time_ids(current_regions(), x.shape[-2:], vae_factor).to(x.device, x.dtype)
        ids = ids.expand(x.shape[0], -1) if ids.shape[0] == 1 else ids
        added = dict(text_embeds=cond["pooled"].to(unet.dtype), time_ids=ids.to(unet.dtype))
        extra = unet_extras(cond, x.shape[-2:])
        added.update(extra.pop("added_cond_kwargs", {}))
        if controlnet is not None:
            image = control_crop(cond["control"], tuple(x.shape[-2:]), vae_factor).to(x.device, controlnet.dtype)
            down, mid = controlnet(x.to(controlnet.dtype), t, encoder_hidden_states=cond["embeds"].to(unet.dtype),
                                   controlnet_cond=image, conditioning_scale=scale, added_cond_kwargs=added,
                                   return_dict=False)
            extra.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond["embeds"].to(unet.dtype),
                    added_cond_kwargs=added, **extra).sample.float()
    return model


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    unet = pipe.unet
    factor = unet_multiple(unet)
    vf = vae_factor(pipe.vae)
    control = getattr(pipe, "controlnet", None)
    if control is not None and type(control).__name__ != "ControlNetModel":
        raise WindowguideError(f"{type(control).__name__}: one ControlNetModel is supported (not a multi-ControlNet)")
    model = sdxl_unet_model(unet, vf, control)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, control_image=None):
        if class_labels is not None or prompt is None:
            raise WindowguideError("SDXL needs a prompt (--prompt), not class labels")
        if getattr(pipe, "text_encoder_2", None) is None:
            raise WindowguideError("this SDXL pipeline has no text_encoder_2, so a prompt cannot be encoded")
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, None, unet.device, 1, True, negative_prompt)
        pos, neg = dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)
        if control is not None:
            if control_image is None:
                raise WindowguideError("a ControlNet pipeline needs control_image=: a [1, 3, H, W] tensor in [0, 1] of "
                                       "the canvas's size in pixels")
            pos, neg = dict(pos, control=control_image), dict(neg, control=control_image)
        return pos, neg

    size = unet.config.sample_size
    denoiser = vp_denoiser(model, pipe.scheduler, factor)
    # with a ControlNet, windows need their place (the control image's crop; the time ids then describe the crop)
    denoiser.canvas_positions = control is not None
    return PipelineModel("sdxl", denoiser, unet.config.in_channels, (size, size), factor, encode, vae_decoder(pipe.vae),
                         vae_factor=vf)


_PATCHED = Patched(net="unet", rows="batched", reads_cfg=True, cfg_possible=no_lcm)
FAMILY = Family(
    kind="sdxl", pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline"), build=build,
    model=lambda net, crop_positions="slice", vae_factor=None: sdxl_unet_model(net, None), multiple=unet_multiple,
    sigma=vp_sigma, net_attr="unet",
    patched={"StableDiffusionXLPipeline": _PATCHED, "StableDiffusionXLControlNetPipeline": _PATCHED})
