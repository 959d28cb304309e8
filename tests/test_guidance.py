import math

import pytest
import torch

import windowguide as wg
from windowguide.denoiser import EDMDenoiser, EpsDenoiser, VPSchedule
from windowguide.guidance import (CFG, MSWG, SWG, AutoGuidance, Custom, Guidance, GuidedDenoiser, Interval,
                                  Segmented)
from windowguide.windows import axis_positions

from helpers import InvariantNet


def base(net=None, multiple=1):
    net = net or InvariantNet()
    return EDMDenoiser(net, multiple=multiple, null_cond=getattr(net, "null", None))


def batch(n=3, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, H, W, generator=g) * 2
    return x, torch.full((n,), 1.5), torch.arange(n) % 10


def official_swg(net, x, sigma, cond, k, n_side):
    """The released SWG code's loop: one model call per crop, positions i * ((H - k) // (n - 1))."""
    H, W = x.shape[-2:]
    s_h, s_w = (H - k) // (n_side - 1), (W - k) // (n_side - 1)
    acc, cnt = torch.zeros_like(x), torch.zeros_like(x)
    for i in range(n_side):
        for j in range(n_side):
            sl = (..., slice(s_h * i, s_h * i + k), slice(s_w * j, s_w * j + k))
            acc[sl] += net(x[sl], sigma, cond)
            cnt[sl] += 1
    return acc / cnt


def test_all_weights_zero_is_exactly_unguided():
    d = base()
    x, s, c = batch()
    g = CFG(0.0) + MSWG(0.0, window=10) + AutoGuidance(base(InvariantNet(seed=1)), 0.0)
    assert torch.equal(GuidedDenoiser(d, g)(x, s, c), d(x, s, c))
    out = wg.sample(d, (3, 16, 16), seeds=[3, 4], steps=4, guidance=g, cond=torch.tensor([1, 2]))
    ref = wg.sample(d, (3, 16, 16), seeds=[3, 4], steps=4, cond=torch.tensor([1, 2]))
    assert torch.equal(out, ref)


def test_swg_and_mswg_match_the_per_crop_loop():
    net = InvariantNet()
    d = base(net)
    x, s, c = batch(H=16, W=16)
    d_pos = net(x, s, c)
    d_swg = official_swg(net, x, s, c, k=10, n_side=3)   # (16 - 10) // 2 = 3: divides, so positions agree
    assert axis_positions(16, 10, n=3) == (0, 3, 6)
    w = 0.7
    torch.testing.assert_close(GuidedDenoiser(d, SWG(w, window=10, windows_per_side=3))(x, s, c),
                               d_pos + w * (d_pos - d_swg), rtol=0, atol=1e-6)
    mask = torch.zeros(16, 16)
    mask[3:13, :] = 1
    mask[:, 3:13] = 1  # count > 1 where two windows overlap along either axis
    torch.testing.assert_close(GuidedDenoiser(d, MSWG(w, window=10, windows_per_side=3))(x, s, c),
                               d_pos + w * mask * (d_pos - d_swg), rtol=0, atol=1e-6)


def test_mswg_leaves_unmasked_pixels_exactly_alone():
    d = base()
    x, s, c = batch(H=64, W=64)
    out = GuidedDenoiser(d, MSWG(1.1, window=40))(x, s, c)
    plain = d(x, s, c)
    assert torch.equal(out[..., :24, :24], plain[..., :24, :24])
    assert not torch.allclose(out[..., 24:40, :], plain[..., 24:40, :])


def test_combination_sums_terms_and_mask_is_respected():
    net, weak_net = InvariantNet(), InvariantNet(seed=5)
    d, weak = base(net), base(weak_net)
    x, s, c = batch(H=64, W=64)
    null = torch.full_like(c, 10)
    pos, unc, wk = net(x, s, c), net(x, s, null), weak_net(x, s, c)
    swg = official_swg(net, x, s, c, 40, 2)
    mask = torch.zeros(64, 64)
    mask[24:40, :] = 1
    mask[:, 24:40] = 1
    g = CFG(0.6) + AutoGuidance(weak, 1.2) + MSWG(0.5, window=40)
    ref = pos + 0.6 * (pos - unc) + 1.2 * (pos - wk) + 0.5 * mask * (pos - swg)
    torch.testing.assert_close(GuidedDenoiser(d, g)(x, s, c), ref, rtol=0, atol=2e-6)


