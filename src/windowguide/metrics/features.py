"""FD, KID, IS and precision/recall of generated images on a bundled classifier's features, with a
protocol that does not reward memorisation.

- The feature network (``NAME-classifier``) is trained on the dataset's 'features' split, never on
  the reference images (a network that has seen the reference maps it to tight clusters, so samples
  that copy training images score better than new real images).
- The reference statistics are the diffusion model's training images ('train').
- The floor: ``n`` real images the diffusion model was not compared against, measured the same way
  at the same count n and with the same class counts as the samples (FD is biased upward at small n,
  and a classifier's feature mean moves with the class proportions, so only equal counts compare).
  ``mirror`` and ``scenes`` take them from the 'test' split (scenes: one crop per scene, so they are
  independent like the samples); ``digits`` (1797 images in all, its test split is the feature split)
  holds n class-balanced 'train' images out of the reference instead.
"""
from __future__ import annotations

import torch

from ..errors import WindowguideError
from .evaluate import as_reference, compute, measure
from .networks import ClassifierFeatures
from .pixels import asymmetry, clipped_fraction, contrast, saturation


def balanced(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of n images with the class counts of the samples (``--class all``: seed mod K gives class
    k to n // K + (k < n % K) of n seeds), the first ones of each class in order. Class proportions move
    the feature mean of a classifier a lot: a floor with other proportions than the samples' is not a floor."""
    k = int(labels.max()) + 1
    picks = []
    for c in range(k):
        want = n // k + (c < n % k)
        have = (labels == c).nonzero().flatten()
        if len(have) < want:
            raise WindowguideError(f"only {len(have)} images of class {c} for a floor of {n}")
        picks.append(have[:want])
    return torch.cat(picks).sort().values


class Evaluator:
    """Features of the reference, computed once; ``__call__`` measures a set of generated images and
    ``floor()`` the held-out real images at the same count. Built on ``metrics.evaluate`` (the machinery
    of ``windowguide metrics``) with the bundled classifier in the Inception's role, one KID estimate
    on all samples and one IS split (the sample counts here are hundreds, not 50k)."""

    METRICS = ["fid", "kid", "is", "pr"]

    def __init__(self, dataset: str, floor_count: int = 300, device="cpu"):
        from ..data import load
        self.net = ClassifierFeatures(f"{dataset}-classifier", device)
        self.names = {"inception": self.net.name}
        self.info = self.net.info
        train = load(dataset, "train")
        if dataset == "digits":
            pick = balanced(train.labels, floor_count)
            rest = torch.ones(len(train), dtype=torch.bool)
            rest[pick] = False
            self.floor_images, reference = train.images[pick], train.images[rest]
        else:   # scenes' test split holds 4 crops per scene: one per scene keeps the floor's images independent
            test = load(dataset, "test")
            step = 4 if dataset == "scenes" else 1
            pool_images, pool_labels = test.images[::step], test.labels[::step]
            self.floor_images, reference = pool_images[balanced(pool_labels, floor_count)], train.images
        self.ref = as_reference(self._measure(reference, ["fid", "kid", "pr"]), self.names)
        self.real = self.ref["inception"]["features"]
        self.dataset = dataset
        self.protocol = (f"features: {dataset}-classifier trained on the 'features' split; reference: "
                         f"{len(reference)} 'train' images; floor: {len(self.floor_images)} held-out real images")

    def _measure(self, x: torch.Tensor, metrics: list[str], batch: int = 500):
        batches = ((torch.arange(i, min(i + batch, len(x))), x[i:i + batch]) for i in range(0, len(x), batch))
        return measure(batches, {"inception": self.net}, metrics, float_images=True)

    def __call__(self, x: torch.Tensor) -> dict:
        m = compute(self.METRICS, self._measure(x, self.METRICS), self.ref, self.names, kid_subsets_n=0, is_splits=1)
        out = dict(fd=m["fid"], kid=m["kid"], inception_score=m["is"], precision=m["precision"], recall=m["recall"],
                   contrast=contrast(x).mean().item(), saturation=saturation(x).mean().item(),
                   clipped=clipped_fraction(x).mean().item())
        if self.dataset == "mirror":
            out["asymmetry"] = asymmetry(x.clamp(-1, 1)).mean().item()
        return out

    def floor(self, n: int | None = None) -> dict:
        """The metrics of n held-out real images (all of them by default): what a perfect sampler scores."""
        return self(self.floor_images[:n])


__all__ = ["Evaluator", "balanced"]
