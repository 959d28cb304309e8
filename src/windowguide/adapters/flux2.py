"""FLUX.2 (``Flux2Pipeline``: [dev], guidance-distilled, Mistral-3 text encoder; ``Flux2KleinPipeline``:
[klein], Qwen3 text encoder, real CFG unless distilled): an MMDiT predicting the flow velocity on the
VAE's 2 x 2-patchified latents, one token per latent pixel of that grid, with 4-axis RoPE ids (t, h,
w, l) = (0, row, col, 0) and the empirical dynamic shift mu(tokens, steps) of the schedule.

windowguide's state is the patchified latent [B, 128, H/16, W/16] (the grid the pipeline draws its
noise on), so a crop is any window of that grid (multiple 1) and its ids are (0, top + i, left + j,
0): its place on the canvas ('slice') or its own grid ('stretch'). The condition is {embeds[,
guidance]}; [dev]'s guidance is an input (``guidance_embed``), not an evaluation, and its pipeline
has no CFG (a recipe's cfg term is refused there); [klein]'s CFG is ``guidance_scale`` s (our w = s -
1) with the empty negative prompt, a second call. Reference images (editing) and the KV cache are
refused in a crop's call."""
from __future__ import annotations

from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..errors import WindowguideError
from .base import PipelineModel, dynamic_shift_sigmas, flow_sigma, needs_parts, needs_prompt, to_uint8
from .flux import ids_size, packed_model
from .netcall import Call, current_static, joint, rows_t, sample_of, with_sample
from .registry import Family, Patched
from ..presets import Preset, CARD


def pack(z: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h w, C]: each latent pixel of the patchified grid one token (row-major)."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``pack``: tokens [B, N, D] back to the latent [B, C, h, w]."""
    b, _, c = tokens.shape
    return tokens.permute(0, 2, 1).reshape(b, c, h, w)


def flux2_ids(h: int, w: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """[h w, 4] RoPE ids (t, row, col, l) = (0, top + i, left + j, 0), as ``_prepare_latent_ids`` at (0, 0)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(h) + top, torch.arange(w) + left, torch.arange(1))


def text_ids(length: int) -> torch.Tensor:
    """[L, 4] ids (0, 0, 0, l) of the text tokens (``_prepare_text_ids``)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))


def flux2_model(tr, crop_positions: str = "slice", guidance_embed: float | None = 4.0) -> Callable:
    """FLUX.2's transformer as model(x, t, {embeds[, guidance]}) -> velocity on the patchified grid."""
    def call(x, t, cond, top, left, canvas):
        g = None
        if tr.config.guidance_embeds:
            g = cond["guidance"] if "guidance" in cond else torch.full((x.shape[0],), guidance_embed, device=x.device)
        out = tr(hidden_states=pack(x).to(tr.dtype), timestep=t.to(tr.dtype), guidance=g,
                 encoder_hidden_states=cond["embeds"].to(tr.dtype), txt_ids=text_ids(cond["embeds"].shape[1]).to(x.device),
                 img_ids=flux2_ids(*x.shape[-2:], top, left).to(x.device), **current_static()).sample
        return unpack(out.float(), *x.shape[-2:])
    return packed_model(call, crop_positions)


def read_call(net, kwargs: dict) -> Call:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    ids = kwargs["img_ids"]
    ids = ids[0] if ids.dim() == 3 else ids
    if bool((ids[:, 0] != 0).any()) or kwargs.get("kv_cache") is not None or kwargs.get("num_ref_tokens"):
        raise WindowguideError("FLUX.2 with reference images (editing) or a KV cache: a crop cannot take the "
                               "reference tokens; windowguide guides text-to-image calls only")
    h, w = ids_size(ids, per_token=1)
    x = unpack(kwargs["hidden_states"], h, w)
    cond = dict(embeds=kwargs["encoder_hidden_states"])
    if kwargs.get("guidance") is not None:
        cond["guidance"] = rows_t(kwargs["guidance"], x.shape[0], x.device)
    return Call("flux2", x, rows_t(kwargs["timestep"], x.shape[0], x.device), cond,
                lambda out: unpack(sample_of(out), h, w),
                lambda out, p: with_sample(out, p, lambda q: pack(q).to(sample_of(out).dtype)), joint(kwargs))


