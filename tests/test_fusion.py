import math

import pytest
import torch

from windowguide import fusion
from windowguide.guidance import MSWG
from windowguide.sampling import PerSampleNoise, ddim_coefficients
from windowguide.windows import layout


class PixelNet:
    """A per-pixel (so translation-equivariant) nonlinear denoiser: D = tanh(a x) / (1 + sigma^2)."""
    multiple = 1

    def __call__(self, x, sigma, cond=None):
        return torch.tanh(0.7 * x) / (1 + sigma.view(-1, 1, 1, 1) ** 2)


class ConvNet(torch.nn.Module):
    """A small conv net, so windows see different contexts (zero padding at crop borders)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, sigma, cond=None):
        return torch.tanh(self.conv(x)) / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5


def test_state_and_prediction_fusion_agree_for_ddim_and_differ_for_heun():
    net = ConvNet()
    kw = dict(canvas=(2, 8, 20), seeds=[0, 1], window=8, stride=4, steps=6)
    with torch.no_grad():
        a = fusion.panorama(net, fuse="state", sampler="ddim", **kw)
        b = fusion.panorama(net, fuse="prediction", sampler="ddim", **kw)
        c = fusion.panorama(net, fuse="state", sampler="heun", **kw)
        d = fusion.panorama(net, fuse="prediction", sampler="heun", **kw)
    assert torch.allclose(a, b, atol=1e-5)
    assert (c - d).abs().max() > 1e-4     # Heun's second evaluation sees per-window states


@pytest.mark.parametrize("weighting", ["uniform", "cone"])
def test_vcf_keeps_the_samplers_noise_variance_and_averaging_does_not(weighting):
    lay = layout(8, 20, 8, stride=4)
    zero = lambda x, sigma, cond=None: torch.zeros_like(x)
    sigmas = torch.tensor([2.0, 1.0])
    _, up = ddim_coefficients(2.0, 1.0, 1.0)
    n = 4000
    x = torch.zeros(n, 1, 8, 20)
    noise = PerSampleNoise.from_seeds(range(n))
    plain = fusion.sample_fused_states(zero, x, sigmas, None, lay, weighting, "ddpm", noise)
    noise = PerSampleNoise.from_seeds(range(n))
    vcf = fusion.sample_fused_states(zero, x, sigmas, None, lay, weighting, "ddpm", noise, vcf=True)
    from windowguide.windows import window_weights
    m = window_weights(weighting, 8, 8)
    expected_plain = lay.total_weight(m * m) / lay.total_weight(m) ** 2     # sum m^2 / W^2
    var_plain, var_vcf = plain.var(0)[0] / up ** 2, vcf.var(0)[0] / up ** 2
    se = math.sqrt(2 / n)                                                     # std error of a variance
    assert (var_vcf - 1).abs().max() < 5 * se
    assert ((var_plain - expected_plain).abs() / expected_plain).max() < 5 * se
    assert var_plain[:, 4:16].mean() < 0.75          # where windows overlap, averaging shrank it
    # the fused noise is white: neighbouring pixels uncorrelated, as for noise drawn once
    v = vcf[:, 0] / up
    assert abs((v[:, :, 1:] * v[:, :, :-1]).mean()) < 5 / math.sqrt(n * 8 * 19)


def test_sampler_vcf_equals_the_papers_formula_on_explicit_window_states():
    net = ConvNet()
    lay = layout(8, 20, 8, stride=4)
    sigmas = torch.tensor([3.0, 1.5])
    x = torch.randn(2, 2, 8, 20, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad():
        ours = fusion.sample_fused_states(net, x, sigmas, None, lay, "cone", "ddpm",
                                          PerSampleNoise.from_seeds([7, 8]), vcf=True)
        # the paper: window states x_i = mu_i + s z_i, then x = (W/sqrt S) xbar + (1 - W/sqrt S) mubar
        crops = lay.crop(x)
        d = net(crops, torch.full((crops.shape[0],), 3.0))
        down, up = ddim_coefficients(3.0, 1.5, 1.0)
        mu = d + (down / 3.0) * (crops - d)
        z = fusion.WindowNoise(PerSampleNoise.from_seeds([7, 8]), lay)(crops)
        paper = fusion.vcf_fuse(mu + up * z, mu, lay, "cone")
    assert torch.allclose(ours, paper, atol=1e-5)


def test_prediction_fusion_with_noise_once_is_distributed_as_gvcf():
    """Same mean (exactly) and the same white noise of the sampler's variance (statistically)."""
    net = PixelNet()
    lay = layout(8, 20, 8, stride=4)
    n = 3000
    x = torch.randn(1, 1, 8, 20, generator=torch.Generator().manual_seed(0)).expand(n, 1, 8, 20) * 2
    sigmas = torch.tensor([2.0, 1.0])
    _, up = ddim_coefficients(2.0, 1.0, 1.0)
    gvcf = fusion.sample_fused_states(net, x, sigmas, None, lay, "cone", "ddpm",
                                      PerSampleNoise.from_seeds(range(n)), vcf=True)
    from windowguide.sampling import sample_ddpm
    once = sample_ddpm(fusion.FusedDenoiser(net, lay, "cone"), x, sigmas,
                       noise=PerSampleNoise.from_seeds(range(10 ** 6, 10 ** 6 + n)))
    se_mean = up / math.sqrt(n)
    assert (gvcf.mean(0) - once.mean(0)).abs().max() < 5 * math.sqrt(2) * se_mean
    assert ((gvcf.var(0) / up ** 2 - 1).abs().max() < 5 * math.sqrt(2 / n))
    assert ((once.var(0) / up ** 2 - 1).abs().max() < 5 * math.sqrt(2 / n))
    from scipy import stats
    p = stats.ks_2samp(((gvcf - gvcf.mean(0)) / up).flatten()[::7].numpy(),
                       ((once - once.mean(0)) / up).flatten()[::7].numpy()).pvalue
    assert p > 1e-3


