"""windowguide's guidance as diffusers guiders, for diffusers' modular pipelines.

    from windowguide.guiders import SlidingWindowGuidance
    pipe.update_components(guider=SlidingWindowGuidance(guidance_scale=5.0, swg_scale=0.5))
    image = pipe(prompt="a cat on a sofa", output="images")[0]

Each guider is a ``diffusers.guiders.BaseGuidance``: the pipeline asks it which batches to run
(``prepare_inputs``: the conditional one, and the unconditional one while CFG is on), calls its
``prepare_models`` / ``cleanup_models`` around each batch and combines the predictions with its
``forward``. CFG is diffusers' own formula and convention (``guidance_scale`` s, on for
int(start N) <= i < int(stop N)):

    P = P_uncond + s (P_cond - P_uncond)          (use_original_formulation: P_cond + s (P_cond - P_uncond))

windowguide's terms add, in the network's prediction space,

    Delta = sum_i w_i M_i ⊙ (P_cond - P_neg,i)     (sliding windows, a weak model, skipped blocks)

computed during the conditional batch by a diffusers model hook on the denoiser: it lets the
pipeline's call run, then evaluates the terms' negatives with ``guidance.GuidedDenoiser`` (all
crops of one size in one batched call; the conditional prediction is reused, not evaluated again).
With the windowguide weights at 0 the output is ``ClassifierFreeGuidance``'s, bit for bit.

Step ranges are diffusers' fractions; sigma ranges are VE sigma of the step's timestep: flow
models (SD3) sigma = s / (1 - s), s = t / 1000; UNet models the scaled-linear VP schedule of SD 1.x,
2.x and SDXL (beta 0.00085..0.012, 1000 steps), or that of the scheduler set as ``guider.scheduler``.

Tested with diffusers 0.42 (``TESTED_DIFFUSERS``); the guider API is experimental in diffusers, so a
version whose ``BaseGuidance`` differs from the one these guiders were written against is refused
with a message, and another version that matches gets a warning.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

try:
    import diffusers
    from diffusers.configuration_utils import register_to_config
    from diffusers.guiders import BaseGuidance
    from diffusers.guiders.guider_utils import GuiderOutput, rescale_noise_cfg
    from diffusers.hooks import HookRegistry
except ImportError as exc:                      # pragma: no cover - exercised without diffusers
    from ..errors import INSTALL_DIFFUSERS
    raise ImportError(f"windowguide's guiders plug into diffusers' modular pipelines and need diffusers (the module "
                      f"{getattr(exc, 'name', None) or exc!s} does not import): {INSTALL_DIFFUSERS}") from exc

import torch

from ..adapters.registry import by_kind
from ..errors import WindowguideError
from ..denoiser import Denoiser
from ..guidance import CFG, MAX_WEIGHT, SWG, check_weight, AutoGuidance, Custom, Guidance, Segmented, StepRange
from ..windows import AUTO, default_window
from ..adapters.netcall import default_sigma, network_model, network_multiple, read_call
from .calls import after_call_hook, guided_change, skip_layer_negative, weak_denoiser

TESTED_DIFFUSERS = ("0.42", "0.43")            # [lo, hi): the versions these guiders were tested with
HOOK = "windowguide_guider"
INF = math.inf


def check_diffusers(version: str | None = None, base: type | None = None) -> None:
    """Refuse a diffusers whose ``BaseGuidance`` protocol differs from the tested one; warn on another
    version that matches it."""
    version = version or diffusers.__version__
    base = base or BaseGuidance
    init = list(inspect.signature(base.__init__).parameters)
    missing = [m for m in ("prepare_inputs", "prepare_models", "cleanup_models", "forward", "set_state",
                           "num_conditions", "save_pretrained", "from_pretrained") if not hasattr(base, m)]
    prepare_models = list(inspect.signature(base.prepare_models).parameters) if hasattr(base, "prepare_models") else []
    if init != ["self", "start", "stop", "enabled"] or missing or prepare_models != ["self", "denoiser"]:
        raise WindowguideError(
            f"diffusers {version}: its BaseGuidance is not the one windowguide's guiders were written for "
            f"(__init__{tuple(init[1:])}, prepare_models{tuple(prepare_models[1:])}, missing {missing}); "
            f"install a tested version: pip install 'diffusers>={TESTED_DIFFUSERS[0]},<{TESTED_DIFFUSERS[1]}'")
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    lo, hi = (tuple(int(p) for p in v.split(".")) for v in TESTED_DIFFUSERS)
    if not lo <= major_minor < hi:
        warnings.warn(f"windowguide's guiders were tested with diffusers >={TESTED_DIFFUSERS[0]},<{TESTED_DIFFUSERS[1]}, "
                      f"this is {version}: its BaseGuidance matches, but check the results", stacklevel=2)


check_diffusers()


def _sigma_range(lo: float, hi: float | None) -> tuple[float, float]:
    return float(lo), INF if hi is None else float(hi)


class _WindowguideGuidance(BaseGuidance):
    """CFG in diffusers' form plus windowguide terms (module docstring). Subclasses give the terms.
    Their arguments are keyword-only: diffusers' ``register_to_config`` records positional ones as
    defaults, and ``new()`` would then drop them."""

    _input_predictions = ["pred_cond", "pred_uncond"]

    def _setup(self, guidance_scale: float, guidance_rescale: float, use_original_formulation: bool,
               start: float, stop: float, enabled: bool, max_batch: int | None) -> None:
        BaseGuidance.__init__(self, start, stop, enabled)
        self.guidance_scale, self.guidance_rescale = float(guidance_scale), float(guidance_rescale)
        self.use_original_formulation, self.max_batch = use_original_formulation, max_batch
        self.scheduler = None          # optional: the pipeline's scheduler, for sigma ranges of UNet models
        self._delta, self._hooked, self._inside, self._terms_cache = None, None, False, {}
        if not math.isfinite(self.guidance_scale) or not 0 <= self.guidance_scale <= 1 + MAX_WEIGHT:
            raise WindowguideError(f"guidance_scale must be finite, in [0, {1 + MAX_WEIGHT:g}], got {guidance_scale!r}")
        if not 0 <= self.guidance_rescale <= 1:       # NaN fails this too
            raise WindowguideError(f"guidance_rescale must be in [0, 1] (diffusers' phi), got {guidance_rescale!r}")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise WindowguideError(f"max_batch must be a positive integer or None, got {max_batch!r}")

    # --- which batches: diffusers' CFG rule, and the CFG term's own step / sigma range (SGG, recipes) ---
    _cfg: CFG | None = None

    def _cfg_here(self) -> bool:
        """Whether the CFG term (``self._cfg``: a windowguide CFG whose step and sigma ranges say where
        diffusers' CFG runs) is on at this step."""
        c = self._cfg
        if c is None:
            return True
        if c.steps is not None and self._num_inference_steps is not None and not c.steps.on(self._step, self._num_inference_steps):
            return False
        if (c.sigma_lo > 0 or c.sigma_hi < INF) and self._timestep is not None:     # None: outside a run
            kind = "sd3" if self.timestep_schedule == "flow" else "sd"
            sigma = float(default_sigma(kind, torch.as_tensor(self._timestep).reshape(-1)[:1]))
            return c.sigma_lo < sigma <= c.sigma_hi
        return True

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled:
            return False
        on = True
        if self._num_inference_steps is not None:
            on = int(self._start * self._num_inference_steps) <= self._step < int(self._stop * self._num_inference_steps)
        off = math.isclose(self.guidance_scale, 0.0 if self.use_original_formulation else 1.0)
        return on and not off and self._cfg_here()

    @property
    def num_conditions(self) -> int:
        return 1 + int(self._is_cfg_enabled())

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    def prepare_inputs(self, data: dict) -> list:
        return [self._prepare_batch(data, i, name)
                for i, name in zip(range(self.num_conditions), self._input_predictions)]

    def prepare_inputs_from_block_state(self, data, input_fields: dict) -> list:
        return [self._prepare_batch_from_block_state(input_fields, data, i, name)
                for i, name in zip(range(self.num_conditions), self._input_predictions)]

    # --- the hook on the conditional batch -------------------------------------------------------------
    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        if self.is_conditional:
            self._delta = None
            if self._enabled:
                registry = HookRegistry.check_if_exists_or_initialize(denoiser)
                if registry.get_hook(HOOK) is not None:       # left by a guider whose run raised
                    registry.remove_hook(HOOK, recurse=False)
                registry.register_hook(self._hook(denoiser), HOOK)
                self._hooked = denoiser

    def _hook(self, denoiser: torch.nn.Module):
        """The after-call hook, removed again if the call raises: diffusers calls ``cleanup_models``
        only after a batch that succeeded, and a hook left behind would make every later run of the
        network (with any guider) raise this guider's error."""
        hook = after_call_hook(self._after_conditional_call)
        call = hook.new_forward

        def new_forward(module, *args, **kwargs):
            try:
                return call(module, *args, **kwargs)
            except BaseException:
                self.cleanup_models(denoiser)
                raise
        hook.new_forward = new_forward
        return hook

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._hooked is denoiser:
            registry = HookRegistry.check_if_exists_or_initialize(denoiser)
            registry.remove_hook(HOOK, recurse=False)
            if not registry.hooks:
                vars(denoiser).pop("forward", None)      # the class's forward again
            self._hooked = None

    def _terms(self, net, kind: str, shape: tuple[int, int]) -> Guidance:
        key = (id(net), kind, shape)
        if key not in self._terms_cache:
            self._terms_cache[key] = self._make_terms(net, kind, shape, network_multiple(net, kind))
        return self._terms_cache[key]

    def _make_terms(self, net, kind: str, shape: tuple[int, int], multiple: int) -> Guidance:
        raise NotImplementedError

    def _after_conditional_call(self, module, args, kwargs, out):
        """The hook's callback: keep the terms' change Delta of this call for ``forward``; the
        output itself is left as it is (the terms' own calls of the network pass straight through)."""
        call = None if self._inside else read_call(module, args, kwargs)
        terms = Guidance() if call is None else self._terms(module, call.kind, tuple(call.x.shape[-2:]))
        if not len(terms):
            return out
        sigma = default_sigma(call.kind, call.t, self._vp_schedule())
        n = self._num_inference_steps or 1
        step = (self._step or 0, [0.0] * (n + 1))            # only N matters: fractions, no ramps
        self._inside = True
        try:
            delta = guided_change(terms, network_model(module, call.kind), network_multiple(module, call.kind),
                                  call, call.read(out), sigma, step, self.max_batch)
        finally:
            self._inside = False
        if delta is not None:                                 # in the layout of the guider's predictions
            self._delta = by_kind(call.kind).guider_layout(call, out, delta)
        return out

    def _vp_schedule(self):
        if self.scheduler is None:
            return None
        from ..adapters.base import schedule_of
        return schedule_of(self.scheduler)

    # --- the combination -------------------------------------------------------------------------------
    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        pred, cfg_on = pred_cond, self._is_cfg_enabled()
        if cfg_on:
            shift = pred_cond - pred_uncond
            pred = pred_cond if self.use_original_formulation else pred_uncond
            pred = pred + self.guidance_scale * shift
        reference = pred_cond
        if self._delta is not None:
            delta = self._delta.to(pred.dtype)
            pred = pred + delta
            # guidance_rescale's reference is the conditional prediction shifted so that CFG of it carries
            # Delta (P_cond + Delta / s): what a classic pipeline under wg.patch hands its rescale too
            s = (1 + self.guidance_scale if self.use_original_formulation else self.guidance_scale) if cfg_on else 1.0
            reference = pred_cond + delta / s
            self._delta = None
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, reference, self.guidance_rescale)
        # pred_cond: that same reference, which a pipeline's own CFG correction reads (Qwen-Image renormalises
        # the guided prediction to its norm per token), so that guiders and patch hand it the same
        return GuiderOutput(pred=pred, pred_cond=reference, pred_uncond=pred_uncond)


