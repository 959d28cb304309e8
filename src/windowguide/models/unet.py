"""A small fully convolutional UNet with EDM preconditioning (Karras et al. 2022, Table 1).

    D(x, sigma, label) = c_skip x + c_out F(c_in x, c_noise, label),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4.

Fully convolutional, so it runs on crops (SWG) and on any size that is a multiple of its total
downsampling factor ``multiple`` = 2^(levels - 1). Class labels use index ``num_classes`` as the null
label (trained by label dropout), which is what CFG asks for.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..denoiser import EDMDenoiser
from ..errors import WindowguideError


MAX_CLASSES = 1000      # ImageNet's; a label beyond this is a data error, not a class


def check_unet_config(channels: Any, base: Any, mults: Any, num_classes: Any, sigma_data: Any) -> None:
    """Refuse an architecture that cannot be built or would be absurdly large, naming the value."""
    def integer(v, lo, hi):
        return not isinstance(v, bool) and isinstance(v, int) and lo <= v <= hi
    if not integer(channels, 1, 16):
        raise WindowguideError(f"channels {channels!r}: accepted: an integer in 1..16")
    if not integer(base, 2, 1024) or base % 2:
        raise WindowguideError(f"base {base!r}: accepted: an even integer in 2..1024 (the UNet width)")
    if not isinstance(mults, (tuple, list)) or not 1 <= len(mults) <= 6 or not all(integer(m, 1, 16) for m in mults):
        raise WindowguideError(f"mults {mults!r}: accepted: 1 to 6 integers in 1..16, e.g. 1,2,2")
    if not integer(num_classes, 0, MAX_CLASSES):
        raise WindowguideError(f"num_classes {num_classes!r}: accepted: an integer in 0..{MAX_CLASSES}")
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not 0 < sigma_data < math.inf:
        raise WindowguideError(f"sigma_data {sigma_data!r}: accepted: a finite number > 0")


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb, skip: bool = False):
        if skip:   # skip-layer guidance: the residual branch is dropped, the shortcut kept
            return self.skip(x)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SmallUNet(nn.Module):
    """UNet of ``len(mults)`` levels with ``base * mult`` channels and one ResBlock per level and side."""

    def __init__(self, channels: int = 3, base: int = 32, mults: tuple[int, ...] = (1, 2, 2),
                 num_classes: int = 0, sigma_data: float = 0.5, emb: int | None = None, branch: bool = False):
        super().__init__()
        check_unet_config(channels, base, mults, num_classes, sigma_data)
        self.config = dict(channels=channels, base=base, mults=tuple(mults), num_classes=num_classes,
                           sigma_data=sigma_data, **({"branch": True} if branch else {}))
        emb = emb or 4 * base
        self.sigma_data, self.num_classes = sigma_data, num_classes
        self.multiple = 2 ** (len(mults) - 1)
        self.register_buffer("freqs", torch.randn(base // 2, generator=torch.Generator().manual_seed(0)) * 4)
        self.noise_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(num_classes + 1, emb) if num_classes else None
        chans = [base * m for m in mults]
        self.conv_in = nn.Conv2d(channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = chans[0]
        for ch in chans:
            self.down.append(ResBlock(prev, ch, emb))
            prev = ch
        self.mid = ResBlock(prev, prev, emb)
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(ResBlock(prev + ch, ch, emb))
            prev = ch
        self.norm_out = nn.GroupNorm(_groups(prev), prev)
        self.conv_out = nn.Conv2d(prev, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # the auxiliary branch of weak-to-strong training: a small head on the first block's output, a
        # shallow (weak) prediction of the same net, trained jointly on the plain target
        self.branch_out = nn.Sequential(nn.GroupNorm(_groups(chans[0]), chans[0]), nn.SiLU(),
                                        nn.Conv2d(chans[0], channels, 3, padding=1)) if branch else None

    def embed(self, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        ang = c_noise[:, None] * self.freqs[None] * 2 * math.pi
        e = self.noise_mlp(torch.cat([ang.cos(), ang.sin()], dim=1))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((c_noise.shape[0],), self.num_classes, device=c_noise.device)
            e = e + self.label_emb(labels.long())
        return F.silu(e)

    def block_names(self) -> list[str]:
        """Names of the ResBlocks, for skip-layer guidance: down0.., mid, up0.."""
        return ([f"down{i}" for i in range(len(self.down))] + ["mid"] +
                [f"up{i}" for i in range(len(self.up))])

    def raw(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
            skip: tuple[str, ...] = (), with_branch: bool = False):
        """F(x, c_noise, labels): the network without preconditioning; blocks named in ``skip``
        keep only their shortcut (skip-layer guidance's weak prediction). ``with_branch``: also the
        auxiliary branch's output (F, F_branch)."""
        unknown = sorted(set(skip) - set(self.block_names()))
        if unknown:
            raise WindowguideError(f"unknown blocks {unknown} to skip; this UNet has {self.block_names()}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise WindowguideError(f"input of size {tuple(x.shape[-2:])} is not a multiple of {self.multiple}, "
                             f"this UNet's downsampling factor")
        e = self.embed(c_noise, labels)
        h = self.conv_in(x)
        skips, branch = [], None
        for i, block in enumerate(self.down):
            h = block(h, e, f"down{i}" in skip)
            if i == 0 and with_branch:
                if self.branch_out is None:
                    raise WindowguideError("this UNet has no auxiliary branch (train it with --w2s branch or sgg)")
                branch = self.branch_out(h)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, e, "mid" in skip)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), e, f"up{i}" in skip)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, branch) if with_branch else out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None,
                skip: tuple[str, ...] = (), with_branch: bool = False):
        """The preconditioned denoiser D(x, sigma, labels); with ``with_branch`` the pair (D, D_branch),
        the branch preconditioned the same way."""
        sd = self.sigma_data
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        # mixed precision: the network in its weights' dtype (bf16 / fp16), the preconditioning in x's (fp32)
        dt = next(self.parameters()).dtype
        out = self.raw((c_in * x).to(dt), (s.flatten().log() / 4).to(dt), labels, skip, with_branch)
        if with_branch:
            return c_skip * x + c_out * out[0].to(x.dtype), c_skip * x + c_out * out[1].to(x.dtype)
        return c_skip * x + c_out * out.to(x.dtype)

    def denoiser(self) -> EDMDenoiser:
        """This net as a windowguide Denoiser (null label = num_classes for CFG)."""
        null = torch.tensor(self.num_classes) if self.num_classes else None
        return EDMDenoiser(self, multiple=self.multiple, null_cond=null)


def param_count(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
