"""Feature statistics of an image set, accumulated batch by batch, in float64, across ranks.

FD needs only n, sum f and sum f f^T (EDM2's accumulation: mu = S1 / n, Sigma = (S2 - n mu mu^T) / (n - 1));
KID and precision/recall need the features themselves and the Inception Score the class
probabilities, so those are kept only when asked for. Each kept row carries the index of its image,
so the gathered rows are in image order whatever the number of ranks.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..errors import WindowguideError


class FeatureStats:
    """Running statistics of one feature network over a set of images."""

    def __init__(self, dim: int, keep_features: bool = False, classes: int = 0):
        """``classes`` > 0 keeps the [N, classes] class probabilities (for the Inception Score)."""
        self.dim = dim
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.keep_features, self.classes = keep_features, classes
        self._index, self._features, self._probs = [], [], []
        self.features: torch.Tensor | None = None
        self.probs: torch.Tensor | None = None

    def add(self, features: torch.Tensor, index: torch.Tensor | None = None, probs: torch.Tensor | None = None):
        """Add a batch of [B, D] features (and [B, K] probabilities) of the images numbered ``index``."""
        f = features.detach().to("cpu", torch.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise WindowguideError(f"features of shape {tuple(f.shape)}; expected [B, {self.dim}]")
        if not torch.isfinite(f).all():
            raise WindowguideError("the feature network returned non-finite features (a NaN or inf in the images?)")
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f
        index = torch.arange(self.count - f.shape[0], self.count) if index is None else index.cpu().long()
        if self.keep_features or self.classes:
            self._index.append(index)
        if self.keep_features:
            self._features.append(features.detach().float().cpu())
        if self.classes:
            if probs is None or probs.shape != (f.shape[0], self.classes):
                raise WindowguideError(f"class probabilities of shape {None if probs is None else tuple(probs.shape)}; "
                                       f"expected [{f.shape[0]}, {self.classes}] (the Inception Score needs them)")
            self._probs.append(probs.detach().double().cpu())
        return self

    def reduce(self) -> "FeatureStats":
        """Sum the statistics over ranks and gather the kept rows in image order (every rank gets all)."""
        self.count = int(distributed.all_reduce_sum(torch.tensor([self.count], dtype=torch.float64)).item())
        self.total = distributed.all_reduce_sum(self.total)
        self.outer = distributed.all_reduce_sum(self.outer)
        return self.finish(distributed.gather_rows)

    def finish(self, gather=lambda t: t) -> "FeatureStats":
        """The kept rows as tensors in image order (``gather`` joins the ranks' rows)."""
        if self.keep_features or self.classes:
            order = gather(self._cat(self._index, None, torch.long)).argsort()
            if self.keep_features:
                self.features = gather(self._cat(self._features, self.dim, torch.float32))[order]
            if self.classes:
                self.probs = gather(self._cat(self._probs, self.classes, torch.float64))[order]
        return self

    @staticmethod
    def _cat(parts, dim, dtype):
        if parts:
            return torch.cat(parts)
        return torch.zeros((0,) if dim is None else (0, dim), dtype=dtype)

    @property
    def mu(self) -> np.ndarray:
        return (self.total / self.count).numpy()

    @property
    def sigma(self) -> np.ndarray:
        if self.count < 2:
            raise WindowguideError(f"feature statistics need at least 2 images, got {self.count}")
        mu = self.total / self.count
        return ((self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)).numpy()


__all__ = ["FeatureStats"]
