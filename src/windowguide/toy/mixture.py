"""Exact 2-D Gaussian mixtures with class labels: density, score and denoiser at every sigma.

    p_sigma(x | c) = sum_{k in c} pi_k N(x; m_k, C_k + sigma^2 I) / sum_{k in c} pi_k
    grad log p_sigma = sum_k r_k(x) (C_k + sigma^2 I)^-1 (m_k - x),   r_k the responsibilities
    D(x, sigma, c) = x + sigma^2 grad log p_sigma(x | c)             (Tweedie: the posterior mean)

``fractal_tree`` builds the recursive "tree" mixtures of the autoguidance and SGG toys: a branch is a
few elongated Gaussians along a segment; each branch splits in two, shorter and turned, ``depth``
times. Classes are subtrees (``classes`` = 2^level) or, for two interleaved trees, their index.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ..errors import WindowguideError

LOG2PI = math.log(2 * math.pi)


@dataclass
class GMM:
    means: torch.Tensor    # [K, 2]
    covs: torch.Tensor     # [K, 2, 2]
    weights: torch.Tensor  # [K], sums to 1
    labels: torch.Tensor   # [K] class of each component

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def _component_logits(self, x: torch.Tensor, sigma: torch.Tensor | float, cls: torch.Tensor | None):
        """log pi_k N(x; m_k, C_k + s^2 I), masked to the class and renormalised; also the precisions."""
        x = x.double()
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1) ** 2
        cov = self.covs.double()[None] + s2 * torch.eye(2, dtype=torch.float64)        # [N|1, K, 2, 2]
        prec = torch.linalg.inv(cov)
        diff = x[:, None, :] - self.means.double()[None]                                # [N, K, 2]
        maha = torch.einsum("nki,nkij,nkj->nk", diff, prec.expand(x.shape[0], -1, -1, -1), diff)
        logdet = torch.logdet(cov).expand(x.shape[0], -1)
        logw = self.weights.double().log()[None].expand(x.shape[0], -1)
        if cls is not None:
            member = self.labels[None, :] == cls.view(-1, 1)
            logw = torch.where(member, logw, torch.full_like(logw, -math.inf))
            logw = logw - torch.logsumexp(logw, dim=1, keepdim=True)
        return logw - 0.5 * (maha + logdet + 2 * LOG2PI), diff, prec

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0, cls: torch.Tensor | None = None):
        """log p_sigma(x | c), [N] (the unconditional mixture when cls is None)."""
        logits, _, _ = self._component_logits(x, sigma, cls)
        return torch.logsumexp(logits, dim=1)

    def score(self, x: torch.Tensor, sigma, cls: torch.Tensor | None = None) -> torch.Tensor:
        """grad_x log p_sigma(x | c), [N, 2]."""
        logits, diff, prec = self._component_logits(x, sigma, cls)
        r = torch.softmax(logits, dim=1)
        per = -torch.einsum("nkij,nkj->nki", prec.expand(x.shape[0], -1, -1, -1), diff)
        return (r[..., None] * per).sum(1)

    def denoise(self, x: torch.Tensor, sigma, cls: torch.Tensor | None = None) -> torch.Tensor:
        """The exact posterior mean E[x0 | x], x = x0 + sigma n, [N, 2]."""
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
        return x.double() + s2 * self.score(x, sigma, cls)

    def sample(self, n: int, generator: torch.Generator, cls: torch.Tensor | None = None):
        """n samples (and their classes): pick a component (within the class), then its Gaussian."""
        w = self.weights.double()
        if cls is None:
            comp = torch.multinomial(w, n, replacement=True, generator=generator)
        else:
            probs = torch.where(self.labels[None, :] == cls.view(-1, 1), w[None], torch.zeros_like(w[None]))
            comp = torch.multinomial(probs, 1, generator=generator).flatten()
        chol = torch.linalg.cholesky(self.covs.double())
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x = self.means.double()[comp] + torch.einsum("nij,nj->ni", chol[comp], z)
        return x, self.labels[comp]

    def components_of(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """Most responsible component of each sample (at sigma = 0)."""
        logits, _, _ = self._component_logits(x, 0.0, cls)
        return logits.argmax(dim=1)


def _segment_gaussians(start, angle, length, width, per_branch):
    """``per_branch`` elongated Gaussians along a segment: std length/(2 per_branch) along, width across."""
    d = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    nrm = torch.tensor([-d[1], d[0]])
    rot = torch.stack([d, nrm], dim=1)
    cov = rot @ torch.diag(torch.tensor([(length / (2 * per_branch)) ** 2, width ** 2], dtype=torch.float64)) @ rot.T
    return [(start + d * length * (i + 0.5) / per_branch, cov) for i in range(per_branch)]


def fractal_tree(depth: int, class_level: int = 1, spread: float = 0.5, shrink: float = 0.72,
                 per_branch: int = 2, width_ratio: float = 0.06, root=(0.0, -1.4), angle: float = math.pi / 2,
                 length: float = 1.0, first_depth: int | None = None) -> GMM:
    """A recursive tree mixture. Branches at recursion level 0..depth; each splits into two turned by
    +-spread and shortened by ``shrink``. Components live on branches at level >= ``first_depth``
    (default ``class_level``); a component's class is its ancestor at ``class_level`` (2^class_level
    classes). Weights: equal per component."""
    first = class_level if first_depth is None else first_depth
    if not 0 <= class_level <= first <= depth:
        raise WindowguideError(f"need 0 <= class_level ({class_level}) <= first_depth ({first}) <= depth ({depth})")
    comps = []

    def grow(start, ang, ln, level, cls):
        if level >= first:
            comps.extend((m, c, cls) for m, c in _segment_gaussians(start, ang, ln, ln * width_ratio, per_branch))
        if level == depth:
            return
        end = start + ln * torch.tensor([math.cos(ang), math.sin(ang)], dtype=torch.float64)
        for side, turn in enumerate((spread, -spread)):
            child_cls = cls * 2 + side if level < class_level else cls
            grow(end, ang + turn, ln * shrink, level + 1, child_cls)
    grow(torch.tensor(root, dtype=torch.float64), angle, length, 0, 0)
    means = torch.stack([m for m, _, _ in comps])
    covs = torch.stack([c for _, c, _ in comps])
    labels = torch.tensor([k for _, _, k in comps])
    return GMM(means, covs, torch.full((len(comps),), 1.0 / len(comps), dtype=torch.float64), labels)


def class_fan(classes: int, depth: int, fan: float = 0.9 * math.pi, spread: float = 0.45, shrink: float = 0.7,
              per_branch: int = 2, width_ratio: float = 0.12, root=(0.0, -1.0), length: float = 1.0) -> GMM:
    """The SGG paper's recursive toy with class count and in-class depth set apart: ``classes`` branches
    fan out from ``root`` over the angle ``fan``; each class is a binary tree of ``depth`` further
    levels on its branch (each split turned by +-spread, shortened by ``shrink``). Few classes with
    deep trees make the condition blurry; many shallow classes make it sharp. Equal weights."""
    if not (isinstance(classes, int) and classes >= 1 and isinstance(depth, int) and depth >= 0):
        raise WindowguideError(f"need classes >= 1 and depth >= 0, got {classes}, {depth}")
    comps = []

    def grow(start, ang, ln, level, cls):
        comps.extend((m, c, cls) for m, c in _segment_gaussians(start, ang, ln, ln * width_ratio, per_branch))
        if level == depth:
            return
        end = start + ln * torch.tensor([math.cos(ang), math.sin(ang)], dtype=torch.float64)
        for turn in (spread, -spread):
            grow(end, ang + turn, ln * shrink, level + 1, cls)
    angles = [math.pi / 2] if classes == 1 else [math.pi / 2 - fan / 2 + fan * k / (classes - 1) for k in range(classes)]
    for k, ang in enumerate(angles):
        grow(torch.tensor(root, dtype=torch.float64), ang, length, 0, k)
    means = torch.stack([m for m, _, _ in comps])
    covs = torch.stack([c for _, c, _ in comps])
    labels = torch.tensor([k for _, _, k in comps])
    return GMM(means, covs, torch.full((len(comps),), 1.0 / len(comps), dtype=torch.float64), labels)


def interleaved_trees(depth: int = 5, spreads=(0.45, 0.62), **kwargs) -> GMM:
    """Two classes, two trees from one root with different branching angles: they share the trunk
    region and interleave in the crown (the autoguidance paper's two-class tree, in spirit)."""
    parts = [fractal_tree(depth, class_level=0, first_depth=1, spread=s, **kwargs) for s in spreads]
    means = torch.cat([p.means for p in parts])
    covs = torch.cat([p.covs for p in parts])
    labels = torch.cat([torch.full((len(p.means),), i) for i, p in enumerate(parts)])
    return GMM(means, covs, torch.full((len(means),), 1.0 / len(means), dtype=torch.float64), labels)
