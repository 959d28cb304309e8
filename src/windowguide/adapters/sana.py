"""SANA (``SanaPipeline``): a linear-attention DiT predicting the flow velocity on the deep-compression
autoencoder's latent (32x), Gemma-2 text embeddings with an attention mask, CFG in one batch
(uncond, cond) with ``guidance_scale`` s (our w = s - 1); timesteps are the scheduler's (t = 1000 s,
times the transformer's ``timestep_scale``), flow matching on whichever flow scheduler the pipeline
holds (its DPM-Solver, or a flow Euler one). Without a positional embedding (SANA's default,
``interpolation_scale`` None) a crop needs no place; with one, a crop gets its slice of the canvas's
sin-cos grid as DiT's crops do. The condition is {embeds, mask}; a learned variance is dropped.
Its VAE (DC-AE) is decoded in one piece (no exact tiled decode of it)."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..errors import WindowguideError
from ..windows import current_regions
from .base import PipelineModel, flow_sigma, needs_parts, needs_prompt, to_uint8
from .netcall import Call, current_static, joint, rows_t, sample_of, with_sample
from .registry import Family, Patched
from ..presets import Preset, CARD

T_MAX = 1000


def sana_model(tr, crop_positions: str = "slice") -> Callable:
    """SANA's transformer as model(x, t, {embeds, mask}) -> velocity (t in the network's units)."""
    c = tr.config.in_channels

    def model(x, t, cond):
        args = dict(encoder_hidden_states=cond["embeds"].to(tr.dtype), encoder_attention_mask=cond["mask"],
                    timestep=t, return_dict=False, **current_static())
        regions = current_regions()
        pe = tr.patch_embed
        if crop_positions == "slice" and regions is not None and pe.pos_embed is not None:
            from .dit import sliced_positions
            with sliced_positions(pe, regions, x.shape[-2:]):
                out = tr(x.to(tr.dtype), **args)[0]
        else:
            out = tr(x.to(tr.dtype), **args)[0]
        return out.float()[:, :c]
    return model


def read_call(net, kwargs: dict) -> Call | None:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    if kwargs.get("controlnet_block_samples") is not None:
        return None
    if float(net.config.timestep_scale) != 1.0:
        raise WindowguideError(f"SANA with timestep_scale {net.config.timestep_scale} (SANA-Sprint): its calls' "
                               f"timesteps are not read yet; use from_pipeline and windowguide's sampler")
    x = kwargs["hidden_states"]
    c = x.shape[1]
    cond = dict(embeds=kwargs["encoder_hidden_states"], mask=kwargs.get("encoder_attention_mask"))

    def write(out, p):
        full = sample_of(out)
        return with_sample(out, p, lambda q: torch.cat([q.to(full.dtype), full[:, c:]], 1))
    return Call("sana", x, rows_t(kwargs["timestep"], x.shape[0], x.device), cond, lambda out: sample_of(out)[:, :c],
                write, joint(kwargs, "attention_kwargs"))


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    from ..sampling import sigmas_from_flow_t
    tr = pipe.transformer
    vae = pipe.vae
    scale = float(tr.config.timestep_scale)
    model = sana_model(tr, crop_positions)
    instruction = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 300,
               complex_human_instruction=instruction):
        needs_prompt("SANA", prompt, class_labels)
        needs_parts(pipe, "SANA", "text_encoder", "tokenizer")
        pos, pos_mask, neg, neg_mask = pipe.encode_prompt(
            prompt, True, negative_prompt=negative_prompt or "", device=tr.device,
            max_sequence_length=max_sequence_length, complex_human_instruction=complex_human_instruction)
        return dict(embeds=pos, mask=pos_mask), dict(embeds=neg, mask=neg_mask)

    def sigmas(steps, spacing=None, shape=None, sampler=None):
        """The pipeline scheduler's own flow times for ``steps`` steps, as VE sigmas ending in 0."""
        pipe.scheduler.set_timesteps(steps)
        t = pipe.scheduler.sigmas.double().tolist()[:steps]
        return sigmas_from_flow_t(t + [0.0]).float()

    @torch.no_grad()
    def decode(latents):
        x = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
        return to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    size = tr.config.sample_size
    m = PipelineModel("sana", FlowDenoiser(model, time_scale=T_MAX * scale, multiple=tr.config.patch_size),
                      tr.config.in_channels, (size, size), tr.config.patch_size, encode, decode,
                      vae_factor=getattr(pipe, "vae_scale_factor", 32), sigma_schedule=sigmas)
    return m


FAMILY = Family(
    kind="sana", pipelines=("SanaPipeline",), networks=("SanaTransformer2DModel",), build=build, read_call=read_call,
    model=lambda net, crop_positions="slice", vae_factor=None: sana_model(net, crop_positions),
    multiple=lambda net: int(net.config.patch_size),
    sigma=lambda t, schedule=None: flow_sigma(t, T_MAX),     # the call's t / timestep_scale: see ``network_t``
    flow=True, patched={"SanaPipeline": Patched(reads_cfg=True)})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "sana": Preset("cfg:w=3.5", "SANA 1600M / 600M (pipeline folder)", CARD.format(pipeline="SanaPipeline"),
                   "guidance_scale 4.5 -> w 3.5; 20 steps (the pipeline's DPM-Solver++ steps; windowguide's flow "
                   "Euler takes the same schedule)", steps=20, sampler="flow_euler"),
}