def _swg_term(weight, window, windows_per_side, masked, steps=None, sigma_range=(0.0, INF)) -> SWG:
    """The guiders' SWG / M-SWG term; ``window`` None is the default window (``windows.default_window``)."""
    window = AUTO if window is None else tuple(window) if isinstance(window, list) else window
    lo, hi = sigma_range
    return SWG(weight, window, windows_per_side, masked=masked, sigma_lo=lo, sigma_hi=hi, steps=steps)


def _fraction(start: float, stop: float, name: str) -> StepRange | None:
    if (start, stop) == (0.0, 1.0):
        return None
    if not 0 <= start < stop <= 1:
        raise WindowguideError(f"{name}: step fractions ({start}, {stop}): need 0 <= start < stop <= 1")
    return StepRange(float(start), float(stop), True)


class SlidingWindowGuidance(_WindowguideGuidance):
    """Sliding-window guidance (SWG) or masked SWG (M-SWG, the default), with or without CFG.

        P = CFG(P_cond, P_uncond) + w M ⊙ (P_cond - P_swg),   P_swg = the network on overlapping crops,
        averaged;  M = 1 where two or more crops overlap (M-SWG), M = 1 everywhere (SWG)

    Defaults, and where they come from: ``guidance_scale`` 7.5 and start/stop as diffusers'
    ``ClassifierFreeGuidance`` (1.0 turns CFG off: SWG alone needs no negative prompt and one batch);
    ``swg_scale`` 0.5 (w, 0 = off), the M-SWG paper's weight beside CFG on DiT-XL/2 (CFG 0.6 + M-SWG
    0.5); ``window`` None = 5/8 of each latent side rounded to the network's multiple and 2 windows per
    side (the paper's 40 of 64 on EDM2, 20 of 32 on DiT); ``masked`` True (M-SWG, the paper's
    recommendation; False is plain SWG). ``swg_start``/``swg_stop``: step fractions where the windows
    guide; ``swg_sigma_lo``/``swg_sigma_hi``: the sigma interval (lo, hi] (None = no upper end).
    """

    @register_to_config
    def __init__(self, *, guidance_scale: float = 7.5, swg_scale: float = 0.5, window: int | list | None = None,
                 windows_per_side: int = 2, masked: bool = True, swg_start: float = 0.0, swg_stop: float = 1.0,
                 swg_sigma_lo: float = 0.0, swg_sigma_hi: float | None = None, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True, max_batch: int | None = None):
        self._setup(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled, max_batch)
        self.swg_scale, self.window, self.windows_per_side, self.masked = swg_scale, window, windows_per_side, masked
        self._swg_steps = _fraction(swg_start, swg_stop, "SlidingWindowGuidance swg_start/swg_stop")
        self._swg_sigma = _sigma_range(swg_sigma_lo, swg_sigma_hi)
        # checks the numbers now (window, windows per side, scale), not at the first step
        SWG(swg_scale, AUTO if window is None else window, windows_per_side, sigma_lo=self._swg_sigma[0],
            sigma_hi=self._swg_sigma[1])

    def _make_terms(self, net, kind, shape, multiple):
        if self.swg_scale == 0:
            return Guidance()
        return Guidance.of(_swg_term(self.swg_scale, self.window, self.windows_per_side, self.masked,
                                     self._swg_steps, self._swg_sigma))


