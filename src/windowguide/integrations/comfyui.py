"""windowguide's guidance inside ComfyUI's own sampler: the host module of the ComfyUI nodes.

ComfyUI samples in its own (x, sigma): k-diffusion's VE form for SD-style models, x = (1 - s) x0 + s n
with sigma = s for flow models. The guidance algebra needs nothing else: every prediction is a D at
the same (x, sigma). The nodes add windowguide *rules* to a cloned model's ``model_options[KEY]``;
two functions installed once read them at each step:

- ``sampler_calc_cond_batch_function``: where a node turns CFG off at this sigma (SGG below its split,
  the CFG interval outside it), only the conditional batch is evaluated and returned as both
  predictions, so ComfyUI's CFG, P_u + s (P_c - P_u), gives P_c (2 evaluations per step with SGG);
- ``sampler_post_cfg_function``: the rules' terms' change, with the conditional prediction
  ComfyUI already made as the positive (never evaluated again),

      D = CFG + sum_i w_i(sigma) M_i ⊙ (D_c - D_neg,i),

  D_neg of M-SWG / SWG the model on all crops of all samples in one batched call
  (``guidance.GuidedDenoiser``, ``windows``), of autoguidance the weak MODEL, of skip-layer the model
  with its blocks passed through.

Sigma ranges are ComfyUI's sigmas (``percent_to_sigma`` of the nodes' start/end percents). A
FLUX-style network's crop gets its place on the canvas through ComfyUI's ``rope_options`` (one call
per place); other networks take a crop as an image of its size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

import torch

from ..denoiser import Denoiser
from ..errors import WindowguideError
from ..guidance import SWG, Guidance, GuidedDenoiser
from ..windows import current_regions, current_samples, default_window, rows_of_call
from .comfyplace import Rows, canvas_cond, check_patches, check_placeable, placed_groups, placed_tensor, positional
from .calls import KnownPositive

KEY = "windowguide"
_STEP_CONDS: ContextVar = ContextVar("windowguide_comfy_conds", default=None)      # the step being guided
_STEP_OPTIONS: ContextVar = ContextVar("windowguide_comfy_options", default=None)
_STEP_MODEL: ContextVar = ContextVar("windowguide_comfy_model", default=None)


def comfy():
    """ComfyUI's own modules (imported when a node runs: ComfyUI is the host)."""
    import comfy.model_patcher
    import comfy.samplers
    return comfy


@dataclass(frozen=True)
class Window:
    """A window size given as a fraction of the latent side (<= 1) or in latent pixels (> 1); on a video
    latent, ``frames`` latent frames long (0: the whole clip)."""
    size: float
    per_side: int = 2
    frames: int = 0

    def sizes(self, shape, multiple: int) -> tuple:
        """The window on a latent of ``shape``: (h, w) for an image, (t, h, w) for a video."""
        h, w = self.pixels(shape[-2], multiple), self.pixels(shape[-1], multiple)
        if len(shape) == 2:
            return h, w
        if self.frames > shape[0]:
            raise WindowguideError(f"window_frames {self.frames} on a clip of {shape[0]} latent frames: accepted: "
                                   f"1 to {shape[0]}, or 0 for the whole clip")
        return (self.frames or shape[0], h, w)

    def pixels(self, side: int, multiple: int) -> int:
        """The window side for a latent side: a fraction f is ``windows.default_window(side, multiple, f)``
        (ceil(f side / m) m), else the pixels, below the side."""
        if not (math.isfinite(self.size) and self.size > 0):
            raise WindowguideError(f"window {self.size!r}: accepted: a fraction in (0, 1) of the latent side, or latent "
                                   f"pixels smaller than the side")
        if self.size <= 1:
            return default_window(side, multiple, self.size)
        if int(self.size) >= side:
            raise WindowguideError(f"window {self.size:g} is {int(self.size)} latent pixels on a side of {side}: one "
                                   f"window would cover it all and guide nothing; accepted: fewer than {side} latent "
                                   f"pixels, or a fraction of the side")
        return int(self.size)


