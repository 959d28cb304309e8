"""The one run folder (windowguide.commands.runfolder) under every command that writes results: each
fault that independent checks found in upscale / video / regional folders, replayed through the CLI."""
import json
import os
import threading

import numpy as np
import pytest
import torch

from windowguide.cli import main
from windowguide.files import read_png, write_png


def _image(path, h=8, w=8, seed=0):
    a = (torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8).numpy()
    write_png(a, str(path))
    return a


def _upscale(tmp_path, out, *extra, image="in.png"):
    return main(["upscale", str(tmp_path / image), "--model", "scenes", "--steps", "4", "--strength", "0.5",
                 "--out", str(out), *extra])


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_upscale_with_other_settings_or_another_image_is_refused_and_nothing_is_mixed(tmp_path, capsys):
    _image(tmp_path / "in.png")
    out = tmp_path / "up"
    assert _upscale(tmp_path, out) == 0
    before = {n: (out / n).read_bytes() for n in _listing(out) if not n.startswith(".")}
    assert _upscale(tmp_path, out, "--strength", "0.6") == 2
    assert "strength: 0.5 there, 0.6 now" in capsys.readouterr().err
    _image(tmp_path / "in.png", seed=1)                       # the same path, another picture
    assert _upscale(tmp_path, out) == 2
    assert "image changed" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in _listing(out) if not n.startswith(".")} == before


def test_another_commands_folder_is_refused_by_name_and_stays_resumable(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sample", "--model", "digits", "--seeds", "0-1", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    settings = (out / "settings.json").read_bytes()
    _image(tmp_path / "in.png")
    assert _upscale(tmp_path, out) == 2
    assert "holds the results of 'windowguide sample'" in capsys.readouterr().err
    assert main(["video", "--model", "bounce", "--steps", "2", "--out", str(out)]) == 2
    assert (out / "settings.json").read_bytes() == settings
    assert main(args) == 0                                    # sample resumes its own folder


def test_a_fifo_as_settings_or_as_a_region_mask_is_refused_without_blocking(tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    os.mkfifo(out / "settings.json")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", main(
        ["panorama", "--width", "48", "--steps", "2", "--seeds", "0", "--out", str(out)])), daemon=True)
    t.start()
    t.join(60)
    assert result.get("rc") == 2 and "a FIFO" in capsys.readouterr().err
    os.mkfifo(tmp_path / "mask.png")
    (tmp_path / "r.json").write_text(json.dumps({"regions": [{"class": 1, "mask": "mask.png"}]}))
    t = threading.Thread(target=lambda: result.__setitem__("rc2", main(
        ["panorama", "--width", "48", "--steps", "2", "--seeds", "0", "--class", "0", "--regions",
         str(tmp_path / "r.json"), "--out", str(tmp_path / "q")])), daemon=True)
    t.start()
    t.join(60)
    assert result.get("rc2") == 2 and "a FIFO" in capsys.readouterr().err


def test_an_edited_region_mask_is_refused_on_resume(tmp_path, capsys):
    mask = np.zeros((24, 48, 3), np.uint8)
    mask[:, 24:] = 255
    write_png(mask, str(tmp_path / "m.png"))
    (tmp_path / "r.json").write_text(json.dumps({"regions": [{"class": 2, "mask": "m.png"}]}))
    args = ["panorama", "--width", "48", "--steps", "2", "--seeds", "0", "--class", "0", "--regions",
            str(tmp_path / "r.json"), "--out", str(tmp_path / "p")]
    assert main(args) == 0
    mask[:, 16:] = 255
    write_png(mask, str(tmp_path / "m.png"))
    assert main(args) == 2
    assert "region 0 mask changed" in capsys.readouterr().err


