"""The regions' JSON / CLI syntax and their wiring into ``panorama``: boxes and masks to latent masks, the
bundled and pipeline commands against ``regional_panorama`` on the same regions, and networks that take
positions (FLUX) seeing each pair's window at its place."""
import json

import numpy as np
import pytest
import torch

import windowguide as wg
from pipes import tiny_flux, tiny_sd
from windowguide.cli import main
from windowguide.errors import WindowguideError
from windowguide.files import read_png, write_png
from windowguide.regional import Region, parse_region, read_regions, region_mask, regional_panorama


def test_box_and_mask_entries_to_latent_masks(tmp_path):
    assert parse_region("a red barn@0,8,16,24") == {"prompt": "a red barn", "box": [0, 8, 16, 24]}
    assert parse_region("a@b@0,0,8,8")["prompt"] == "a@b"
    m = region_mask({"prompt": "x", "box": [0, 5, 16, 19], "weight": 2.0}, (16, 32), 8)
    want = torch.zeros(2, 4)
    want[:, 0:3] = 2.0                                  # columns 5..18 widen to latent columns 0..2
    assert torch.equal(m, want)
    grey = np.zeros((16, 32, 3), np.uint8)
    grey[:, :8] = 255
    grey[:8, 8:16] = 51
    write_png(grey, str(tmp_path / "mask.png"))
    (tmp_path / "r.json").write_text(json.dumps({"regions": [{"prompt": "sky", "mask": "mask.png"}]}))
    entry = read_regions(str(tmp_path / "r.json"))[0]
    m = region_mask(entry, (16, 32), 8)
    assert torch.allclose(m, torch.tensor([[1.0, 0.2, 0, 0], [1.0, 0, 0, 0]]))
    for bad, msg in (({"prompt": "x", "box": [0, 0, 40, 8]}, "not inside the 16x32 canvas"),
                     ({"prompt": "x"}, "one of box / mask"), ({"prompt": "x", "class": 1, "box": [0, 0, 8, 8]}, "one of prompt"),
                     ({"prompt": "x", "box": [0, 0, 8, 8], "weight": -1}, "weight -1")):
        with pytest.raises(WindowguideError, match=msg):
            region_mask(bad, (16, 32), 8)
    with pytest.raises(WindowguideError, match="accepted: 'PROMPT@top,left,bottom,right'"):
        parse_region("a cat")


def test_bundled_panorama_with_regions_equals_regional_panorama(tmp_path):
    from windowguide.models.checkpoint import load_denoiser
    from windowguide.sampling import karras_sigmas
    out = tmp_path / "p"
    args = ["panorama", "--model", "scenes", "--width", "48", "--steps", "4", "--seeds", "1", "--class", "1",
            "--region", "2@0,24,24,48", "--out", str(out)]
    assert main(args) == 0
    denoiser, _, _ = load_denoiser("scenes")
    full, right = torch.ones(24, 48), torch.zeros(24, 48)
    right[:, 24:] = 1
    with torch.no_grad():
        x = regional_panorama(denoiser, (3, 24, 48), [1], [Region(torch.tensor([1]), full), Region(torch.tensor([2]), right)],
                              window=24, stride=8, sigmas=karras_sigmas(4, 0.002, 80.0))
    assert np.array_equal(read_png(str(out / "panorama_000001.png")), wg.images.to_uint8(x)[0])
    assert json.loads((out / "settings.json").read_text())["regions"] == [{"class": "2", "box": [0, 24, 24, 48]}]
    assert main(["panorama", "--model", "scenes", "--width", "48", "--region", "2@0,24,24,48", "--out",
                 str(tmp_path / "q")]) == 2                                 # half the canvas in no region
    assert not (tmp_path / "q").exists()


def test_pipeline_panorama_with_regions(tmp_path):
    sd = tiny_sd(tmp_path)
    sd.save_pretrained(tmp_path / "sd")
    (tmp_path / "r.json").write_text(json.dumps({"regions": [{"prompt": "blue dog", "box": [0, 16, 16, 32]}]}))
    out = tmp_path / "p"
    assert main(["panorama", "--model", str(tmp_path / "sd"), "--prompt", "a red cat", "--regions",
                 str(tmp_path / "r.json"), "--width", "32", "--height", "16", "--stride", "2", "--steps", "4",
                 "--seeds", "0", "--guidance", "cfg:w=2", "--out", str(out)]) == 0
    m = wg.from_pipeline(sd)
    pos_cat = m.encode(prompt="a red cat")[0]
    pos_dog, neg = m.encode(prompt="blue dog")
    m.denoiser.null_cond = neg[0]
    right = torch.zeros(8, 16)
    right[:, 8:] = 1
    with torch.no_grad():
        x = regional_panorama(m.denoiser, (4, 8, 16), [0], [Region(pos_cat, torch.ones(8, 16)), Region(pos_dog, right)],
                              window=8, stride=2, sigmas=m.sigmas(4, sampler="ddim"), guidance=wg.CFG(2.0),
                              **m.sampler_options("ddim", 4))
    want = m.decode(m.pipeline_latents(x, m.sigmas(4, sampler="ddim")))[0]
    assert np.array_equal(read_png(str(out / "panorama_000000.png")), want)


def test_flux_one_region_is_the_flux_panorama_windows_at_their_place(tmp_path):
    flux = tiny_flux(tmp_path)
    m = wg.from_pipeline(flux)
    pos, _ = m.encode(prompt="a red cat")
    sigmas = m.sigmas(3, shape=(4, 8, 8))
    kw = dict(window=8, stride=4, sampler="flow_euler", sigmas=sigmas, mode="gf")
    with torch.no_grad():
        plain = wg.fusion.panorama(m.denoiser, (4, 8, 16), [2], cond=pos, **kw)
        regional = regional_panorama(m.denoiser, (4, 8, 16), [2], [Region(pos, torch.ones(8, 16))], **kw)
    assert m.denoiser.canvas_positions and torch.equal(plain, regional)
