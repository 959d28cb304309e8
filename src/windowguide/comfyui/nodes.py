"""windowguide's ComfyUI nodes on ComfyUI's own node API (``comfy_api.latest``: ``io.ComfyNode``,
``define_schema`` / ``execute``). Each node is a thin surface over ``windowguide.integrations.comfyui``;
its help page is ``web/docs/<node id>.md`` beside this module.

Defaults and their sources: M-SWG weight 0.5 beside CFG (the M-SWG paper's DiT-XL/2 CFG + M-SWG weight),
window 5/8 of the latent side with 2 windows per side (the paper's 40 of 64 on EDM2, 20 of 32 on DiT);
SGG split at half of the run with CFG above and the low term below (the SGG paper's SD3.5 recipe splits
28 steps at 14); skip layers 7, 8, 9 (SD3.5 Medium's skip-layer guidance); autoguidance weight 1.0
(Karras et al.'s scale 2.0); fusion windows of the model's own size at a quarter of it as stride (Guided
Fusion's setting)."""
from __future__ import annotations

import math

from comfy_api.latest import io

from ..errors import WindowguideError
from ..integrations import comfyui as host

CATEGORY = "sampling/windowguide"
WINDOW_TIP = ("<= 1: a fraction of each latent side (0.625 = 5/8, the M-SWG paper's 40 of 64); > 1: latent "
              "pixels")
SIGMA_TIP = "a sigma in ComfyUI's units, used instead of the percent; -1: use the percent"


def _percents() -> list:
    return [io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                           tooltip="where the term starts, as a fraction of the run (ComfyUI's convention: 0 = "
                                   "the first step, at the highest sigma)"),
            io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                           tooltip="where the term ends, as a fraction of the run"),
            io.Float.Input("sigma_start", default=-1.0, min=-1.0, max=1e6, step=0.001, optional=True,
                           tooltip="the interval's top sigma; " + SIGMA_TIP),
            io.Float.Input("sigma_end", default=-1.0, min=-1.0, max=1e6, step=0.001, optional=True,
                           tooltip="the interval's bottom sigma; " + SIGMA_TIP)]


def _window_inputs() -> list:
    return [io.Float.Input("window", default=0.625, min=0.0, max=4096.0, step=0.005, tooltip=WINDOW_TIP),
            io.Int.Input("windows_per_side", default=2, min=2, max=64,
                         tooltip="crops along each side; 2 or more, so that crops overlap"),
            io.Int.Input("window_frames", default=0, min=0, max=4096, optional=True,
                         tooltip="video latents only: the crop's length in latent frames (0: the whole clip, "
                                 "crops in space only)")]


def _window(window: float, per_side: int, frames: int = 0) -> host.Window:
    if not (math.isfinite(window) and window > 0):
        raise WindowguideError(f"window {window!r}: accepted: a fraction in (0, 1] of the latent side, or latent pixels")
    if int(per_side) < 2:
        raise WindowguideError(f"windows_per_side {per_side!r}: accepted: an integer >= 2 (one window has no "
                               f"overlap to guide)")
    if int(frames) < 0:
        raise WindowguideError(f"window_frames {frames!r}: accepted: 0 (the whole clip) or latent frames")
    return host.Window(float(window), int(per_side), int(frames))


def _blocks(text: str) -> list[int]:
    try:
        blocks = [int(b) for b in str(text).replace("/", ",").split(",") if b.strip()]
    except ValueError:
        raise WindowguideError(f"skip_layers {text!r}: accepted: block indices such as 7,8,9") from None
    if not blocks:
        raise WindowguideError("skip_layers is empty: give block indices such as 7,8,9")
    return blocks


