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
from .distribution import reference_radii
from .evaluate import as_reference, compute, measure
from .networks import ClassifierFeatures
from .pixels import asymmetry, clipped_fraction, contrast, saturation


def balanced(labels: torch.Tensor, n: int, sets: int = 1) -> torch.Tensor:
    """Indices of ``sets`` disjoint groups of n images, each with the class counts of n samples
    (``--class all``: seed mod K gives class k to n // K + (k < n % K) of n seeds), group after group;
    group j takes the j-th run of each class's images in order (group 0: the first ones). Class
    proportions move the feature mean of a classifier a lot: a floor with other proportions than the
    samples' is not a floor."""
    k = int(labels.max()) + 1
    groups = []
    for j in range(sets):
        picks = []
        for c in range(k):
            want = n // k + (c < n % k)
            have = (labels == c).nonzero().flatten()
            if len(have) < want * (j + 1):
                raise WindowguideError(f"only {len(have)} images of class {c} for {sets} floor set(s) of {n}")
            picks.append(have[j * want:(j + 1) * want])
        groups.append(torch.cat(picks).sort().values)
    return torch.cat(groups)


class Evaluator:
    """Features of the reference, computed once; ``__call__`` measures a set of generated images and
    ``floor()`` the held-out real images at the same count. Built on ``metrics.evaluate`` (the machinery
    of ``windowguide metrics``) with the bundled classifier in the Inception's role, one KID estimate
    on all samples and one IS split (the sample counts here are hundreds, not 50k)."""

    METRICS = ["fid", "kid", "is", "pr"]

    def __init__(self, dataset: str, floor_count: int = 300, device="cpu", floor_sets: int = 1,
                 reference_count: int | None = None):
        """floor_sets: disjoint floor sets of floor_count images each; reference_count: the first n of
        the reference images only (all by default)."""
        from ..data import load
        self.net = ClassifierFeatures(f"{dataset}-classifier", device)
        self.names = {"inception": self.net.name}
        self.info = self.net.info
        train = load(dataset, "train")
        if dataset == "digits":
            pick = balanced(train.labels, floor_count, floor_sets)
            rest = torch.ones(len(train), dtype=torch.bool)
            rest[pick] = False
            self.floor_images, reference = train.images[pick], train.images[rest]
        else:   # scenes' test split holds 4 crops per scene: one per scene keeps the floor's images independent
            test = load(dataset, "test")
            step = 4 if dataset == "scenes" else 1
            pool_images, pool_labels = test.images[::step], test.labels[::step]
            self.floor_images, reference = pool_images[balanced(pool_labels, floor_count, floor_sets)], train.images
        reference = reference[:reference_count]
        self.ref = as_reference(self._measure(reference, ["fid", "kid", "pr"]), self.names)
        self.real = self.ref["inception"]["features"]
        self.dataset = dataset
        self.floor_count = floor_count
        self.protocol = (f"features: {dataset}-classifier trained on the 'features' split; reference: "
                         f"{len(reference)} 'train' images; floor: {len(self.floor_images)} held-out real images")

    def _measure(self, x: torch.Tensor, metrics: list[str], batch: int = 500):
        batches = ((torch.arange(i, min(i + batch, len(x))), x[i:i + batch]) for i in range(0, len(x), batch))
        return measure(batches, {"inception": self.net}, metrics, float_images=True)

    def __call__(self, x: torch.Tensor, metrics: list[str] | None = None) -> dict:
        """The figures of images x (float, [-1, 1]): FD, KID, IS, precision/recall (or only ``metrics``
        of these), contrast, saturation, clipped share and, on mirror, the asymmetry."""
        metrics = self.METRICS if metrics is None else metrics
        if "pr" in metrics and "radii" not in self.ref["inception"]:      # once, not per call
            self.ref["inception"].update(radii=reference_radii(self.real), radii_k=3)
        m = compute(metrics, self._measure(x, metrics), self.ref, self.names, kid_subsets_n=0, is_splits=1)
        names = dict(fid="fd", kid="kid", precision="precision", recall="recall")
        out = {names[k]: v for k, v in m.items() if k in names}
        if "is" in m:
            out["inception_score"] = m["is"]
        out.update(contrast=contrast(x).mean().item(), saturation=saturation(x).mean().item(),
                   clipped=clipped_fraction(x).mean().item())
        if self.dataset == "mirror":
            out["asymmetry"] = asymmetry(x.clamp(-1, 1)).mean().item()
        return out

    def floor(self, n: int | None = None, metrics: list[str] | None = None) -> dict:
        """The metrics of n held-out real images (all of them by default): what a perfect sampler scores."""
        return self(self.floor_images[:n], metrics)

    def floor_set(self, j: int, metrics: list[str] | None = None) -> dict:
        """The metrics of floor set j (``floor_sets`` disjoint sets of ``floor_count`` real images, each
        with the samples' class counts)."""
        return self(self.floor_images[j * self.floor_count:(j + 1) * self.floor_count], metrics)


__all__ = ["Evaluator", "balanced"]