def test_video_links_planted_in_the_folder_are_replaced_not_followed_and_lost_frames_restored(tmp_path):
    out, outside = tmp_path / "v", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "keep.mp4").write_bytes(b"untouched")
    os.symlink(outside, out / "video_000000")                 # the frame folder
    os.symlink(outside / "keep.mp4", out / "video_000000.mp4")
    args = ["video", "--model", "bounce", "--steps", "2", "--seeds", "0", "--out", str(out)]
    assert main(args) == 0
    assert _listing(outside) == ["keep.mp4"] and (outside / "keep.mp4").read_bytes() == b"untouched"
    assert not os.path.islink(out / "video_000000") and not os.path.islink(out / "video_000000.mp4")
    frames = sorted(os.listdir(out / "video_000000"))
    assert len(frames) == 12 and not [n for n in _listing(out) if n.endswith(".tmp")]
    first = (out / "video_000000" / frames[0]).read_bytes()
    os.unlink(out / "video_000000" / frames[0])
    assert main(args) == 0
    assert (out / "video_000000" / frames[0]).read_bytes() == first


def test_refusals_come_before_the_folder_is_claimed(tmp_path, capsys):
    _image(tmp_path / "in.png")
    for extra, said in ((["--filter", "box2"], "filter 'box2'"), (["--stride", "0"], "--stride 0"),
                        (["--scale", "1e9"], "accepted: 1 pixel to"), (["--sampler", "bogus"], "bogus")):
        out = tmp_path / f"x{len(said)}"
        assert _upscale(tmp_path, out, *extra) == 2
        assert said in capsys.readouterr().err and not out.exists()
    for extra, said in ((["--style-alpha", "2"], "--style-alpha 2"), (["--frames", "4000000"], "GiB")):
        out = tmp_path / "vv"
        assert main(["video", "--model", "bounce", "--out", str(out), *extra]) == 2
        assert said in capsys.readouterr().err and not out.exists()
    assert main(["panorama", "--width", "1000000000", "--out", str(tmp_path / "pp")]) == 2
    assert "GiB" in capsys.readouterr().err and not (tmp_path / "pp").exists()