def test_fewest_calls_cond_and_uncond_share_a_batch_crops_share_another():
    d = base()
    x, s, c = batch(n=3, H=64, W=64)
    gd = GuidedDenoiser(d, CFG(1.0) + MSWG(0.5, window=40))
    gd(x, s, c)
    assert gd.calls[id(d)] == 2                 # one full-size batch, one crop batch
    assert gd.evaluations[id(d)] == 2 * 3 + 4 * 3


def test_max_batch_splits_calls_and_gives_bit_identical_results():
    d = base()
    x, s, c = batch(n=3, H=32, W=32)
    g = CFG(1.0) + MSWG(0.5, window=20)
    full = GuidedDenoiser(d, g)
    capped = GuidedDenoiser(d, g, max_batch=4)
    a, b = full(x, s, c), capped(x, s, c)
    assert torch.equal(a, b)
    assert capped.calls[id(d)] == math.ceil(6 / 4) + math.ceil(12 / 4)
    assert max(capped.evaluations.values()) == full.evaluations[id(d)]


def test_segmented_switches_terms_at_the_split_with_two_evaluations_per_step():
    net, weak_net = InvariantNet(), InvariantNet(seed=7)
    d, weak = base(net), base(weak_net)
    sgg = Segmented(CFG(3.5), AutoGuidance(weak, 2.0), sigma_split=1.0)
    x, _, c = batch()
    for sigma, expected_terms in ((2.0, "cfg"), (1.0, "ag"), (0.5, "ag")):
        s = torch.full((3,), sigma)
        gd = GuidedDenoiser(d, sgg)
        out = gd(x, s, c)
        pos = net(x, s, c)
        neg = net(x, s, torch.full_like(c, 10)) if expected_terms == "cfg" else weak_net(x, s, c)
        w = 3.5 if expected_terms == "cfg" else 2.0
        torch.testing.assert_close(out, pos + w * (pos - neg), rtol=0, atol=1e-6)
        assert sum(gd.evaluations.values()) == 2 * 3


def test_interval_and_per_sample_sigmas():
    d = base()
    x, _, c = batch(n=4)
    g = Interval(CFG(2.0), sigma_lo=0.3, sigma_hi=1.0)
    s = torch.tensor([0.2, 0.5, 1.0, 3.0])           # only samples 1 and 2 are inside (0.3, 1.0]
    out = GuidedDenoiser(d, g)(x, s, c)
    for i in range(4):
        xi, si, ci = x[i:i + 1], s[i:i + 1], c[i:i + 1]
        ref = GuidedDenoiser(d, CFG(2.0))(xi, si, ci) if i in (1, 2) else d(xi, si, ci)
        torch.testing.assert_close(out[i:i + 1], ref, rtol=0, atol=1e-6)


def test_custom_negative_is_called_with_the_active_samples():
    seen = []

    def neg(x, sigma, cond):
        seen.append(x.shape[0])
        return torch.zeros_like(x)
    d = base()
    x, s, c = batch()
    out = GuidedDenoiser(d, Custom(neg, 0.5))(x, s, c)
    torch.testing.assert_close(out, 1.5 * d(x, s, c))
    assert seen == [3]


def test_guidance_in_d_space_equals_guidance_in_eps_space():
    """CFG + SWG combined on D equals the same combination of eps predictions, x - sigma * eps."""
    schedule = VPSchedule.linear()
    inner = InvariantNet()

    def eps_model(x_vp, t, cond):
        return inner(x_vp, t / 100 + 0.1, cond)
    d = EpsDenoiser(eps_model, schedule, null_cond=torch.tensor(10))
    x, _, c = batch(H=32, W=32)
    sigma = schedule.sigma_at(400).float().expand(3)
    x_vp = x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    t = torch.full((3,), 400.0)
    e_pos, e_unc = eps_model(x_vp, t, c), eps_model(x_vp, t, torch.full_like(c, 10))
    crops = [(i, j) for i in (0, 12) for j in (0, 12)]
    acc, cnt = torch.zeros_like(x), torch.zeros_like(x)
    for i, j in crops:
        acc[..., i:i + 20, j:j + 20] += eps_model(x_vp[..., i:i + 20, j:j + 20], t, c)
        cnt[..., i:i + 20, j:j + 20] += 1
    e_swg = acc / cnt
    e_guided = e_pos + 1.0 * (e_pos - e_unc) + 0.5 * (e_pos - e_swg)
    ref = x - sigma.view(-1, 1, 1, 1) * e_guided
    out = GuidedDenoiser(d, CFG(1.0) + SWG(0.5, window=20))(x, sigma, c)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_terms_compose_with_plus_and_sum():
    g = CFG(1.0) + MSWG(0.5, window=4) + AutoGuidance(base(), 0.1)
    assert len(g) == 3 and isinstance(g, Guidance)
    assert len(sum([CFG(1.0), SWG(0.2, window=4)])) == 2
    assert len(Guidance.of(None)) == 0


