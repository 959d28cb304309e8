"""Decoding large latents in tiles without seams or colour shifts.

diffusers' ``vae.enable_tiling()`` decodes overlapping latent tiles separately and blends them: every
GroupNorm then normalises with the statistics of its own tile, so tiles of a sky and of a forest get
different colours, and the blend hides the seam only partly. Here the decoder is run layer by layer:
the activations of the whole image are kept on a store device (the CPU by default), each convolution
is computed tile by tile on the compute device from the stored input with its halo (so it equals the
whole convolution), and each GroupNorm uses the statistics of the whole image. The result is the
one-shot decode up to float rounding, while the compute device only ever holds one tile of a
convolution. The middle block (at latent resolution, with its global attention) runs whole.

Supported: ``AutoencoderKL`` decoders of ``UpDecoderBlock2D`` blocks (Stable Diffusion 1.x/2.x/XL, SD3,
FLUX VAEs); anything else is refused by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import WindowguideError


def _conv(conv: torch.nn.Conv2d, x: torch.Tensor, tile: int, device) -> torch.Tensor:
    """``conv(x)`` computed in output tiles of ``tile`` x ``tile`` from the stored x (zero padding as the
    conv's own); output rows r .. r1 read input rows r s .. (r1 - 1) s + k of the padded input."""
    if conv.dilation != (1, 1) or conv.groups != 1:
        raise WindowguideError("tiled VAE: only undilated, ungrouped convolutions are supported")
    ph, pw = conv.padding
    sh, sw = conv.stride
    xp = F.pad(x, (pw, pw, ph, ph))
    n = x.shape[0]
    kh, kw = conv.kernel_size
    h, w = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = torch.empty(n, conv.out_channels, h, w, dtype=x.dtype, device=x.device)
    weight, bias = conv.weight, conv.bias
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            r1, c1 = min(r + tile, h), min(c + tile, w)
            piece = xp[:, :, r * sh:(r1 - 1) * sh + kh, c * sw:(c1 - 1) * sw + kw].to(device, weight.dtype)
            out[:, :, r:r1, c:c1] = F.conv2d(piece, weight, bias, stride=(sh, sw)).to(x.device, x.dtype)
    return out


def _group_norm(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm with the statistics of the whole stored tensor."""
    w = norm.weight.to(x.device, x.dtype) if norm.weight is not None else None
    b = norm.bias.to(x.device, x.dtype) if norm.bias is not None else None
    return F.group_norm(x, norm.num_groups, w, b, norm.eps)


def _resnet(block, x: torch.Tensor, tile: int, device) -> torch.Tensor:
    h = block.nonlinearity(_group_norm(block.norm1, x))
    h = _conv(block.conv1, h, tile, device)
    h = block.nonlinearity(_group_norm(block.norm2, h))
    h = _conv(block.conv2, h, tile, device)
    if block.conv_shortcut is not None:
        x = _conv(block.conv_shortcut, x, tile, device)
    return (x + h) / block.output_scale_factor


def _check(vae) -> None:
    dec = vae.decoder
    for up in dec.up_blocks:
        if type(up).__name__ != "UpDecoderBlock2D":
            raise WindowguideError(f"tiled decode: {type(up).__name__} blocks are not supported (UpDecoderBlock2D only)")
        for r in up.resnets:
            if r.upsample is not None or r.downsample is not None or r.time_emb_proj is not None:
                raise WindowguideError("tiled decode: resnets with resampling or a time embedding are not supported")
        for u in up.upsamplers or []:
            if not (u.interpolate and u.use_conv) or u.norm is not None or u.use_conv_transpose:
                raise WindowguideError("tiled decode: only nearest-neighbour upsampling followed by a conv is supported")
    if not isinstance(dec.conv_norm_out, torch.nn.GroupNorm):
        raise WindowguideError("tiled decode: the decoder's output norm is not a GroupNorm")


@torch.no_grad()
def decode_tiled(vae, z: torch.Tensor, tile: int = 256, store: str | torch.device = "cpu") -> torch.Tensor:
    """``vae.decode(z).sample`` (the latents as the VAE takes them, already unscaled), computed layer by
    layer with whole-image GroupNorm statistics and convolutions in ``tile`` x ``tile`` output tiles."""
    _check(vae)
    dec, device = vae.decoder, next(vae.parameters()).device
    z = z.to(device, next(vae.parameters()).dtype)
    if getattr(vae, "post_quant_conv", None) is not None:
        z = vae.post_quant_conv(z)
    h = dec.mid_block(dec.conv_in(z), None).to(store)       # latent resolution: small, attention is global
    for up in dec.up_blocks:
        for block in up.resnets:
            h = _resnet(block, h, tile, device)
        for u in up.upsamplers or []:
            h = _conv(u.conv, F.interpolate(h, scale_factor=2.0, mode="nearest"), tile, device)
    h = dec.conv_act(_group_norm(dec.conv_norm_out, h))
    return _conv(dec.conv_out, h, tile, device)


def _check_encoder(vae) -> None:
    enc = getattr(vae, "encoder", None)
    for down in getattr(enc, "down_blocks", None) or [None]:
        if type(down).__name__ != "DownEncoderBlock2D":
            raise WindowguideError(f"tiled encode: {type(down).__name__} blocks are not supported (DownEncoderBlock2D only)")
        for r in down.resnets:
            if r.upsample is not None or r.downsample is not None or r.time_emb_proj is not None:
                raise WindowguideError("tiled encode: resnets with resampling or a time embedding are not supported")
        for d in down.downsamplers or []:
            if not d.use_conv or d.norm is not None:
                raise WindowguideError("tiled encode: only strided-conv downsampling is supported")
    if not isinstance(enc.conv_norm_out, torch.nn.GroupNorm):
        raise WindowguideError("tiled encode: the encoder's output norm is not a GroupNorm")


@torch.no_grad()
def encode_tiled(vae, x: torch.Tensor, tile: int = 256, store: str | torch.device = "cpu") -> torch.Tensor:
    """The moments of ``vae.encode(x).latent_dist`` ([N, 2C, h, w]: mean and log variance; x in [-1, 1]),
    computed as ``decode_tiled`` computes the decode: layer by layer, every GroupNorm with the whole
    image's statistics, every convolution in output tiles from the stored input (the strided
    downsampling convs too, after diffusers' (0, 1, 0, 1) padding), the middle block (global attention at
    the lowest resolution) whole. Equal to the one-shot encode up to float rounding."""
    _check_encoder(vae)
    enc, device = vae.encoder, next(vae.parameters()).device
    h = _conv(enc.conv_in, x.to(store, next(vae.parameters()).dtype), tile, device)
    for down in enc.down_blocks:
        for block in down.resnets:
            h = _resnet(block, h, tile, device)
        for d in down.downsamplers or []:
            if d.padding == 0:                       # diffusers pads right and bottom by one before a 0-pad conv
                h = F.pad(h, (0, 1, 0, 1))
            h = _conv(d.conv, h, tile, device)
    h = enc.mid_block(h.to(device), None).to(store)
    h = enc.conv_act(_group_norm(enc.conv_norm_out, h))
    h = _conv(enc.conv_out, h, tile, device)
    if getattr(vae, "quant_conv", None) is not None:
        h = _conv(vae.quant_conv, h, tile, device)
    return h


__all__ = ["decode_tiled", "encode_tiled"]
