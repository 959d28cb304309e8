import json
import os

import numpy as np
import pytest
import torch

from windowguide.cli import main
from windowguide.commands import sample as sample_cmd
from windowguide.generate import sample
from windowguide.models.checkpoint import load_denoiser
from windowguide.train.edm import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", images=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 3)
    cfg = TrainConfig(dataset=str(d / "data.npz"), base=8, mults=(1, 2), batch=4, steps=4, checkpoint_every=4)
    return train(cfg, str(d / "run"), progress=False)


def test_sample_writes_pngs_grid_npz_and_settings(tmp_path, tiny_model):
    out = str(tmp_path / "s")
    spec = "cfg:w=1+mswg:w=0.5,window=4,n=3"
    assert main(["sample", "--model", tiny_model, "--guidance", spec, "--seeds", "0-4", "--out", out,
                 "--steps", "3"]) == 0
    files = sorted(f for f in os.listdir(out) if not f.startswith("."))
    assert files == ["000000.png", "000001.png", "000002.png", "000003.png", "000004.png", "grid.png",
                     "manifest.json", "samples.npz", "settings.json"]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["seeds"] == [0, 1, 2, 3, 4] and manifest["files"][4] == "000004.png"
    assert manifest["labels"] == [0, 1, 2, 0, 1]
    z = np.load(os.path.join(out, "samples.npz"))
    assert z["images"].shape == (5, 8, 8, 1) and z["images"].dtype == np.uint8
    assert z["seeds"].tolist() == [0, 1, 2, 3, 4] and z["labels"].tolist() == [0, 1, 2, 0, 1]
    settings = json.load(open(os.path.join(out, "settings.json")))
    assert settings["guidance"] == "cfg:w=1+mswg:n=3,w=0.5,window=4" and settings["steps"] == 3
    assert "seeds" not in settings        # the recipe only: the PNGs on disk say which seeds are done
    # the PNGs are the library's samples for those seeds and labels, rounded to 8 bits
    denoiser, _, _ = load_denoiser(tiny_model)
    g = sample_cmd.prepare(tiny_model, spec)[3]
    with torch.no_grad():
        x = sample(denoiser, (1, 8, 8), range(5), steps=3, guidance=g, cond=torch.tensor([0, 1, 2, 0, 1]))
    ref = ((x.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(ref - z["images"]).max() <= 1


def test_interrupted_sampling_only_draws_the_incomplete_batches(tmp_path, tiny_model, monkeypatch):
    out = str(tmp_path / "s")
    sample_cmd.run(tiny_model, "none", "0-5", out, steps=2, batch_size=2, progress=False)
    before = np.load(os.path.join(out, "samples.npz"))["images"]
    os.remove(os.path.join(out, "000002.png"))
    drawn = []
    real = sample_cmd.sample
    monkeypatch.setattr(sample_cmd, "sample", lambda d, shape, seeds, **kw: drawn.append(list(seeds)) or
                        real(d, shape, seeds, **kw))
    sample_cmd.run(tiny_model, "none", "0-5", out, steps=2, batch_size=2, progress=False)
    assert drawn == [[2, 3]]          # the batch is the unit: seed 2 is drawn with its batch-mate, as before
    assert np.array_equal(np.load(os.path.join(out, "samples.npz"))["images"], before)
    with pytest.raises(ValueError, match="other settings"):
        sample_cmd.run(tiny_model, "cfg:w=1", "0-3", out, steps=2, progress=False)


def test_classes(tiny_model):
    assert sample_cmd.labels_for([0, 1, 5], 3, None).tolist() == [0, 1, 2]
    assert sample_cmd.labels_for([0, 1], 3, "none").tolist() == [3, 3]
    assert sample_cmd.labels_for([0, 1], 3, "2").tolist() == [2, 2]
    with pytest.raises(ValueError, match="out of range"):
        sample_cmd.labels_for([0], 3, "3")
    with pytest.raises(ValueError, match="unconditional"):
        sample_cmd.labels_for([0], 0, "1")


def test_cli_errors_are_one_line_with_the_syntax(tmp_path, tiny_model, capsys):
    assert main(["sample", "--model", tiny_model, "--guidance", "mswg:w=oops", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "w='oops' is not a number" in err and "Example: cfg:w=1+mswg" in err
    assert main(["sample", "--model", "nonexistent-model", "--out", str(tmp_path)]) == 2
    assert "not a bundled model" in capsys.readouterr().err
    assert main(["sample", "--model", tiny_model, "--guidance", "mswg:w=1,window=5", "--out",
                 str(tmp_path / "x"), "--steps", "2"]) == 2
    assert "multiple" in capsys.readouterr().err


def test_panorama_command_writes_images_and_settings(tmp_path, tiny_model, capsys):
    out = str(tmp_path / "p")
    assert main(["panorama", "--model", tiny_model, "--width", "20", "--stride", "4", "--mode", "gf",
                 "--sampler", "ddpm", "--vcf", "--style-alpha", "0.3", "--seeds", "3-4", "--steps", "3",
                 "--guidance", "cfg:w=1", "--out", out]) == 0
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == [
        "manifest.json", "panorama_000003.png", "panorama_000004.png", "panoramas.png", "settings.json"]
    assert json.load(open(os.path.join(out, "manifest.json")))["seeds"] == [3, 4]
    s = json.load(open(os.path.join(out, "settings.json")))
    assert s["canvas"] == [1, 8, 20] and s["window"] == [8, 8] and s["vcf"] and s["style_alpha"] == 0.3
    assert s["klass"] == "all" and s["mode"] == "gf"
    from PIL import Image
    assert Image.open(os.path.join(out, "panorama_000003.png")).size == (20, 8)
    capsys.readouterr()
    assert main(["panorama", "--model", tiny_model, "--width", "20", "--vcf", "--out", out]) == 2
    assert "VCF corrects noise added after the fused update" in capsys.readouterr().err
