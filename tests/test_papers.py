"""The papers' settings, exactly: masks per sample, the initial noise rule, interval units, several
crop sizes, SWG on a weak net, weight ramps (each against a direct computation)."""
import math

import pytest
import torch

import windowguide as wg
from windowguide.denoiser import EDMDenoiser, EpsDenoiser, FlowDenoiser, VPSchedule
from windowguide.guidance import CFG, MSWG, SWG, AutoGuidance, GuidedDenoiser, Interval, Segmented
from windowguide.sampling import SAMPLERS, init_noise_scale
from windowguide.windows import layout


class Net:
    """A conv denoiser with a condition, so crops, conditions and sigmas all matter."""
    multiple = 1

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(1, 1, 3, 3, generator=g) * 0.4
        self.calls = []

    def __call__(self, x, sigma, cond=None):
        self.calls.append(sigma.clone())
        c = 0 if cond is None else cond.view(-1, 1, 1, 1).float() * 0.1
        return torch.tanh(torch.nn.functional.conv2d(x, self.w, padding=1) + c) / (1 + sigma.view(-1, 1, 1, 1))


def test_per_sample_masks_follow_the_active_samples():
    net = Net()
    mask = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    term = SWG(0.7, window=4, windows_per_side=3, mask=mask, sigma_lo=1.0)
    gd = GuidedDenoiser(EDMDenoiser(net), term)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for sigma in (torch.tensor([2.0, 0.5, 3.0]), torch.tensor([0.5, 0.5, 3.0]), torch.tensor([2.0, 2.0, 2.0])):
        out = gd(x, sigma, torch.tensor([0, 1, 2]))
        for i in range(3):                                  # one sample at a time, its own mask
            one = GuidedDenoiser(EDMDenoiser(net), SWG(0.7, window=4, windows_per_side=3, mask=mask[i:i + 1],
                                                       sigma_lo=1.0))
            ref = one(x[i:i + 1], sigma[i:i + 1], torch.tensor([i]))
            torch.testing.assert_close(out[i:i + 1], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_initial_noise_follows_the_parameterization_not_the_sampler(sampler):
    sigmas = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    seen = {}
    vp = VPSchedule.linear()
    for name, d in (("edm", EDMDenoiser(lambda x, s, c=None: torch.zeros_like(x))),
                    ("vp", EpsDenoiser(lambda x, t, c=None: torch.zeros_like(x), vp)),
                    ("flow", FlowDenoiser(lambda x, t, c=None: torch.zeros_like(x)))):
        first = []
        spy = EDMDenoiser(lambda x, s, c=None, d=d: first.append(x.clone()) or d(x, s, c))
        spy.init_noise_scale = d.init_noise_scale
        wg.sample(spy, (1, 4, 4), [0], sampler=sampler, sigmas=sigmas)
        z = torch.randn((1, 4, 4), generator=torch.Generator().manual_seed(0))
        seen[name] = (first[0][0] / z).mean().item()
    assert seen["edm"] == pytest.approx(1.0) and seen["vp"] == pytest.approx(math.sqrt(2))
    assert seen["flow"] == pytest.approx(2.0)
    assert init_noise_scale(lambda x, s, c=None: x, 3.0) == 3.0             # a plain callable is EDM


def cfg(w, **kw):
    return CFG(w, null=torch.tensor(3), **kw)


def _active_steps(term, sampler, sigmas):
    """The steps (by their first evaluation's sigma) at which the term made its extra call."""
    net = Net()
    gd = GuidedDenoiser(EDMDenoiser(net), term)
    SAMPLERS[sampler](gd, torch.randn(2, 1, 8, 8), sigmas, torch.tensor([0, 1]))
    return net.calls


def test_step_indices_fractions_and_flow_time_intervals():
    sigmas = wg.sampling.karras_sigmas(10)
    n = 10
    for rng, expect in (
            (dict(steps=(2, 5)), [2, 3, 4, 5]),
            (dict(fraction=(0.25, 0.75)), list(range(int(0.25 * n), int(0.75 * n)))),
            (dict(t=(0.5, 0.9)), [i for i in range(n) if 1.0 < sigmas[i] <= 9.0])):
        term = Interval(cfg(1.0), **rng).terms[0]
        calls = _active_steps(term, "euler", sigmas)
        on = [i for i, c in enumerate(calls) if c.numel() == 4]       # cond + uncond stacked in one call
        assert on == expect, (rng, on)
    with pytest.raises(ValueError, match="step indices"):
        Interval(CFG(1.0), steps=(5, 2))
    with pytest.raises(ValueError, match="one of"):
        Segmented(CFG(1.0), SWG(1.0, window=4), sigma_split=1.0, t_split=0.5)


def test_heun_correction_at_an_interval_boundary_follows_its_step():
    """The authors' step-index intervals: both evaluations of Heun step i use step i's decision, even
    where the correction's sigma (sigma_{i+1}) lies in the next step's range."""
    sigmas = wg.sampling.karras_sigmas(6)
    term = Interval(cfg(1.0), steps=(0, 2)).terms[0]
    calls = _active_steps(term, "heun", sigmas)
    # Heun: 2 evaluations per step but the last; steps 0-2 guided (4 samples per call), 3-5 not
    sizes = [c.numel() for c in calls]
    assert sizes == [4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 2]


def test_segmented_split_by_step_and_by_flow_time():
    sigmas = wg.sampling.flow_sigmas(8, shift=3.0)
    ag_net = Net(seed=5)
    g = Segmented(cfg(2.0), AutoGuidance(EDMDenoiser(ag_net), 1.0), step_split=3)
    main = Net()
    gd = GuidedDenoiser(EDMDenoiser(main), g)
    SAMPLERS["flow_euler"](gd, torch.randn(2, 1, 8, 8), sigmas, torch.tensor([0, 1]))
    assert [c.numel() for c in main.calls] == [4, 4, 4, 2, 2, 2, 2, 2] and len(ag_net.calls) == 5
    g = Segmented(CFG(2.0), AutoGuidance(EDMDenoiser(Net(5)), 1.0), t_split=0.75)
    high, low = g.terms
    assert high.sigma_lo == pytest.approx(3.0) and low.sigma_hi == pytest.approx(3.0)


def test_several_crop_sizes_average_their_swg_predictions():
    net = Net()
    x, s, c = torch.randn(2, 1, 12, 12), torch.tensor([1.5, 0.7]), torch.tensor([1, 2])
    term = MSWG(0.8, window=[8, 6], windows_per_side=2)
    out = GuidedDenoiser(EDMDenoiser(net), term)(x, s, c)
    pos = net(x, s, c)
    folds, masks = [], []
    for k in (8, 6):
        lay = layout(12, 12, k, windows_per_side=2)
        crops = net(lay.crop(x), s.repeat_interleave(lay.n), c.repeat_interleave(lay.n))
        folds.append(lay.fold(crops))
        masks.append(lay.count() > 1)
    mask = (masks[0] | masks[1]).float()
    torch.testing.assert_close(out, pos + 0.8 * mask * (pos - (folds[0] + folds[1]) / 2), atol=1e-6, rtol=0)


def test_swg_on_a_weak_net_uses_the_weak_net_for_the_crops():
    strong, weak = Net(0), Net(7)
    x, s = torch.randn(1, 1, 8, 8), torch.tensor([1.0])
    out = GuidedDenoiser(EDMDenoiser(strong), SWG(0.5, window=4, windows_per_side=3, net=EDMDenoiser(weak)))(x, s)
    lay = layout(8, 8, 4, windows_per_side=3)
    swg = lay.fold(weak(lay.crop(x), s.repeat_interleave(lay.n)))
    pos = strong(x, s)
    torch.testing.assert_close(out, pos + 0.5 * (pos - swg), atol=1e-6, rtol=0)
    assert len(weak.calls) == 2 and len(strong.calls) == 2         # direct calls above + one each


def test_weight_ramps_linearly_across_the_terms_steps():
    sigmas = wg.sampling.karras_sigmas(8)
    term = Interval(cfg(1.0, weight_end=3.0), steps=(2, 6)).terms[0]
    weights = []
    for i in range(8):
        step = (i, sigmas.tolist())
        on = term.active(torch.tensor([sigmas[i].item()]), step).item()
        weights.append(term.weight_at(step) if on else 0.0)
    assert weights == pytest.approx([0, 0, 1.0, 1.5, 2.0, 2.5, 3.0, 0])
    # the guided prediction uses the ramped weight: D = pos + w_i (pos - neg)
    net = Net()
    gd = GuidedDenoiser(EDMDenoiser(net), term)
    gd.begin_step(4, sigmas.tolist())
    x, s, c = torch.randn(1, 1, 8, 8), torch.tensor([sigmas[4].item()]), torch.tensor([1])
    pos, neg = net(x, s, c), net(x, s, torch.tensor([3]))
    torch.testing.assert_close(gd(x, s, c), pos + 2.0 * (pos - neg), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs the sampler's step index"):
        GuidedDenoiser(EDMDenoiser(net), term)(x, s, c)
