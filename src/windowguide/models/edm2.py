"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", appendix B and figure 21), written here from the paper.

Every layer keeps unit expected magnitude:

    normalize(x)   = x / (eps + |x| / sqrt(n))             (per sample or per pixel, eps = 1e-4)
    MPConv(x; g)   = conv(x, g * w_hat / sqrt(fan_in)),     w_hat = normalize(w) per output channel
    mp_silu(x)     = silu(x) / 0.596                         (eq. 81)
    mp_sum(a, b; t)= ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)    (eq. 88)
    mp_cat(a, b; t)= [w_a a, w_b b],  w_a = C (1 - t) / sqrt(N_a), w_b = C t / sqrt(N_b),
                     C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2))      (eq. 103)
    Fourier(s)     = sqrt(2) cos(2 pi (f s + phi)),  f ~ N(0, 1), phi ~ U(0, 1) fixed  (eq. 75)

Preconditioning (EDM): D(x; sigma, c) = c_skip x + c_out F(c_in x; c_noise, c), with
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
c_noise = ln(sigma) / 4, sd = 0.5; a separate Fourier + linear head gives the learned log-variance
u(sigma) used only in training. Class labels are one-hot vectors; the null condition is the zero vector.

The parameter names are those of the authors' checkpoints (``unet.enc.64x64_block0.conv_res0.weight``
...), so converted weights load as they are. The ``forced weight normalisation`` of training (the
stored weights are re-normalised at every training step) is kept, so the net can also be trained.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..denoiser import EDMDenoiser


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + |x|_dim / sqrt(numel over dim)), the norm taken in float32."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=dim)


def resample(x: torch.Tensor, taps: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """Down (stride-2 depthwise filter f f^T / (sum f)^2) or up (its transpose, times 4) or keep.
    With the default taps [1, 1]: 2 x 2 average pooling and nearest-neighbour upsampling."""
    if mode == "keep":
        return x
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f) / f.sum() ** 2
    pad = (len(taps) - 1) // 2
    c = x.shape[1]
    kernel = f.to(x.device, x.dtype)[None, None].repeat(c, 1, 1, 1)
    if mode == "down":
        return F.conv2d(x, kernel, groups=c, stride=2, padding=pad)
    return F.conv_transpose2d(x, kernel * 4, groups=c, stride=2, padding=pad)


