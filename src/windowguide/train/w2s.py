"""Weak-to-strong guidance moved into training (the SGG paper's migration; docs/algorithms.md §3).

The model learns the guided prediction itself, so sampling needs one network evaluation per step.
In D-space (our EDM form) the regression target of a conditioned sample is

    target = x0 + w * stopgrad(g),    g = D_pos - D_neg   at the same (x, sigma, label),

and in flow-matching form, with velocity u = n - x0 (u is affine in D: u = (x_t - D) / t),

    target_u = (n - x0) + w * stopgrad(u_pos - u_neg) = (n - x0) - (w / t) * stopgrad(g).

**Weights, converted at the edge.** D_pos is the network being trained (it is the only estimate of the
conditional mean there is), so the target refers to the model itself. Regression reaches the fixed point
D = E + lam (D - D_neg), E the plain conditional mean, i.e.

    D = E + (lam / (1 - lam)) (E - D_neg):

training coefficient lam gives the sampling-time guided model of weight w = lam / (1 - lam). The user
gives w (our sampling-time convention: w = 0 none, a CFG scale is 1 + w) and we train with
lam = w / (1 + w) < 1; training with lam = w directly diverges at w = 1 (the fixed point does not
exist), which a first toy run showed (energy distance 8e3). The guidance difference g comes from:

- ``mg`` (model guidance): the CFG difference of the model being trained, conditional minus null label,
  computed with the online weights under no_grad (``source='ema'``: the EMA weights);
- ``ag``: the model minus a separate weak model (e.g. a bundled NAME-weak) with the same label;
- ``branch``: the model minus its own auxiliary branch (a small head on the first block, trained jointly
  on the plain target x0): a condition-agnostic weak prediction at no extra network;
- ``sgg``: the segmented combination: the ``mg`` difference where sigma > split, the ``low`` difference
  (branch or ag) where sigma <= split (two regions, as the paper's SGG).

Samples drawn with the null label (label dropout) keep the plain target, so the unconditional prediction
that ``mg`` needs stays unguided.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import WindowguideError

KINDS = ("mg", "ag", "branch", "sgg")


@dataclass(frozen=True)
class W2S:
    """A training-time guidance recipe: kind, weight w, sgg's sigma split and its low-noise source."""
    kind: str
    weight: float
    split: float = 1.0
    low: str = "branch"
    source: str = "online"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise WindowguideError(f"--w2s {self.kind!r}: accepted: {', '.join(KINDS)}")
        if not (isinstance(self.weight, (int, float)) and 0 <= self.weight < float("inf")):
            raise WindowguideError(f"--w2s-weight {self.weight!r}: accepted: a finite number >= 0")
        if not (0 < self.split < float("inf")):
            raise WindowguideError(f"--w2s-split {self.split!r}: accepted: a sigma > 0")
        if self.low not in ("branch", "ag"):
            raise WindowguideError(f"--w2s-low {self.low!r}: accepted: branch, ag")
        if self.source not in ("online", "ema"):
            raise WindowguideError(f"w2s source {self.source!r}: accepted: online, ema")

    @property
    def needs_branch(self) -> bool:
        return self.kind == "branch" or (self.kind == "sgg" and self.low == "branch")

    @property
    def needs_weak(self) -> bool:
        return self.kind == "ag" or (self.kind == "sgg" and self.low == "ag")

    @property
    def needs_labels(self) -> bool:
        return self.kind in ("mg", "sgg")


def training_coefficient(weight: float) -> float:
    """lam = w / (1 + w): the coefficient of stopgrad(g) in the target whose fixed point is the
    sampling-time guided prediction of weight w (see the module docstring)."""
    return weight / (1 + weight)


def guided_target(x0: torch.Tensor, g: torch.Tensor, weight: float, on: torch.Tensor | None = None) -> torch.Tensor:
    """target = x0 + w stopgrad(g) (D-space); ``on`` [N] bool: samples that get guidance (others keep x0)."""
    step = weight * g.detach()
    if on is not None:
        step = step * on.view(-1, *([1] * (x0.dim() - 1))).to(step.dtype)
    return x0 + step


