"""A small CNN classifier: the feature network of the quality benchmark (FD, IS, precision/recall).

    features = mean over pixels of the last conv stage (``feature_dim`` channels),
    logits = Linear(features).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class SmallClassifier(nn.Module):
    """Three conv stages (width, 2 width, 4 width), average pooling, a linear head."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.config = dict(channels=channels, num_classes=num_classes, width=width)
        self.stages = nn.ModuleList([_block(channels, width), _block(width, 2 * width),
                                     _block(2 * width, 4 * width)])
        self.feature_dim = 4 * width
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, feature_dim] pooled activations of the last stage."""
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.avg_pool2d(x, 2))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
