"""PixArt-alpha / -Sigma (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``): a DiT with T5 cross-attention
predicting eps and a learned variance (dropped, as the pipeline does) on a VP schedule; the
condition is {embeds, mask}; PixArt-alpha 1024 takes the image's resolution and aspect ratio as
micro-conditions."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import WindowguideError
from .base import PipelineModel, vae_decoder, vae_factor, vp_denoiser
from .netcall import Call, rows_t, sample_of, with_sample
from .registry import Family, Patched
from .sd import vp_sigma


def pixart_model(tr, vae_factor: int) -> Callable:
    """PixArt's transformer as model(x_vp, t, {embeds, mask}) -> eps (learned variance dropped)."""
    c = tr.config.in_channels

    def model(x, t, cond):
        added = {"resolution": None, "aspect_ratio": None}
        if tr.config.sample_size == 128:        # PixArt-alpha 1024: resolution and aspect micro-conditions
            h, w = x.shape[-2] * vae_factor, x.shape[-1] * vae_factor
            added = {"resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).expand(x.shape[0], -1),
                     "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).expand(x.shape[0], -1)}
        out = tr(x.to(tr.dtype), encoder_hidden_states=cond["embeds"].to(tr.dtype), encoder_attention_mask=cond["mask"],
                 timestep=t, added_cond_kwargs=added).sample.float()
        return out[:, :c]                       # learned variance channels dropped, as the pipeline does
    return model


def read_call(net, kwargs: dict) -> Call:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    x, t = kwargs["hidden_states"], kwargs["timestep"]
    c = x.shape[1]
    cond = dict(embeds=kwargs["encoder_hidden_states"], mask=kwargs.get("encoder_attention_mask"))
    if cond["mask"] is None:
        raise WindowguideError("windowguide needs PixArt's encoder_attention_mask in the network call")

    def write(out, p):
        full = sample_of(out)
        return with_sample(out, p, lambda q: torch.cat([q.to(full.dtype), full[:, c:]], 1))
    return Call("pixart", x, rows_t(t, x.shape[0], x.device), cond, lambda out: sample_of(out)[:, :c], write)


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    tr = pipe.transformer
    c, patch = tr.config.in_channels, tr.config.patch_size
    vf = vae_factor(pipe.vae)
    model = pixart_model(tr, vf)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 120):
        if class_labels is not None or prompt is None:
            raise WindowguideError("PixArt needs a prompt (--prompt), not class labels")
        if getattr(pipe, "text_encoder", None) is None:
            raise WindowguideError("this PixArt pipeline has no text encoder, so a prompt cannot be encoded")
        pos, pos_mask, neg, neg_mask = pipe.encode_prompt(prompt, True, negative_prompt, device=tr.device,
                                                          clean_caption=False, max_sequence_length=max_sequence_length)
        return dict(embeds=pos, mask=pos_mask), dict(embeds=neg, mask=neg_mask)

    size = tr.config.sample_size
    return PipelineModel("pixart", vp_denoiser(model, pipe.scheduler, patch), c, (size, size), patch, encode,
                         vae_decoder(pipe.vae), vae_factor=vf)



FAMILY = Family(
    kind="pixart", pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"), networks=("PixArtTransformer2DModel",),
    build=build, read_call=read_call,     # PixArt-alpha 1024's micro-conditions are in image pixels
    model=lambda net, crop_positions="slice", vae_factor=None: pixart_model(net, 8 if vae_factor is None else int(vae_factor)),
    multiple=lambda net: int(net.config.patch_size), sigma=vp_sigma,
    patched={"PixArtAlphaPipeline": Patched(), "PixArtSigmaPipeline": Patched()})
