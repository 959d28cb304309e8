"""Upscaling over windows (windowguide.upscaling): its round trip at strength 0, diffusers' img2img when one
window covers the image, several windows, and the refusals."""
import numpy as np
import pytest
import torch

import windowguide as wg
from pipes import tiny_sd
from windowguide.errors import WindowguideError
from windowguide.upscaling import encode_image, resize, upscale


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("up"))


def _image(h, w, seed=0):
    return (torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed)) * 255).round().to(torch.uint8).numpy()


def test_strength_zero_is_the_resized_images_round_trip(sd):
    image = _image(8, 12)
    out = upscale(sd, image, scale=2, strength=0.0, seeds=[0, 1])
    big = resize(image, 2)
    want = wg.from_pipeline(sd).decode(encode_image(sd, big))
    assert out.shape == (2, 16, 24, 3) and np.array_equal(out[0], want[0]) and np.array_equal(out[1], want[0])


def test_one_window_is_diffusers_img2img_on_the_same_latents(sd):
    from diffusers import StableDiffusionImg2ImgPipeline
    image = _image(8, 8, seed=3)
    ours = upscale(sd, image, scale=2, strength=0.6, seeds=[5], steps=10, prompt="a red cat", negative_prompt="blue dog",
                   guidance=wg.CFG(2.0))
    img2img = StableDiffusionImg2ImgPipeline(**sd.components)
    img2img.set_progress_bar_config(disable=True)
    z = encode_image(sd, resize(image, 2))
    with torch.no_grad():
        ref = img2img("a red cat", image=z, strength=0.6, num_inference_steps=10, guidance_scale=3.0,
                      negative_prompt="blue dog", generator=torch.Generator().manual_seed(5), output_type="np").images
    assert np.abs(ours[0].astype(int) - (ref[0] * 255).round().astype(int)).max() <= 1


def test_several_windows_and_the_refusals(sd):
    out = upscale(sd, _image(8, 16), scale=2, strength=0.5, seeds=[0], steps=6, stride=4, mode="gf", prompt="a cat")
    assert out.shape == (1, 16, 32, 3)
    with pytest.raises(WindowguideError, match="17x16 is not a multiple of 4 pixels; accepted sizes: 16x16 or 20x20"):
        upscale(sd, np.zeros((16, 17, 3), np.uint8), scale=1, prompt="a cat")
    with pytest.raises(WindowguideError, match="needs a prompt"):
        upscale(sd, _image(8, 8), strength=0.5)
    with pytest.raises(WindowguideError, match="strength 1.5"):
        upscale(sd, _image(8, 8), strength=1.5)
    with pytest.raises(WindowguideError, match="filter 'box2'"):
        resize(_image(8, 8), 2, "box2")


def test_cli_upscale_and_progressive(sd, tmp_path):
    from windowguide.cli import main
    from windowguide.files import read_png, write_png
    from windowguide.upscaling import progressive_upscale
    sd.save_pretrained(tmp_path / "sd")
    image = _image(8, 8, seed=2)
    write_png(image, str(tmp_path / "in.png"))
    out = tmp_path / "up"
    args = ["upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "sd"), "--prompt", "a red cat", "--scale", "2",
            "--strength", "0.5", "--steps", "6", "--seeds", "3", "--guidance", "cfg:w=2+mswg:w=0.5,window=6",
            "--out", str(out)]
    assert main(args) == 0
    got = read_png(str(out / "upscaled_000003.png"))
    want = upscale(sd, image, 2, strength=0.5, steps=6, seeds=[3], prompt="a red cat",
                   guidance=wg.CFG(2.0) + wg.MSWG(0.5, window=6))[0]
    assert got.shape == (16, 16, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    four = progressive_upscale(sd, image, 4, seeds=[3], strength=0.5, steps=4, prompt="a red cat")
    assert four.shape == (1, 32, 32, 3)
    assert main(["upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "sd"), "--prompt", "a", "--scale", "3",
                 "--progressive", "--out", str(tmp_path / "p3")]) == 2
