"""windowguide's guidance inside a classic diffusers pipeline's own loop.

    with windowguide.patch(pipe, "cfg:w=6.5+mswg:w=0.5,window=48"):
        image = pipe(prompt).images[0]

While the block runs, a diffusers model hook sits on the pipeline's network (``unet`` or
``transformer``). After each of the pipeline's own calls, the conditional rows' prediction P_pos is
taken as windowguide's positive, the other terms' negatives are evaluated (all crops of one size in
one batched call; the positive is not evaluated again) and the change

    Delta = sum_i w_i(sigma) M_i ⊙ (P_pos - P_neg,i)

is added to the conditional rows divided by the pipeline's CFG scale s, so that the pipeline's own
combination  P_uncond + s (P_cond - P_uncond)  comes out as CFG + Delta. A ``cfg`` term in the recipe
becomes the pipeline's scale (guidance_scale = 1 + w; FLUX: true_cfg_scale = 1 + w, with an empty
negative prompt when none is given); without one the pipeline keeps the scale it is called with.
With every other weight 0 the outputs are the pipeline's, bit for bit; leaving the block removes the
hook and restores the pipeline exactly.

A swg/mswg term without ``window=`` gets 5/8 of each latent side, 2 windows per side (the M-SWG
paper's rule of thumb: 40 of 64 on EDM2, 20 of 32 on DiT), e.g. 40 x 40 on SD's 64 x 64 latents.

Pipelines: StableDiffusion, StableDiffusionXL, StableDiffusion3 (``slg:skip=7/8/9`` skips those
transformer blocks), Flux, PixArt-alpha/Sigma, StableDiffusionPanorama (the terms run inside each
of its views). Crops of SDXL get their own time ids, crops of FLUX their image ids (their place on
the canvas). Call arguments that only the pipeline's own call sees (cross-attention kwargs such as a
LoRA scale, ControlNet residuals, IP-adapter images) are not given to the crops: calls with ControlNet
residuals are left alone.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any

import torch

from .. import spec
from ..errors import WindowguideError
from ..guidance import CFG, Guidance
from ..adapters.base import vae_factor
from ..adapters.registry import Family, by_pipeline, patched_names
from ..adapters.netcall import default_sigma, network_model, network_multiple, read_call
from .calls import after_call_hook, guided_change, skip_layer_negative, weak_denoiser

HOOK = "windowguide"


class _State:
    """What the hook needs to know about the pipeline call in progress."""

    def __init__(self, pipe, family: Family, terms: Guidance, cfg: CFG | None, max_batch: int | None,
                 crop_positions: str):
        self.pipe, self.family, self.kind, self.cfg, self.max_batch = pipe, family, family.kind, cfg, max_batch
        self.rules = family.patched[type(pipe).__name__]
        self.guidance = terms
        self.net = getattr(pipe, self.rules.net)
        vae = getattr(pipe, "vae", None)
        self.vae_factor = getattr(pipe, "vae_scale_factor", None)       # pixels per latent pixel (PixArt)
        if self.vae_factor is None and vae is not None and "block_out_channels" in vae.config:
            self.vae_factor = vae_factor(vae)
        self.model = network_model(self.net, self.kind, crop_positions, self.vae_factor)
        self.multiple = network_multiple(self.net, self.kind)
        self.inside = False
        self.cfg_ranged = cfg is not None and (cfg.sigma_lo > 0 or cfg.sigma_hi != float("inf") or cfg.steps is not None)
        self.last_out = None
        self.begin(1.0, False)

    def begin(self, scale: float, do_cfg: bool) -> None:
        self.scale, self.do_cfg = float(scale), bool(do_cfg)
        self.divisor = self.scale + (1 - self.rules.offset)   # 1 + w: a shift d of P_c moves the result by (1 + w) d
        self.step, self.last_t, self.sigmas, self._schedule = -1, None, None, None
        self.last_index = object()
        self.last_shift = (None, None)
        self.last_out = None

    def schedule(self):
        """The VP schedule of the pipeline's scheduler (read once per pipeline call); None for flow."""
        if self._schedule is None and not self.family.flow:
            from ..adapters.base import schedule_of
            self._schedule = schedule_of(self.pipe.scheduler)
        return self._schedule

    def second_order(self) -> bool:
        """Heun / DPM2-style schedulers: two network calls per step (the last step one); diffusers'
        ``state_in_first_order`` says which call opens a step."""
        sched = self.pipe.scheduler
        return getattr(sched, "order", 1) == 2 and hasattr(sched, "state_in_first_order")

    def _sigmas(self) -> list[float]:
        """The whole run's step sigmas (for step ranges and weight ramps), from the scheduler's timesteps;
        a second-order scheduler's list holds each step's second evaluation too: its steps open at
        timesteps 0, 2, 4, ..."""
        if self.sigmas is None:
            ts = torch.as_tensor(self.pipe.scheduler.timesteps).reshape(-1)
            if self.second_order():
                ts = ts[0::2]
            ts = self.family.network_t(ts)          # FLUX's pipeline hands its network t / 1000
            self.sigmas = default_sigma(self.kind, ts, self.schedule()).tolist() + [0.0]
        return self.sigmas

    def read_cfg(self) -> None:
        """The CFG scale and on/off at this network call, where the pipeline exposes them (SD, SDXL, SD3,
        panorama: ``guidance_scale`` and ``do_classifier_free_guidance``): a step-end callback may change
        them mid-run (diffusers' documented dynamic CFG sets ``_guidance_scale = 0`` and halves the
        prompt batch). FLUX, PixArt and the panorama pipeline decide once per call of the pipeline."""
        cls = type(self.pipe)
        if self.rules.reads_cfg and isinstance(getattr(cls, "do_classifier_free_guidance", None), property):
            self.begin_cfg(float(self.pipe.guidance_scale), bool(self.pipe.do_classifier_free_guidance))

    def begin_cfg(self, scale: float, do_cfg: bool) -> None:
        self.scale, self.do_cfg = scale, do_cfg
        self.divisor = self.scale + (1 - self.rules.offset)

    def cfg_rows(self, call) -> bool:
        """Whether this call holds CFG's rows (CFG on for the pipeline call, and at this step)."""
        return self.do_cfg and (self.rules.cfg_now is None or self.rules.cfg_now(self.pipe, call))

    def cond_rows(self, call, first_at_t: bool) -> torch.Tensor | None:
        n = call.x.shape[0]
        if self.rules.rows == "separate":            # FLUX calls cond, then (true CFG) uncond, separately
            return torch.arange(n) if first_at_t else None
        if not self.cfg_rows(call):
            return torch.arange(n)
        if self.rules.rows == "cond_first":
            return torch.arange(n // 2)
        if self.rules.rows == "interleaved":         # panorama's views: uncond, cond, uncond, cond, ...
            return torch.arange(1, n, 2)
        return torch.arange(n // 2, n)

    def terms(self, shape: tuple[int, int]) -> Guidance:
        """The recipe's terms (an "auto" window is sized by the term for each latent: ``windows.default_window``)."""
        return self.guidance

    def after_call(self, module, args, kwargs, out):
        if self.inside or not (len(self.guidance) or self.cfg_ranged):
            return out
        own = self.rules.own_negative
        if own is not None and kwargs.get(own) is not None:
            return self._skip_layer_call(out)
        call = read_call(module, args, kwargs)
        if call is None:
            return out
        t0 = float(call.t[0])
        first = t0 != self.last_t
        if self.second_order():                      # a step opens with a first-order call after a scheduler step
            sched = self.pipe.scheduler
            if sched.state_in_first_order and sched.step_index != self.last_index:
                self.step += 1
            self.last_index = sched.step_index
        elif first:
            self.step += 1
        self.last_t = t0
        self.read_cfg()
        idx = self.cond_rows(call, first)
        if idx is None:
            return out
        sigma = default_sigma(self.kind, call.t, self.schedule())
        cfg_here = self.cfg_rows(call)
        cfg_off = cfg_here and self.cfg_off(sigma)
        sub = call.rows(idx.to(call.x.device))
        pred = call.read(out)
        positive = pred[idx]
        delta = None
        if len(self.guidance):
            self.inside = True
            try:
                delta = guided_change(self.terms(tuple(call.x.shape[-2:])), self.model, self.multiple, sub, positive,
                                      sigma[idx.to(sigma.device)], (self.step, self._sigmas()), self.max_batch)
            finally:
                self.inside = False
        self.last_out = None
        if delta is None and not cfg_off:
            return out
        pred = pred.clone()
        if delta is not None:
            shift = delta / (self.divisor if cfg_here and not cfg_off else 1.0)
            pred[idx] = (positive.float() + shift).to(pred.dtype)
            self.last_shift = (self.step, shift)
        if cfg_off:               # the pipeline's CFG of P with itself is P: CFG off at this step
            uncond = {"batched": slice(0, len(idx)), "cond_first": slice(len(idx), None),
                      "interleaved": slice(0, None, 2)}.get(self.rules.rows)
            if uncond is not None:
                pred[uncond] = pred[idx]
        out = call.write(out, pred)
        if cfg_off and self.rules.rows == "separate":
            self.last_out = (t0, out)           # the unconditional call of this step returns it, unevaluated
        return out

    def before_call(self, module, args, kwargs):
        """The unconditional call of a step where the recipe's CFG is off, on a pipeline that makes it a
        second call ('separate' rows): not evaluated, it returns the conditional call's output, so the
        pipeline's P_u + s (P_c - P_u) is P_c."""
        if self.inside or self.last_out is None or self.rules.rows != "separate":
            return None
        call = read_call(module, args, kwargs)
        t0, out = self.last_out
        if call is None or float(call.t[0]) != t0:
            return None
        self.last_out = None
        return out

    def cfg_off(self, sigma: torch.Tensor) -> bool:
        """Whether the recipe's cfg term (an interval: sigma range, steps) is off at this call."""
        if not self.cfg_ranged:
            return False
        return not bool(self.cfg.active(sigma[:1].cpu(), (self.step, self._sigmas()))[0])

    def _skip_layer_call(self, out):
        """The pipeline's own extra negative call. SD3's own skip-layer guidance adds s_slg (P_text - P_skip) with the P_text this patch shifted by
        Delta / s: the same shift on P_skip keeps the difference the network's own, so the result is
        CFG + Delta + SLG (not CFG + (1 + s_slg / s) Delta + SLG)."""
        step, shift = getattr(self, "last_shift", (None, None))
        sample = out[0] if isinstance(out, tuple) else out.sample
        if step != self.step or shift is None or shift.shape != sample.shape:
            return out
        new = (sample.float() + shift).to(sample.dtype)
        return (new, *out[1:]) if isinstance(out, tuple) else type(out)(sample=new)


def _split(g: Guidance) -> tuple[Guidance, CFG | None]:
    cfgs = [t for t in g if isinstance(t, CFG)]
    if len(cfgs) > 1:
        raise WindowguideError("a pipeline has one CFG scale: give at most one cfg term")
    if cfgs:
        c = cfgs[0]
        if c.weight_end is not None or c.mask is not None or c.null is not None or c.channels is not None:
            raise WindowguideError("inside a classic pipeline the cfg term is its guidance scale: an interval "
                                   "(sigma range, steps, sgg's split) but no ramp, mask or null of its own (use "
                                   "the windowguide guiders or wg.sample)")
    return Guidance(tuple(t for t in g if not isinstance(t, CFG))), (cfgs[0] if cfgs else None)


def _build(guidance, family: Family, net, weak, crop_positions: str) -> Guidance:
    if not isinstance(guidance, str):
        return Guidance.of(guidance)

    def load(name: str):
        if weak is None:
            raise WindowguideError(f"the recipe names a weak model ({name!r}); pass the weak network as "
                                   f"windowguide.patch(pipe, ..., weak=network)")
        return weak_denoiser(weak, net, family.kind, crop_positions)

    skip = (lambda blocks: skip_layer_negative(net, family.kind, blocks)) if family.skip is not None else None
    return spec.build(guidance, spec.Context(net=None, load=load, skip=skip))


def _call_wrapper(cls, state: _State):
    """``cls.__call__`` that records the CFG scale of each call (and sets it from the recipe's cfg term)."""
    signature = inspect.signature(cls.__call__)
    scale_name, rules = state.rules.scale, state.rules

    def __call__(self, *args, **kwargs):
        if state.cfg is not None:
            want = rules.offset + state.cfg.weight
            given = signature.bind(self, *args, **kwargs).arguments.get(scale_name)
            if given is not None and float(given) != want:
                raise WindowguideError(f"{scale_name}={given} conflicts with the recipe's cfg:w={state.cfg.weight} "
                                       f"({scale_name} = {rules.offset:g} + w = {want}); give one of them")
            kwargs[scale_name] = want
            if rules.negative and not _given(signature, self, args, kwargs, "negative_prompt", "negative_prompt_embeds"):
                # FLUX runs its true CFG only with a negative prompt: an empty one per prompt
                prompt = signature.bind(self, *args, **kwargs).arguments.get("prompt")
                kwargs["negative_prompt"] = [""] * len(prompt) if isinstance(prompt, (list, tuple)) else ""
        if scale_name is None:                     # a pipeline without CFG (guidance-distilled)
            state.begin(1.0, False)
            return cls.__call__(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        scale = float(bound.arguments[scale_name])
        do_cfg = scale > rules.offset
        if rules.negative:
            do_cfg = do_cfg and _given(signature, self, args, kwargs, "negative_prompt", "negative_prompt_embeds")
        do_cfg = do_cfg and rules.cfg_possible(self)
        state.begin(scale, do_cfg)
        return cls.__call__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__qualname__": cls.__qualname__,
                                      "__module__": cls.__module__, "__doc__": cls.__doc__})


def _given(signature, self, args, kwargs, *names) -> bool:
    arguments = signature.bind(self, *args, **kwargs).arguments
    return any(arguments.get(n) is not None for n in names)


CACHE_HOOKS = ("faster_cache", "fbc_", "pyramid_attention_broadcast", "taylorseer_cache", "mag_cache", "sea_cache",
               "text_kv_cache")


def refuse_cache_hooks(net: Any, name: str) -> None:
    """Refuse a network under one of diffusers' caches (FasterCache, FirstBlockCache, PyramidAttentionBroadcast,
    TaylorSeer, MagCache, ...): the crops would run through a cache sized and timed for the whole image."""
    found = set()
    for module in net.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}) or {}:
            if any(hook.startswith(prefix) for prefix in CACHE_HOOKS):
                found.add(hook)
    if found:
        raise WindowguideError(f"this {name}'s network runs under diffusers' cache hooks ({', '.join(sorted(found))}); "
                               f"the crops would pass through a cache made for the whole image: disable the cache "
                               f"(e.g. pipe.transformer.disable_cache()) while it is patched")


