"""Metrics of 2-D samples against an exact mixture density.

- log_density: mean log p(x | c) of the samples under their true class distribution.
- outliers: fraction of samples with log p(x | c) below the class's 1st percentile of log p over true
  samples, i.e. outside the region that holds 99 % of the true mass.
- coverage: fraction of the class's components that receive at least a quarter of their expected
  share of samples (nearest component by responsibility).
- component_tv: total-variation distance between the samples' component histogram and the true
  component weights, within the class (0 = the right proportions; 1 = disjoint).
"""
from __future__ import annotations

import torch

from .mixture import GMM


def outlier_thresholds(gmm: GMM, n: int = 20000, seed: int = 12345) -> torch.Tensor:
    """Per class: the 1st percentile of log p(x | c) over n exact samples of that class."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in range(gmm.num_classes):
        cls = torch.full((n,), c)
        x, _ = gmm.sample(n, gen, cls)
        out.append(torch.quantile(gmm.log_prob(x, 0.0, cls), 0.01))
    return torch.stack(out)


def evaluate(gmm: GMM, x: torch.Tensor, cls: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """The four metrics for samples x [N, 2] with classes cls [N], averaged over classes."""
    x = x.double().reshape(-1, 2)
    logp = gmm.log_prob(x, 0.0, cls)
    logp = torch.nan_to_num(logp, nan=-1e4, neginf=-1e4)
    comp = gmm.components_of(x, cls)
    per_class = []
    for c in cls.unique().tolist():
        sel = cls == c
        members = (gmm.labels == c).nonzero().flatten()
        w = gmm.weights.double()[members]
        w = w / w.sum()
        counts = torch.bincount(comp[sel], minlength=len(gmm.weights))[members].double()
        freq = counts / counts.sum()
        per_class.append(dict(
            log_density=logp[sel].mean().item(),
            outliers=(logp[sel] < thresholds[c]).double().mean().item(),
            coverage=(counts >= 0.25 * w * sel.sum()).double().mean().item(),
            component_tv=0.5 * (freq - w).abs().sum().item(),
        ))
    return {k: sum(p[k] for p in per_class) / len(per_class) for k in per_class[0]}
