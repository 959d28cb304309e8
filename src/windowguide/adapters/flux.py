"""FLUX.1 (``FluxPipeline``): an MMDiT predicting the flow velocity on 2 x 2-packed latents, with a
dynamic shift of the schedule by the number of image tokens; the condition is {embeds, pooled[,
guidance]}. windowguide works on the unpacked latent [B, C, H, W]; each call packs it, with the image
ids (0, row, col) of each crop: its place on the canvas ('slice') or its own grid ('stretch'). True
CFG runs with a negative prompt (``true_cfg_scale``); FLUX.1-dev's distilled guidance is an input
(``guidance_embed``), not an extra evaluation.

``packed_model`` is shared by the FLUX-like families (Chroma): one call per window position with the
ids of its place, or one call for all crops of one size with their own grid's ids."""
from __future__ import annotations

from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..windows import current_regions
from .base import PipelineModel, token_shifted_sigmas, flow_sigma, needs_parts, needs_prompt, vae_decoder, vae_factor
from .netcall import Call, current_static, joint, rows_t, sample_of, with_sample
from .registry import Family, Patched


def pack(z: torch.Tensor) -> torch.Tensor:
    """FLUX's packing: [B, C, h, w] -> [B, (h/2)(w/2), 4C], each 2 x 2 patch one token."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``pack``: tokens [B, N, D] back to the latent [B, C, h, w]."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def flux_image_ids(h: int, w: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """[(h/2)(w/2), 3] ids (0, row, col) of a latent of h x w whose top-left sits at (top, left)."""
    rows = torch.arange(h // 2) + top // 2
    cols = torch.arange(w // 2) + left // 2
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1], ids[..., 2] = rows[:, None], cols[None, :]
    return ids.reshape(-1, 3)


def packed_model(call: Callable, crop_positions: str = "slice") -> Callable:
    """model(x, t, cond) from call(x, t, cond, top, left, canvas) of a network whose positions are ids
    (one set per call, shared by its rows): with 'slice' and crops in progress
    (``windows.current_regions``), one call per window position with the crop's place and the canvas's
    (H, W); else one call at (0, 0) with canvas None (the latent is the whole image)."""
    def model(x, t, cond):
        regions = current_regions()
        if crop_positions != "slice" or regions is None:
            return call(x, t, cond, 0, 0, None)
        out = torch.empty_like(x)
        canvas = (int(regions[0, 2]), int(regions[0, 3]))
        for top, left in {(int(r[0]), int(r[1])) for r in regions}:     # one call per window position
            idx = ((regions[:, 0] == top) & (regions[:, 1] == left)).nonzero().flatten().to(x.device)
            out[idx] = call(x[idx], t[idx], {k: v[idx] for k, v in cond.items()}, top, left, canvas)
        return out
    return model


def flux_model(tr, crop_positions: str = "slice", guidance_embed: float | None = 3.5) -> Callable:
    """FLUX's transformer as model(x, t, {embeds, pooled[, guidance]}) -> velocity, on unpacked latents
    (packed per call with the image ids of each crop: its place on the canvas with 'slice', one call
    per window position; its own grid with 'stretch'). ``guidance``, when in the condition, is the
    per-sample guidance embedding input of FLUX.1-dev (else ``guidance_embed``)."""
    def call(x, t, cond, top, left, canvas):
        ids = flux_image_ids(*x.shape[-2:], top, left)
        g = None
        if tr.config.guidance_embeds:
            g = cond["guidance"] if "guidance" in cond else torch.full((x.shape[0],), guidance_embed, device=x.device)
        out = tr(hidden_states=pack(x).to(tr.dtype), timestep=t.to(tr.dtype), guidance=g,
                 pooled_projections=cond["pooled"].to(tr.dtype), encoder_hidden_states=cond["embeds"].to(tr.dtype),
                 txt_ids=torch.zeros(cond["embeds"].shape[1], 3, device=x.device), img_ids=ids.to(x.device),
                 **current_static()).sample
        return unpack(out.float(), *x.shape[-2:])
    return packed_model(call, crop_positions)


def ids_size(ids: torch.Tensor, per_token: int = 2) -> tuple[int, int]:
    """The unpacked latent's (h, w) from a call's image ids (row, col in columns 1, 2)."""
    ids = ids[0] if ids.dim() == 3 else ids
    return per_token * (int(ids[:, 1].max()) + 1), per_token * (int(ids[:, 2].max()) + 1)


def read_call(net, kwargs: dict) -> Call:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    h, w = ids_size(kwargs["img_ids"])
    x = unpack(kwargs["hidden_states"], h, w)
    cond = dict(embeds=kwargs["encoder_hidden_states"], pooled=kwargs["pooled_projections"])
    if kwargs.get("guidance") is not None:
        cond["guidance"] = rows_t(kwargs["guidance"], x.shape[0], x.device)
    return Call("flux", x, rows_t(kwargs["timestep"], x.shape[0], x.device), cond,
                lambda out: unpack(sample_of(out), h, w),
                lambda out, p: with_sample(out, p, lambda q: pack(q).to(sample_of(out).dtype)), joint(kwargs))


def build(pipe, crop_positions: str = "slice", guidance_embed: float | None = None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    tr = pipe.transformer
    c = tr.config.in_channels // 4
    vae = pipe.vae
    model = flux_model(tr, crop_positions, 3.5 if guidance_embed is None else guidance_embed)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512):
        needs_prompt("FLUX", prompt, class_labels)
        needs_parts(pipe, "FLUX", "text_encoder", "text_encoder_2")
        pos, pooled, _ = pipe.encode_prompt(prompt, None, device=tr.device, max_sequence_length=max_sequence_length)
        neg, neg_pooled, _ = pipe.encode_prompt(negative_prompt or "", None, device=tr.device,
                                                max_sequence_length=max_sequence_length)
        return dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)


    size = getattr(pipe, "default_sample_size", 128)          # unpacked latent side (1024 px with an 8x VAE)
    m = PipelineModel("flux", FlowDenoiser(model, time_scale=1.0, multiple=2), c, (size, size), 2, encode,
                      vae_decoder(vae, shift=vae.config.shift_factor or 0.0), vae_factor=vae_factor(vae),
                      sigma_schedule=token_shifted_sigmas(pipe.scheduler, (size, size)))
    m.denoiser.canvas_positions = crop_positions == "slice"     # panorama windows at their place
    return m


FAMILY = Family(
    kind="flux", pipelines=("FluxPipeline",), networks=("FluxTransformer2DModel",), build=build, read_call=read_call,
    model=lambda net, crop_positions="slice", vae_factor=None: flux_model(net, crop_positions),
    multiple=lambda net: 2, sigma=lambda t, schedule=None: flow_sigma(t, 1.0), network_t=lambda ts: ts / 1000,
    flow=True, patched={"FluxPipeline": Patched(scale="true_cfg_scale", rows="separate", negative=True)})