class MPFourier(nn.Module):
    """Fixed random Fourier features of a scalar: sqrt(2) cos(s f + phi) with 2 pi folded into f, phi."""

    def __init__(self, channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        y = torch.outer(s.float(), self.freqs.float()) + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(s.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel [k, k]) or linear layer (kernel [])."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = cout
        self.weight = nn.Parameter(torch.randn(cout, cin, *kernel))

    def forward(self, x: torch.Tensor, gain=1.0) -> torch.Tensor:
        w = self.weight.float()
        if self.training:                       # forced weight normalisation (eq. 66)
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(nn.Module):
    """Encoder ('enc') or decoder ('dec') block of figure 21: optional resampling, a residual branch
    modulated by the embedding, optional self-attention, activation clipping."""

    def __init__(self, cin: int, cout: int, cemb: int, flavor: str = "enc", resample_mode: str = "keep",
                 resample_filter: Sequence[float] = (1, 1), attention: bool = False, channels_per_head: int = 64,
                 dropout: float = 0.0, res_balance: float = 0.3, attn_balance: float = 0.3, clip_act: float | None = 256):
        super().__init__()
        self.out_channels, self.flavor = cout, flavor
        self.resample_mode, self.resample_filter = resample_mode, tuple(resample_filter)
        self.num_heads = cout // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(cout if flavor == "enc" else cin, cout, [3, 3])
        self.emb_linear = MPConv(cemb, cout, [])
        self.conv_res1 = MPConv(cout, cout, [3, 3])
        self.conv_skip = MPConv(cin, cout, [1, 1]) if cin != cout else None
        self.attn_qkv = MPConv(cout, cout * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(cout, cout, [1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)                                   # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), self.attn_balance)
        return x.clip(-self.clip_act, self.clip_act) if self.clip_act is not None else x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine-style attention: q, k, v pixel-normalised per head, softmax(q^T k / sqrt(c))."""
        n, c, h, w = x.shape
        qkv = self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w)
        q, k, v = normalize(qkv, dim=2).unbind(3)                    # each [n, heads, c/heads, hw]
        weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        return self.attn_proj(torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(n, c, h, w))


class UNet(nn.Module):
    """The U-Net F of figure 21: per level, `num_blocks` encoder blocks (the first level after a 3x3
    conv of [x, 1]), downsampling blocks between levels; the decoder mirrors it with one more block
    per level, each taking mp_cat of the path and the matching skip."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, **block_kwargs):
        super().__init__()
        widths = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, [])
        self.emb_label = MPConv(label_dim, cemb, []) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = img_channels + 1
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, width, [3, 3])
                cout = width
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, "enc", "down", **block_kwargs)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = Block(cout, width, cemb, "enc", attention=res in attn_resolutions,
                                                          **block_kwargs)
                cout = width

        self.dec = nn.ModuleDict()
        skips = [b.out_channels for b in self.enc.values()]
        for level, width in reversed(list(enumerate(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, "dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, "dec", "up", **block_kwargs)
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = Block(cout + skips.pop(), width, cemb, "dec",
                                                          attention=res in attn_resolutions, **block_kwargs)
                cout = width
        self.out_conv = MPConv(cout, img_channels, [3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            label = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label, self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "_block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class EDM2Precond(nn.Module):
    """D(x; sigma, labels) of EDM2: the preconditioned UNet (see the module docstring).

    ``config`` holds the constructor arguments (the record a converted file carries)."""

    multiple = 8        # three 2x downsamplings
    # trained without label dropout: a zero label is not an unconditional model it has learned
    cfg_needs_unconditional_net = True

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, **unet_kwargs):
        super().__init__()
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                           use_fp16=use_fp16, sigma_data=sigma_data, logvar_channels=logvar_channels, **unet_kwargs)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.unet = UNet(img_resolution, img_channels, label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, [])
        self.multiple = 2 ** (len(unet_kwargs.get("channel_mult", (1, 2, 3, 4))) - 1)

    @property
    def num_classes(self) -> int:
        return self.label_dim

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, return_logvar: bool = False, dtype: torch.dtype | None = None):
        """``class_labels``: [N, label_dim] one-hot (or soft) vectors; None = the zero vector (null).
        The UNet's main path runs in ``dtype`` (default: float16 on CUDA when ``use_fp16``, as the
        authors run it, else float32); embeddings, weights and the preconditioning stay float32."""
        x = x.float()
        sigma = sigma.float().reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros(1, self.label_dim, device=x.device) if class_labels is None
                            else class_labels.float().reshape(-1, self.label_dim))
        else:
            class_labels = None
        if dtype is None or force_fp32:
            dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        f_x = self.unet((c_in * x).to(dtype), c_noise, class_labels)
        d_x = c_skip * x + c_out * f_x.float()
        if return_logvar:
            return d_x, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return d_x

    def denoiser(self) -> EDMDenoiser:
        """This net as a windowguide Denoiser: integer labels (num_classes = the null label, the zero
        vector) become one-hot vectors."""
        k = self.label_dim

        def D(x, sigma, cond=None):
            labels = None
            if k:
                cond = torch.full((x.shape[0],), k) if cond is None else cond.to(x.device).long().reshape(-1)
                labels = F.one_hot(cond, k + 1)[:, :k].float()     # the null label k -> the zero vector
            return self(x, sigma, labels)

        null = torch.tensor(k) if k else None
        return EDMDenoiser(D, multiple=self.multiple, null_cond=null)


# The sizes of the EDM2 paper (table 2 and the training presets): model_channels per size; every size
# has channel_mult (1, 2, 3, 4), 3 blocks per level, attention at 16 and 8.
SIZES = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}


def edm2_config(size: str, resolution: int = 512, **overrides) -> dict:
    """Constructor arguments of EDM2-{size} at ImageNet-512 (latent 64 x 64 x 4) or ImageNet-64 (RGB)."""
    base = (dict(img_resolution=64, img_channels=4, label_dim=1000) if resolution == 512 else
            dict(img_resolution=64, img_channels=3, label_dim=1000))
    return dict(base, model_channels=SIZES[size], **overrides)


__all__ = ["EDM2Precond", "UNet", "Block", "MPConv", "MPFourier", "normalize", "mp_silu", "mp_sum", "mp_cat",
           "resample", "SIZES", "edm2_config"]