def latents_to_vae(vae, latents: torch.Tensor) -> torch.Tensor:
    """The pipeline's decode path before the VAE: undo the batch-norm statistics, un-patchify 2 x 2."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device, latents.dtype)
    z = latents * std + mean
    b, c, h, w = z.shape
    return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def build(pipe, crop_positions: str = "slice", guidance_embed: float | None = None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
    tr = pipe.transformer
    vae = pipe.vae
    klein = type(pipe).__name__ != "Flux2Pipeline"
    model = flux2_model(tr, crop_positions, 4.0 if guidance_embed is None else guidance_embed)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512,
               text_encoder_out_layers=None):
        needs_prompt("FLUX.2", prompt, class_labels)
        needs_parts(pipe, "FLUX.2", "text_encoder", "tokenizer")
        layers = {} if text_encoder_out_layers is None else dict(text_encoder_out_layers=tuple(text_encoder_out_layers))
        if klein and negative_prompt:
            raise WindowguideError("FLUX.2 [klein]'s pipeline always takes the empty negative prompt; give none")
        pos, _ = pipe.encode_prompt(prompt=prompt, device=tr.device, max_sequence_length=max_sequence_length, **layers)
        neg, _ = pipe.encode_prompt(prompt=[negative_prompt or ""] * pos.shape[0], device=tr.device,
                                    max_sequence_length=max_sequence_length, **layers)
        return dict(embeds=pos), dict(embeds=neg)

    def sigmas(steps, spacing=None, shape=None, sampler=None):
        """The pipeline's schedule: t = linspace(1, 1/N, N) shifted by the empirical mu(tokens, N), then 0."""
        h, w = (shape or (size, size))[-2:]
        return dynamic_shift_sigmas(pipe.scheduler, steps, h * w, mu=compute_empirical_mu(h * w, steps))

    @torch.no_grad()
    def decode(latents):
        from .vae_tiling import decode_tiled
        z = latents_to_vae(vae, latents.to(vae.device, vae.dtype))
        x = decode_tiled(vae, z) if max(z.shape[-2:]) > 96 else vae.decode(z).sample
        return to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    size = getattr(pipe, "default_sample_size", 128) // 2        # the patchified grid: 2 latent pixels a token
    m = PipelineModel("flux2", FlowDenoiser(model, time_scale=1.0, multiple=1), tr.config.in_channels, (size, size), 1,
                      encode, decode, vae_factor=2 * getattr(pipe, "vae_scale_factor", 8), sigma_schedule=sigmas)
    m.denoiser.canvas_positions = crop_positions == "slice"     # panorama windows at their place
    return m


FAMILY = Family(
    kind="flux2", pipelines=("Flux2Pipeline", "Flux2KleinPipeline"), networks=("Flux2Transformer2DModel",),
    build=build, read_call=read_call,
    model=lambda net, crop_positions="slice", vae_factor=None: flux2_model(net, crop_positions),
    multiple=lambda net: 1, sigma=lambda t, schedule=None: flow_sigma(t, 1.0), network_t=lambda ts: ts / 1000,
    flow=True,
    patched={"Flux2Pipeline": Patched(scale=None, rows="separate"),
             "Flux2KleinPipeline": Patched(rows="separate", cfg_possible=lambda pipe: not pipe.config.is_distilled)})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "flux2-klein-base": Preset("cfg:w=3", "FLUX.2 [klein] base 4B/9B (pipeline folder)",
                               CARD.format(pipeline="Flux2KleinPipeline"),
                               "guidance_scale 4.0 -> w 3 (diffusers' convention), the empty negative prompt; 50 steps",
                               steps=50, sampler="flow_euler"),
}