LOW_METHODS = ("mswg", "swg", "skip_layer", "autoguidance")


class SegmentedGuidance(_WindowguideGuidance):
    """Segmented guidance (SGG): CFG at high noise, a condition-agnostic term at low noise, so every
    step costs two network evaluations.

        high (steps i < int(split N), or sigma > sigma_split):  P = P_uncond + s (P_cond - P_uncond)
        low  (the other steps):                                 P = P_cond + w (P_cond - P_neg)

    ``low``: 'mswg' (default) or 'swg' (P_neg the crops; ``window``/``windows_per_side`` as
    SlidingWindowGuidance), 'skip_layer' (SD3: the same transformer with ``skip_layers`` skipped) or
    'autoguidance' (``weak_model``, a weaker network of the same class). Defaults: the SD3.5 recipe's
    CFG 4.5 and split at half of the steps (our ``sd35-sgg`` preset: CFG on steps 1-14 of 28,
    skip-layer 3.0 on blocks 7, 8, 9 on 15-28); ``low_scale`` 0.5 for the window terms (the M-SWG
    weight beside CFG on DiT-XL/2). ``sigma_split`` (with ``schedule``, 'sd' or 'flow', since the
    split must be known before the step's first call) splits by sigma instead.
    """

    ignore_for_config = ["weak_model"]

    @register_to_config
    def __init__(self, *, guidance_scale: float = 4.5, low: str = "mswg", low_scale: float = 0.5, split: float = 0.5,
                 sigma_split: float | None = None, schedule: str | None = None, window: int | list | None = None,
                 windows_per_side: int = 2, skip_layers: list | None = None, weak_model: Any = None,
                 guidance_rescale: float = 0.0, use_original_formulation: bool = False, enabled: bool = True,
                 max_batch: int | None = None):
        self._setup(guidance_scale, guidance_rescale, use_original_formulation, 0.0, 1.0, enabled, max_batch)
        if low not in LOW_METHODS:
            raise WindowguideError(f"SegmentedGuidance low={low!r}: accepted: {', '.join(LOW_METHODS)}")
        if not 0 < split < 1:
            raise WindowguideError(f"SegmentedGuidance split={split!r}: a step fraction in (0, 1)")
        if sigma_split is not None and (schedule not in ("sd", "flow") or not sigma_split > 0):
            raise WindowguideError(f"SegmentedGuidance sigma_split={sigma_split!r} needs sigma_split > 0 and "
                                   f"schedule='sd' (SD 1.x/2.x/XL) or 'flow' (SD3), got schedule={schedule!r}")
        if low == "skip_layer" and not skip_layers:
            raise WindowguideError("SegmentedGuidance low='skip_layer' needs skip_layers, e.g. [7, 8, 9] for SD3.5")
        check_weight(low_scale, "SegmentedGuidance low_scale")
        if low in ("mswg", "swg"):
            SWG(float(low_scale), AUTO if window is None else window, windows_per_side)
        self.low, self.low_scale, self.split, self.sigma_split = low, float(low_scale), float(split), sigma_split
        self.timestep_schedule, self.window, self.windows_per_side = schedule, window, windows_per_side
        self.skip_layers, self.weak_model = skip_layers, weak_model
        # the segments are windowguide's Segmented: CFG restricted to the high one (diffusers runs that CFG)
        self._cfg = self._segments(CFG(0.0), ()).terms[0]

    def _segments(self, high, low) -> Guidance:
        """``guidance.Segmented`` at this guider's split (a step fraction, or a sigma)."""
        at = {"sigma_split": self.sigma_split} if self.sigma_split is not None else {"fraction_split": self.split}
        return Segmented(high, low, **at)

    def _make_terms(self, net, kind, shape, multiple):
        if self.low_scale == 0:
            return Guidance()
        if self.low in ("mswg", "swg"):
            term = _swg_term(self.low_scale, self.window, self.windows_per_side, self.low == "mswg")
        elif self.low == "skip_layer":
            term = Custom(skip_layer_negative(net, kind, self.skip_layers), self.low_scale, name="skip_layer")
        else:
            term = AutoGuidance(weak_denoiser(self.weak_model, net, kind), self.low_scale)
        return self._segments((), term)


