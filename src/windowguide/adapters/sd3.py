"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): an MMDiT predicting the flow velocity, on
the scheduler's static shift; the condition is {embeds, pooled}; ``skip_layers(...)`` gives the
negative of SD3.5's skip-layer guidance (blocks skipped by index). A crop goes through the
transformer's own ``PatchEmbed``, whose positional embedding is cropped from the centre of its
``pos_embed_max_size`` grid."""
from __future__ import annotations

from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..errors import WindowguideError
from .base import PipelineModel, flow_sigma, to_uint8, vae_factor
from .netcall import Call, current_static, joint, rows_t, sample_of, same_dtype_write
from .registry import Family, Patched
from ..presets import Preset, SGG_PAPER, SD35

T_MAX = 1000          # SD3's transformer takes t = 1000 s


def sd3_model(tr) -> Callable:
    """SD3's transformer as model(x_t, t, {embeds, pooled}, skip_layers=None) -> velocity."""
    def model(x, t, cond, skip_layers=None):
        return tr(hidden_states=x.to(tr.dtype), timestep=t, encoder_hidden_states=cond["embeds"],
                  pooled_projections=cond["pooled"], skip_layers=skip_layers, **current_static()).sample.float()
    return model


def read_call(net, kwargs: dict) -> Call | None:
    """An SD3 transformer call; its own skip-layer call and ControlNet calls are left alone (None)."""
    if kwargs.get("skip_layers") is not None or kwargs.get("block_controlnet_hidden_states") is not None:
        return None
    x, t = kwargs["hidden_states"], kwargs["timestep"]
    cond = dict(embeds=kwargs["encoder_hidden_states"], pooled=kwargs["pooled_projections"])
    return Call("sd3", x, rows_t(t, x.shape[0], x.device), cond, sample_of, same_dtype_write, joint(kwargs))


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    tr = pipe.transformer
    patch = tr.config.patch_size
    train_steps = pipe.scheduler.config.num_train_timesteps
    model = sd3_model(tr)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 256):
        if class_labels is not None:
            raise WindowguideError("SD3 takes a prompt, not class labels")
        if prompt is None:
            raise WindowguideError("SD3 needs a prompt (--prompt)")
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
            raise WindowguideError("this SD3 pipeline has no CLIP text encoders, so a prompt cannot be encoded")
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, None, None, device=tr.device, negative_prompt=negative_prompt,
                                                          max_sequence_length=max_sequence_length)
        return dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)

    def skip_layers(layers):
        """D of the same transformer with the given blocks skipped (SD3.5's skip-layer guidance negative)."""
        skipped = FlowDenoiser(lambda x, t, c: model(x, t, c, skip_layers=list(layers)), time_scale=train_steps,
                               multiple=patch)
        return lambda x, sigma, cond: skipped(x, sigma, cond)

    size = tr.config.sample_size
    vae = pipe.vae
    shift, scale = vae.config.get("shift_factor") or 0.0, vae.config.scaling_factor

    @torch.no_grad()
    def decode(latents):
        from .vae_tiling import decode_tiled
        z = (latents.to(vae.device, vae.dtype) / scale) + shift
        x = decode_tiled(vae, z) if max(z.shape[-2:]) > 96 else vae.decode(z).sample
        return to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    m = PipelineModel("sd3", FlowDenoiser(model, time_scale=train_steps, multiple=patch), tr.config.in_channels,
                      (size, size), patch, encode, decode, vae_factor=vae_factor(vae), shift=pipe.scheduler.config.shift,
                      skip_negative=skip_layers, sigma_schedule=scheduler_sigmas(pipe.scheduler, size, patch))
    return m


def scheduler_sigmas(scheduler, size: int, patch: int) -> Callable:
    """``PipelineModel.sigmas`` of SD3: the schedule its pipeline sets, ``scheduler.set_timesteps(N)`` with
    mu = calculate_shift(image tokens) under ``use_dynamic_shifting`` (max_shift 1.16, as the pipeline),
    so ``shift``, ``shift_terminal``, Karras / exponential / beta sigmas all come from the scheduler."""
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
    from ..sampling import sigmas_from_flow_t

    def sigmas(steps, spacing=None, sampler=None, shape=None):
        """SD3's schedule for ``steps`` steps (the sample's (C, H, W) for the dynamic shift)."""
        kwargs = {}
        c = scheduler.config
        if c.get("use_dynamic_shifting", None):
            h, w = (shape or (size, size))[-2:]
            kwargs["mu"] = calculate_shift((h // patch) * (w // patch), c.get("base_image_seq_len", 256),
                                           c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                           c.get("max_shift", 1.16))
        scheduler.set_timesteps(steps, **kwargs)
        return sigmas_from_flow_t(scheduler.sigmas.double().tolist()).float()
    return sigmas


def skip_layer_negative(net, layers) -> Callable:
    """SD3's skip-layer negative in P-space: the same transformer with the blocks ``layers`` skipped."""
    try:
        layers = [int(v) for v in layers]
    except ValueError:
        raise WindowguideError(f"skip-layer guidance on SD3 skips blocks by index, got {layers!r}") from None
    model = sd3_model(net)
    return lambda x, sigma, cond: model(x, cond["t"], cond["c"], skip_layers=layers)


FAMILY = Family(
    kind="sd3", pipelines=("StableDiffusion3Pipeline",), networks=("SD3Transformer2DModel",), build=build,
    read_call=read_call, model=lambda net, crop_positions="slice", vae_factor=None: sd3_model(net),
    multiple=lambda net: int(net.config.patch_size), sigma=lambda t, schedule=None: flow_sigma(t, T_MAX), flow=True,
    skip=skip_layer_negative, patched={"StableDiffusion3Pipeline": Patched(reads_cfg=True, own_negative="skip_layers")})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "sd35-slg": Preset("cfg:w=6.0+slg:w=2.8,skip=7/8/9,first=1,last=5", "SD3.5 Medium (pipeline folder)", SD35,
                       "guidance_scale 7.0 -> w 6.0; skip-layer scale 2.8 is already an extra-term weight; "
                       "start 0.01 / stop 0.2 of 28 steps = the pipeline's steps 1..5 (it skips when "
                       "N start < i < N stop)", steps=28, sampler="flow_euler"),
    "sd35-sgg": Preset("sgg:stepsplit=14,cfg=3.5,slg=3.0,skip=7/8/9", "SD3.5 Medium (pipeline folder)", SGG_PAPER,
                       "CFG scale 4.5 -> w 3.5 on steps 1-14, skip-layer weight 3.0 on steps 15-28 (blocks 7, 8, 9); "
                       "2 network evaluations per step (the authors' code makes a third, unused, in the second "
                       "segment)", steps=28, sampler="flow_euler"),
}
