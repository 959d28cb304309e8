"""The feature networks behind the metrics, one interface: ``features(images_u8)`` -> [N, D] and,
for the Inception Score, ``probs(images_u8, features)`` -> [N, K]; images are NCHW uint8.

- ``inception``: the FID Inception-v3 (``metrics.inception``), for FID, KID, IS, precision/recall;
- ``dinov2``: DINOv2 ViT-L/14 (``metrics.dinov2``), for FD-DINOv2;
- ``NAME-classifier``: a bundled classifier, in the Inception's role on the bundled datasets.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import WindowguideError

METRICS = ("fid", "fd_dinov2", "kid", "is", "pr")
ROLE = {"fid": "inception", "kid": "inception", "is": "inception", "pr": "inception", "fd_dinov2": "dinov2"}


class ClassifierFeatures(nn.Module):
    """A bundled classifier as a feature network: images at the model's own size, scaled to [-1, 1]."""

    def __init__(self, name: str, device="cpu"):
        super().__init__()
        from ..models.checkpoint import load_model
        self.classifier, self.info = load_model(name, "classifier", device)
        self.name = name
        self.feature_dim = self.classifier.feature_dim
        self.channels = self.classifier.config["channels"]

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """Features of float images in [-1, 1] (values outside are clipped, as a PNG would)."""
        return self.classifier.features(x.clamp(-1, 1).to(self.classifier.head.weight.device))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            raise WindowguideError(f"{self.name} takes {self.channels}-channel images, got {images.shape[1]}")
        return self.features_of(images.float() / 127.5 - 1)

    def probs(self, images: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        return self.classifier.head(features).softmax(1)

    @property
    def classes(self) -> int:
        return self.classifier.head.out_features


def rgb(images: torch.Tensor) -> torch.Tensor:
    """NCHW uint8 with 3 channels (grey images repeated), as the ImageNet networks take them."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise WindowguideError(f"images with {images.shape[1]} channels; accepted: 1 (grey) or 3 (RGB)")
    return images


def parse_metrics(text: str) -> list[str]:
    """'fid,kid' -> ['fid', 'kid'] (checked, in the order given, each once)."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise WindowguideError(f"--metrics {text!r}: accepted: a comma-separated list of {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def load_networks(metrics: list[str], features: str = "inception", inception: str | None = None,
                  dinov2: str | None = None, device="cpu", protocol: str = "pytorch-fid") -> dict[str, nn.Module]:
    """{role: network} for the metrics asked; ``features`` names the network in the Inception's role
    ('inception' or a bundled classifier such as 'digits-classifier'); ``protocol``: how images reach
    the Inception and DINOv2 ('pytorch-fid' or 'edm2', see ``metrics.inception``)."""
    nets = {}
    roles = {ROLE[m] for m in metrics}
    if "inception" in roles:
        if features == "inception":
            from .inception import load_inception
            nets["inception"] = load_inception(inception, device, protocol)
        else:
            nets["inception"] = ClassifierFeatures(features, device)
    if "dinov2" in roles:
        from .dinov2 import load_dinov2
        nets["dinov2"] = load_dinov2(dinov2, device, protocol)
    return nets


def classes_of(net: nn.Module) -> int:
    return net.classes if isinstance(net, ClassifierFeatures) else net.fc.out_features


__all__ = ["METRICS", "ROLE", "ClassifierFeatures", "rgb", "parse_metrics", "load_networks", "classes_of"]