@dataclass(frozen=True)
class Rules:
    """What the nodes asked for: terms built per latent size (``make(shape, multiple, model) -> Term``),
    the sigma intervals (lo, hi] where CFG runs (CFG runs where all of them hold), and the CFG weights a
    recipe expects of the sampler's cfg (checked at the first step)."""
    makers: tuple = ()
    cfg_on: tuple = ()
    cfg_weights: tuple = ()
    max_batch: int | None = None          # at most this many crops per network call (None: all in one)

    def __deepcopy__(self, memo):          # ComfyUI deep-copies model_options on clone; rules are immutable
        return self

    def cfg_here(self, sigma: float) -> bool:
        return all(lo < sigma <= hi for lo, hi in self.cfg_on)

    def terms(self, shape, multiple, model) -> Guidance:
        return Guidance(tuple(make(shape, multiple, model) for make in self.makers))


def add_rules(model, makers=(), cfg_on: tuple[float, float] | None = None, cfg_weight: float | None = None,
              max_batch: int | None = None):
    """A clone of the ComfyUI MODEL with the rules added (the functions installed with the first)."""
    m = model.clone()
    rules = m.model_options.get(KEY)
    if rules is None:
        other = m.model_options.get("sampler_calc_cond_batch_function")
        if other is not None:
            raise WindowguideError("another node already replaced this model's cond batch function; put the "
                                   "windowguide nodes before it (or use one of them)")
        m.set_model_sampler_calc_cond_batch_function(_calc_cond_batch)
        m.set_model_sampler_post_cfg_function(_post_cfg)
        rules = Rules()
    caps = [c for c in (rules.max_batch, max_batch) if c]
    m.model_options[KEY] = Rules(rules.makers + tuple(makers), rules.cfg_on + ((cfg_on,) if cfg_on else ()),
                                 rules.cfg_weights + (() if cfg_weight is None else (float(cfg_weight),)),
                                 min(caps) if caps else None)
    return m


def _calc_cond_batch(args):
    cf = comfy()
    conds, x, sigma, model, options = args["conds"], args["input"], args["sigma"], args["model"], args["model_options"]
    rules = options.get(KEY, Rules())
    if conds[1] is not None and not rules.cfg_here(float(sigma.flatten()[0])):
        d = cf.samplers.calc_cond_batch(model, [conds[0]], x, sigma, options)[0]
        return [d, d]                      # CFG of P with itself is P: CFG off here, the uncond not evaluated
    return cf.samplers.calc_cond_batch(model, conds, x, sigma, options)


def _post_cfg(args):
    rules = args["model_options"].get(KEY)
    for w in () if rules is None else rules.cfg_weights:
        if not math.isclose(float(args["cond_scale"]), 1 + w, rel_tol=0, abs_tol=1e-6):
            raise WindowguideError(f"the recipe's cfg:w={w:g} is the sampler's cfg = 1 + w = {1 + w:g}; the sampler "
                                   f"runs cfg = {float(args['cond_scale']):g}: set it to {1 + w:g}, or drop the cfg term")
    if rules is None or not rules.makers:
        return args["denoised"]
    x, sigma, positive, model = args["input"], args["sigma"], args["cond_denoised"], args["model"]
    check_placeable(args["cond"])
    check_patches(args["model_options"])
    net = ComfyDenoiser(model, [args["cond"]], args["model_options"])
    terms = rules.terms(tuple(x.shape[2:]), net.multiple, model)
    guided = GuidedDenoiser(KnownPositive(net, x, positive), terms, rules.max_batch)
    guided.check(tuple(x.shape[1:]))
    if not any(bool(t.active(sigma.flatten()[:1]).any()) for t in terms):
        return args["denoised"]
    rows = {"which": torch.zeros(x.shape[0], dtype=torch.long, device=x.device)}
    tokens = _STEP_CONDS.set(args["cond"]), _STEP_OPTIONS.set(args["model_options"]), _STEP_MODEL.set(model)
    try:
        return args["denoised"] + (guided(x, sigma, rows) - positive)
    finally:
        for var, token in zip((_STEP_CONDS, _STEP_OPTIONS, _STEP_MODEL), tokens):
            var.reset(token)