class ModelAutoGuidance(_WindowguideGuidance):
    """Autoguidance (Karras et al. 2024) by a second, weaker network (not diffusers' ``AutoGuidance``,
    which skips layers of the same network):

        P = CFG(P_cond, P_uncond) + w (P_cond - P_weak),   P_weak = the weak network, same condition

    ``weak_model``: the weak network (same class as the pipeline's: smaller, less trained, or trained
    with a large weight decay), or ``weak_model_path``: a local folder loaded with that class's
    ``from_pretrained`` (saved in the config; the module itself is not). Defaults: ``autoguidance_scale``
    w = 1.1, Karras et al.'s EDM2-S autoguidance at its best FID (their guidance weight 2.1 = 1 + w);
    ``guidance_scale`` 1.0 (no CFG: autoguidance replaces it there). ``ag_start``/``ag_stop``,
    ``ag_sigma_lo``/``ag_sigma_hi``: where the weak model guides.
    """

    ignore_for_config = ["weak_model"]

    @register_to_config
    def __init__(self, *, weak_model: Any = None, weak_model_path: str | None = None, autoguidance_scale: float = 1.1,
                 guidance_scale: float = 1.0, ag_start: float = 0.0, ag_stop: float = 1.0, ag_sigma_lo: float = 0.0,
                 ag_sigma_hi: float | None = None, guidance_rescale: float = 0.0, use_original_formulation: bool = False,
                 start: float = 0.0, stop: float = 1.0, enabled: bool = True, max_batch: int | None = None):
        self._setup(guidance_scale, guidance_rescale, use_original_formulation, start, stop, enabled, max_batch)
        self.weak_model = weak_model if weak_model is not None else weak_model_path
        self.autoguidance_scale = check_weight(autoguidance_scale, "ModelAutoGuidance autoguidance_scale")
        self._ag_steps = _fraction(ag_start, ag_stop, "ModelAutoGuidance ag_start/ag_stop")
        self._ag_sigma = _sigma_range(ag_sigma_lo, ag_sigma_hi)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder=None, return_unused_kwargs=False,
                        weak_model: Any = None, **kwargs):
        """As ``BaseGuidance.from_pretrained``; ``weak_model`` gives the network the config cannot hold."""
        guider = super().from_pretrained(pretrained_model_name_or_path, subfolder, return_unused_kwargs, **kwargs)
        if weak_model is not None:
            guider.weak_model = weak_model
        return guider

    def new(self, **kwargs):
        guider = super().new(**kwargs)
        if "weak_model" not in kwargs and "weak_model_path" not in kwargs:
            guider.weak_model = self.weak_model
        return guider

    def _make_terms(self, net, kind, shape, multiple):
        if self.autoguidance_scale == 0:
            return Guidance()
        lo, hi = self._ag_sigma
        return Guidance.of(AutoGuidance(weak_denoiser(self.weak_model, net, kind), self.autoguidance_scale,
                                        sigma_lo=lo, sigma_hi=hi, steps=self._ag_steps))


