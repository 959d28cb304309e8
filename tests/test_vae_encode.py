"""The exact tiled VAE encode (``adapters.vae_tiling.encode_tiled``): the one-shot encode's moments,
whatever the tile, where diffusers' ``enable_tiling`` encode differs (each tile normalises alone)."""
import pytest
import torch

from pipes import tiny_vae
from windowguide.adapters.vae_tiling import encode_tiled
from windowguide.errors import WindowguideError


@pytest.mark.parametrize("tile", [8, 16, 1000])
def test_tiled_encode_equals_the_one_shot_encode(tile):
    vae = tiny_vae()
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.parameters
        assert (encode_tiled(vae, x, tile=tile) - ref).abs().max() <= 1e-5


def test_diffusers_tiled_encode_differs_where_ours_does_not():
    vae = tiny_vae()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(1, 3, 64, 48, generator=g) - 1, torch.rand(1, 3, 64, 48, generator=g)], dim=3)
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.parameters
        ours = (encode_tiled(vae, x, tile=16) - ref).abs().max()
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = 32, 16
        theirs = (vae.encode(x).latent_dist.parameters - ref).abs().max()
    print(f"max |tiled - one shot|: windowguide {float(ours):.2e}, diffusers enable_tiling {float(theirs):.2e}")
    assert ours <= 1e-5 < theirs


def test_encoders_it_cannot_tile_are_refused_by_name():
    class Other(torch.nn.Module):
        encoder = type("E", (), {"down_blocks": [torch.nn.Identity()]})()
    with pytest.raises(WindowguideError, match="Identity blocks are not supported"):
        encode_tiled(Other(), torch.zeros(1, 3, 8, 8))
