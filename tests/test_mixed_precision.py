"""Mixed precision (#36 item 3): the network in bf16, the canvas, folds, weights and VCF sums in fp32. On a
100-window canvas (GF + DDPM + VCF, M-SWG inside the windows) the result equals the fp32 run within bf16's
own tolerance, and is several times closer to it than the same run with a bf16 canvas (bf16 accumulation)."""
import copy

import torch

import windowguide as wg
from windowguide.models.checkpoint import load_denoiser


class Net(wg.Denoiser):
    """EDM-preconditioned D = c_skip x + c_out tanh(a c_in x + b) whose inner network runs in ``dtype``."""
    multiple, null_cond = 1, None

    def __init__(self, dtype):
        g = torch.Generator().manual_seed(0)
        self.dtype = dtype
        self.a, self.b = (torch.randn(3, 1, 1, generator=g).to(dtype) for _ in range(2))

    def forward(self, x, sigma, cond):
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        c_skip, c_out, c_in = 0.25 / (s ** 2 + 0.25), 0.5 * s / (s ** 2 + 0.25).sqrt(), 1 / (s ** 2 + 0.25).sqrt()
        return c_skip * x + c_out * torch.tanh(self.a * (c_in * x).to(self.dtype) + self.b).to(x.dtype)


def test_a_bf16_network_on_100_windows_stays_within_bf16_tolerance_with_fp32_sums():
    width = 24 + 8 * 99                                     # 100 windows of 24 at stride 8
    kw = dict(window=24, stride=8, mode="gf", sampler="ddpm", vcf=True, steps=8, guidance=wg.MSWG(0.5, window=16))
    with torch.no_grad():
        full = wg.panorama(Net(torch.float32), (3, 24, width), [0], **kw)
        mixed = wg.panorama(Net(torch.bfloat16), (3, 24, width), [0], **kw)
        bf16_sums = wg.panorama(Net(torch.bfloat16), (3, 24, width), [0], dtype=torch.bfloat16, **kw)
    assert mixed.dtype == torch.float32
    scale = float(full.abs().max())
    mixed_err, sums_err = (mixed - full).abs(), (bf16_sums.float() - full).abs()
    assert float(mixed_err.max()) <= 2 ** -7 * scale         # two bf16 ulps of the canvas's scale (measured 0.4 %)
    assert float(sums_err.mean()) >= 3 * float(mixed_err.mean())   # bf16 accumulation: measured 5x the error


def test_the_bundled_unet_runs_bf16_weights_under_fp32_preconditioning():
    scenes, _, net = load_denoiser("scenes")
    half = copy.deepcopy(net).to(torch.bfloat16).denoiser()
    x, sigma, labels = torch.randn(2, 3, 24, 24) * 2, torch.tensor([2.0, 0.3]), torch.tensor([1, 2])
    with torch.no_grad():
        a, b = scenes(x, sigma, labels), half(x, sigma, labels)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert float((a - b).abs().max()) <= 2 ** -6 * float(a.abs().max())     # bf16's tolerance on the output
