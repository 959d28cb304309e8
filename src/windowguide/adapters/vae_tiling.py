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
    """A VAE resnet block, x + conv2(act(norm2(conv1(act(norm1 x))))), in diffusers' layout (``nonlinearity``,
    ``conv_shortcut``, ``output_scale_factor``) or the original LDM one (``swish``, ``nin_shortcut``)."""
    act = getattr(block, "nonlinearity", None) or F.silu
    h = act(_group_norm(block.norm1, x))
    h = _conv(block.conv1, h, tile, device)
    h = act(_group_norm(block.norm2, h))
    h = _conv(block.conv2, h, tile, device)
    shortcut = getattr(block, "conv_shortcut", None) or getattr(block, "nin_shortcut", None)
    if shortcut is not None:
        x = _conv(shortcut, x, tile, device)
    return (x + h) / getattr(block, "output_scale_factor", 1.0)


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


def _check_ldm(model) -> None:
    """The original LDM layout (ComfyUI's ``AutoencoderKL``): ``encoder.down[i].block / .downsample``,
    ``decoder.up[i].block / .upsample``, ``mid.block_1 / attn_1 / block_2``, 2-D convolutions, no attention
    outside the middle block."""
    enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
    name = type(model).__name__
    if enc is None or dec is None or not hasattr(enc, "down") or not hasattr(dec, "up"):
        raise WindowguideError(f"exact tiled VAE: {name} is not an AutoencoderKL of the LDM layout (the SD 1.x / 2.x / "
                               f"XL / SD3 / FLUX VAEs); use ComfyUI's VAE Decode (Tiled) for it")
    for level in list(enc.down) + list(dec.up):
        if len(getattr(level, "attn", [])) or any(b.conv1.weight.ndim != 4 for b in level.block):
            raise WindowguideError(f"exact tiled VAE: {name} has attention or 3-D convolutions outside its middle block "
                                   f"(a video VAE?); supported: the image AutoencoderKL")
        for r in ("downsample", "upsample"):
            if hasattr(level, r) and not getattr(level, r).with_conv:
                raise WindowguideError(f"exact tiled VAE: {name} resamples without a convolution")
    if getattr(dec, "tanh_out", False) or getattr(dec, "give_pre_end", False):
        raise WindowguideError(f"exact tiled VAE: {name}'s decoder ends otherwise than norm, SiLU, conv")


@torch.no_grad()
def ldm_decode_tiled(model, z: torch.Tensor, tile: int = 256, store: str | torch.device = "cpu") -> torch.Tensor:
    """``model.decode(z)`` of an LDM-layout AutoencoderKL (ComfyUI's ``first_stage_model``), as
    ``decode_tiled``: every GroupNorm over the whole image, every convolution in ``tile`` x ``tile``
    output tiles, the middle block (global attention at latent size) whole."""
    _check_ldm(model)
    dec, device = model.decoder, next(model.parameters()).device
    h = z.to(device, next(model.parameters()).dtype)
    if getattr(model, "post_quant_conv", None) is not None:
        h = model.post_quant_conv(h)
    h = dec.conv_in(h)
    h = dec.mid.block_2(dec.mid.attn_1(dec.mid.block_1(h, None)), None).to(store)
    for level in reversed(range(len(dec.up))):
        up = dec.up[level]
        for block in up.block:
            h = _resnet(block, h, tile, device)
        if level != 0:
            h = _conv(up.upsample.conv, F.interpolate(h, scale_factor=2.0, mode="nearest"), tile, device)
    h = F.silu(_group_norm(dec.norm_out, h))
    return _conv(dec.conv_out, h, tile, device)


@torch.no_grad()
def ldm_encode_tiled(model, x: torch.Tensor, tile: int = 256, store: str | torch.device = "cpu") -> torch.Tensor:
    """The latent mean of ``model.encode(x)`` (x in [-1, 1]) of an LDM-layout AutoencoderKL: the encoder
    as ``encode_tiled`` runs it (each strided downsampling conv after the layout's (0, 1, 0, 1) padding),
    then ``quant_conv``, then the mean half of the moments (the mode ComfyUI encodes to)."""
    _check_ldm(model)
    enc, device = model.encoder, next(model.parameters()).device
    h = _conv(enc.conv_in, x.to(store, next(model.parameters()).dtype), tile, device)
    for level, down in enumerate(enc.down):
        for block in down.block:
            h = _resnet(block, h, tile, device)
        if level != len(enc.down) - 1:
            h = _conv(down.downsample.conv, F.pad(h, (0, 1, 0, 1)), tile, device)
    h = h.to(device)
    h = enc.mid.block_2(enc.mid.attn_1(enc.mid.block_1(h, None)), None).to(store)
    h = _conv(enc.conv_out, F.silu(_group_norm(enc.norm_out, h)), tile, device)
    if getattr(model, "quant_conv", None) is not None:
        h = _conv(model.quant_conv, h, tile, device)
    gaussian = type(getattr(model, "regularization", None)).__name__ == "DiagonalGaussianRegularizer"
    return h.chunk(2, dim=1)[0] if gaussian else h


__all__ = ["decode_tiled", "encode_tiled", "ldm_decode_tiled", "ldm_encode_tiled"]