def test_vcf_and_mode_errors():
    kw = dict(canvas=(1, 8, 16), seeds=[0], window=8, stride=4, steps=2)
    with pytest.raises(ValueError, match="VCF corrects noise added after the fused update.*'ddim'"):
        fusion.panorama(PixelNet(), sampler="ddim", vcf=True, **kw)
    with pytest.raises(ValueError, match="churn is drawn once on the canvas"):
        fusion.panorama(PixelNet(), sampler="heun", vcf=True, churn=10, **kw)
    with pytest.raises(ValueError, match="fuse='prediction'"):
        fusion.panorama(PixelNet(), sampler="ddpm", vcf=True, fuse="prediction", **kw)
    with pytest.raises(ValueError, match="unknown fusion mode"):
        fusion.panorama(PixelNet(), mode="average", **kw)
    with pytest.raises(ValueError, match="larger than the image side"):
        fusion.panorama(PixelNet(), **{**kw, "window": 10})
    fusion.panorama(PixelNet(), sampler="ddim", vcf=True, eta=0.5, **kw)           # stochastic: fine
    fusion.panorama(PixelNet(), sampler="heun", churn=10, **kw)


class InputRecorder:
    """D = 0 (so the state is pure noise, x = sigma z), recording the window inputs and their sigmas."""
    multiple = 1

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond=None):
        self.calls.append((x.clone(), sigma[0].item()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler, options, vcf", [
    ("euler", dict(churn=4.0), False), ("heun", dict(churn=4.0), False),
    ("ddpm", {}, True), ("ddim", dict(eta=0.7), True), ("euler", dict(churn=4.0, s_tmax=5.0), False)])
def test_every_window_input_carries_the_samplers_noise(sampler, options, vcf):
    """The noise std in every window's input equals the sigma the network is called at (EDM churn
    drawn once on the canvas; VCF for noise added after the update), at every step and pixel."""
    n, lay = 3000, layout(8, 16, 8, stride=4)
    net = InputRecorder()
    x0 = 10.0 * torch.randn(n, 1, 8, 16, generator=torch.Generator().manual_seed(1))
    fusion.sample_fused_states(net, x0,
                               torch.tensor([10.0, 4.0, 2.0, 1.0, 0.0]), None, lay, "uniform", sampler,
                               PerSampleNoise.from_seeds(range(n)), vcf=vcf, **options)
    assert len(net.calls) >= 4
    for x, sigma in net.calls:
        std = x.view(n, lay.n, -1).std(0)                 # per window, per pixel, over samples
        assert (std / sigma - 1).abs().max() < 6 * math.sqrt(1 / (2 * n)), (sigma, std.min(), std.max())


def test_without_vcf_ddpm_averages_the_window_noise_away():
    n, lay = 3000, layout(8, 16, 8, stride=4)
    net = InputRecorder()
    x0 = 10.0 * torch.randn(n, 1, 8, 16, generator=torch.Generator().manual_seed(1))
    fusion.sample_fused_states(net, x0, torch.tensor([10.0, 4.0, 0.0]), None, lay, "uniform", "ddpm",
                               PerSampleNoise.from_seeds(range(n)))
    x, sigma = net.calls[-1]
    overlap = x[::lay.n, :, :, 4:].std(0)               # window 0's right half, shared with window 1
    assert (overlap / sigma).max() < 0.9                # the overlap holds the mean of 2 noises


