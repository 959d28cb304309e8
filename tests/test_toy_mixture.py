"""The toys' ground truth checked against numerical integration and finite differences."""
import math

import pytest
import torch

from windowguide.toy.metrics import evaluate, outlier_thresholds
from windowguide.toy.mixture import fractal_tree, interleaved_trees


@pytest.fixture(scope="module")
def gmm():
    return fractal_tree(depth=3, class_level=1, width_ratio=0.15)


def grid(gmm, pad=1.5, n=500):
    lo, hi = gmm.means.min(0).values - pad, gmm.means.max(0).values + pad
    xs, ys = torch.linspace(lo[0], hi[0], n, dtype=torch.float64), torch.linspace(lo[1], hi[1], n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([gx.flatten(), gy.flatten()], 1), (xs[1] - xs[0]) * (ys[1] - ys[0])


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_density_integrates_to_one(gmm, sigma):
    pts, area = grid(gmm)
    for cls in (None, torch.zeros(len(pts), dtype=torch.long)):
        total = (gmm.log_prob(pts, sigma, cls).exp() * area).sum().item()
        assert total == pytest.approx(1.0, abs=2e-3)


def test_class_densities_mix_to_the_marginal(gmm):
    pts, _ = grid(gmm, n=60)
    mass = [gmm.weights[gmm.labels == c].sum() for c in range(gmm.num_classes)]
    mix = sum(m * gmm.log_prob(pts, 0.2, torch.full((len(pts),), c)).exp() for c, m in enumerate(mass))
    torch.testing.assert_close(mix, gmm.log_prob(pts, 0.2).exp())


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_score_is_the_gradient_of_the_log_density(gmm, sigma):
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + gmm.means.mean(0)
    cls = torch.arange(50) % 2
    h = 1e-5
    fd = torch.stack([(gmm.log_prob(x + h * e, sigma, cls) - gmm.log_prob(x - h * e, sigma, cls)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(gmm.score(x, sigma, cls), fd, rtol=1e-5, atol=1e-5)


def test_exact_denoiser_is_the_posterior_mean(gmm):
    """E[x0 | x] = ∫ x0 p(x0) N(x; x0, s^2) dx0 / ∫ p(x0) N(x; x0, s^2) dx0, integrated on a grid."""
    pts, _ = grid(gmm, pad=1.0, n=700)
    prior = gmm.log_prob(pts, 0.0).exp()
    s = 0.4
    x = torch.tensor([[0.1, 0.2], [-0.8, 0.9], [1.0, -0.3]], dtype=torch.float64)
    lik = torch.exp(-((x[:, None, :] - pts[None]) ** 2).sum(-1) / (2 * s ** 2))
    post = prior[None] * lik
    ref = (post[..., None] * pts[None]).sum(1) / post.sum(1, keepdim=True)
    torch.testing.assert_close(gmm.denoise(x, s), ref, rtol=0, atol=2e-3)


def test_metrics_of_exact_samples_and_of_collapsed_samples():
    gmm = interleaved_trees(depth=3)
    thr = outlier_thresholds(gmm, n=5000)
    gen = torch.Generator().manual_seed(1)
    cls = torch.arange(4000) % 2
    x, _ = gmm.sample(4000, gen, cls)
    good = evaluate(gmm, x, cls, thr)
    assert good["outliers"] == pytest.approx(0.01, abs=0.01)
    assert good["coverage"] == 1.0 and good["component_tv"] < 0.1
    collapsed = evaluate(gmm, gmm.means[gmm.labels == 0][:1].expand(4000, 2) * 1.0, torch.zeros(4000, dtype=torch.long), thr)
    assert collapsed["coverage"] < 0.2 and collapsed["component_tv"] > 0.8
    far = evaluate(gmm, x + 5.0, cls, thr)
    assert far["outliers"] == 1.0 and far["log_density"] < good["log_density"]
    assert math.isfinite(far["log_density"])