def network_multiple(model) -> int:
    """A crop's side must be a multiple of this: the UNet's downsampling, or the transformer's patch."""
    net = model.diffusion_model
    if hasattr(net, "channel_mult"):
        return 2 ** (len(net.channel_mult) - 1)
    p = getattr(net, "patch_size", 1)
    return int(p[-1] if isinstance(p, (tuple, list)) else p)


class ComfyDenoiser(Denoiser):
    """ComfyUI's model as D(x, sigma, {which}) in ComfyUI's x and sigma: ``conds[which]`` (a list of
    ComfyUI cond dicts) through ``comfy.samplers.calc_cond_batch``, in ComfyUI's batching. With crops in
    progress (``windows.current_regions``) a FLUX-style network (``process_img`` with ``rope_options``)
    is called once per crop place, its positions shifted to the place."""

    def __init__(self, model, conds: list, model_options: dict, multiple: int | None = None):
        self.model, self.conds, self.options = model, conds, model_options
        self.multiple = network_multiple(model) if multiple is None else multiple
        self.null_cond = None

    def __deepcopy__(self, memo):
        return self

    def forward(self, x, sigma, cond):
        which = cond["which"] if isinstance(cond, dict) else torch.zeros(x.shape[0], dtype=torch.long)
        out = torch.empty_like(x)
        for k in torch.unique(which).tolist():
            idx = (which == k).nonzero().flatten()
            if len(idx) == x.shape[0]:
                out = self._placed(x, sigma, self.conds[k])
                continue
            with rows_of_call(idx):
                out[idx] = self._placed(x[idx], sigma[idx], self.conds[k])
        return out

    def _placed(self, x, sigma, conds):
        """The conditions ``conds`` on the rows of x: each group of rows that shares its conditions' places
        (``comfyplace.placed_groups``) in one call; a FLUX-style network one call per place."""
        cf = comfy()
        regions = current_regions()
        net = self.model.diffusion_model
        by_place = hasattr(net, "process_img")
        if regions is None:
            return cf.samplers.calc_cond_batch(self.model, [conds], x, sigma, self.options)[0]
        rows = Rows.of(regions, current_samples(), x.shape[2:])
        canvas = [canvas_cond(c) for c in conds]
        if rows.whole():
            return cf.samplers.calc_cond_batch(self.model, [canvas], x, sigma, self.options)[0]
        if not (by_place or positional(canvas)):
            return self._call(x, sigma, canvas, regions, self.options)
        out = torch.zeros_like(x)
        patch = network_multiple(self.model)
        for idx, (placed,) in placed_groups([canvas], rows, by_place):
            options = at_place(self.options, rows, idx, patch) if by_place else self.options
            i = idx.to(x.device)
            with rows_of_call(idx):
                out[i] = self._call(x[i], sigma[i], placed, current_regions(), options)
        return out

    def _call(self, x, sigma, conds, regions, options):
        if type(self.model).__name__ == "SDXL":
            from ..adapters.sdxl import comfy_crop_cond          # the family's crop conditioning
            conds = [comfy_crop_cond(self.model, c, regions, tuple(x.shape[-2:])) for c in conds]
        return comfy().samplers.calc_cond_batch(self.model, [conds], x, sigma, options)[0]


def shifted_options(model_options: dict, dy: float, dx: float) -> dict:
    """Model options whose ``rope_options`` put an image's token (0, 0) at (dy, dx) of the canvas, on top
    of the user's own shift (a fusion window's shift is replaced, not added: crops carry canvas places)."""
    cf = comfy()
    options = cf.model_patcher.create_model_options_clone(model_options)
    t = options.setdefault("transformer_options", {})
    rope = dict(t.get("rope_options") or {})
    wy, wx = t.get("windowguide_window", (0.0, 0.0))
    rope["shift_y"], rope["shift_x"] = rope.get("shift_y", 0.0) - wy + dy, rope.get("shift_x", 0.0) - wx + dx
    t["rope_options"], t["windowguide_window"] = rope, (dy, dx)
    return options


