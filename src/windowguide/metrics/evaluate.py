"""From images to metrics: feature statistics of a set of images (on this rank's share, reduced over
ranks) and the metrics against a reference. The one path used by ``windowguide metrics``,
``--make-ref`` and the quality benchmarks' ``Evaluator``.

Metrics (the role of the network in brackets):
- fid [inception], fd_dinov2 [dinov2]: FD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2));
- kid [inception]: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, mean (and std) over 100 random
  subsets of 1000 per set (torch-fidelity's protocol; ``kid_subsets=0``: one estimate on all samples);
- is [inception]: exp(E KL(p(y|x) || p(y))), mean and std over 10 splits after torch-fidelity's shuffle;
- pr [inception]: improved precision and recall with k = 3 nearest-neighbour balls.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..errors import WindowguideError
from .distribution import frechet_distance, inception_score_splits, kid_subsets, kernel_inception_distance, precision_recall
from .networks import ROLE, classes_of, rgb
from .stats import FeatureStats


def needs(metrics: list[str], role: str) -> dict:
    """What a role's statistics must keep for these metrics: the features (KID, PR), the class
    probabilities (IS)."""
    mine = [m for m in metrics if ROLE[m] == role]
    return dict(keep_features=any(m in ("kid", "pr") for m in mine), probs="is" in mine)


@torch.no_grad()
def measure(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], nets: dict, metrics: list[str],
            float_images: bool = False, reduce: bool = True) -> dict[str, FeatureStats]:
    """{role: FeatureStats} of the batches (index, images) this rank reads, reduced over all ranks
    (``reduce=False``: this rank's own, e.g. a reference every rank computes whole).
    Images are NCHW uint8, or float in [-1, 1] with ``float_images`` (bundled classifiers only)."""
    stats = {}
    for role, net in nets.items():
        want = needs(metrics, role)
        stats[role] = FeatureStats(net.feature_dim, want["keep_features"], classes_of(net) if want["probs"] else 0)
    for index, images in batches:
        for role, net in nets.items():
            if float_images:
                f = net.features_of(images)
            else:
                f = net.features(images if hasattr(net, "channels") else rgb(images))
            stats[role].add(f, index, net.probs(images, f) if stats[role].classes else None)
    return {role: s.reduce() if reduce else s.finish() for role, s in stats.items()}


def compute(metrics: list[str], gen: dict[str, FeatureStats], ref: dict[str, dict], names: dict[str, str],
            kid_subsets_n: int = 100, kid_size: int = 1000, is_splits: int = 10, pr_k: int = 3) -> dict:
    """The metrics of generated statistics ``gen`` against reference ``ref`` (``load_reference``'s
    form); ``names``: role -> network name, checked against the reference's."""
    out = {}
    for m in metrics:
        role = ROLE[m]
        g = gen[role]
        if m == "is":
            out["is"], out["is_std"] = inception_score_splits(g.probs, is_splits)
            continue
        r = _ref(ref, role, names[role], m)
        if m in ("fid", "fd_dinov2"):
            out[m] = frechet_distance((r["mu"], r["sigma"]), (g.mu, g.sigma))
        elif r["features"] is None:
            raise WindowguideError(f"{m} needs the reference's features; this reference holds only mean and "
                                   f"covariance (make one with windowguide metrics --make-ref --metrics {m})")
        elif m == "kid":
            if kid_subsets_n:
                out["kid"], out["kid_std"] = kid_subsets(r["features"], g.features, kid_subsets_n, kid_size)
            else:
                out["kid"] = kernel_inception_distance(r["features"], g.features)
        else:
            radii = r.get("radii") if r.get("radii_k") == pr_k else None
            out["precision"], out["recall"] = precision_recall(r["features"], g.features, k=pr_k, real_radii=radii)
    return out


def _ref(ref: dict, role: str, name: str, metric: str) -> dict:
    if role not in ref:
        raise WindowguideError(f"{metric} needs reference statistics of the {role} network; the reference "
                               f"holds {sorted(ref) or 'none'}")
    if ref[role]["network"] != name:
        raise WindowguideError(f"the reference's {role} statistics come from {ref[role]['network']!r}, the images' "
                               f"from {name!r}: they do not compare")
    return ref[role]


def as_reference(stats: dict[str, FeatureStats], names: dict[str, str]) -> dict[str, dict]:
    """Statistics in ``load_reference``'s form (a reference computed in memory)."""
    return {role: dict(network=names[role], count=s.count, mu=s.mu, sigma=s.sigma, features=s.features)
            for role, s in stats.items()}


__all__ = ["needs", "measure", "compute", "as_reference"]
