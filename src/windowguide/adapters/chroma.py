"""Chroma (``ChromaPipeline``): a FLUX.1-schnell-derived MMDiT predicting the flow velocity on 2 x 2-packed
latents (FLUX's packing, image ids and dynamic shift), conditioned on T5 alone with an attention mask
that the pipeline extends over the image tokens; real CFG with ``guidance_scale`` s (our w = s - 1),
run as a second call with the negative prompt ("" when none is given). The condition is {embeds,
mask}: the text part of the mask; each crop's call gets the mask extended over its own tokens, and
the ids of its place on the canvas (``crop_positions='slice'``) or of its own grid ('stretch')."""
from __future__ import annotations

from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from .base import PipelineModel, token_shifted_sigmas, flow_sigma, needs_parts, needs_prompt, vae_decoder, vae_factor
from .flux import flux_image_ids, ids_size, pack, packed_model, unpack
from .netcall import Call, current_static, joint, rows_t, sample_of, with_sample
from .registry import Family, Patched
from ..presets import Preset, CARD


def chroma_model(tr, crop_positions: str = "slice") -> Callable:
    """Chroma's transformer as model(x, t, {embeds[, mask]}) -> velocity on unpacked latents; the
    attention mask is the text mask extended by ones over the call's image tokens, as the pipeline's
    ``_prepare_attention_mask`` does."""
    def call(x, t, cond, top, left, canvas):
        tokens = pack(x).to(tr.dtype)
        mask = cond.get("mask")
        if mask is not None:
            mask = torch.cat([mask, torch.ones(x.shape[0], tokens.shape[1], device=mask.device, dtype=torch.bool)], 1)
        out = tr(hidden_states=tokens, timestep=t.to(tr.dtype), encoder_hidden_states=cond["embeds"].to(tr.dtype),
                 txt_ids=torch.zeros(cond["embeds"].shape[1], 3, device=x.device),
                 img_ids=flux_image_ids(*x.shape[-2:], top, left).to(x.device), attention_mask=mask,
                 **current_static()).sample
        return unpack(out.float(), *x.shape[-2:])
    return packed_model(call, crop_positions)


def read_call(net, kwargs: dict) -> Call | None:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    if kwargs.get("controlnet_block_samples") is not None:
        return None
    h, w = ids_size(kwargs["img_ids"])
    x = unpack(kwargs["hidden_states"], h, w)
    embeds = kwargs["encoder_hidden_states"]
    cond = dict(embeds=embeds)
    if kwargs.get("attention_mask") is not None:
        cond["mask"] = kwargs["attention_mask"][:, :embeds.shape[1]]
    return Call("chroma", x, rows_t(kwargs["timestep"], x.shape[0], x.device), cond,
                lambda out: unpack(sample_of(out), h, w),
                lambda out, p: with_sample(out, p, lambda q: pack(q).to(sample_of(out).dtype)), joint(kwargs))


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    tr = pipe.transformer
    vae = pipe.vae
    model = chroma_model(tr, crop_positions)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512):
        needs_prompt("Chroma", prompt, class_labels)
        needs_parts(pipe, "Chroma", "text_encoder", "tokenizer")
        pos, _, pos_mask, neg, _, neg_mask = pipe.encode_prompt(prompt, negative_prompt, device=tr.device,
                                                                max_sequence_length=max_sequence_length)
        return dict(embeds=pos, mask=pos_mask), dict(embeds=neg, mask=neg_mask)


    size = getattr(pipe, "default_sample_size", 128)
    m = PipelineModel("chroma", FlowDenoiser(model, time_scale=1.0, multiple=2), tr.config.in_channels // 4,
                      (size, size), 2, encode, vae_decoder(vae, shift=vae.config.shift_factor or 0.0),
                      vae_factor=vae_factor(vae), sigma_schedule=token_shifted_sigmas(pipe.scheduler, (size, size)))
    m.denoiser.canvas_positions = crop_positions == "slice"     # panorama windows at their place
    return m


FAMILY = Family(
    kind="chroma", pipelines=("ChromaPipeline",), networks=("ChromaTransformer2DModel",), build=build,
    read_call=read_call, model=lambda net, crop_positions="slice", vae_factor=None: chroma_model(net, crop_positions),
    multiple=lambda net: 2, sigma=lambda t, schedule=None: flow_sigma(t, 1.0), network_t=lambda ts: ts / 1000,
    flow=True, patched={"ChromaPipeline": Patched(rows="separate")})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "chroma": Preset("cfg:w=4", "Chroma (pipeline folder)", CARD.format(pipeline="ChromaPipeline"),
                     "guidance_scale 5.0 -> w 4; 35 steps", steps=35, sampler="flow_euler"),
}