def at_place(model_options: dict, rows: Rows, idx: torch.Tensor, patch: int) -> dict:
    """``shifted_options`` for a group of rows at one place (their common top-left, in tokens of
    ``patch`` latent pixels)."""
    top, left = rows.starts[idx[0]].tolist()[-2:]
    return shifted_options(model_options, top // patch, left // patch)


def sigma_range(model, start_percent: float, end_percent: float, sigma_start: float = -1.0,
                sigma_end: float = -1.0) -> tuple[float, float]:
    """(lo, hi] in ComfyUI's sigma: from start/end percents (``percent_to_sigma``), or given in sigma."""
    for name, v in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= float(v) <= 1.0:
            raise WindowguideError(f"{name} {v!r}: accepted: a fraction of the run in [0, 1]")
    if float(start_percent) >= float(end_percent):
        raise WindowguideError(f"start_percent {start_percent} must be below end_percent {end_percent}")
    sampling = model.get_model_object("model_sampling")
    hi = float(sigma_start) if sigma_start >= 0 else float(sampling.percent_to_sigma(start_percent))
    lo = float(sigma_end) if sigma_end >= 0 else float(sampling.percent_to_sigma(end_percent))
    if not lo < hi:
        raise WindowguideError(f"the sigma range ({lo:g}, {hi:g}] is empty; sigma_start must be above sigma_end")
    return lo, hi


def swg_maker(weight: float, window: Window, masked: bool, lo: float, hi: float) -> Callable:
    """The M-SWG / SWG term for a latent of a given size (its window sized then)."""
    from ..guidance import MSWG, check_weight
    check_weight(weight, "sliding-window guidance")
    cls = MSWG if masked else SWG

    def make(shape, multiple, model):
        return cls(float(weight), window.sizes(shape, multiple), window.per_side, sigma_lo=lo, sigma_hi=hi)
    return make


def segmented(maker: Callable, split: float) -> tuple[Callable, tuple[float, float]]:
    """SGG in ComfyUI: ``guidance.Segmented`` at sigma ``split``: the maker's term restricted to the low
    segment, and the sigma interval (lo, hi] where the sampler's CFG runs (the high one)."""
    from ..guidance import CFG, Segmented
    cfg = Segmented(CFG(0.0), (), sigma_split=split).terms[0]

    def make(shape, multiple, model):
        return Segmented((), maker(shape, multiple, model), sigma_split=split).terms[0]
    return make, (cfg.sigma_lo, cfg.sigma_hi)


def weak_maker(weight: float, weak, lo: float, hi: float) -> Callable:
    """Two-model autoguidance: w (D_c - D_weak), the weak MODEL on the conditional conditioning."""
    from ..guidance import AutoGuidance, check_weight
    check_weight(weight, "autoguidance")

    def make(shape, multiple, model):
        return AutoGuidance(_WeakNet(weak, multiple, load=True), float(weight), sigma_lo=lo, sigma_hi=hi)
    return make


def check_weak(model, weak) -> None:
    """A weak model must take the strong one's latents and conditioning: the same latent space, input
    channels, text context width and class / size embedding; say which differs."""
    def spec(m):
        unet = getattr(getattr(m, "model_config", None), "unet_config", {}) or {}
        return {"model": type(m).__name__, "latent space": type(getattr(m, "latent_format", None)).__name__,
                "input channels": unet.get("in_channels"), "text context width": unet.get("context_dim"),
                "class / size embedding width": unet.get("adm_in_channels")}
    strong, other = spec(model), spec(weak)
    differ = [k for k in strong if strong[k] != other[k]]
    if differ:
        said = "; ".join(f"{k}: {strong[k]} vs {other[k]}" for k in differ)
        raise WindowguideError(f"the weak model is of another architecture than the model it guides ({said}); "
                               f"autoguidance needs a weaker model of the same kind (fewer steps trained, smaller, "
                               f"or weight-decayed) on the same latents and conditioning")


class _WeakNet(Denoiser):
    """The weak MODEL's network, called on the conditional conditioning of the step in progress."""

    def __init__(self, patcher, multiple, load: bool = False):
        self.patcher, self.load, self.null_cond = patcher, load, None
        self.multiple = network_multiple(patcher.model) if multiple is None else multiple

    def __deepcopy__(self, memo):
        return self

    def forward(self, x, sigma, cond):
        if _STEP_MODEL.get() is not None:
            check_weak(_STEP_MODEL.get(), self.patcher.model)
        if self.load:                          # ComfyUI loads (and patches) the models a sampler names; this
            import comfy.model_management as mm    # one it does not know of
            mm.load_models_gpu([self.patcher])
            if getattr(self.patcher.model, "current_patcher", None) is not self.patcher:
                self.patcher.pre_run()
        return ComfyDenoiser(self.patcher.model, [_STEP_CONDS.get()], _STEP_OPTIONS.get(), self.multiple)(x, sigma, cond)


def skip_maker(weight: float, blocks: list[int], lo: float, hi: float) -> Callable:
    """Skip-layer guidance: w (D_c - D_skip), the model with its joint blocks ``blocks`` passed through."""
    from ..guidance import Custom, check_weight
    check_weight(weight, "skip-layer guidance")

    def make(shape, multiple, model):
        net = model.diffusion_model
        n = len(getattr(net, "joint_blocks", None) or getattr(net, "double_blocks", None) or [])
        bad = [b for b in blocks if not 0 <= b < n]
        if not n or bad:
            raise WindowguideError(f"skip-layer blocks {bad or blocks}: this model has {n} joint/double blocks"
                                   f"{'' if n else ' (skip-layer needs an MMDiT or FLUX transformer)'}")

        return Custom(skip_negative(blocks), float(weight), name="skip_layer", sigma_lo=lo, sigma_hi=hi)
    return make


def skip_negative(blocks) -> Callable:
    """D of the step's model with its joint / double blocks ``blocks`` passed through (ComfyUI's "dit"
    block replacement: each returns its inputs), on the step's conditional conditioning."""
    def negative(x, sigma, cond):
        cf = comfy()
        options = cf.model_patcher.create_model_options_clone(_STEP_OPTIONS.get())
        for b in blocks:
            options = cf.model_patcher.set_model_options_patch_replace(
                options, lambda args, extra: {"img": args["img"], "txt": args["txt"]}, "dit", "double_block", int(b))
        return cf.samplers.calc_cond_batch(_STEP_MODEL.get(), [_STEP_CONDS.get()], x, sigma, options)[0]
    return negative



def recipe_rules(recipe: str, weak=None):
    """(makers, CFG interval, CFG weight) of a windowguide recipe in ComfyUI's sigmas: its ``cfg`` term
    is the sampler's cfg on its interval; step ranges and weight ramps need step indices that ComfyUI's
    guidance hooks do not see, and are refused."""
    from .. import spec
    from ..guidance import CFG

    def load(name):
        if weak is None:
            raise WindowguideError(f"the recipe names a weak model ({name!r}): connect the weak_model input")
        return _WeakNet(weak, None, load=True)

    g = spec.build(recipe, spec.Context(net=None, load=load, skip=lambda blocks: skip_negative(
        [_block(b) for b in blocks])))
    makers, cfg_on, cfg_weight = [], None, None
    for t in g:
        if t.steps is not None or t.weight_end is not None:
            raise WindowguideError(f"{recipe!r}: step ranges and weight ramps (first/last, start/stop, fsplit, "
                                   f"stepsplit, wend) need step indices; in ComfyUI give sigma ranges (lo/hi, split)")
        if isinstance(t, CFG):
            if cfg_weight is not None or t.mask is not None or t.null is not None or t.channels is not None:
                raise WindowguideError(f"{recipe!r}: one plain cfg term at most (it is the sampler's cfg)")
            cfg_weight = t.weight
            if t.sigma_lo > 0 or t.sigma_hi != float("inf"):
                cfg_on = (t.sigma_lo, t.sigma_hi)
            continue
        makers.append(lambda shape, multiple, model, t=t: t)    # an auto window is sized by the term itself
    return makers, cfg_on, cfg_weight


def _block(b) -> int:
    try:
        return int(b)
    except ValueError:
        raise WindowguideError(f"slg:skip= takes block indices such as 7/8/9, got {b!r}") from None


class ComfyWindows(Denoiser):
    """ComfyUI's k-diffusion model wrapper (``model(x, sigma, **extra_args)``, CFG and every node's
    guidance included) as the window denoiser of windowguide's fusion. Where the conditioning depends on
    the place (area, mask, ControlNet hint, an inpainting model's latent, the inpainting noise mask:
    ``placed``), each group of windows that shares its conditions' places is called with them cut at its
    windows (``comfyplace``); a FLUX-style network's windows are called at their place on the canvas
    (``rope_options``), one call per place."""

    def __init__(self, model, extra_args: dict, by_place: bool, patch: int, placed: bool = False):
        self.model, self.extra, self.by_place, self.patch = model, extra_args, by_place, patch
        self.canvas_positions = by_place or placed
        self.multiple, self.null_cond = 1, None

    def forward(self, x, sigma, cond):
        regions = current_regions()
        if regions is None or not self.canvas_positions:
            return self.model(x, sigma, **self.extra)
        rows = Rows.of(regions, current_samples(), x.shape[2:])
        guider = self.model.inner_model
        keys = list(guider.conds)
        out = torch.empty_like(x)
        for idx, placed in placed_groups([guider.conds[k] for k in keys], rows, self.by_place):
            extra = dict(self.extra)
            if self.by_place:
                extra["model_options"] = at_place(self.extra.get("model_options", {}), rows, idx, self.patch)
            i = idx.to(x.device)
            with rows_of_call(idx), _swapped(guider, "conds", dict(zip(keys, placed))), self._inpaint_at(
                    rows.select(idx), extra):
                out[i] = self.model(x[i], sigma[i], **extra)
        return out

    @contextmanager
    def _inpaint_at(self, rows: Rows, extra: dict):
        """ComfyUI's inpainting (a noise mask: the start latent and its noise kept outside the mask) at
        the rows' windows."""
        mask = self.extra.get("denoise_mask")
        if mask is None:
            yield
            return
        extra["denoise_mask"] = placed_tensor(mask, rows)
        with _swapped(self.model, "latent_image", placed_tensor(self.model.latent_image, rows)), _swapped(
                self.model, "noise", placed_tensor(getattr(self.model, "noise", None), rows)):
            yield


@contextmanager
def _swapped(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def vae_decode_tiled(vae, samples: torch.Tensor, tile: int) -> torch.Tensor:
    """ComfyUI's ``VAE.decode`` (IMAGE [B, H, W, C] in [0, 1]) computed as ``vae_tiling.ldm_decode_tiled``:
    whole-image GroupNorm statistics, convolutions in ``tile`` x ``tile`` output tiles; equal to the
    one-piece decode up to float rounding, at any tile size (ComfyUI's VAE Decode (Tiled) averages three
    overlapping tilings instead, each tile normalised by itself)."""
    from ..adapters.vae_tiling import ldm_decode_tiled
    import comfy.model_management as mm
    vae.throw_exception_if_invalid()
    mm.load_models_gpu([vae.patcher])
    z = samples[:, :, 0] if samples.ndim == 5 else samples
    out = ldm_decode_tiled(vae.first_stage_model, z.to(vae.vae_dtype), _tile(tile), store=vae.output_device)
    return vae.process_output(out.to(vae.output_device).float()).movedim(1, -1)


def vae_encode_tiled(vae, pixels: torch.Tensor, tile: int) -> torch.Tensor:
    """ComfyUI's ``VAE.encode`` (the latent mean, its pixels cropped to the VAE's multiple as ComfyUI does)
    computed as ``vae_tiling.ldm_encode_tiled``: equal to the one-piece encode up to float rounding."""
    from ..adapters.vae_tiling import ldm_encode_tiled
    import comfy.model_management as mm
    vae.throw_exception_if_invalid()
    mm.load_models_gpu([vae.patcher])
    x = vae.process_input(vae.vae_encode_crop_pixels(pixels).movedim(-1, 1))
    return ldm_encode_tiled(vae.first_stage_model, x.to(vae.vae_dtype), _tile(tile), store=vae.output_device).to(
        vae.output_device).float()


def _tile(tile) -> int:
    if isinstance(tile, bool) or int(tile) != tile or int(tile) < 8:
        raise WindowguideError(f"tile_size {tile!r}: accepted: an integer >= 8 (pixels of a convolution's output tile)")
    return int(tile)


FUSION_SAMPLERS = ("euler", "heun", "ddim", "ddpm")
# ComfyUI's own samplers that take one step at a time (no history across steps), run per step on all
# windows; those that add their noise after the update can take VCF (the step's mean is the same step
# with zero noise, the network's predictions reused)
COMFY_SAMPLERS = ("euler_ancestral", "dpm_2_ancestral", "dpm_2", "lcm")
COMFY_VCF = ("euler_ancestral", "dpm_2_ancestral", "lcm")


def fusion_sampler(mode: str = "gf", sampler: str = "euler", window: int = 64, stride: int = 16, vcf: bool = False,
                   eta: float = 0.0, style_alpha: float = 0.0, circular: bool = False, view_batch: int = 0,
                   window_frames: int = 0, frame_stride: int = 0):
    """A ComfyUI KSAMPLER that denoises a canvas larger than the model from overlapping windows
    (``windowguide.fusion``): MultiDiffusion (uniform state fusion), Guided Fusion (cone weights), gaussian
    prediction fusion; VCF for DDPM / DDIM with eta > 0; style alignment of the initial noise; circular
    width. Every guidance node's terms run inside each window (they are part of the model it calls)."""
    from ..fusion import check_fusion
    if sampler not in FUSION_SAMPLERS + COMFY_SAMPLERS:
        raise WindowguideError(f"sampler {sampler!r}: accepted: {', '.join(FUSION_SAMPLERS + COMFY_SAMPLERS)} "
                               f"(ComfyUI's multistep samplers keep a history across steps that window fusion breaks)")
    options = {"eta": float(eta)} if sampler == "ddim" else {}
    if sampler in COMFY_SAMPLERS:
        if vcf and sampler not in COMFY_VCF:
            raise WindowguideError(f"VCF with {sampler!r}: its noise enters inside the step, so the step has no "
                                   f"mean to correct around; accepted for VCF: {', '.join(COMFY_VCF)}, ddpm, ddim eta > 0")
        if mode == "gaussian":
            raise WindowguideError(f"mode 'gaussian' fuses predictions under windowguide's samplers "
                                   f"({', '.join(FUSION_SAMPLERS)}); with {sampler!r} use gf or multidiffusion")
    else:
        check_fusion(mode, None, None, sampler, vcf, dict(options))
    if not 0 <= float(style_alpha) <= 1:
        raise WindowguideError(f"style_alpha {style_alpha!r}: accepted: [0, 1]")
    for name, v in (("window", window), ("stride", stride)):
        if int(v) < 1:
            raise WindowguideError(f"{name} {v!r}: accepted: an integer >= 1 (latent pixels)")
    for name, v in (("window_frames", window_frames), ("frame_stride", frame_stride)):
        if int(v) < 0:
            raise WindowguideError(f"{name} {v!r}: accepted: 0 (the default) or latent frames")
    frames = (int(window_frames), int(frame_stride))
    if int(view_batch) < 0:
        raise WindowguideError(f"view_batch {view_batch!r}: accepted: 0 (all windows in one call) or a positive integer")

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return fuse_canvas(model, x, sigmas, dict(extra_args or {}), mode, sampler, int(window), int(stride), vcf,
                           options, float(style_alpha), bool(circular), callback, disable, int(view_batch), frames)
    return comfy().samplers.KSAMPLER(sample)


def canvas_windows(shape, window: int, stride: int, circular: bool, frames: tuple = (0, 0)):
    """The fusion windows on a latent canvas of ``shape`` (H, W), or (T, H, W) for a video: ``window`` x
    ``window`` latent pixels at ``stride`` in space; on a video ``frames[0]`` latent frames (0: the whole
    clip) at ``frames[1]`` (0: half a window) in time. ``circular`` wraps the width."""
    from ..windows import layout, layout_nd
    h, w = shape[-2:]
    if len(shape) == 2:
        return layout(h, w, (min(window, h), min(window, w)), stride=stride, circular=circular)
    t = shape[0]
    if frames[0] > t:
        raise WindowguideError(f"window_frames {frames[0]} on a clip of {t} latent frames: accepted: 1 to {t}, or 0 "
                               f"for the whole clip")
    tw = frames[0] or t
    return layout_nd((t, h, w), (tw, min(window, h), min(window, w)), (frames[1] or max(1, tw // 2), stride, stride),
                     circular=(False, False, bool(circular)), whole_side_once=False)


def fuse_canvas(model, x, sigmas, extra, mode, sampler, window, stride, vcf, options, style_alpha, circular,
                callback=None, disable=None, view_batch: int = 0, frames: tuple = (0, 0)):
    """The fused canvas from ComfyUI's noised canvas ``x`` (its noise drawn from ``extra['seed']``, one
    generator per sample, seed + i, continued for the windows' noise as ``windowguide.fusion.panorama``),
    through windowguide's one fused loop (``fusion.run_fused``) with ComfyUI's one-step samplers as its
    step (``comfy_step``)."""
    from ..fusion import check_fusion, run_fused, style_aligned_noise
    from ..sampling import PerSampleNoise
    if sampler in COMFY_SAMPLERS:
        fuse, weighting, opts = check_fusion(mode, None, None, "ddpm", False, {})
    else:
        fuse, weighting, opts = check_fusion(mode, None, None, sampler, vcf, dict(options))
    seed = int(extra.get("seed", 0))
    n = x.shape[0]
    lay = canvas_windows(tuple(x.shape[2:]), window, stride, circular, frames)
    seeds = [seed + i for i in range(n)]
    noise = PerSampleNoise.from_seeds(seeds)
    z = noise(torch.empty_like(x))                 # the draw ComfyUI made from these seeds; windows' noise follows
    if style_alpha > 0:
        latent = getattr(model, "latent_image", None)
        if latent is not None and bool(latent.abs().max() > 0):
            raise WindowguideError("style_alpha aligns the initial noise of an empty latent; this run starts from "
                                   "an image (img2img): set style_alpha to 0")
        scale = x.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)
        scale = scale.view(-1, *[1] * (x.ndim - 1))
        x = style_aligned_noise(x / scale, lay.window, style_alpha, noise.generators) * scale
    inner = model.inner_model.inner_model if hasattr(model, "inner_model") else None
    net = getattr(inner, "diffusion_model", None)
    by_place = net is not None and hasattr(net, "process_img")
    check_patches(extra.get("model_options"))
    conds = getattr(model.inner_model, "conds", None) or {}
    placed = extra.get("denoise_mask") is not None or any(positional(c) for c in conds.values())
    windows = ComfyWindows(model, extra, by_place, network_multiple(inner) if by_place else 1, placed)
    step = comfy_step(sampler, model) if sampler in COMFY_SAMPLERS else sampler
    report = None if callback is None else (lambda i, x_, d, s: callback({"i": i, "x": x_, "denoised": d}))
    return run_fused(windows, x, sigmas.to(torch.float64), None, lay, fuse, weighting, step, noise, vcf, seeds,
                     False, opts, view_batch or None, report)


def comfy_step(sampler: str, model) -> Callable:
    """One of ComfyUI's one-step samplers (``k_diffusion.sampling.sample_<name>``) as the fused loop's step:
    ``step(denoiser, x, [sigma, sigma_next], cond, noise=, callback=)``, its noise drawn per window by the
    loop (``noise``, VCF's scaling included) and its network the window denoiser. ``noise_after_update``:
    whether the noise enters after the update (the samplers VCF can correct)."""
    import inspect

    import comfy.k_diffusion.sampling as k
    sample = getattr(k, f"sample_{sampler}")
    draws = "noise_sampler" in inspect.signature(sample).parameters      # dpm_2 adds no noise

    class Windows:                                  # the k-diffusion model interface over the window denoiser
        inner_model = model.inner_model             # ComfyUI's samplers read the model sampling from it

        def __init__(self, denoiser, cond):
            self.denoiser, self.cond = denoiser, cond

        def __call__(self, x, sigma, **kw):
            return self.denoiser(x, sigma, self.cond)

    def step(denoiser, x, pair, cond, noise=None, callback=None, **options):
        report = None if callback is None else (lambda d: callback(0, d["x"], d["denoised"], d["sigma"]))
        drawn = {"noise_sampler": lambda a, b: noise(x)} if draws else {}
        return sample(Windows(denoiser, cond), x, torch.tensor(pair, dtype=x.dtype), disable=True, callback=report,
                      **drawn)
    step.__name__, step.noise_after_update = sampler, sampler in COMFY_VCF
    return step
