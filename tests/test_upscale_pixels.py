"""Upscaling with the bundled pixel-space models (windowguide.upscaling.upscale_pixels) and its CLI."""
import numpy as np
import pytest
import torch

from windowguide.data import scenes
from windowguide.images import to_uint8
from windowguide.models.checkpoint import load_denoiser
from windowguide.sampling import SAMPLERS, PerSampleNoise, karras_sigmas
from windowguide.upscaling import resize, start_step, upscale_pixels


@pytest.fixture(scope="module")
def scenes_model():
    denoiser, info, net = load_denoiser("scenes")
    return denoiser, net


def _low(n=1, seed=5):
    real = to_uint8(scenes(n, 24, 96, seed=seed).images)
    return np.stack([resize(r, 0.5, "bicubic") for r in real])


def test_strength_zero_is_the_resized_image(scenes_model):
    denoiser, _ = scenes_model
    low = _low()[0]
    out = upscale_pixels(denoiser, low, 2, strength=0.0, seeds=[0, 1], window=24)
    assert out.shape == (2, 24, 96, 3) and np.array_equal(out[1], resize(low, 2))


def test_one_window_is_the_sampler_from_the_noised_image(scenes_model):
    denoiser, net = scenes_model
    low = _low()[0][:, :12]                                      # 12 x 12 -> one 24 x 24 window
    label = torch.tensor([net.num_classes])
    ours = upscale_pixels(denoiser, low, 2, strength=0.5, seeds=[4], steps=8, cond=label, window=24)
    sigmas = karras_sigmas(8, denoiser.sigma_min, denoiser.sigma_max)[start_step(8, 0.5):]
    z = torch.tensor(resize(low, 2)).permute(2, 0, 1)[None].float() / 127.5 - 1
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = SAMPLERS["ddim"](denoiser, z + sigmas[0] * eps, sigmas, label, noise=PerSampleNoise.from_seeds([4]))
    assert np.abs(ours[0].astype(int) - to_uint8(want)[0].astype(int)).max() <= 1


def test_windows_and_the_refusals(scenes_model):
    from windowguide.errors import WindowguideError
    denoiser, _ = scenes_model
    out = upscale_pixels(denoiser, _low()[0], 2, strength=0.4, seeds=[0], steps=6, window=24, mode="multidiffusion")
    assert out.shape == (1, 24, 96, 3)
    with pytest.raises(WindowguideError, match="accepted: gf, multidiffusion"):
        upscale_pixels(denoiser, _low()[0], 2, strength=0.4, window=24, mode="gaussian")
    with pytest.raises(WindowguideError, match="strength -0.1"):
        upscale_pixels(denoiser, _low()[0], 2, strength=-0.1, window=24)


def test_cli_on_the_bundled_scenes_model_and_progressive(tmp_path):
    from windowguide.cli import main
    from windowguide.files import read_png, write_png
    low = _low()[0]
    quarter = resize(low, 0.5, "bicubic")
    write_png(quarter, str(tmp_path / "in.png"))
    args = ["upscale", str(tmp_path / "in.png"), "--model", "scenes", "--scale", "4", "--progressive", "--strength",
            "0.5", "--steps", "6", "--seeds", "2", "--class", "1",
            "--out", str(tmp_path / "up")]
    assert main(args) == 0
    got = read_png(str(tmp_path / "up" / "upscaled_000002.png"))
    denoiser, _, _ = load_denoiser("scenes")
    want = quarter
    for _ in range(2):
        want = upscale_pixels(denoiser, want, 2, strength=0.5, steps=6, seeds=[2], cond=torch.tensor([1]), window=24)[0]
    assert got.shape == (24, 96, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert main(["upscale", str(tmp_path / "in.png"), "--model", "scenes", "--prompt", "a", "--out",
                 str(tmp_path / "x")]) == 2