class SlidingWindowGuidance(io.ComfyNode):
    """M-SWG (masked, default) or SWG: w M ⊙ (D_cond - D_crops), the crops all in one batched call."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideSlidingWindowGuidance",
            display_name="Sliding-Window Guidance (M-SWG, windowguide)",
            category=CATEGORY,
            description="Guides the model with itself run on overlapping crops, which lack long-range context: "
                        "D = CFG + w M (D_cond - D_crops). Training-free; no class labels needed. Works with "
                        "ControlNets, area and mask conditioning (each crop gets its part).",
            inputs=[io.Model.Input("model"),
                    io.Float.Input("weight", default=0.5, min=0.0, max=20.0, step=0.01,
                                   tooltip="w: 0.5 beside CFG (the paper's DiT-XL/2 setting); 0 = no guidance"),
                    io.Boolean.Input("masked", default=True,
                                     tooltip="M-SWG: guide only where crops overlap (M); off: plain SWG"),
                    *_window_inputs()[:2], *_percents(), _window_inputs()[2],
                    io.Int.Input("max_batch", default=0, min=0, max=4096, optional=True,
                                 tooltip="crops per network call (a memory cap); 0: all in one call")],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, weight, masked, window, windows_per_side, start_percent, end_percent, sigma_start=-1.0,
                sigma_end=-1.0, max_batch=0, window_frames=0) -> io.NodeOutput:
        lo, hi = host.sigma_range(model, start_percent, end_percent, sigma_start, sigma_end)
        maker = host.swg_maker(weight, _window(window, windows_per_side, window_frames), bool(masked), lo, hi)
        if int(max_batch) < 0:
            raise WindowguideError(f"max_batch {max_batch!r}: accepted: 0 (all crops in one call) or a positive integer")
        return io.NodeOutput(host.add_rules(model, [maker], max_batch=int(max_batch) or None))


class SegmentedGuidance(io.ComfyNode):
    """SGG: CFG above the split, one condition-agnostic term below it."""
    LOW = ["mswg", "swg", "skip_layer", "autoguidance"]

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideSegmentedGuidance",
            display_name="Segmented Guidance (SGG, windowguide)",
            category=CATEGORY,
            description="CFG at high noise (above the split), a condition-agnostic term at low noise (M-SWG, SWG, "
                        "skip-layer or a weak model): two network evaluations per step on both sides.",
            inputs=[io.Model.Input("model"),
                    io.Float.Input("split_percent", default=0.5, min=0.0, max=1.0, step=0.001,
                                   tooltip="where CFG stops and the low term starts, as a fraction of the run "
                                           "(0.5: the SGG paper's 14 of 28 steps)"),
                    io.Combo.Input("low", options=cls.LOW, default="mswg",
                                   tooltip="the term below the split; autoguidance needs weak_model"),
                    io.Float.Input("low_weight", default=0.5, min=0.0, max=20.0, step=0.01,
                                   tooltip="the low term's weight w"),
                    *_window_inputs()[:2],
                    io.String.Input("skip_layers", default="7,8,9",
                                    tooltip="skip_layer: the joint / double blocks passed through (SD3.5 Medium: "
                                            "7,8,9)"),
                    io.Model.Input("weak_model", optional=True,
                                   tooltip="autoguidance: the weaker model of the same architecture"),
                    io.Float.Input("sigma_split", default=-1.0, min=-1.0, max=1e6, step=0.001, optional=True,
                                   tooltip="the split as a sigma; " + SIGMA_TIP),
                    _window_inputs()[2]],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, split_percent, low, low_weight, window, windows_per_side, skip_layers, weak_model=None,
                sigma_split=-1.0, window_frames=0) -> io.NodeOutput:
        if low not in cls.LOW:
            raise WindowguideError(f"low {low!r}: accepted: {', '.join(cls.LOW)}")
        if not 0.0 < float(split_percent) < 1.0 and sigma_split < 0:
            raise WindowguideError(f"split_percent {split_percent!r}: accepted: a fraction in (0, 1)")
        split = float(sigma_split) if sigma_split >= 0 else float(
            model.get_model_object("model_sampling").percent_to_sigma(split_percent))
        inf = float("inf")
        if low in ("mswg", "swg"):
            maker = host.swg_maker(low_weight, _window(window, windows_per_side, window_frames), low == "mswg", 0.0, inf)
        elif low == "skip_layer":
            maker = host.skip_maker(low_weight, _blocks(skip_layers), 0.0, inf)
        else:
            if weak_model is None:
                raise WindowguideError("low='autoguidance' needs the weak model: connect weak_model")
            maker = host.weak_maker(low_weight, weak_model, 0.0, inf)
        maker, cfg_on = host.segmented(maker, split)
        return io.NodeOutput(host.add_rules(model, [maker], cfg_on=cfg_on))


class TwoModelAutoguidance(io.ComfyNode):
    """Autoguidance: w (D_cond - D_weak) with a second, weaker MODEL, on a sigma interval."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideTwoModelAutoguidance",
            display_name="Two-Model Autoguidance (windowguide)",
            category=CATEGORY,
            description="Autoguidance (Karras et al.): D = CFG + w (D_cond - D_weak), the weak model a smaller or "
                        "less trained model of the same architecture, on the conditional conditioning.",
            inputs=[io.Model.Input("model"),
                    io.Model.Input("weak_model", tooltip="a weaker model of the same architecture and latents"),
                    io.Float.Input("weight", default=1.0, min=0.0, max=20.0, step=0.01,
                                   tooltip="w (1.0 = Karras et al.'s guidance scale 2)"),
                    *_percents()],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, weak_model, weight, start_percent, end_percent, sigma_start=-1.0,
                sigma_end=-1.0) -> io.NodeOutput:
        lo, hi = host.sigma_range(model, start_percent, end_percent, sigma_start, sigma_end)
        return io.NodeOutput(host.add_rules(model, [host.weak_maker(weight, weak_model, lo, hi)]))