@pytest.mark.parametrize("make, match", [
    (lambda: CFG(-1.0), "finite and >= 0"),
    (lambda: CFG(float("nan")), "finite and >= 0"),
    (lambda: CFG(float("inf")), "finite and >= 0"),
    (lambda: CFG("1"), "must be a number"),
    (lambda: CFG(1.0, sigma_lo=2.0, sigma_hi=1.0), "empty or invalid"),
    (lambda: Interval(CFG(1.0), 1.0, 1.0), "empty or invalid"),
    (lambda: Interval(CFG(1.0, sigma_hi=0.5), 1.0, 2.0), "empty sigma range"),
    (lambda: Segmented(CFG(1.0), SWG(1.0), sigma_split=float("nan")), "sigma_split"),
    (lambda: GuidedDenoiser(base(), None, max_batch=0), "max_batch"),
])
def test_bad_terms_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("guidance, shape, multiple, match", [
    (SWG(1.0, window=40), (3, 32, 32), 1, "larger than the image side 32"),
    (SWG(1.0, window=20), (3, 32, 32), 8, "not a multiple of 8"),
    (MSWG(1.0, window=16), (3, 32, 32), 1, "mask is empty"),
])
def test_bad_windows_are_rejected_before_sampling(guidance, shape, multiple, match):
    with pytest.raises(ValueError, match=match):
        wg.sample(base(multiple=multiple), shape, seeds=[0], steps=2, guidance=guidance)


def test_bad_calls_name_the_value():
    d = base()
    x, s, c = batch()
    with pytest.raises(ValueError, match="needs a condition"):
        GuidedDenoiser(d, CFG(1.0))(x, s, None)
    with pytest.raises(ValueError, match="batch size 2"):
        GuidedDenoiser(d, CFG(1.0))(x, s, c[:2])
    with pytest.raises(ValueError, match="sigma has shape"):
        GuidedDenoiser(d, CFG(1.0))(x, s[:2], c)
    with pytest.raises(ValueError, match="mask of shape"):
        GuidedDenoiser(d, CFG(1.0, mask=torch.ones(5, 5)))(x, s, c)
    with pytest.raises(ValueError, match="no null condition"):
        GuidedDenoiser(EDMDenoiser(InvariantNet()), CFG(1.0))(x, s, c)
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        GuidedDenoiser(d, Custom(lambda x, s, c: x[:, :1], 1.0))(x, s, c)
    with pytest.raises(ValueError, match="returned shape"):
        EDMDenoiser(lambda x, s, c: x[..., :-1])(x, s, c)


def test_cfg_on_the_first_channels_only_is_dits_own_cfg():
    """facebookresearch DiT's forward_with_cfg guides eps[:, :3]; D is affine in eps per channel, so
    that is CFG with M = 1 on channels 0..2: channel 3 keeps the conditional prediction."""
    from windowguide import spec
    def net(x, sigma, cond):
        return x * 0.5 + cond.float().view(-1, 1, 1, 1) * torch.arange(1.0, 5.0).view(1, 4, 1, 1)
    den = wg.EDMDenoiser(net, null_cond=torch.tensor(0))
    x, s, c = torch.randn(2, 4, 3, 3), torch.tensor([1.0, 1.0]), torch.tensor([2, 3])
    g = spec.build("cfg:w=0.5,channels=3", spec.Context(net=None, load=None))
    got = wg.GuidedDenoiser(den, g)(x, s, c)
    pos, neg = net(x, s, c), net(x, s, torch.zeros(2))
    want = pos.clone()
    want[:, :3] = pos[:, :3] + 0.5 * (pos[:, :3] - neg[:, :3])
    assert torch.allclose(got, want) and torch.equal(got[:, 3], pos[:, 3])
    assert torch.allclose(wg.GuidedDenoiser(den, wg.CFG(0.5))(x, s, c), pos + 0.5 * (pos - neg))
