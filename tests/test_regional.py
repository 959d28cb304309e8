"""Regional prompts (windowguide.regional): one region over the whole canvas is the single-condition
panorama bit for bit; with two regions, each window's condition weights equal a brute-force computation."""
import pytest
import torch

import windowguide as wg
import windowguide.fusion
from windowguide.errors import WindowguideError
from windowguide.regional import Region, fuse, pairs, regional_panorama
from windowguide.windows import layout


class CondNet(wg.Denoiser):
    """A toy conditional denoiser: D = x / (1 + sigma^2) + c (the condition, a per-sample scalar)."""
    multiple, null_cond = 1, None

    def forward(self, x, sigma, cond):
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2) + cond.view(-1, 1, 1, 1)


def test_one_region_over_the_canvas_is_the_single_condition_panorama_bit_for_bit():
    cond = torch.tensor([0.3, -0.2])
    kw = dict(window=8, stride=4, sampler="ddim", steps=4)
    with torch.no_grad():
        plain = wg.fusion.panorama(CondNet(), (2, 8, 20), [0, 1], cond=cond, mode="gf", **kw)
        regional = regional_panorama(CondNet(), (2, 8, 20), [0, 1], [Region(cond, torch.ones(8, 20))], mode="gf", **kw)
    assert torch.equal(plain, regional)


def test_two_regions_weights_equal_a_brute_force_fold():
    lay = layout(8, 20, 8, stride=4)
    left = Region.box(torch.tensor([1.0]), (8, 20), 0, 0, 8, 12).mask
    right = torch.zeros(8, 20)
    right[:, 8:] = torch.linspace(0.2, 1.0, 12)
    masks = torch.stack([left, right])
    chosen = pairs(lay, masks)
    # window k covers columns 4k .. 4k + 7: the left box reaches windows 0..2, the right mask windows 1..3
    assert chosen == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 3)]
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1 * len(chosen), 3, 8, 8, generator=g)
    got = fuse(lay, states, chosen, masks, 1, "cone")
    m = wg.windows.window_weights("cone", 8, 8, states.device, states.dtype)
    num, den = torch.zeros(1, 3, 8, 20), torch.zeros(8, 20)
    for j, (r, k) in enumerate(chosen):                        # brute force, pixel by pixel
        t, l = lay.positions[k]
        for yy in range(8):
            for xx in range(8):
                wgt = float(m[yy, xx]) * float(masks[r, t + yy, l + xx])
                num[0, :, t + yy, l + xx] += wgt * states[j, :, yy, xx]
                den[t + yy, l + xx] += wgt
    assert torch.allclose(got, num / den, atol=1e-6)


def test_regions_follow_their_conditions_and_bad_regions_are_refused():
    with torch.no_grad():
        x = regional_panorama(CondNet(), (1, 8, 24), [0], [Region.box(torch.tensor([1.0]), (8, 24), 0, 0, 8, 12),
                                                           Region.box(torch.tensor([-1.0]), (8, 24), 0, 12, 8, 24)],
                              window=8, stride=4, sampler="euler", steps=6)
    assert x[..., :4].mean() > 0.5 and x[..., -4:].mean() < -0.5
    with pytest.raises(WindowguideError, match="in no region"):
        regional_panorama(CondNet(), (1, 8, 24), [0], [Region.box(torch.tensor([1.0]), (8, 24), 0, 0, 8, 12)], window=8)
    with pytest.raises(WindowguideError, match="is not inside the 8x24 canvas"):
        Region.box(torch.tensor([1.0]), (8, 24), 0, 20, 8, 30)
    with pytest.raises(WindowguideError, match="deterministic sampler"):
        regional_panorama(CondNet(), (1, 8, 24), [0], [Region(torch.tensor([1.0]), torch.ones(8, 24))], window=8,
                          sampler="ddpm")
