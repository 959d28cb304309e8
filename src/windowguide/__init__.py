"""windowguide: sliding-window guidance, weak-to-strong guidance and large-content fusion for diffusion models.

    import windowguide as wg
    from windowguide.guidance import CFG, MSWG
    images = wg.sample(denoiser, shape=(3, 64, 64), seeds=range(8), guidance=CFG(1.0) + MSWG(0.5, window=40),
                       cond=labels)
"""
from . import guidance, sampling, windows
from .denoiser import (Denoiser, EDMDenoiser, EpsDenoiser, FlowDenoiser, VDenoiser, VPSchedule, as_denoiser)
from .generate import parse_seeds, sample
from .guidance import (CFG, MSWG, SWG, AutoGuidance, Custom, Guidance, GuidedDenoiser, Interval, Segmented,
                       guided)

__version__ = "0.1.0"


def patch(pipe, guidance, max_batch=None, weak=None, crop_positions="slice"):
    """``with wg.patch(pipe, "cfg:w=6.5+mswg:w=0.5,window=48"): pipe(prompt)``: the pipeline's own loop
    with windowguide's guidance (``integrations.patch.patch``)."""
    from .integrations.patch import patch as _patch
    return _patch(pipe, guidance, max_batch, weak, crop_positions)


def from_pipeline(pipe, **options):
    """What sampling needs from a loaded diffusers pipeline (``adapters.pipelines.from_pipeline``)."""
    from .adapters.pipelines import from_pipeline as _from_pipeline
    return _from_pipeline(pipe, **options)


__all__ = ["from_pipeline", "patch", "sample", "parse_seeds", "guidance", "sampling", "windows", "Denoiser", "EDMDenoiser", "EpsDenoiser",
           "VDenoiser", "FlowDenoiser", "VPSchedule", "as_denoiser", "CFG", "MSWG", "SWG", "AutoGuidance", "Custom",
           "Guidance", "GuidedDenoiser", "Interval", "Segmented", "guided"]
