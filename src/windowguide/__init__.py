"""windowguide: sliding-window guidance, weak-to-strong guidance and large-content fusion for diffusion models.

    import windowguide as wg
    from windowguide.guidance import CFG, MSWG
    images = wg.sample(denoiser, shape=(3, 64, 64), seeds=range(8), guidance=CFG(1.0) + MSWG(0.5, window=40),
                       cond=labels)
"""
import importlib

# Names resolved on first use (PEP 562), so that 'import windowguide' and 'windowguide --help' do not
# import torch; 'wg.CFG' or 'from windowguide import sample' import what they name.
_LAZY = {
    **{name: ".denoiser" for name in ("Denoiser", "EDMDenoiser", "EpsDenoiser", "FlowDenoiser", "VDenoiser",
                                      "VPSchedule", "as_denoiser")},
    **{name: ".generate" for name in ("parse_seeds", "sample")},
    "save_images": ".images",
    "WindowguideError": ".errors",
    **{name: ".guidance" for name in ("CFG", "MSWG", "SWG", "AutoGuidance", "Custom", "Guidance", "GuidedDenoiser",
                                      "Interval", "Segmented", "guided")},
}
_MODULES = ("guidance", "sampling", "windows", "errors", "spec", "fusion", "regional", "video", "upscaling")


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'windowguide' has no attribute {name!r}")
    globals()[name] = value
    return value


__version__ = "0.1.0"


def patch(pipe, guidance, max_batch=None, weak=None, crop_positions="slice"):
    """``with wg.patch(pipe, "cfg:w=6.5+mswg:w=0.5,window=48"): pipe(prompt)``: the pipeline's own loop
    with windowguide's guidance (``integrations.patch.patch``)."""
    from .integrations.patch import patch as _patch
    return _patch(pipe, guidance, max_batch, weak, crop_positions)


def panorama(denoiser, canvas, seeds, window, stride=8, **options):
    """A canvas larger than the model from fused windows (``fusion.panorama``; ``regions=`` for a prompt
    or class per region, ``regional.regional_panorama``)."""
    regions = options.pop("regions", None)
    if regions is not None:
        from .regional import regional_panorama
        return regional_panorama(denoiser, canvas, seeds, regions, window, stride, **options)
    from .fusion import panorama as _panorama
    return _panorama(denoiser, canvas, seeds, window, stride, **options)


def long_video(denoiser, canvas, seeds, window, stride=4, **options):
    """A video longer than the model's clip from windows fused along time (``video.long_video``)."""
    from .video import long_video as _long_video
    return _long_video(denoiser, canvas, seeds, window, stride, **options)


def upscale(pipe, image, scale=2, strength=0.35, **options):
    """An image upscaled over windows by a diffusers pipeline (``upscaling.upscale``); a bundled / EDM
    denoiser in pixel space goes to ``upscaling.upscale_pixels``."""
    from .denoiser import Denoiser
    from .upscaling import upscale as _upscale, upscale_pixels
    if isinstance(pipe, Denoiser):
        return upscale_pixels(pipe, image, scale, strength, **options)
    return _upscale(pipe, image, scale, strength, **options)


def recipe(spec, model=None, device="cpu"):
    """The Guidance a SPEC string names (``spec.build``), e.g. ``wg.recipe("cfg:w=1+mswg:w=0.5")``;
    ``model``: the bundled name or checkpoint whose weak models (ag, wd) and blocks (slg) it refers to."""
    from . import spec as _spec
    if model is None:
        return _spec.build(spec, _spec.Context(net=None, load=_spec.no_weak_models))
    from .commands.common import prepare
    return prepare(model, spec, device)[3]


def from_pipeline(pipe, **options):
    """What sampling needs from a loaded diffusers pipeline (``adapters.registry.from_pipeline``)."""
    from .adapters.registry import from_pipeline as _from_pipeline
    return _from_pipeline(pipe, **options)


__all__ = ["from_pipeline", "patch", "sample", "save_images", "panorama", "long_video", "upscale", "recipe", "parse_seeds", "guidance", "sampling", "windows", "Denoiser", "EDMDenoiser", "EpsDenoiser",
           "VDenoiser", "FlowDenoiser", "VPSchedule", "as_denoiser", "CFG", "MSWG", "SWG", "AutoGuidance", "Custom",
           "Guidance", "GuidedDenoiser", "Interval", "Segmented", "guided", "WindowguideError"]
