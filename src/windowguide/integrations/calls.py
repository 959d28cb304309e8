"""A diffusers network call, read in windowguide's terms, and the guidance change it gets.

Inside a pipeline's loop (classic or modular) windowguide sees only the calls of the denoising
network: ``unet(sample, t, encoder_hidden_states, added_cond_kwargs=...)`` or
``transformer(hidden_states=..., timestep=..., ...)``. ``read_call`` turns one such call into the
network's input latents x [B, C, H, W] (FLUX's tokens unpacked), its timestep, its condition in the
form of its family module's model function (``adapters.<family>``), and the sigma of the step; ``guided_change`` then
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

from typing import Any, Callable

import torch

from ..adapters.netcall import Call, network_model, network_multiple, static_kwargs
from ..adapters.registry import by_kind
from ..denoiser import Denoiser
from ..errors import WindowguideError
from ..guidance import CFG, Guidance, GuidedDenoiser

class _Prediction(Denoiser):
    """The network as a "denoiser" that returns its raw prediction P: the condition carries the
    network's timestep ({'t': [n], 'c': cond}) so that crops repeat it with the rest."""

    def __init__(self, model: Callable, multiple: int):
        self.model, self.multiple = model, multiple

    def forward(self, x, sigma, cond):
        return self.model(x, cond["t"], cond["c"])


class KnownPositive(Denoiser):
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
    den = GuidedDenoiser(KnownPositive(_Prediction(model, multiple), x, positive.float()), guidance, max_batch)
    if step is not None:
        den.begin_step(*step)
    den.check(tuple(x.shape[1:]))   # every term's windows, at the first call, on or off
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
    """The skip-layer negative in P-space: the same transformer with the blocks ``layers`` skipped
    (its family's ``skip``; SD3's blocks by index)."""
    family = by_kind(kind)
    if family.skip is None:
        raise WindowguideError(f"skip-layer guidance skips SD3 transformer blocks by index; this network is {kind}")
    return family.skip(net, layers)


def after_call_hook(after: Callable, before: Callable | None = None) -> Any:
    """A diffusers model hook that runs the module, then returns ``after(module, args, kwargs, output)``;
    ``before(module, args, kwargs)``, when given and not None, is the output instead of a run."""
    from diffusers.hooks import ModelHook

    class AfterCall(ModelHook):
        def new_forward(self, module, *args, **kwargs):
            if before is not None:
                known = before(module, args, kwargs)
                if known is not None:
                    return known
            return after(module, args, kwargs, self.fn_ref.original_forward(*args, **kwargs))
    return AfterCall()


__all__ = ["KnownPositive", "guided_change", "weak_denoiser", "skip_layer_negative", "after_call_hook"]
