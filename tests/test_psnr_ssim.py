"""PSNR and SSIM (windowguide.metrics.pixels) against torchmetrics' on the same images."""
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from windowguide.metrics.pixels import psnr, ssim


def test_psnr_and_ssim_equal_torchmetrics():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 24, 40, generator=g) * 2 - 1
    x = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    a, b = (x + 1) / 2, (ref + 1) / 2
    for i in range(3):
        want = peak_signal_noise_ratio(a[i:i + 1], b[i:i + 1], data_range=1.0)
        torch.testing.assert_close(psnr(x, ref)[i], want, atol=1e-4, rtol=1e-5)
        want = structural_similarity_index_measure(a[i:i + 1], b[i:i + 1], data_range=1.0)
        torch.testing.assert_close(ssim(x, ref)[i], want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ssim(ref, ref), torch.ones(3), atol=1e-6)
