"""A diffusers network call, read in windowguide's terms, and the guidance change it gets.

Inside a pipeline's loop (classic or modular) windowguide sees only the calls of the denoising
network: ``unet(sample, t, encoder_hidden_states, added_cond_kwargs=...)`` or
``transformer(hidden_states=..., timestep=..., ...)``. ``read_call`` turns one such call into the
network's input latents x [B, C, H, W] (FLUX's tokens unpacked), its timestep, its condition in the
form of ``adapters.pipelines``' model functions, and the sigma of the step; ``guided_change`` then
evaluates windowguide's terms on it and returns, in the network's own prediction space,

    Delta = sum_i  w_i(sigma) M_i ⊙ (P_pos - P_neg,i),

P the network's prediction (eps, v or flow velocity). Because D is affine in P with coefficients
that are the same for every term at one (x, sigma) (D = x - sigma eps, D = alpha x_vp - sigma alpha v,
D = x_t - t v), this is the D-space guidance of the library written in P-space, and folding crop
predictions in P-space equals folding their D (the fold of the crops of x is x). The sum is
computed by ``guidance.GuidedDenoiser`` and the crops by ``windows`` (one batched call for all the
crops of one size), the positive being the prediction the pipeline already made: it is never
evaluated twice.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..conds import Cond
from ..denoiser import Denoiser
from ..errors import WindowguideError
from ..guidance import CFG, Guidance, GuidedDenoiser
from ..windows import default_window

SIGMA_FLOOR, SIGMA_CEIL = 1e-8, 1e8
NETWORKS = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel", "PixArtTransformer2DModel")


@dataclass
class Call:
    """One call of the denoising network: latents, timestep per row, condition, and how the
    prediction is read from and written back into the network's output. ``static``: the call's
    arguments that are the same for every row (a LoRA scale in ``cross_attention_kwargs``), given to
    the crop calls as they are (``static_kwargs``); per-row ones (LCM's ``timestep_cond``, IP-adapter
    image embeddings) travel in ``cond``, selected and repeated with it."""
    kind: str
    x: torch.Tensor                    # [B, C, H, W] network input (unpacked)
    t: torch.Tensor                    # [B] timestep, in the network's units
    cond: Cond                         # the adapters' condition format
    read: Callable[[Any], torch.Tensor]
    write: Callable[[Any, torch.Tensor], Any]
    static: dict | None = None

    def rows(self, idx: torch.Tensor) -> "Call":
        from ..conds import cond_select
        return Call(self.kind, self.x[idx], self.t[idx], cond_select(self.cond, idx), self.read, self.write,
                    self.static)


_STATIC: ContextVar = ContextVar("windowguide_static_kwargs", default=None)


@contextmanager
def static_kwargs(kwargs: dict | None):
    """The pipeline call's row-independent arguments, for the crop calls made inside the block."""
    token = _STATIC.set(kwargs or None)
    try:
        yield
    finally:
        _STATIC.reset(token)


def current_static() -> dict:
    return _STATIC.get() or {}


def unet_extras(cond: dict, size: tuple[int, int] | None = None) -> dict:
    """The UNet keyword arguments a call's condition carries besides the text embeddings: LCM's
    ``timestep_cond``, IP-adapter ``image_embeds`` (stored as image_embeds.0, .1, ...), ControlNet's
    residuals (residual.0, ..., mid_residual; cut to the crops of ``size``), plus the static ones of the
    call in progress."""
    kwargs = dict(current_static())
    if "timestep_cond" in cond:
        kwargs["timestep_cond"] = cond["timestep_cond"]
    images = [cond[k] for k in sorted(k for k in cond if k.startswith("image_embeds."))]
    if images:
        kwargs["added_cond_kwargs"] = {"image_embeds": images}
    residuals = [cond[k] for k in sorted((k for k in cond if k.startswith("residual.")), key=lambda k: int(k[9:]))]
    if residuals:
        kwargs["down_block_additional_residuals"] = tuple(crop_residual(r, size) for r in residuals)
    if "mid_residual" in cond:
        kwargs["mid_block_additional_residual"] = crop_residual(cond["mid_residual"], size)
    return kwargs


