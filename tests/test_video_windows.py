"""Windows in N dimensions (windows.layout_nd) for video (T, H, W): coverage, counts and masks against a
brute-force loop; the 2-D case equals Layout; SWG / M-SWG with crops in time, space or both against a
brute-force sum; temporal fusion with one window equals no windowing; SA over D axes is the reference clip tiled."""
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

import windowguide as wg
from windowguide.errors import WindowguideError
from windowguide.fusion import style_aligned_noise
from windowguide.video import long_video
from windowguide.windows import layout, layout_nd, window_weights


class GlobalNet(wg.Denoiser):
    """D = x / (1 + sigma^2) + 0.1 mean(x): depends on the whole clip, so crops change it."""
    multiple, null_cond = 1, None

    def forward(self, x, sigma, cond):
        s = sigma.view(-1, *[1] * (x.dim() - 1))
        return x / (1 + s ** 2) + 0.1 * x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(2, 9), st.integers(2, 9), st.data())
def test_3d_counts_and_masks_equal_a_brute_force_loop(T, H, W, data):
    win = (data.draw(st.integers(1, T)), data.draw(st.integers(1, H)), data.draw(st.integers(1, W)))
    stride = tuple(data.draw(st.integers(1, k)) for k in win)
    circ = data.draw(st.booleans())
    lay = layout_nd((T, H, W), win, stride=stride, circular=(circ, False, False))
    count = torch.zeros(T, H, W, dtype=torch.long)
    for p in lay.positions:
        for dt, dh, dw in itertools.product(*map(range, win)):
            count[(p[0] + dt) % T, p[1] + dh, p[2] + dw] += 1
    assert torch.equal(lay.count(), count) and bool((count > 0).all())
    assert torch.equal(lay.overlap_mask(), (count > 1).float())
    x = torch.randn(2, 3, T, H, W)
    torch.testing.assert_close(lay.fold(lay.crop(x), "cone"), x)
    for k, p in enumerate(lay.positions):                        # each crop is the video at its place
        idx = [torch.arange(p[a], p[a] + win[a]) % (T, H, W)[a] for a in range(3)]
        assert torch.equal(lay.crop(x)[k], x[0][:, idx[0]][:, :, idx[1]][:, :, :, idx[2]])


def test_2d_layout_nd_is_layout_and_weights_match():
    a, b = layout(12, 20, (8, 8), stride=4), layout_nd((12, 20), 8, stride=4)
    x = torch.randn(2, 3, 12, 20)
    assert a.positions == b.positions and torch.equal(a.crop(x), b.crop(x))
    for w in ("uniform", "cone", "gaussian"):
        assert torch.equal(a.fold(a.crop(x), w), b.fold(b.crop(x), w))
    assert torch.equal(layout_nd((12, 20), (8, 8), stride=4).weights("cone"), window_weights("cone", 8, 8))
    with pytest.raises(WindowguideError, match="one value per axis"):
        layout_nd((4, 8, 8), 4, stride=(2, 2))


@pytest.mark.parametrize("window", [(6, 8, 8), (8, 6, 6), (5, 6, 6)])
def test_video_swg_and_mswg_equal_a_brute_force_sum(window):
    x, sigma = torch.randn(2, 3, 8, 8, 8), torch.tensor([0.7, 2.0])
    net = GlobalNet()
    lay = layout_nd((8, 8, 8), window, windows_per_side=2)
    pos = net(x, sigma, None)
    neg = torch.zeros_like(x)
    cnt = torch.zeros(8, 8, 8)
    for p in lay.positions:
        sl = (slice(None), slice(None)) + tuple(slice(s, s + k) for s, k in zip(p, window))
        neg[sl] += net(x[sl], sigma, None)
        cnt[sl[2:]] += 1
    neg = neg / cnt
    for masked in (False, True):
        term = wg.SWG(0.5, window=window, masked=masked)
        want = pos + 0.5 * ((cnt > 1).float() if masked else 1) * (pos - neg)
        torch.testing.assert_close(wg.guided(net, term)(x, sigma, None), want, atol=1e-6, rtol=1e-6)


def test_long_video_one_window_is_no_windowing_and_refusals():
    g = wg.MSWG(0.5, window=(6, 8, 8))
    a = long_video(GlobalNet(), (3, 8, 8, 8), [3, 4], (8, 8, 8), stride=4, sampler="ddim", steps=4, guidance=g)
    b = wg.sample(GlobalNet(), (3, 8, 8, 8), [3, 4], sampler="ddim", steps=4, guidance=g)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    v = long_video(GlobalNet(), (3, 20, 8, 8), [0], (8, 8, 8), stride=(4, 8, 8), mode="multidiffusion",
                   sampler="ddpm", vcf=True, steps=3, style_alpha=0.3, circular=True)
    assert v.shape == (1, 3, 20, 8, 8) and bool(torch.isfinite(v).all())
    with pytest.raises(WindowguideError, match="a video canvas is"):
        long_video(GlobalNet(), (3, 8, 8), [0], (8, 8))
    with pytest.raises(WindowguideError, match="M-SWG mask is empty"):
        wg.sample(GlobalNet(), (3, 8, 8, 8), [0], steps=2, guidance=wg.MSWG(0.5, window=(4, 8, 8)))


def test_style_alignment_on_a_video_is_the_reference_clip_repeated_at_alpha_one():
    # one SA for any number of axes: at alpha = 1 each sample is its reference clip tiled by a brute-force loop
    # over cells (the clip from the sample's generator), at alpha = 0 the noise itself
    z = torch.randn(2, 3, 10, 8, 12)
    gens = lambda: [torch.Generator().manual_seed(i) for i in (0, 1)]
    out = style_aligned_noise(z, (4, 8, 8), 1.0, gens())
    for i, g in enumerate(gens()):
        clip = torch.randn((3, 4, 8, 8), generator=g)
        ref = torch.empty(3, 10, 8, 12)
        for t in range(10):
            for w in range(12):
                ref[:, t, :, w] = clip[:, t % 4, :, w % 8]
        torch.testing.assert_close(out[i], ref)
    assert style_aligned_noise(z, (4, 8, 8), 0.0, gens()) is z
