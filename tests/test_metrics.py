import itertools
import math

import numpy as np
import torch

from windowguide import metrics


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    # FD(N(m1, diag a), N(m2, diag b)) = |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expect = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert math.isclose(metrics.frechet_distance((m1, np.diag(a)), (m2, np.diag(b))), expect, rel_tol=1e-9)


def test_frechet_distance_of_samples_is_zero_on_itself_and_rotation_invariant():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g)
    h = torch.randn(400, 6, generator=g) * 2 + 1
    assert abs(metrics.frechet_distance(f, f)) < 1e-6
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert math.isclose(metrics.frechet_distance(f.double() @ q, h.double() @ q), metrics.frechet_distance(f, h),
                        rel_tol=1e-6)


def test_inception_score_extremes():
    assert math.isclose(metrics.inception_score(torch.full((10, 4), 0.25)), 1.0, rel_tol=1e-9)
    onehot = torch.eye(5).repeat(3, 1)
    assert math.isclose(metrics.inception_score(onehot), 5.0, rel_tol=1e-6)


def test_precision_recall_against_brute_force():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(40, 3, generator=g), torch.randn(30, 3, generator=g) * 1.5 + 0.7
    k = 3

    def radius(p, pts):
        return sorted(math.dist(p, q) for q in pts)[k]     # index 0 is the point itself

    R, F = real.double().tolist(), fake.double().tolist()
    rr, rf = [radius(p, R) for p in R], [radius(p, F) for p in F]
    prec = sum(any(math.dist(f, r) <= rad for r, rad in zip(R, rr)) for f in F) / len(F)
    rec = sum(any(math.dist(r, f) <= rad for f, rad in zip(F, rf)) for r in R) / len(R)
    assert metrics.precision_recall(real, fake, k=3) == (prec, rec)
    assert 0 < prec < 1 and 0 < rec < 1


def test_kid_against_a_loop():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(7, 4, generator=g), torch.randn(6, 4, generator=g) + 0.5
    k = lambda x, y: (float(x.double() @ y.double()) / 4 + 1) ** 3
    xx = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(7), 2)) / 42
    yy = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(6), 2)) / 30
    xy = sum(k(a[i], b[j]) for i in range(7) for j in range(6)) / 42
    assert math.isclose(metrics.kernel_inception_distance(a, b), xx + yy - 2 * xy, rel_tol=1e-9)


def test_pixel_statistics():
    x = torch.zeros(2, 3, 4, 4) - 1
    x[0, :, :, 0] = 1                                # one white column on the left: asymmetric
    # |x - flip x| = 2 on columns 0 and 3 (of 4): mean 1, halved to [0, 1] units
    assert metrics.asymmetry(x).tolist() == [0.5, 0.0]
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert metrics.saturation(red).item() == 1.0
    assert metrics.saturation(torch.zeros(1, 3, 2, 2)).item() == 0.0
    assert metrics.contrast(torch.zeros(1, 1, 2, 2)).item() == 0.0
    assert math.isclose(metrics.contrast(torch.tensor([-1.0, 1, -1, 1]).view(1, 1, 2, 2)).item(), 0.57735, rel_tol=1e-4)
    assert metrics.clipped_fraction(torch.tensor([[[[1.5, 0.2], [-1.01, 1.0]]]])).item() == 0.5
