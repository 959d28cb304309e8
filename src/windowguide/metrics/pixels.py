"""Exact pixel statistics of images in [-1, 1] (NCHW), one value per image."""
from __future__ import annotations

import torch


def asymmetry(x: torch.Tensor) -> torch.Tensor:
    """Mirror error in [0, 1]: mean |x - flip_w(x)| / 2 over pixels and channels (0 = symmetric)."""
    return (x - x.flip(-1)).abs().mean(dim=(1, 2, 3)) / 2


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of RGB (or the single channel of grey images), in [0, 1]."""
    x = (x.clamp(-1, 1) + 1) / 2
    if x.shape[1] == 1:
        return x[:, 0]
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def contrast(x: torch.Tensor) -> torch.Tensor:
    """RMS contrast: standard deviation of the luminance over pixels."""
    return luminance(x).flatten(1).std(dim=1)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation (max - min) / max of RGB in [0, 1]; 0 for grey images."""
    if x.shape[1] == 1:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x = (x.clamp(-1, 1) + 1) / 2
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    return ((hi - lo) / hi.clamp_min(1e-6)).flatten(1).mean(dim=1)


def clipped_fraction(x: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """Share of values outside [-limit, limit] before clipping: over-saturation."""
    return (x.abs() > limit).flatten(1).double().mean(dim=1).to(x.dtype)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, on [0, 1] intensities: 10 log10(1 / MSE)."""
    a, b = (x.clamp(-1, 1) + 1) / 2, (ref.clamp(-1, 1) + 1) / 2
    mse = (a - b).double().pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp_min(1e-20))).to(x.dtype)


def ssim(x: torch.Tensor, ref: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, on [0, 1] intensities, each channel alike:

        SSIM = mean over valid pixels of (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),

    local moments under a ``size`` x ``size`` gaussian of std ``sigma`` on the reflect-padded image, averaged
    over every pixel (torchmetrics' convention), C1 = 0.01^2, C2 = 0.03^2."""
    from torch.nn import functional as F
    a, b = ((t.clamp(-1, 1).double() + 1) / 2 for t in (x, ref))
    c = a.shape[1]
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, size, size)
    p = (size - 1) // 2
    blur = lambda t: F.conv2d(F.pad(t, (p, p, p, p), mode="reflect"), k, groups=c)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = (blur(a * a) - mu_a ** 2).clamp_min(0), (blur(b * b) - mu_b ** 2).clamp_min(0)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).to(x.dtype)


def side_effect(m: dict, real: dict) -> float:
    """The side effect of a guidance method on a set of images, from their mean figures and the real
    images': |contrast - contrast_real| + |saturation - saturation_real| (0 on the real images)."""
    return abs(m["contrast"] - real["contrast"]) + abs(m["saturation"] - real["saturation"])
