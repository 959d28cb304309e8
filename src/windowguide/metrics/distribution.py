"""Distances between sets of features (FD, KID), the Inception Score, and k-NN precision/recall."""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from ..errors import WindowguideError


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of [N, D] features, in float64; covariance with 1/(N-1)."""
    f = features.double().cpu().numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise WindowguideError(f"features must be [N >= 2, D], got shape {tuple(f.shape)}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a, b) -> float:
    """FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between the Gaussians fitted to two
    feature sets (each [N, D] features or a (mean, cov) pair).

    tr (S_a S_b)^(1/2) is computed as sum_i sqrt(lambda_i(S_a^(1/2) S_b S_a^(1/2))): the same eigenvalues
    as those of S_a S_b, but of a symmetric PSD matrix, so a symmetric eigensolver applies and tiny
    negative round-off eigenvalues are clipped to 0 (no complex parts, no sqrtm of a singular product)."""
    mu1, s1 = a if isinstance(a, tuple) else gaussian_stats(a)
    mu2, s2 = b if isinstance(b, tuple) else gaussian_stats(b)
    mu1, s1, mu2, s2 = (np.asarray(v, np.float64) for v in (mu1, s1, mu2, s2))
    if not all(np.isfinite(v).all() for v in (mu1, s1, mu2, s2)):
        raise WindowguideError("Frechet distance of statistics with a NaN or inf")
    lam, q = linalg.eigh((s1 + s1.T) / 2)
    root1 = (q * np.sqrt(lam.clip(min=0))) @ q.T
    middle = root1 @ s2 @ root1
    tr_covmean = np.sqrt(linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def inception_score(probs: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))) on [N, K] class probabilities (one split)."""
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return float((p * (p.log() - marginal.log())).sum(1).mean().exp())


def inception_score_splits(probs: torch.Tensor, splits: int = 10, shuffle: bool = True,
                           seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of the IS over ``splits`` chunks, torch-fidelity's protocol (``isc_features_to_metric``):
    the samples shuffled by ``np.random.RandomState(2020).permutation(N)``, then chunk i = samples
    [i N // splits, (i + 1) N // splits); std with 1/n. Without the shuffle a set ordered by class
    (e.g. seed order with class = seed mod K sorted) gives every chunk few classes and a low IS.
    One split is the IS of all samples."""
    n = len(probs)
    if not 1 <= splits <= n:
        raise WindowguideError(f"Inception Score with {splits} splits needs at least that many samples, got {n}")
    if shuffle:
        probs = probs[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    scores = np.array([inception_score(probs[i * n // splits:(i + 1) * n // splits]) for i in range(splits)])
    return float(scores.mean()), float(scores.std())


def kid_subsets(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, size: int = 1000,
                seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over ``subsets`` random subsets of ``size`` (capped by the
    smaller set) drawn without replacement from each set: torch-fidelity's KID protocol (100 x 1000),
    with a seeded generator so the number is reproducible."""
    m = min(size, len(a), len(b))
    if m < 2:
        raise WindowguideError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    gen = torch.Generator().manual_seed(seed)
    vals = np.array([kernel_inception_distance(a[torch.randperm(len(a), generator=gen)[:m]],
                                               b[torch.randperm(len(b), generator=gen)[:m]]) for _ in range(subsets)])
    return float(vals.mean()), float(vals.std())


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018)."""
    a, b = a.double(), b.double()
    d = a.shape[1]
    kxx, kyy, kxy = [(u @ v.T / d + 1) ** 3 for u, v in ((a, a), (b, b), (a, b))]
    m, n = a.shape[0], b.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def _radii(f: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded);
    in row chunks so that 50k points need 50k x chunk distances at a time, not 50k^2."""
    return torch.cat([torch.cdist(f[i:i + chunk], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls, k = 3 as in
    torch-fidelity. precision = share of fake points inside some real ball |f - r| <= radius_k(r);
    recall = share of real points inside some fake ball. ``real_radii``: the real set's radius_k,
    computed once (``reference_radii``) when one reference meets many sets."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise WindowguideError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} real and {len(fake)} generated")

    def covered(points, centres, radii=None):
        radii = (_radii(centres, k, chunk) if radii is None else radii.double())[None]
        inside = [(torch.cdist(points[i:i + chunk], centres) <= radii).any(1) for i in range(0, len(points), chunk)]
        return torch.cat(inside).double().mean().item()

    return covered(fake, real, real_radii), covered(real, fake)


def reference_radii(real: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """radius_k of every real point (precision's balls), to pass to ``precision_recall`` again and again."""
    return _radii(real.double(), k, chunk)
