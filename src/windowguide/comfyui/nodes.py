"""The node classes (ComfyUI's INPUT_TYPES / RETURN_TYPES / FUNCTION convention). Defaults and their
sources: M-SWG weight 0.5 beside CFG (the M-SWG paper's DiT-XL/2 CFG + M-SWG weight), window 5/8 of the
latent side with 2 windows per side (the paper's 40 of 64 on EDM2, 20 of 32 on DiT); SGG split at half of
the run with CFG above and the low term below (the SGG paper's SD3.5 recipe splits 28 steps at 14); skip
layers 7, 8, 9 (SD3.5 Medium's skip-layer guidance); autoguidance weight 1.0 (Karras et al.'s scale 2.0)."""
from __future__ import annotations

import math

from ..errors import WindowguideError
from ..integrations import comfyui as host

CATEGORY = "sampling/windowguide"
_PERCENT = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}
_SIGMA = {"default": -1.0, "min": -1.0, "max": 1e6, "step": 0.001,
          "tooltip": "a sigma in ComfyUI's units; -1: use the percent instead"}
_WINDOW = {"default": 0.625, "min": 0.0, "max": 4096.0, "step": 0.005,
           "tooltip": "<= 1: a fraction of each latent side (0.625 = 5/8); > 1: latent pixels"}


def _interval(required: dict, optional: dict | None = None) -> dict:
    """INPUT_TYPES with a sigma interval: start/end percents (ComfyUI's convention) or sigmas."""
    return {"required": {**required, "start_percent": ("FLOAT", _PERCENT),
                         "end_percent": ("FLOAT", {**_PERCENT, "default": 1.0})},
            "optional": {"sigma_start": ("FLOAT", _SIGMA), "sigma_end": ("FLOAT", _SIGMA), **(optional or {})}}


def _range(model, start, end, sigma_start=-1.0, sigma_end=-1.0):
    return host.sigma_range(model, start, end, sigma_start, sigma_end)


def _window(window: float, per_side: int) -> host.Window:
    if not (math.isfinite(window) and window > 0):
        raise WindowguideError(f"window {window!r}: accepted: a fraction in (0, 1] of the latent side, or latent pixels")
    if int(per_side) < 2:
        raise WindowguideError(f"windows_per_side {per_side!r}: accepted: an integer >= 2 (one window has no "
                               f"overlap to guide)")
    return host.Window(float(window), int(per_side))


def _blocks(text: str) -> list[int]:
    try:
        blocks = [int(b) for b in str(text).replace("/", ",").split(",") if b.strip()]
    except ValueError:
        raise WindowguideError(f"skip_layers {text!r}: accepted: block indices such as 7,8,9") from None
    if not blocks:
        raise WindowguideError("skip_layers is empty: give block indices such as 7,8,9")
    return blocks


class SlidingWindowGuidance:
    """M-SWG (masked, default) or SWG: w M ⊙ (D_cond - D_crops), the crops all in one batched call."""

    @classmethod
    def INPUT_TYPES(cls):
        return _interval({
            "model": ("MODEL",),
            "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 20.0, "step": 0.01}),
            "masked": ("BOOLEAN", {"default": True, "tooltip": "M-SWG (guide where windows overlap) or plain SWG"}),
            "window": ("FLOAT", _WINDOW),
            "windows_per_side": ("INT", {"default": 2, "min": 2, "max": 64}),
        }, {"max_batch": ("INT", {"default": 0, "min": 0, "max": 4096,
                                  "tooltip": "crops per network call (memory cap); 0: all in one"})})

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, weight, masked, window, windows_per_side, start_percent, end_percent,
              sigma_start=-1.0, sigma_end=-1.0, max_batch=0):
        lo, hi = _range(model, start_percent, end_percent, sigma_start, sigma_end)
        maker = host.swg_maker(weight, _window(window, windows_per_side), bool(masked), lo, hi)
        if int(max_batch) < 0:
            raise WindowguideError(f"max_batch {max_batch!r}: accepted: 0 (all crops in one call) or a positive integer")
        return (host.add_rules(model, [maker], max_batch=int(max_batch) or None),)


class SegmentedGuidance:
    """SGG: CFG above the split, one condition-agnostic term below it (M-SWG, SWG, skip-layer on the
    model's blocks, or a second model), two network evaluations per step on both sides."""

    LOW = ["mswg", "swg", "skip_layer", "autoguidance"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "split_percent": ("FLOAT", {**_PERCENT, "default": 0.5}),
            "low": (cls.LOW, {"default": "mswg"}),
            "low_weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 20.0, "step": 0.01}),
            "window": ("FLOAT", _WINDOW),
            "windows_per_side": ("INT", {"default": 2, "min": 2, "max": 64}),
            "skip_layers": ("STRING", {"default": "7,8,9"}),
        }, "optional": {"weak_model": ("MODEL",), "sigma_split": ("FLOAT", _SIGMA)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, split_percent, low, low_weight, window, windows_per_side, skip_layers, weak_model=None,
              sigma_split=-1.0):
        if low not in self.LOW:
            raise WindowguideError(f"low {low!r}: accepted: {', '.join(self.LOW)}")
        if not 0.0 < float(split_percent) < 1.0 and sigma_split < 0:
            raise WindowguideError(f"split_percent {split_percent!r}: accepted: a fraction in (0, 1)")
        split = float(sigma_split) if sigma_split >= 0 else float(
            model.get_model_object("model_sampling").percent_to_sigma(split_percent))
        inf = float("inf")
        if low in ("mswg", "swg"):
            maker = host.swg_maker(low_weight, _window(window, windows_per_side), low == "mswg", 0.0, inf)
        elif low == "skip_layer":
            maker = host.skip_maker(low_weight, _blocks(skip_layers), 0.0, inf)
        else:
            if weak_model is None:
                raise WindowguideError("low='autoguidance' needs the weak model: connect weak_model")
            maker = host.weak_maker(low_weight, weak_model, 0.0, inf)
        maker, cfg_on = host.segmented(maker, split)
        return (host.add_rules(model, [maker], cfg_on=cfg_on),)