class GuidanceInterval(io.ComfyNode):
    """CFG only inside a sigma interval; outside it the unconditional batch is not evaluated."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideGuidanceInterval",
            display_name="CFG Guidance Interval (windowguide)",
            category=CATEGORY,
            description="CFG only inside a sigma interval (Kynkäänniemi et al.); outside it the sampler's CFG gives "
                        "the conditional prediction and the unconditional batch is not evaluated.",
            inputs=[io.Model.Input("model"), *_percents()],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, start_percent, end_percent, sigma_start=-1.0, sigma_end=-1.0) -> io.NodeOutput:
        return io.NodeOutput(host.add_rules(model, cfg_on=host.sigma_range(model, start_percent, end_percent,
                                                                           sigma_start, sigma_end)))


class Recipe(io.ComfyNode):
    """Any windowguide recipe (``windowguide sample --guidance``), sigmas in ComfyUI's units."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideRecipe",
            display_name="Guidance Recipe (windowguide)",
            category=CATEGORY,
            description="Any windowguide guidance recipe, e.g. mswg:w=0.5 or cfg:w=4,lo=0.3,hi=15+swg:w=0.3; a cfg "
                        "term is the sampler's cfg (1 + w, checked); ag takes weak_model; slg:skip=7/8/9 the "
                        "model's blocks.",
            inputs=[io.Model.Input("model"),
                    io.String.Input("recipe", default="mswg:w=0.5", tooltip="terms joined by +, sigmas in ComfyUI's "
                                                                             "units (see the help page)"),
                    io.Model.Input("weak_model", optional=True, tooltip="the weak model an ag term names")],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, recipe, weak_model=None) -> io.NodeOutput:
        makers, cfg_on, cfg_weight = host.recipe_rules(recipe, weak_model)
        return io.NodeOutput(host.add_rules(model, makers, cfg_on=cfg_on, cfg_weight=cfg_weight))