def test_a_broken_output_is_drawn_again(tmp_path):
    _image(tmp_path / "in.png")
    out = tmp_path / "up"
    assert _upscale(tmp_path, out) == 0
    good = read_png(str(out / "upscaled_000000.png"))
    (out / "upscaled_000000.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="does not decode"):
        assert _upscale(tmp_path, out) == 0
    assert np.array_equal(read_png(str(out / "upscaled_000000.png")), good)


def test_upscale_reads_photos_as_they_are_shown(tmp_path):
    from PIL import Image
    from windowguide.imageio import read_picture
    a = _image(tmp_path / "plain.png", 8, 12)
    im = Image.fromarray(a).rotate(-90, expand=True)          # stored sideways, EXIF says: rotate to view
    exif = Image.Exif()
    exif[0x0112] = 8                                          # "rotate 90 CW to view" undoes the -90 above
    im.save(tmp_path / "phone.png", exif=exif)
    upright, notes = read_picture(str(tmp_path / "phone.png"))
    assert upright.shape == (8, 12, 3) and notes == {"exif_orientation": 8} and np.array_equal(upright, a)
    out = tmp_path / "u"
    assert main(["upscale", str(tmp_path / "phone.png"), "--model", "scenes", "--steps", "2", "--out", str(out)]) == 0
    assert json.loads((out / "settings.json").read_text())["read"] == {"exif_orientation": 8}
    assert read_png(str(out / "upscaled_000000.png")).shape == (16, 24, 3)
    Image.fromarray(a[..., 0]).save(tmp_path / "grey.png")
    grey, notes = read_picture(str(tmp_path / "grey.png"))
    assert notes == {"grey": "repeated to RGB"} and np.array_equal(grey[..., 2], a[..., 0])
    rgba = np.concatenate([a, np.zeros((8, 12, 1), np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert (read_picture(str(tmp_path / "clear.png"))[0] == 255).all()     # fully transparent: the white below
    frames = [Image.fromarray(a), Image.fromarray(255 - a)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["upscale", str(tmp_path / "anim.gif"), "--model", "scenes", "--out", str(tmp_path / "g")]) == 2


def test_only_windowguides_own_errors_are_user_errors(tmp_path, monkeypatch, capsys):
    from windowguide.commands import upscale
    from windowguide.errors import WindowguideError
    _image(tmp_path / "in.png")

    def bug(*a, **k):
        raise TypeError("unsupported operand type(s) for /: 'str' and 'str'")
    monkeypatch.setattr(upscale, "run", bug)
    assert _upscale(tmp_path, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "internal error (a bug in windowguide" in err and "TypeError" in err
    path = err.split("the traceback is in ")[1].split(" ")[0]
    assert "raise TypeError" in open(path).read()
    os.unlink(path)
    monkeypatch.setattr(upscale, "run", lambda *a, **k: (_ for _ in ()).throw(WindowguideError("--x 1: accepted: 2")))
    assert _upscale(tmp_path, tmp_path / "o") == 2 and "error: --x 1: accepted: 2" in capsys.readouterr().err
    for out in ("", str(tmp_path / "in.png") + "/"):
        assert main(["sample", "--model", "digits", "--seeds", "0", "--out", out]) == 2


def test_a_fold_that_overflows_is_refused_not_written_as_nan():
    import windowguide as wg
    from windowguide.errors import NonFiniteError
    from windowguide.fusion import panorama

    class Huge(wg.Denoiser):
        multiple, null_cond = 1, None

        def forward(self, x, sigma, cond):
            return torch.full_like(x, 3e38)               # finite, but two windows' sum is not
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        panorama(Huge(), (1, 8, 16), [0], window=8, stride=4, steps=2, mode="multidiffusion")


def test_region_weights_that_would_overflow_are_refused(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps({"regions": [{"class": 1, "box": [0, 0, 24, 48], "weight": 1e30}]}))
    assert main(["panorama", "--width", "48", "--steps", "2", "--seeds", "0", "--regions", str(tmp_path / "r.json"),
                 "--out", str(tmp_path / "p")]) == 2
    assert "weight 1e+30: accepted: a number in (0, 10000]" in capsys.readouterr().err
    for entry, said in (({"class": 1, "box": [0, 0, True, 48]}, "box"), ({"class": 1, "mask": 5}, "mask 5"),
                        ({"class": 1.7, "box": [0, 0, 24, 48]}, "class 1.7")):
        (tmp_path / "r.json").write_text(json.dumps({"regions": [entry]}))
        assert main(["panorama", "--width", "48", "--regions", str(tmp_path / "r.json"), "--out",
                     str(tmp_path / "p2")]) == 2
        assert said in capsys.readouterr().err
    (tmp_path / "r.json").write_text('{"regions": [{"class": 1, "class": 2, "box": [0, 0, 24, 48]}]}')
    assert main(["panorama", "--width", "48", "--regions", str(tmp_path / "r.json"), "--out", str(tmp_path / "p3")]) == 2
    assert "appears twice" in capsys.readouterr().err
    (tmp_path / "r.json").write_text('{"regions": ' + "[" * 100000 + "]" * 100000 + "}")
    assert main(["panorama", "--width", "48", "--regions", str(tmp_path / "r.json"), "--out", str(tmp_path / "p4")]) == 2


def test_train_claims_its_folder_like_every_other_command(tmp_path, capsys):
    # train refuses another command's folder and a changed data file by name, before any step
    import numpy as np
    from windowguide.cli import main
    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), labels=np.arange(16) % 2)
    small = ["--steps", "2", "--base", "8", "--mults", "1,2", "--batch", "4"]
    assert main(["sample", "--model", "digits", "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "s")]) == 0
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "s"), *small]) == 2
    assert "holds the results of 'windowguide sample'" in capsys.readouterr().err
    assert not (tmp_path / "s" / "state.safetensors").exists()
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "t"), *small]) == 0
    np.savez(data, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), labels=np.arange(16) % 2)
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "t"), *small]) == 2
    assert "was made from other input files: dataset" in capsys.readouterr().err
