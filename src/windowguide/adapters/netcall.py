"""One call of a pipeline's denoising network in windowguide's terms (``Call``), and the helpers the
family modules use to read one: arguments by name, timesteps per row, the output's sample; and the one
reader of a call for the hosts (``read_call``, ``network_model``, ``network_multiple``, ``default_sigma``:
each asks the family of the network through the registry)."""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..conds import Cond
from ..errors import WindowguideError
from .registry import by_kind, by_network


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
    cond: Cond                         # the family's condition format
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
    """The row-independent arguments of the pipeline call in progress (``static_kwargs``), or {}."""
    return _STATIC.get() or {}


@functools.lru_cache(maxsize=None)
def _signature(cls) -> inspect.Signature:
    return inspect.signature(cls.forward)


def named(net, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name, however the pipeline passed them."""
    bound = dict(_signature(type(net)).bind(net, *args, **kwargs).arguments)
    bound.pop("self", None)
    bound.update(bound.pop("kwargs", None) or {})
    return bound


def rows_t(t, n: int, device) -> torch.Tensor:
    """A call's timestep (scalar, [1] or [B]) as one value per row, [n]."""
    t = torch.as_tensor(t, device=device)
    return t.reshape(1).expand(n) if t.dim() == 0 else t.reshape(-1).expand(n) if t.numel() == 1 else t


def sample_of(out) -> torch.Tensor:
    """The sample of a network output, tuple or output object."""
    return out[0] if isinstance(out, tuple) else out.sample


def with_sample(out, pred: torch.Tensor, rebuild: Callable[[torch.Tensor], torch.Tensor]):
    """The network's output (tuple or output object) with its sample replaced by ``rebuild(pred)``."""
    new = rebuild(pred)
    if isinstance(out, tuple):
        return (new,) + tuple(out[1:])
    out.sample = new
    return out


def same_dtype_write(out, p: torch.Tensor):
    """Write a prediction of the output's own layout back, in the output's dtype."""
    return with_sample(out, p, lambda q: q.to(sample_of(out).dtype))


def joint(kwargs: dict, name: str = "joint_attention_kwargs") -> dict:
    """A transformer call's row-independent attention arguments (a LoRA scale), for its crops."""
    return {name: kwargs[name]} if kwargs.get(name) else {}


SIGMA_FLOOR, SIGMA_CEIL = 1e-8, 1e8


def read_call(net: torch.nn.Module, args: tuple, kwargs: dict) -> Call | None:
    """The call in windowguide's terms (its family module reads it); None for a call that is not a
    plain denoising call (SD3's own skip-layer call, a ControlNet call, ...), which windowguide leaves alone."""
    return by_network(net).read_call(net, named(net, args, kwargs))


def network_model(net: torch.nn.Module, kind: str, crop_positions: str = "slice",
                  vae_factor: int | None = None) -> Callable:
    """model(x, t, cond) -> prediction for the network of a call of this kind (its family module);
    ``vae_factor``: pixels per latent pixel, read from the pipeline's VAE (PixArt's micro-conditions)."""
    family = by_kind(kind)
    if family.model is None:
        raise WindowguideError(f"no network model for calls of kind {kind!r}")
    return family.model(net, crop_positions, vae_factor)


def network_multiple(net: torch.nn.Module, kind: str) -> int:
    """The factor a crop's side must be a multiple of: the UNet's downsampling or the patch size."""
    return int(by_kind(kind).multiple(net))


def default_sigma(kind: str, t: torch.Tensor, schedule=None) -> torch.Tensor:
    """The VE sigma of a call's timestep (its family's ``sigma``): the pipeline's VP schedule
    (``schedule``; SD's scaled-linear beta 0.00085..0.012 over 1000 steps, shared by SD 1.x, 2.x and
    SDXL, when none is given), or for flow matching sigma = s / (1 - s), s = t / 1000 (SD3) or s = t
    (FLUX, whose pipeline divides by 1000)."""
    sigma = by_kind(kind).sigma(t.double(), schedule)
    return sigma.clamp(SIGMA_FLOOR, SIGMA_CEIL).float()     # flow's t = 1 is sigma = inf: a term's hi covers it
