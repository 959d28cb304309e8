"""The page's callbacks (windowguide.ui): each tab returns the CLI's images on the same settings bit for bit,
the recipes built from the controls, the figures, and the refusals with the CLI's messages."""
import os
import zipfile

import numpy as np
import pytest

from windowguide.cli import main
from windowguide.errors import WindowguideError
from windowguide.files import read_png
from windowguide.ui import app, figures
from windowguide.ui.recipes import recipe


def _cli_pngs(argv, out, pattern="{:06d}.png", seeds=(0, 1)):
    assert main(argv + ["--out", str(out)]) == 0
    return [read_png(str(out / pattern.format(s))) for s in seeds]


def test_recipes_from_the_controls():
    assert recipe("none") == "none"
    assert recipe("mswg", 0.5, 16, 2) == "mswg:w=0.5,window=16,n=2"
    assert recipe("mswg", 0.8, 16, None, first=0, last=5) == "mswg:w=0.8,window=16,first=0,last=5"
    assert recipe("cfg+mswg", 0.3, 12, cfg=1.5) == "cfg:w=1.5+mswg:w=0.3,window=12"
    assert recipe("sgg", 0.4, 16, split=2.0, cfg=1.0) == "sgg:split=2,cfg=1,mswg=0.4,window=16"
    assert recipe("cfg", 1.0, 16, 2) == "cfg:w=1"
    with pytest.raises(WindowguideError, match="method 'bogus'"):
        recipe("bogus")
    assert app.recipe_of("mirror-cfg", "", 0, None, None, "", "", "", "") == "cfg:w=0.8"


def test_compare_equals_the_cli_bit_for_bit(tmp_path):
    cols = [(True, "", "none", 0, 16, 2, "", "", "", ""), (True, "", "mswg", 0.7, 16, 2, "", "", "", ""),
            (False, "", "cfg", 1, 16, 2, "", "", "", ""), (True, "mirror-cfg", "none", 0, 16, 2, "", "", "", "")]
    out = app.compare("mirror", "", "", "0-1", 6, "heun", cols, root=str(tmp_path))
    assert out["results"][2] is None and len(out["texts"]) == 3
    for k, spec in ((0, "none"), (1, "mswg:w=0.7,window=16,n=2"), (3, "cfg:w=0.8")):
        want = _cli_pngs(["sample", "--model", "mirror", "--guidance", spec, "--seeds", "0-1", "--steps", "6",
                          "--sampler", "heun"], tmp_path / f"cli{k}")
        got = out["results"][k].images
        assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == 2
        assert f"windowguide sample --model mirror --guidance {spec} --seeds 0-1" in out["commands"]
    assert "asymmetry" in out["texts"][0] and out["overlay"].shape == (24 * 8, 24 * 8, 3)
    names = zipfile.ZipFile(out["zip"]).namelist()
    assert "settings.json" in names and len([n for n in names if n.endswith(".png")]) == 6


def test_sweep_and_panorama_equal_the_cli(tmp_path):
    s = app.sweep("mirror", "", "", "3", 4, "euler", "mswg", "0, 1.5", 16, 2, root=str(tmp_path))
    for w, r in zip((0, 1.5), s["results"]):
        want = _cli_pngs(["sample", "--model", "mirror", "--guidance", f"mswg:w={w:g},window=16,n=2", "--seeds", "3",
                          "--steps", "4", "--sampler", "euler"], tmp_path / f"w{w}", seeds=(3,))
        assert np.array_equal(r.images[0], want[0])
    assert os.path.getsize(s["plot"]) > 0 and set(s["rows"][0]) >= {"asymmetry", "saturation"}
    p = app.panorama("scenes", "", "", "1", 4, "ddim", 48, 8, "gf", False, 0.0, False, "none", True,
                     root=str(tmp_path))
    want = _cli_pngs(["panorama", "--model", "scenes", "--width", "48", "--stride", "8", "--mode", "gf", "--sampler",
                      "ddim", "--steps", "4", "--seeds", "1", "--guidance", "none"], tmp_path / "pano",
                     "panorama_{:06d}.png", seeds=(1,))
    assert np.array_equal(p["results"][0].images[0], want[0]) and "seam" in p["text"]
    assert p["shown"][0].shape == (24 * 3, 48 * 3, 3)


def test_refusals_carry_the_clis_messages(tmp_path):
    bad = [(True, "", "mswg", 0.5, 99, 2, "", "", "", "")]
    with pytest.raises(WindowguideError, match="window 99"):
        app.compare("mirror", "", "", "0", 4, "heun", bad, root=str(tmp_path))
    with pytest.raises(WindowguideError, match="--sampler 'bogus'|invalid choice|bogus"):
        app.compare("mirror", "", "", "0", 4, "bogus", [(True, "", "none", 0, 16, 2, "", "", "", "")], root=str(tmp_path))
    with pytest.raises(WindowguideError, match="weights 'a,b'"):
        app.sweep("mirror", "", "", "0", 4, "heun", "mswg", "a,b", 16, 2, root=str(tmp_path))
    with pytest.raises(WindowguideError, match="no recipe is enabled"):
        app.compare("mirror", "", "", "0", 4, "heun", [(False, "", "none", 0, 16, 2, "", "", "", "")])
    with pytest.raises(WindowguideError, match="'x1': accepted: a whole number"):
        app.compare("mirror", "", "", "0", 4, "heun", [(True, "", "mswg", 0.5, 16, 2, "x1", "", "", "")])


def test_the_page_builds():
    pytest.importorskip("gradio")
    page = app.build()
    assert page is not None and "mirror" in app.bundled_models()[0]
    assert figures.crops_of_spec("none", 24, 24) is None


def test_a_pipeline_folder_in_compare_and_panorama(tmp_path):
    from pipes import tiny_sd
    tiny_sd(tmp_path).save_pretrained(tmp_path / "sd")
    sd = str(tmp_path / "sd")
    cols = [(True, "", "mswg", 0.5, 6, 2, "", "", "", "")]
    out = app.compare(sd, "", "a red cat", "0", 3, "ddim", cols, root=str(tmp_path))
    want = _cli_pngs(["sample", "--model", sd, "--prompt", "a red cat", "--guidance", "mswg:w=0.5,window=6,n=2",
                      "--seeds", "0", "--steps", "3", "--sampler", "ddim"], tmp_path / "cli", seeds=(0,))
    assert np.array_equal(out["results"][0].images[0], want[0])
    # the crops are laid out on the 8 x 8 latent and drawn at the 16 x 16 image's scale (x 8 enlarged)
    assert out["overlay"].shape == (128, 128, 3)
    p = app.panorama(sd, "", "a red cat", "0", 3, "ddim", 32, 2, "gf", False, 0.0, False, "none", True,
                     root=str(tmp_path))
    assert p["shown"][0].shape == (16 * 3, 32 * 3, 3) and "seam" in p["text"]