def flow_guided_target(noise: torch.Tensor, x0: torch.Tensor, u_pos: torch.Tensor, u_neg: torch.Tensor,
                       weight: float) -> torch.Tensor:
    """Flow-matching form: target velocity (n - x0) + w stopgrad(u_pos - u_neg)."""
    return (noise - x0) + weight * (u_pos - u_neg).detach()


@torch.no_grad()
def difference(w2s: W2S, noisy: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None,
               guide_net: Callable, null_label: int | None, weak: Callable | None = None,
               branch: torch.Tensor | None = None, d_pos: torch.Tensor | None = None) -> torch.Tensor:
    """g = D_pos - D_neg per sample, without gradient. ``guide_net``: the online or EMA net; ``d_pos``:
    its prediction when already computed (the online net's own forward pass, detached), so no network
    is evaluated twice; ``branch``: the branch prediction of this batch. sgg evaluates the null label
    only where sigma > split and the low-noise source only where sigma <= split."""
    d_pos = guide_net(noisy, sigma, labels) if d_pos is None else d_pos.detach()

    def cfg_neg(idx):
        if labels is None or null_label is None:
            raise WindowguideError("model guidance (mg, sgg) needs a class-conditional model and labels")
        return guide_net(noisy[idx], sigma[idx], torch.full_like(labels[idx], null_label))

    def low_neg(idx):
        if w2s.kind == "ag" or (w2s.kind == "sgg" and w2s.low == "ag"):
            if weak is None:
                raise WindowguideError("autoguidance at training time needs a weak model (--w2s-weak NAME)")
            return weak(noisy[idx], sigma[idx], None if labels is None else labels[idx])
        if branch is None:
            raise WindowguideError("branch guidance needs the auxiliary branch's prediction")
        return branch.detach()[idx]

    every = torch.arange(noisy.shape[0], device=noisy.device)
    if w2s.kind == "mg":
        return d_pos - cfg_neg(every)
    if w2s.kind in ("ag", "branch"):
        return d_pos - low_neg(every)
    high = sigma > w2s.split
    d_neg = torch.empty_like(d_pos)
    if high.any():
        d_neg[high] = cfg_neg(high.nonzero().flatten())
    if (~high).any():
        d_neg[~high] = low_neg((~high).nonzero().flatten())
    return d_pos - d_neg


def loss(w2s: W2S, net: Callable, x0: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor,
         labels: torch.Tensor | None, lam: torch.Tensor, ema: Callable | None = None,
         weak: Callable | None = None) -> torch.Tensor:
    """EDM loss toward the guided target: lambda |D - (x0 + w stopgrad(g))|^2 averaged, plus the
    branch's own plain loss lambda |D_branch - x0|^2 when the recipe has a branch."""
    null = getattr(net, "num_classes", 0) or None
    if w2s.needs_branch:
        d, d_branch = net(noisy, sigma, labels, with_branch=True)
    else:
        d, d_branch = net(noisy, sigma, labels), None
    guide = ema if (w2s.source == "ema" and ema is not None) else net
    g = difference(w2s, noisy, sigma, labels, guide, null, weak, d_branch,
                   d_pos=d if guide is net else None)
    on = None if labels is None or null is None else labels != null
    out = (lam * (d - guided_target(x0, g, training_coefficient(w2s.weight), on)) ** 2).mean()
    if d_branch is not None:
        out = out + (lam * (d_branch - x0) ** 2).mean()
    return out


def describe(record: Any) -> str | None:
    """One line for a model trained with a w2s recipe (its record's 'w2s' entry), else None."""
    if not record:
        return None
    r = record
    extra = f", split sigma {r['split']}, low {r['low']}" if r["kind"] == "sgg" else ""
    return (f"trained with weak-to-strong guidance ({r['kind']}, w={r['weight']}{extra}): its plain "
            f"prediction is the guided one; 1 network evaluation per step")


__all__ = ["W2S", "KINDS", "training_coefficient", "guided_target", "flow_guided_target", "difference", "loss", "describe"]