@contextmanager
def patch(pipe: Any, guidance: str | Guidance, max_batch: int | None = None, weak: Any = None,
          crop_positions: str = "slice"):
    """Run ``pipe``'s own loop with windowguide's guidance (module docstring).

    ``guidance``: a recipe (``"cfg:w=6.5+mswg:w=0.5,window=48"``, see ``windowguide.spec``) or Guidance
    terms whose negatives work in the network's prediction space (``integrations.calls``); ``weak``: the
    weak network of an ``ag``/``wd`` term (same class as the pipeline's); ``max_batch``: at most this
    many crops per network call; ``crop_positions``: FLUX crops' image ids, 'slice' (their place on the
    canvas, one call per window position) or 'stretch' (their own grid, one call for all)."""
    name = type(pipe).__name__
    family = by_pipeline(pipe, patched=True)
    if crop_positions not in ("slice", "stretch"):
        raise WindowguideError(f"crop_positions {crop_positions!r}: accepted: 'slice', 'stretch'")
    if family.check is not None:
        family.check(pipe)
    net = getattr(pipe, family.patched[name].net, None)
    if net is None:
        raise WindowguideError(f"this {name} has no {family.patched[name].net} (it is None); the patch guides its calls")
    refuse_cache_hooks(net, name)
    terms, cfg = _split(_build(guidance, family, net, weak, crop_positions))
    if cfg is not None and family.patched[name].scale is None:
        raise WindowguideError(f"{name} runs no CFG (its guidance is a distilled input, not a second evaluation): "
                               f"a recipe's cfg term cannot be its scale; drop it, or use the guiders or wg.sample")
    state = _State(pipe, family, terms, cfg, max_batch, crop_positions)
    from diffusers.hooks import HookRegistry
    had_registry = hasattr(net, "_diffusers_hook")
    had_forward = "forward" in vars(net)
    registry = HookRegistry.check_if_exists_or_initialize(net)
    if registry.get_hook(HOOK) is not None:
        raise WindowguideError(f"this {name} is already patched by windowguide; one patch at a time (leave the "
                               f"outer `with` block first, or put all terms in one recipe)")
    registry.register_hook(after_call_hook(state.after_call, state.before_call), HOOK)
    cls = type(pipe)
    pipe.__class__ = _call_wrapper(cls, state)
    try:
        yield pipe
    finally:
        pipe.__class__ = cls
        registry.remove_hook(HOOK, recurse=False)
        if not registry.hooks:                  # leave the network as it was: no registry, the class's forward
            if not had_forward:
                vars(net).pop("forward", None)
            if not had_registry:
                del net._diffusers_hook


__all__ = ["patch", "patched_names"]