class FusionSampler(io.ComfyNode):
    """A SAMPLER that denoises a canvas of any size from overlapping windows of the model's size."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideFusionSampler",
            display_name="Large-Canvas Fusion Sampler (GF / VCF, windowguide)",
            category=CATEGORY,
            description="A sampler for SamplerCustom: the canvas is denoised from overlapping windows of the model's "
                        "size, all windows in one batched call, and fused: Guided Fusion (cone weights), "
                        "MultiDiffusion, or gaussian; VCF keeps the noise's variance under stochastic samplers. "
                        "Img2img (denoise < 1) for tiled upscaling; each window gets its crop of ControlNet hints, "
                        "areas, masks and an inpainting model's image; guidance nodes run inside each window.",
            inputs=[io.Combo.Input("sampler", options=list(host.FUSION_SAMPLERS + host.COMFY_SAMPLERS), default="euler",
                                   tooltip="the step each window takes; one-step samplers only (a multistep "
                                           "sampler's history does not survive fusion)"),
                    io.Combo.Input("mode", options=["gf", "multidiffusion", "gaussian"], default="gf",
                                   tooltip="gf: Guided Fusion's cone weights; multidiffusion: uniform; gaussian: "
                                           "Mixture of Diffusers (fuses predictions)"),
                    io.Int.Input("window", default=64, min=1, max=4096,
                                 tooltip="the window side in latent pixels: the model's size (SD 1.5: 64, SDXL: 128)"),
                    io.Int.Input("stride", default=16, min=1, max=4096,
                                 tooltip="latent pixels between windows (a quarter of the window: GF's setting)"),
                    io.Boolean.Input("vcf", default=False,
                                     tooltip="Variance-Corrected Fusion: for ddpm, ddim with eta > 0, "
                                             "euler_ancestral, dpm_2_ancestral, lcm"),
                    io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="ddim's eta"),
                    io.Float.Input("style_alpha", default=0.0, min=0.0, max=1.0, step=0.01,
                                   tooltip="Style Alignment of the initial noise (from an empty latent only); 0: off"),
                    io.Boolean.Input("circular", default=False, tooltip="wrap the width (360-degree panoramas)"),
                    io.Int.Input("view_batch", default=0, min=0, max=4096, optional=True,
                                 tooltip="windows stepped at a time (memory); 0: all at once"),
                    io.Int.Input("window_frames", default=0, min=0, max=4096, optional=True,
                                 tooltip="video latents: the window's length in latent frames for fusion along "
                                         "time (0: the whole clip)"),
                    io.Int.Input("frame_stride", default=0, min=0, max=4096, optional=True,
                                 tooltip="video latents: latent frames between windows (0: half the window)")],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, sampler, mode, window, stride, vcf, eta, style_alpha, circular, view_batch=0, window_frames=0,
                frame_stride=0) -> io.NodeOutput:
        return io.NodeOutput(host.fusion_sampler(mode, sampler, window, stride, bool(vcf), eta, style_alpha,
                                                 bool(circular), view_batch, window_frames, frame_stride))


class VAEDecodeTiled(io.ComfyNode):
    """ComfyUI's VAE decode, exact, in tiles."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideVAEDecodeTiled",
            display_name="VAE Decode (Exact Tiled, windowguide)",
            category="latent",
            description="Decodes like VAE Decode, equal to it up to float rounding at any tile size, while each "
                        "convolution runs in tiles: every GroupNorm takes the whole image's statistics (ComfyUI's "
                        "VAE Decode (Tiled) normalises each tile by itself and blends three tilings, which shifts "
                        "colours). For the SD 1.x / 2.x / XL / SD3 / FLUX VAEs.",
            inputs=[io.Vae.Input("vae"), io.Latent.Input("samples"),
                    io.Int.Input("tile_size", default=256, min=8, max=8192, step=8,
                                 tooltip="the side of a convolution's output tile, in that layer's pixels (memory "
                                         "per tile); the result does not depend on it")],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, vae, samples, tile_size) -> io.NodeOutput:
        return io.NodeOutput(host.vae_decode_tiled(vae, samples["samples"], tile_size))


class VAEEncodeTiled(io.ComfyNode):
    """ComfyUI's VAE encode, exact, in tiles."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WindowguideVAEEncodeTiled",
            display_name="VAE Encode (Exact Tiled, windowguide)",
            category="latent",
            description="Encodes like VAE Encode, equal to it up to float rounding at any tile size, each "
                        "convolution in tiles and every GroupNorm over the whole image.",
            inputs=[io.Vae.Input("vae"), io.Image.Input("pixels"),
                    io.Int.Input("tile_size", default=256, min=8, max=8192, step=8,
                                 tooltip="the side of a convolution's output tile (memory); the result does not "
                                         "depend on it")],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, vae, pixels, tile_size) -> io.NodeOutput:
        return io.NodeOutput({"samples": host.vae_encode_tiled(vae, pixels, tile_size)})


NODES = [SlidingWindowGuidance, SegmentedGuidance, TwoModelAutoguidance, GuidanceInterval, Recipe, FusionSampler,
         VAEDecodeTiled, VAEEncodeTiled]
