import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from windowguide.windows import CONE_EPS, axis_positions, layout, window_weights


@st.composite
def layouts(draw):
    H = draw(st.integers(1, 40))
    W = draw(st.integers(1, 40))
    h = draw(st.integers(1, H))
    circular = draw(st.booleans())
    w = draw(st.integers(1, W))
    if draw(st.booleans()):
        kw = dict(stride=(draw(st.integers(1, h)), draw(st.integers(1, w))))
    else:
        hmin = 1 if h == H else max(2, math.ceil(H / h))
        nh = draw(st.integers(hmin, min(hmin + 4, H - h + 1)))     # at most the distinct positions
        nmin = math.ceil(W / w) if circular else (1 if w == W else max(2, math.ceil(W / w)))
        nw = draw(st.integers(nmin, min(nmin + 4, W if circular else W - w + 1)))
        kw = dict(windows_per_side=(nh, nw))
    return layout(H, W, (h, w), circular=circular, **kw)


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_every_pixel_covered_and_last_window_flush(lay):
    assert (lay.count() >= 1).all()
    assert max(lay.tops) + lay.window[0] == lay.height
    if not lay.circular:
        assert max(lay.lefts) + lay.window[1] == lay.width


@settings(max_examples=150, deadline=None)
@given(layouts(), st.sampled_from(["uniform", "cone", "gaussian"]), st.integers(1, 3))
def test_fold_of_crop_is_identity(lay, weighting, n):
    x = torch.randn(n, 2, lay.height, lay.width, dtype=torch.float64)
    crops = lay.crop(x)
    assert crops.shape == (n * lay.n, 2, *lay.window)
    torch.testing.assert_close(lay.fold(crops, weighting), x, rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(layouts(), st.sampled_from(["uniform", "cone", "gaussian"]))
def test_weights_normalised_and_positive(lay, weighting):
    ones = torch.ones(lay.n, 1, *lay.window, dtype=torch.float64)
    torch.testing.assert_close(lay.fold(ones, weighting), torch.ones(1, 1, lay.height, lay.width, dtype=torch.float64))
    assert (lay.total_weight(weighting, dtype=torch.float64) > 0).all()


def test_crop_matches_brute_force_slices_including_wrap():
    x = torch.arange(2 * 1 * 5 * 9, dtype=torch.float32).view(2, 1, 5, 9)
    lay = layout(5, 9, (3, 4), stride=(2, 3), circular=True)
    crops = lay.crop(x).view(2, lay.n, 1, 3, 4)
    for k, (t, l) in enumerate(lay.positions):
        cols = [(l + j) % 9 for j in range(4)]
        torch.testing.assert_close(crops[:, k], x[:, :, t:t + 3][..., cols])
    assert lay.lefts == (0, 3, 6)  # window at 6 wraps onto column 0


def test_mswg_mask_64_40_two_windows_is_central_cross():
    lay = layout(64, 64, 40, windows_per_side=2)
    assert lay.tops == lay.lefts == (0, 24)
    mask = lay.overlap_mask()
    assert mask.mean().item() == 0.4375
    band = torch.zeros(64, dtype=torch.bool)
    band[24:40] = True
    expected = band[:, None] | band[None, :]
    assert torch.equal(mask.bool(), expected)


def test_official_stride_when_it_divides_and_flush_otherwise():
    assert axis_positions(64, 40, n=2) == (0, 24)
    assert axis_positions(32, 20, n=3) == (0, 6, 12)
    assert axis_positions(65, 40, n=3) == (0, 12, 25)  # official: 0, 12, 24 leaves column 64 uncovered
    assert axis_positions(100, 64, stride=8)[-1] == 36


def test_cone_weights_centred_with_epsilon():
    m = window_weights("cone", 5, 5, dtype=torch.float64)
    assert m[2, 2] == pytest.approx(1 + CONE_EPS)
    assert m[0, 0] == pytest.approx(CONE_EPS) and m[4, 4] == pytest.approx(CONE_EPS)
    torch.testing.assert_close(m, m.flip(0)) and torch.testing.assert_close(m, m.flip(1))
    # even size: the centre lies between pixels, (size - 1) / 2, so the map is still symmetric
    m = window_weights("cone", 4, 4, dtype=torch.float64)
    torch.testing.assert_close(m, m.flip(0).flip(1))
    assert m[0, 0] == pytest.approx(CONE_EPS)
    # the paper's formula w = 1 - d / (sqrt(2) c) at one interior point
    assert m[1, 2].item() == pytest.approx(1 - math.hypot(0.5, 0.5) / (math.sqrt(2) * 1.5) + CONE_EPS)


def test_gaussian_weights_match_mixture_of_diffusers_formula():
    h, w = 8, 12
    m = window_weights("gaussian", h, w, dtype=torch.float64)
    var = 0.01  # diffusers' mixture-of-diffusers tiling: exp(-(x - mid)^2 / size^2 / (2 var))
    ref = torch.tensor([[math.exp(-((i - (h - 1) / 2) ** 2) / h ** 2 / (2 * var)) *
                         math.exp(-((j - (w - 1) / 2) ** 2) / w ** 2 / (2 * var)) for j in range(w)] for i in range(h)],
                       dtype=torch.float64)
    torch.testing.assert_close(m, ref)


@pytest.mark.parametrize("kwargs, match", [
    (dict(height=32, width=32, window=40, windows_per_side=2), "larger than the image"),
    (dict(height=32, width=32, window=16, stride=20), "stride 20"),
    (dict(height=32, width=32, window=10, windows_per_side=2), "cannot cover"),
    (dict(height=32, width=32, window=16), "exactly one"),
    (dict(height=32, width=32, window=0, windows_per_side=2), "positive integers"),
    (dict(height=8, width=8, window=4, windows_per_side=1), "cannot cover"),
])
def test_bad_layouts_are_rejected_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layout(**kwargs)


def test_fold_rejects_mismatched_windows():
    lay = layout(16, 16, 8, windows_per_side=2)
    with pytest.raises(ValueError, match="do not fit"):
        lay.fold(torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        lay.crop(torch.zeros(1, 1, 16, 15))
