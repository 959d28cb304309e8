"""A small 3-D convolutional UNet over (T, H, W) with EDM preconditioning, for the bundled video model:

    D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4),   the same c_* as ``SmallUNet``.

Fully convolutional in time and space, so it runs on clip-length windows of a longer video and on
M-SWG's crops in time or space; sizes must be multiples of ``multiple`` = 2^(levels - 1) on every axis.
Unconditional (no labels)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..denoiser import EDMDenoiser
from ..errors import WindowguideError


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv3d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class VideoUNet(nn.Module):
    """UNet of ``len(mults)`` levels of ``base * mult`` channels, one 3-D ResBlock per level and side,
    average-pooled by 2 on every axis between levels."""

    def __init__(self, channels: int = 1, base: int = 16, mults: tuple[int, ...] = (1, 2), sigma_data: float = 0.5):
        super().__init__()
        if not (1 <= channels <= 4 and 4 <= base <= 256 and base % 2 == 0 and 1 <= len(mults) <= 4):
            raise WindowguideError(f"VideoUNet(channels={channels}, base={base}, mults={mults}): accepted: 1-4 channels, "
                                   f"an even base in 4..256, 1-4 levels")
        self.config = dict(channels=channels, base=base, mults=tuple(mults), sigma_data=sigma_data)
        self.sigma_data, self.num_classes = sigma_data, 0
        self.multiple = 2 ** (len(mults) - 1)
        emb = 4 * base
        self.register_buffer("freqs", torch.randn(base // 2, generator=torch.Generator().manual_seed(0)) * 4)
        self.noise_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        chans = [base * m for m in mults]
        self.conv_in = nn.Conv3d(channels, chans[0], 3, padding=1)
        self.down, prev = nn.ModuleList(), chans[0]
        for ch in chans:
            self.down.append(ResBlock3d(prev, ch, emb))
            prev = ch
        self.mid = ResBlock3d(prev, prev, emb)
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(ResBlock3d(prev + ch, ch, emb))
            prev = ch
        self.norm_out = nn.GroupNorm(_groups(prev), prev)
        self.conv_out = nn.Conv3d(prev, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def raw(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """F(x, c_noise), the network without preconditioning."""
        if any(s % self.multiple for s in x.shape[-3:]):
            raise WindowguideError(f"a clip of size {tuple(x.shape[-3:])} (T, H, W) is not a multiple of {self.multiple} "
                                   f"on every axis, this network's downsampling factor")
        ang = c_noise[:, None] * self.freqs[None] * 2 * math.pi
        e = F.silu(self.noise_mlp(torch.cat([ang.cos(), ang.sin()], dim=1)))
        h, skips = self.conv_in(x), []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool3d(h, 2)
        h = self.mid(h, e)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), e)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
        sd = self.sigma_data
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1, 1)
        c_skip, c_out, c_in = sd ** 2 / (s ** 2 + sd ** 2), s * sd / (s ** 2 + sd ** 2).sqrt(), 1 / (s ** 2 + sd ** 2).sqrt()
        dt = next(self.parameters()).dtype        # mixed precision: the network in its weights' dtype
        return c_skip * x + c_out * self.raw((c_in * x).to(dt), (s.flatten().log() / 4).to(dt)).to(x.dtype)

    def denoiser(self) -> EDMDenoiser:
        """This net as a windowguide Denoiser (unconditional)."""
        return EDMDenoiser(self, multiple=self.multiple)
