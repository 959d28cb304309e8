"""One entry point from a loaded diffusers pipeline to what windowguide's samplers need.

    import windowguide as wg
    m = wg.from_pipeline(pipe)                      # DiTPipeline, StableDiffusionPipeline, FluxPipeline, ...
    cond, null = m.encode(class_labels=[207, 360])  # or m.encode(prompt="...", negative_prompt="")
    x = wg.sample(m.denoiser, m.shape(), seeds=[0, 1], sampler="ddim", steps=50, sigmas=m.sigmas(50),
                  guidance=wg.CFG(3.0, null=null), cond=cond)
    images = m.decode(m.pipeline_latents(x, m.sigmas(50)))   # uint8 [N, H, W, 3]

Each family is a module of ``windowguide.adapters`` (``sd``, ``sdxl``, ``sd3``, ``flux``, ``pixart``,
``dit``, ``unet2d``, ...; its docstring says what its condition is and how its crops are placed);
``registry`` picks it by the pipeline's class. Others are refused by name.

Weight convention: diffusers' ``guidance_scale`` s is our w = s - 1 (families whose pipeline writes
CFG as P_cond + s (P_cond - P_uncond) say so in their module).
"""
from __future__ import annotations

from typing import Any

from ..errors import WindowguideError
from .base import PipelineModel, scheduler_x0_clip
from .registry import by_pipeline, pipeline_names


def from_pipeline(pipe: Any, crop_positions: str = "slice", guidance_embed: float | None = None) -> PipelineModel:
    """The ``PipelineModel`` of a loaded diffusers pipeline (its family module builds it).

    ``crop_positions`` (DiT and the transformers with positional ids): a crop's positional input.
    'slice' (default): the crop's part of the whole canvas's grid, its true location; 'stretch': DiT:
    the sin-cos grid of the crop's size spread over the trained range (diffusers' own, like the M-SWG
    authors' resize of the trained embedding), FLUX-like: the ids of the crop's own grid. Default
    'slice' because, measured on a small DiT trained on mirror (``windowguide bench positions``), a
    crop's prediction is then 2.5 to 3.5 times closer to the whole image's prediction of that region at
    t <= 300: the crop loses long-range context, not also its position (SWG's weak model should err
    like the model, only more). FLUX with 'slice' makes one call per window position, 'stretch' one
    call for all crops. ``guidance_embed``: a guidance-distilled model's guidance input (FLUX.1-dev's
    ``guidance_scale``, FLUX.2 [dev]'s; not a CFG, no extra evaluation); None: the family's pipeline's
    default (3.5 for FLUX.1, 4.0 for FLUX.2)."""
    if crop_positions not in ("stretch", "slice"):
        raise WindowguideError(f"crop_positions {crop_positions!r}: accepted: 'stretch', 'slice'")
    family = by_pipeline(pipe)
    m = family.build(pipe, crop_positions, guidance_embed)
    m.extras["x0_clip"] = scheduler_x0_clip(getattr(pipe, "scheduler", None))   # clip_sample / thresholding
    m.denoiser.x0_clip = m.extras["x0_clip"]       # so that wg.sample takes the scheduler's steps by default
    note = scheduler_note(getattr(pipe, "scheduler", None), m.flow)
    if note:
        import warnings
        m.extras["scheduler_note"] = note
        warnings.warn(note, stacklevel=2)
    return m


# Schedulers whose update windowguide's samplers reproduce step for step (DDIM / DDPM on the VP families,
# the flow Euler on the flow families); any other is said, never silently replaced.
SINGLE_STEP = {"DDIMScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler"}


def scheduler_note(scheduler, flow: bool) -> str | None:
    """None when windowguide's samplers take the pipeline scheduler's own steps; else the sentence that
    says which sampler runs instead (a multistep solver such as DPMSolverMultistep or UniPC, or a
    stochastic flow Euler, is not reproduced: wg.sample's result is then not the pipeline's)."""
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    runs = "flow_euler" if flow else "ddim (or ddpm)"
    if name not in SINGLE_STEP:
        return (f"the pipeline's scheduler is {name}, whose update windowguide's samplers do not reproduce; "
                f"wg.sample / windowguide sample run {runs} on its sigmas, which differs from the pipeline's own "
                f"output (wg.patch and the guiders run inside the pipeline's scheduler and match it)")
    if getattr(scheduler.config, "stochastic_sampling", False):
        return (f"the pipeline's {name} has stochastic_sampling=True; windowguide's {runs} samples it "
                f"deterministically, which differs from the pipeline's own output (wg.patch and the guiders "
                f"run inside the pipeline's scheduler and match it)")
    return None


def families() -> tuple[str, ...]:
    """The pipeline classes ``from_pipeline`` accepts."""
    return pipeline_names()


__all__ = ["from_pipeline", "PipelineModel", "families", "scheduler_note"]