class TwoModelAutoguidance:
    """Autoguidance: w (D_cond - D_weak) with a second, weaker MODEL, on a sigma interval."""

    @classmethod
    def INPUT_TYPES(cls):
        return _interval({"model": ("MODEL",), "weak_model": ("MODEL",),
                          "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.01})})

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, weak_model, weight, start_percent, end_percent, sigma_start=-1.0, sigma_end=-1.0):
        lo, hi = _range(model, start_percent, end_percent, sigma_start, sigma_end)
        return (host.add_rules(model, [host.weak_maker(weight, weak_model, lo, hi)]),)


class GuidanceInterval:
    """CFG only inside a sigma interval (Kynkäänniemi et al.): outside it the sampler's CFG is P_cond,
    and the unconditional batch is not evaluated."""

    @classmethod
    def INPUT_TYPES(cls):
        return _interval({"model": ("MODEL",)})

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, start_percent, end_percent, sigma_start=-1.0, sigma_end=-1.0):
        return (host.add_rules(model, cfg_on=_range(model, start_percent, end_percent, sigma_start, sigma_end)),)


class Recipe:
    """Any windowguide recipe (``windowguide sample --guidance``), sigmas in ComfyUI's units: e.g.
    ``mswg:w=0.5`` or ``cfg:w=4,lo=0.3,hi=15+swg:w=0.3,window=40``; a ``cfg`` term is the sampler's cfg
    (1 + w, checked) on its interval; ``ag`` takes weak_model; ``slg:skip=7/8/9`` the model's blocks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "recipe": ("STRING", {"default": "mswg:w=0.5", "multiline": False})},
                "optional": {"weak_model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, recipe, weak_model=None):
        makers, cfg_on, cfg_weight = host.recipe_rules(recipe, weak_model)
        return (host.add_rules(model, makers, cfg_on=cfg_on, cfg_weight=cfg_weight),)


class FusionSampler:
    """A SAMPLER for SamplerCustom: the canvas (any size) denoised from overlapping windows of the model's
    size and fused: MultiDiffusion (uniform), Guided Fusion (cone weights, default), gaussian (Mixture of
    Diffusers); VCF for ddpm / ddim with eta > 0; style alignment of the initial noise; circular width.
    Every guidance node's terms (and the sampler's CFG) run inside each window."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sampler": (list(host.FUSION_SAMPLERS + host.COMFY_SAMPLERS), {"default": "euler"}),
            "mode": (["gf", "multidiffusion", "gaussian"], {"default": "gf"}),
            "window": ("INT", {"default": 64, "min": 1, "max": 4096, "tooltip": "latent pixels: the model's size "
                                                                                 "(SD 1.5: 64, SDXL: 128)"}),
            "stride": ("INT", {"default": 16, "min": 1, "max": 4096}),
            "vcf": ("BOOLEAN", {"default": False}),
            "eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            "style_alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            "circular": ("BOOLEAN", {"default": False}),
        }, "optional": {"view_batch": ("INT", {"default": 0, "min": 0, "max": 4096,
                                               "tooltip": "windows stepped and folded at a time (memory: one view batch, not every window); 0: all at once"})}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, sampler, mode, window, stride, vcf, eta, style_alpha, circular, view_batch=0):
        return (host.fusion_sampler(mode, sampler, window, stride, bool(vcf), eta, style_alpha, bool(circular),
                                    view_batch),)


NODES = {
    "WindowguideSlidingWindowGuidance": (SlidingWindowGuidance, "Sliding-Window Guidance (M-SWG, windowguide)"),
    "WindowguideSegmentedGuidance": (SegmentedGuidance, "Segmented Guidance (SGG, windowguide)"),
    "WindowguideTwoModelAutoguidance": (TwoModelAutoguidance, "Two-Model Autoguidance (windowguide)"),
    "WindowguideGuidanceInterval": (GuidanceInterval, "CFG Guidance Interval (windowguide)"),
    "WindowguideRecipe": (Recipe, "Guidance Recipe (windowguide)"),
    "WindowguideFusionSampler": (FusionSampler, "Large-Canvas Fusion Sampler (GF / VCF, windowguide)"),
}
NODE_CLASS_MAPPINGS = {k: v[0] for k, v in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v[1] for k, v in NODES.items()}