class RecipeGuidance(_WindowguideGuidance):
    """Any windowguide recipe (the SPEC strings of ``windowguide sample --guidance``) as a guider:

        RecipeGuidance(recipe="cfg:w=4,start=0.1,stop=0.8+mswg:w=0.5,window=48+ag:w=0.3,model=weak/unet")

    The recipe's one ``cfg`` term is diffusers' CFG with guidance_scale = 1 + w (on in its step range,
    and in its sigma range, which needs ``schedule`` 'sd' or 'flow' as the range must be known before
    the step's first call); ``sgg:...`` gives such a CFG and its low term; every other term is added as
    Delta (module docstring). A swg/mswg term without ``window=`` gets 5/8 of each latent side. ``ag``/``wd`` and ``model=`` load the named folder with the pipeline
    network's class, or take ``weak_model`` when given. Weight ramps (``wend``) are refused: a guider
    does not see the schedule's sigmas.
    """

    ignore_for_config = ["weak_model"]

    @register_to_config
    def __init__(self, *, recipe: str = "cfg:w=6.5+mswg:w=0.5", schedule: str | None = None, weak_model: Any = None,
                 guidance_rescale: float = 0.0, enabled: bool = True, max_batch: int | None = None):
        from .. import spec
        probe = spec.build(recipe, spec.Context(net=None, load=lambda name: _Placeholder(),
                                                skip=lambda blocks: (lambda x, sigma, cond: x)))
        cfgs = [t for t in probe if isinstance(t, CFG)]
        if len(cfgs) > 1:
            raise WindowguideError(f"RecipeGuidance: one cfg term at most (diffusers' CFG), got {len(cfgs)} in {recipe!r}")
        if any(t.weight_end is not None or t.mask is not None for t in probe):
            raise WindowguideError("RecipeGuidance: weight ramps (wend) and masks need the sampler's schedule; "
                                   "use windowguide's own sampler for them")
        self._cfg = cfgs[0] if cfgs else None
        ranged = self._cfg is not None and (self._cfg.sigma_lo > 0 or self._cfg.sigma_hi < INF)
        if ranged and schedule not in ("sd", "flow"):
            raise WindowguideError(f"RecipeGuidance: the cfg term's sigma range needs schedule='sd' (SD 1.x/2.x/XL) "
                                   f"or 'flow' (SD3), got {schedule!r}")
        self._setup(1.0 + (self._cfg.weight if self._cfg else 0.0), guidance_rescale, False, 0.0, 1.0, enabled, max_batch)
        self.recipe, self.timestep_schedule, self.weak_model = recipe, schedule, weak_model

    def _make_terms(self, net, kind, shape, multiple):
        from .. import spec
        load = lambda name: weak_denoiser(self.weak_model if self.weak_model is not None else name, net, kind)
        skip = lambda blocks: skip_layer_negative(net, kind, blocks)
        built = spec.build(self.recipe, spec.Context(net=None, load=load, skip=skip))
        return Guidance(tuple(t for t in built if not isinstance(t, CFG)))


class _Placeholder(Denoiser):
    """Stands for a weak network while a recipe is checked, before the pipeline's network is known."""


__all__ = ["SlidingWindowGuidance", "SegmentedGuidance", "ModelAutoGuidance", "RecipeGuidance", "check_diffusers",
           "default_window", "TESTED_DIFFUSERS"]