@pytest.mark.parametrize("mode", ["multidiffusion", "gf", "gaussian"])
def test_no_pixel_is_left_at_zero(mode):
    one = lambda x, sigma, cond=None: torch.ones_like(x)
    out = fusion.panorama(one, (1, 8, 19), [0], window=8, stride=5, mode=mode, sampler="euler", steps=3)
    assert torch.allclose(out, torch.ones_like(out))     # incl. the corners GF's released code zeroes


def test_style_alignment():
    g = [torch.Generator().manual_seed(3)]
    z = torch.randn(1, 2, 8, 20, generator=torch.Generator().manual_seed(1))
    assert fusion.style_aligned_noise(z, (8, 8), 0.0, g) is z
    full = fusion.style_aligned_noise(z, (8, 8), 1.0, [torch.Generator().manual_seed(3)])
    tile = torch.randn((2, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(full[0, :, :, :8], tile, atol=1e-5) and torch.allclose(full[0, :, :, 8:16], tile, atol=1e-5)
    assert torch.allclose(full[0, :, :, 16:], tile[:, :, :4], atol=1e-5)
    half = fusion.style_aligned_noise(z, (8, 8), 0.5, [torch.Generator().manual_seed(3)])
    # slerp keeps the norm (for near-orthogonal z, z_ref) and moves cells toward each other
    assert abs(half.norm() / z.norm() - 1) < 0.1
    cell_corr = lambda t: torch.corrcoef(torch.stack([t[0, :, :, :8].flatten(), t[0, :, :, 8:16].flatten()]))[0, 1]
    assert cell_corr(half) > 0.3 > abs(cell_corr(z))
    with pytest.raises(ValueError, match="alpha must be in"):
        fusion.style_aligned_noise(z, (8, 8), 1.5, g)
    a = fusion.panorama(PixelNet(), (1, 8, 16), [4], window=8, stride=4, steps=3, style_alpha=0.0)
    b = fusion.panorama(PixelNet(), (1, 8, 16), [4], window=8, stride=4, steps=3)
    assert torch.equal(a, b)


def test_circular_panorama_wraps_seamlessly():
    """Rolling the canvas by a multiple of the stride permutes the windows: the output rolls with it."""
    net = ConvNet()
    kw = dict(window=8, stride=4, circular=True, sampler="ddim", steps=4)
    with torch.no_grad():
        a = fusion.panorama(net, (2, 8, 24), [3], **kw)
        noise = PerSampleNoise.from_seeds([3])(torch.empty(1, 2, 8, 24)).roll(8, dims=-1)
        import windowguide.fusion as f
        orig = f.PerSampleNoise.from_seeds

        class Rolled(PerSampleNoise):
            def __call__(self, like):
                return noise.clone()
        f.PerSampleNoise.from_seeds = classmethod(lambda cls, s: Rolled([torch.Generator()]))
        try:
            b = fusion.panorama(net, (2, 8, 24), [3], **kw)
        finally:
            f.PerSampleNoise.from_seeds = orig
    assert torch.allclose(a.roll(8, dims=-1), b, atol=1e-5)


def test_guidance_inside_every_window_batches_all_windows():
    net = ConvNet()

    class Counted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls, self.rows = 0, 0

        def forward(self, x, sigma, cond=None):
            self.calls += 1
            self.rows += x.shape[0]
            return net(x, sigma)
    counted = Counted()
    from windowguide.denoiser import EDMDenoiser
    d = EDMDenoiser(counted)
    with torch.no_grad():
        guided = fusion.panorama(d, (2, 8, 20), [0, 1], window=8, stride=4, steps=3, sampler="euler",
                                 guidance=MSWG(1.0, window=4, windows_per_side=3))
        plain = fusion.panorama(net, (2, 8, 20), [0, 1], window=8, stride=4, steps=3, sampler="euler")
    assert (guided - plain).abs().max() > 1e-4
    # 4 windows x 2 samples; per step one call with the windows and all their crops (2 sizes -> 2 calls)
    assert counted.calls == 3 * 2 and counted.rows == 3 * (8 + 8 * 9)


def test_panorama_bench_seam_score():
    from windowguide.bench.panorama import border_columns, crops_of, seam_score
    cols = border_columns(40, 16, 8)                 # windows at 0, 8, 16, 24: borders 8, 16, 24, 32
    assert cols == [8, 16, 24, 32]
    g = torch.Generator().manual_seed(0)
    smooth = torch.randn(64, 1, 4, 40, generator=g) * 0.1
    assert abs(seam_score(smooth, cols) - 1) < 0.1
    seamed = smooth.clone()
    for c in cols:
        seamed[..., c:] += 0.5 * torch.randn(64, 1, 4, 1, generator=g)   # a jump into every border column
    assert seam_score(seamed, cols) > 3
    assert crops_of(torch.arange(2 * 1 * 2 * 8.0).view(2, 1, 2, 8), 4).shape == (4, 1, 2, 4)