def crop_residual(r: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ControlNet residual of the whole canvas, cut to each row's crop of ``size`` latent pixels
    (``current_regions``: top, left, canvas height, width) at the residual's own resolution, canvas /
    f with f = canvas height / residual height (windows are multiples of the UNet's factor, so the cut
    is exact). The whole image (no regions, or the canvas itself) is the residual as it is."""
    from ..windows import current_regions
    regions = current_regions()
    if regions is None or tuple(size) == tuple(regions[0, 2:].tolist()):
        return r
    regions = regions.long().to(r.device)
    f = regions[:, 2] // r.shape[-2]                             # the residual's factor, per row
    rows = (regions[:, 0] // f)[:, None] + torch.arange(size[0] // int(f[0]), device=r.device)
    cols = (regions[:, 1] // f)[:, None] + torch.arange(size[1] // int(f[0]), device=r.device)
    batch = torch.arange(r.shape[0], device=r.device)[:, None, None]
    return r[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)     # [N, h, w, C] -> [N, C, h, w]


@functools.lru_cache(maxsize=None)
def _signature(cls) -> inspect.Signature:
    return inspect.signature(cls.forward)


def _named(net, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name, however the pipeline passed them."""
    named = dict(_signature(type(net)).bind(net, *args, **kwargs).arguments)
    named.pop("self", None)
    named.update(named.pop("kwargs", None) or {})
    return named


def _rows_t(t, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.reshape(1).expand(n) if t.dim() == 0 else t.reshape(-1).expand(n) if t.numel() == 1 else t


def _output(out, pred: torch.Tensor, rebuild: Callable[[torch.Tensor], torch.Tensor]):
    """The network's output (tuple or output object) with its sample replaced."""
    new = rebuild(pred)
    if isinstance(out, tuple):
        return (new,) + tuple(out[1:])
    out.sample = new
    return out


def _sample(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.sample


def read_call(net: torch.nn.Module, args: tuple, kwargs: dict) -> Call | None:
    """The call in windowguide's terms; None for a call that is not a plain denoising call (SD3's
    own skip-layer call, an SDXL UNet with ControlNet residuals, ...), which windowguide leaves alone."""
    name = type(net).__name__
    if name not in NETWORKS:
        raise WindowguideError(f"windowguide cannot read calls of {name}; supported networks: {', '.join(NETWORKS)}")
    kwargs = _named(net, args, kwargs)
    if name == "UNet2DConditionModel":
        return _unet_call(kwargs)
    if name == "SD3Transformer2DModel":
        if kwargs.get("skip_layers") is not None or kwargs.get("block_controlnet_hidden_states") is not None:
            return None
        x, t = kwargs["hidden_states"], kwargs["timestep"]
        cond = dict(embeds=kwargs["encoder_hidden_states"], pooled=kwargs["pooled_projections"])
        return Call("sd3", x, _rows_t(t, x.shape[0], x.device), cond, _sample,
                    lambda out, p: _output(out, p, lambda q: q.to(_sample(out).dtype)), _joint(kwargs))
    if name == "FluxTransformer2DModel":
        return _flux_call(kwargs)
    if name == "PixArtTransformer2DModel":
        x, t = kwargs["hidden_states"], kwargs["timestep"]
        c = x.shape[1]
        cond = dict(embeds=kwargs["encoder_hidden_states"], mask=kwargs.get("encoder_attention_mask"))
        if cond["mask"] is None:
            raise WindowguideError("windowguide needs PixArt's encoder_attention_mask in the network call")

        def write(out, p):
            full = _sample(out)
            return _output(out, p, lambda q: torch.cat([q.to(full.dtype), full[:, c:]], 1))
        return Call("pixart", x, _rows_t(t, x.shape[0], x.device), cond, lambda out: _sample(out)[:, :c], write)


def _unet_call(kwargs) -> Call | None:
    x, t, embeds = kwargs["sample"], kwargs["timestep"], kwargs["encoder_hidden_states"]
    added = kwargs.get("added_cond_kwargs") or {}
    extras = {}                               # per-row arguments the crops need too (LCM, IP-adapter, ControlNet)
    for i, r in enumerate(kwargs.get("down_block_additional_residuals") or []):
        extras[f"residual.{i}"] = r           # ControlNet: each crop gets the residuals' crop (unet_extras)
    if kwargs.get("mid_block_additional_residual") is not None:
        extras["mid_residual"] = kwargs["mid_block_additional_residual"]
    if kwargs.get("timestep_cond") is not None:
        extras["timestep_cond"] = kwargs["timestep_cond"]
    for i, e in enumerate(added.get("image_embeds") or []):
        extras[f"image_embeds.{i}"] = e
    static = {k: kwargs[k] for k in ("cross_attention_kwargs",) if kwargs.get(k) is not None}
    if "text_embeds" in added:               # SDXL: pooled embedding; time ids are made per crop
        cond, kind = dict(embeds=embeds, pooled=added["text_embeds"], **extras), "sdxl"
        ids = added["time_ids"]                # the user's micro-conditions, per row: crops derive theirs
        cond["time_ids"] = ids.reshape(1, -1).expand(x.shape[0], -1) if ids.shape[0] == 1 else ids
    else:
        cond, kind = (dict(embeds=embeds, **extras) if extras else embeds), "sd"
    return Call(kind, x, _rows_t(t, x.shape[0], x.device), cond, _sample,
                lambda out, p: _output(out, p, lambda q: q.to(_sample(out).dtype)), static)


def _flux_call(kwargs) -> Call:
    from ..adapters.pipelines import pack, unpack
    ids = kwargs["img_ids"]
    ids = ids[0] if ids.dim() == 3 else ids
    h, w = 2 * (int(ids[:, 1].max()) + 1), 2 * (int(ids[:, 2].max()) + 1)
    x = unpack(kwargs["hidden_states"], h, w)
    cond = dict(embeds=kwargs["encoder_hidden_states"], pooled=kwargs["pooled_projections"])
    if kwargs.get("guidance") is not None:
        cond["guidance"] = _rows_t(kwargs["guidance"], x.shape[0], x.device)
    return Call("flux", x, _rows_t(kwargs["timestep"], x.shape[0], x.device), cond,
                lambda out: unpack(_sample(out), h, w),
                lambda out, p: _output(out, p, lambda q: pack(q).to(_sample(out).dtype)), _joint(kwargs))


def _joint(kwargs) -> dict:
    """A transformer call's row-independent attention arguments (a LoRA scale), for its crops."""
    return {"joint_attention_kwargs": kwargs["joint_attention_kwargs"]} if kwargs.get("joint_attention_kwargs") else {}


def network_model(net: torch.nn.Module, kind: str, crop_positions: str = "slice",
                  vae_factor: int | None = None) -> Callable:
    """model(x, t, cond) -> prediction for the network of a call of this kind (``adapters.pipelines``);
    ``vae_factor``: pixels per latent pixel, read from the pipeline's VAE (PixArt's micro-conditions)."""
    from ..adapters import pipelines as P
    if kind == "sd":
        return P.sd_unet_model(net)
    if kind == "sdxl":                    # crops derive their time ids from the call's (sdxl_crop_time_ids)
        return P.sdxl_unet_model(net, None)
    if kind == "sd3":
        return P.sd3_model(net)
    if kind == "flux":
        return P.flux_model(net, crop_positions)
    if kind == "pixart":                  # PixArt-alpha 1024's micro-conditions are in image pixels
        return P.pixart_model(net, 8 if vae_factor is None else int(vae_factor))
    raise WindowguideError(f"no network model for calls of kind {kind!r}")


def network_multiple(net: torch.nn.Module, kind: str) -> int:
    """The factor a crop's side must be a multiple of: the UNet's downsampling or the patch size."""
    if kind in ("sd", "sdxl"):
        return 2 ** (len(net.config.block_out_channels) - 1)
    return 2 if kind == "flux" else int(net.config.patch_size)


def default_sigma(kind: str, t: torch.Tensor, schedule=None) -> torch.Tensor:
    """The VE sigma of a call's timestep: the pipeline's VP schedule (``schedule``; SD's scaled-linear
    beta 0.00085..0.012 over 1000 steps, shared by SD 1.x, 2.x and SDXL, when none is given), or for
    flow matching sigma = s / (1 - s), s = t / 1000 (SD3) or s = t (FLUX, whose pipeline divides by 1000)."""
    t = t.double()
    if kind in ("sd3", "flux"):
        s = (t / 1000 if kind == "sd3" else t).clamp(max=1 - 1e-9)
        sigma = s / (1 - s)
    else:
        sigma = (schedule if schedule is not None else _sd_schedule()).sigma_at(t.round().cpu()).to(t.device)
    return sigma.clamp(SIGMA_FLOOR, SIGMA_CEIL).float()     # flow's t = 1 is sigma = inf: a term's hi covers it


@functools.lru_cache(maxsize=1)
def _sd_schedule():
    from diffusers import DDPMScheduler
    from ..adapters.diffusers import schedule_of
    return schedule_of(DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))


class _Prediction(Denoiser):
    """The network as a "denoiser" that returns its raw prediction P: the condition carries the
    network's timestep ({'t': [n], 'c': cond}) so that crops repeat it with the rest."""

    def __init__(self, model: Callable, multiple: int):
        self.model, self.multiple = model, multiple

    def forward(self, x, sigma, cond):
        return self.model(x, cond["t"], cond["c"])


class _KnownPositive(Denoiser):
    """The network, except that the prediction the pipeline already made is returned as is when the
    guided denoiser asks for the positive (the same x tensor), so it is never evaluated twice."""

    def __init__(self, inner: Denoiser, x: torch.Tensor, positive: torch.Tensor):
        self.inner, self.x, self.positive = inner, x, positive
        self.multiple, self.null_cond = inner.multiple, None

    def __call__(self, x, sigma, cond=None):
        return self.positive if x is self.x else self.inner(x, sigma, cond)


@torch.no_grad()
def guided_change(guidance: Guidance, model: Callable, multiple: int, call: Call, positive: torch.Tensor,
                  sigma: torch.Tensor, step: tuple[int, list[float]] | None = None,
                  max_batch: int | None = None) -> torch.Tensor | None:
    """Delta = sum_i w_i M_i ⊙ (P_pos - P_neg,i) for the rows of ``call`` (module docstring), or None
    when no term is on at this sigma and step. ``positive``: the pipeline's prediction P_pos."""
    if any(isinstance(term, CFG) for term in guidance):
        raise WindowguideError("guided_change takes the terms besides CFG (the pipeline evaluates its own CFG)")
    x = call.x.float()
    den = GuidedDenoiser(_KnownPositive(_Prediction(model, multiple), x, positive.float()), guidance, max_batch)
    if step is not None:
        den.begin_step(*step)
    den.check((x.shape[1], x.shape[-2], x.shape[-1]))   # every term's windows, at the first call, on or off
    if not any(bool(term.active(sigma, getattr(den, "step", None)).any()) for term in guidance):
        return None
    with static_kwargs(call.static):
        return den(x, sigma.to(x.device), dict(t=call.t, c=call.cond)) - positive.float()


def weak_denoiser(weak: Any, net: torch.nn.Module, kind: str, crop_positions: str = "slice") -> Denoiser:
    """Autoguidance's weak network in P-space: a module of the pipeline network's class, or the path of
    a local folder loaded with that class's ``from_pretrained``."""
    if weak is None:
        raise WindowguideError("autoguidance needs the weak network: pass it (a network of the pipeline's class) "
                               "or the folder it was saved in")
    if isinstance(weak, str):
        weak = type(net).from_pretrained(weak).to(net.device, net.dtype).eval()
    if type(weak) is not type(net):
        raise WindowguideError(f"the weak model is a {type(weak).__name__}, the pipeline's network a "
                               f"{type(net).__name__}: autoguidance needs the same kind of network")
    return _Prediction(network_model(weak, kind, crop_positions), network_multiple(net, kind))


def skip_layer_negative(net: torch.nn.Module, kind: str, layers) -> Callable:
    """SD3's skip-layer negative in P-space: the same transformer with the blocks ``layers`` skipped."""
    if kind != "sd3":
        raise WindowguideError(f"skip-layer guidance skips SD3 transformer blocks by index; this network is {kind}")
    try:
        layers = [int(v) for v in layers]
    except ValueError:
        raise WindowguideError(f"skip-layer guidance on SD3 skips blocks by index, got {layers!r}") from None
    model = network_model(net, kind)
    return lambda x, sigma, cond: model(x, cond["t"], cond["c"], skip_layers=layers)


OPEN_WINDOW = "auto"    # a recipe's swg/mswg term without window=: sized when the latent's shape is known


def open_windows(recipe: str) -> str:
    """The recipe with ``window=0`` on each swg/mswg term (and sgg's swg/mswg) that names no window, so
    that ``fit_windows`` can give it 5/8 of the latent's sides once they are known."""
    from .. import spec
    terms = []
    for name, keys in spec.parse(recipe):
        windowed = name in ("swg", "mswg") or (name == "sgg" and ("swg" in keys or "mswg" in keys))
        if windowed and "window" not in keys:
            keys = {**keys, "window": str(OPEN_WINDOW)}
        terms.append(name + (":" + ",".join(f"{k}={v}" for k, v in keys.items()) if keys else ""))
    return "+".join(terms) or "none"


def fit_windows(guidance: Guidance, shape: tuple[int, int], multiple: int) -> Guidance:
    """SWG terms of an open window get (5/8 H, 5/8 W) rounded up to ``multiple`` (``default_window``)."""
    from dataclasses import replace
    from ..guidance import SWG
    fitted = (default_window(shape[0], multiple), default_window(shape[1], multiple))
    return Guidance(tuple(replace(t, window=fitted) if isinstance(t, SWG) and t.window == OPEN_WINDOW else t
                          for t in guidance))


def after_call_hook(after: Callable) -> Any:
    """A diffusers model hook that runs the module, then returns ``after(module, args, kwargs, output)``."""
    from diffusers.hooks import ModelHook

    class AfterCall(ModelHook):
        def new_forward(self, module, *args, **kwargs):
            return after(module, args, kwargs, self.fn_ref.original_forward(*args, **kwargs))
    return AfterCall()


__all__ = ["Call", "read_call", "network_model", "network_multiple", "default_sigma", "guided_change",
           "weak_denoiser", "skip_layer_negative", "after_call_hook", "default_window",
           "open_windows", "fit_windows", "NETWORKS"]
