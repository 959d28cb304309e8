"""``windowguide video``: a Wan pipeline folder and a saved video model through the CLI (frames and MP4, equal to
the Python path bit for bit), resuming per seed, and the refusals."""
import json
import os

import numpy as np
import pytest
import torch

import windowguide as wg
from pipes import tiny_sd, tiny_wan
from windowguide.cli import main
from windowguide.commands.video import read_mp4
from windowguide.files import read_png
from windowguide.video import long_video

pytest.importorskip("av")


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "wan"
    tiny_wan().save_pretrained(folder)
    return folder


def _frames(folder, seed, n):
    return np.stack([read_png(str(folder / f"video_{seed:06d}" / f"frame_{i:04d}.png")) for i in range(n)])


def test_wan_folder_long_video_equals_the_python_path_and_resumes(wan_dir, tmp_path):
    out = tmp_path / "v"
    args = ["video", "--model", str(wan_dir), "--prompt", "a red cat", "--frames", "9", "--height", "16", "--width", "16",
            "--steps", "3", "--window-frames", "5", "--stride-frames", "2", "--guidance",
            "cfg:w=2+mswg:w=0.5,window=3x8x8", "--seeds", "1", "--out", str(out)]
    assert main(args) == 0
    got = _frames(out, 1, 9)
    from windowguide.commands.sample_pipeline import load_pipeline
    m = wg.from_pipeline(load_pipeline(str(wan_dir), "cpu"))
    pos, neg = m.encode(prompt="a red cat")
    m.denoiser.null_cond = {k: v[0] for k, v in neg.items()}
    with torch.no_grad():
        x = long_video(m.denoiser, (4, 9, 8, 8), [1], (5, 8, 8), stride=(2, 8, 8), sampler="flow_euler",
                       sigmas=m.sigmas(3), cond=pos, guidance=wg.CFG(2.0) + wg.MSWG(0.5, window=(3, 8, 8)))
    assert np.array_equal(got, m.decode(x)[0])
    mp4 = read_mp4(str(out / "video_000001.mp4"))
    # H.264 (yuv420p) is lossy on this noise-like tiny video: the frames' mean colours must agree
    # frames under 64 pixels are enlarged by whole pixels for viewing (#38): 16 x 16 -> 64 x 64
    assert mp4.shape == (9, 64, 64, 3) and np.abs(mp4.mean(axis=(1, 2)) - got.mean(axis=(1, 2))).max() < 6
    stamp = os.path.getmtime(out / "video_000001.mp4")
    assert main(args) == 0 and os.path.getmtime(out / "video_000001.mp4") == stamp        # resumed: not redrawn
    settings = json.loads((out / "settings.json").read_text())
    assert settings["window"] == [4, 5, 8, 8] and settings["stride"] == 2


def test_saved_video_model_and_refusals(tmp_path, wan_dir):
    from windowguide.models.checkpoint import load_denoiser, save_model
    from windowguide.models.video import VideoUNet
    torch.manual_seed(0)
    net = VideoUNet(channels=1, base=8, mults=(1, 2))
    torch.nn.init.normal_(net.conv_out.weight, 0, 0.05)
    save_model(str(tmp_path / "v.safetensors"), net, "video", shape=[1, 4, 8, 8])
    out = tmp_path / "b"
    assert main(["video", "--model", str(tmp_path / "v.safetensors"), "--frames", "12", "--steps", "3", "--seeds", "0",
                 "--guidance", "mswg:w=0.5,window=4x6x6", "--mode", "multidiffusion", "--sampler", "ddpm", "--vcf",
                 "--out", str(out)]) == 0
    den, _, _ = load_denoiser(str(tmp_path / "v.safetensors"))
    from windowguide.sampling import karras_sigmas
    with torch.no_grad():
        x = long_video(den, (1, 12, 8, 8), [0], (4, 8, 8), stride=(2, 8, 8), mode="multidiffusion", sampler="ddpm",
                       vcf=True, sigmas=karras_sigmas(3, 0.002, 80.0), guidance=wg.MSWG(0.5, window=(4, 6, 6)))
    want = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0, 0].numpy()
    assert np.array_equal(_frames(out, 0, 12)[..., 0], want)
    bad = [(["--frames", "13"], "multiple of 2"), (["--prompt", "a cat"], "unconditional video model"),
           (["--window-frames", "40"], "longer than the video")]
    for extra, msg in bad:
        assert main(["video", "--model", str(tmp_path / "v.safetensors"), "--out", str(tmp_path / "x"), *extra]) == 2
    sd = tmp_path / "sd"
    tiny_sd(tmp_path).save_pretrained(sd)
    assert main(["video", "--model", str(sd), "--prompt", "a", "--out", str(tmp_path / "y")]) == 2
    assert main(["video", "--model", "mirror", "--out", str(tmp_path / "z")]) == 2
