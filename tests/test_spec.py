import math

import pytest
import torch

from windowguide import spec
from windowguide.guidance import CFG, SWG, AutoGuidance, Custom, GuidedDenoiser
from windowguide.models.unet import SmallUNet


@pytest.fixture
def ctx():
    torch.manual_seed(0)
    net = SmallUNet(channels=1, base=8, mults=(1, 2), num_classes=3).eval()
    weak = SmallUNet(channels=1, base=8, mults=(1, 2), num_classes=3).eval().denoiser()
    loaded = []
    return spec.Context(net=net, load=lambda name: loaded.append(name) or weak, model_name="digits"), loaded


def test_every_term_builds(ctx):
    c, loaded = ctx
    g = spec.build("cfg:w=1.5 + mswg:w=0.5,window=4,n=3 + swg:w=0.2,stride=2,lo=0.1,hi=5 + ag:w=2 + "
                   "wd:w=1,model=foo + slg:w=0.3,skip=mid/up0", c)
    cfg, mswg, swg, ag, wd, slg = g.terms
    assert isinstance(cfg, CFG) and cfg.weight == 1.5
    assert isinstance(mswg, SWG) and mswg.masked and mswg.window == 4 and mswg.windows_per_side == 3
    assert isinstance(swg, SWG) and not swg.masked and swg.stride == 2 and (swg.sigma_lo, swg.sigma_hi) == (0.1, 5)
    assert isinstance(ag, AutoGuidance) and isinstance(wd, AutoGuidance) and loaded == ["digits-weak", "foo"]
    assert isinstance(slg, Custom) and slg.weight == 0.3
    assert spec.build("none", c).terms == ()


def test_sgg_is_cfg_above_and_the_other_term_below(ctx):
    c, loaded = ctx
    high, low = spec.build("sgg:split=0.75,cfg=3,wd=2", c).terms
    assert isinstance(high, CFG) and high.weight == 3 and (high.sigma_lo, high.sigma_hi) == (0.75, math.inf)
    assert isinstance(low, AutoGuidance) and low.weight == 2 and low.sigma_hi == 0.75 and loaded == ["digits-wd"]
    mswg = spec.build("sgg:split=1,cfg=1,mswg=0.5,window=4", c).terms[1]
    assert mswg.masked and mswg.window == 4 and mswg.sigma_hi == 1


def test_slg_negative_is_the_net_with_the_block_skipped(ctx):
    c, _ = ctx
    with torch.no_grad():
        for p in c.net.parameters():       # conv_out is zero at init: make the net non-trivial
            p.add_(0.05 * torch.randn_like(p))
    slg = spec.build("slg:w=1,skip=mid", c).terms[0]
    x, s, y = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 2])
    neg = slg.negative_fn(x, s, y)
    assert torch.equal(neg, c.net(x, s, y, skip=("mid",)))
    assert not torch.allclose(neg, c.net(x, s, y))
    gd = GuidedDenoiser(c.net.denoiser(), slg)
    assert torch.allclose(gd(x, s, y), 2 * c.net(x, s, y) - neg, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ("cfgg:w=1", "unknown guidance 'cfgg'"),
    ("cfg:w", "is not key=value"),
    ("cfg:weight=1", "does not take"),
    ("mswg:w=1,window=big", "window='big' is not an integer"),
    ("cfg", "needs a weight"),
    ("sgg:split=1,cfg=2", "exactly one of"),
    ("slg:w=1,skip=nope", "unknown blocks"),
])
def test_bad_spec_errors_show_the_syntax(ctx, bad, message):
    with pytest.raises(ValueError, match=message) as err:
        spec.build(bad, ctx[0])
    assert "TERM = NAME[:key=value,...]" in str(err.value)


def test_negative_weight_in_spec_is_refused(ctx):
    with pytest.raises(ValueError, match="weight"):
        spec.build("cfg:w=-1", ctx[0])
