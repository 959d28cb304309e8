"""Tiled VAE decoding: ours equals the one-shot decode; diffusers' tiling shifts colours between tiles."""
import pytest
import torch

from windowguide.adapters.vae_tiling import decode_tiled
from windowguide.errors import WindowguideError


def _vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16),
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4, sample_size=32).eval()


def test_tiled_decode_equals_one_shot_and_diffusers_tiling_does_not():
    vae = _vae()
    g = torch.Generator().manual_seed(1)
    # a canvas with different content left and right (as a panorama has), small enough to decode at once
    z = torch.randn(1, 4, 8, 40, generator=g)
    z[..., 20:] = z[..., 20:] * 0.3 + 1.5
    with torch.no_grad():
        one_shot = vae.decode(z).sample
        ours = decode_tiled(vae, z, tile=12)
        vae.enable_tiling()                        # 32-pixel tiles (8 latent), a quarter overlap
        vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = 32, 8, 0.25
        theirs = vae.decode(z).sample
        vae.disable_tiling()
    assert ours.shape == one_shot.shape == (1, 3, 32, 160)
    ours_err, theirs_err = (ours - one_shot).abs().max().item(), (theirs - one_shot).abs().max().item()
    assert ours_err < 1e-5
    assert theirs_err > 100 * ours_err          # per-tile GroupNorm statistics move the colours


def test_unsupported_decoders_are_named():
    vae = _vae()
    vae.decoder.up_blocks[0].upsamplers[0].use_conv_transpose = True
    with pytest.raises(WindowguideError, match="nearest-neighbour upsampling"):
        decode_tiled(vae, torch.zeros(1, 4, 4, 4))
