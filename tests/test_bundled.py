"""The bundled models: present, small, loadable, and what their records say; the benchmark and demo on them."""
import os

import pytest
import torch

from windowguide.models.checkpoint import WEIGHTS_DIR, bundled_names, load_model, read_info

EXPECTED = ["digits", "digits-weak", "digits-wd", "digits-classifier",
            "mirror", "mirror-weak", "mirror-wd", "mirror-classifier", "scenes", "scenes-classifier"]


def test_every_bundled_model_is_there_and_all_fit_in_30_mb():
    assert sorted(EXPECTED) == sorted(n for n in bundled_names() if n in EXPECTED)
    total = sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR))
    assert total < 30 * 2 ** 20


@pytest.mark.parametrize("name", [n for n in EXPECTED if not n.endswith("classifier")])
def test_bundled_diffusion_models_record_their_recipe(name):
    info = read_info(name)
    assert info["preset"] == name and info["steps_done"] == info["train"]["steps"]
    net, _ = load_model(name, "unet")
    assert net.num_classes == len(info["class_names"]) > 0


@pytest.mark.parametrize("name, floor", [("digits", 0.95), ("mirror", 0.95), ("scenes", 0.95)])
def test_bundled_classifiers_accuracy_recomputed_on_the_held_out_split(name, floor):
    from windowguide.data import load
    from windowguide.train.classifier import accuracy
    net, info = load_model(f"{name}-classifier", "classifier")
    test = load(name, "train" if name == "digits" else "test")     # images the classifier has not seen
    acc = accuracy(net, test.images, test.labels)
    assert acc == pytest.approx(info["test_accuracy"]) and acc >= floor


def test_bundled_mirror_model_draws_near_symmetric_images():
    """Sanity of the trained net: its samples are far more symmetric than its noise-level structure."""
    from windowguide import metrics, sample
    from windowguide.models.checkpoint import load_denoiser
    denoiser, _, net = load_denoiser("mirror")
    with torch.no_grad():
        x = sample(denoiser, (3, 24, 24), range(16), steps=8, cond=torch.arange(16) % 3)
    shuffled = x[:, :, :, torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    assert metrics.asymmetry(x).mean() < 0.5 * metrics.asymmetry(shuffled).mean()


def test_quality_bench_is_deterministic_and_complete(tmp_path):
    from windowguide.bench import quality
    s = quality.Settings(datasets=("mirror",), weights=(1.0,), samples=24, steps=4, methods=("none", "M-SWG", "CFG"))
    a = quality.run(str(tmp_path / "a.json"), out_dir=str(tmp_path / "a"), settings=s, progress=False)
    b = quality.run(None, out_dir=str(tmp_path / "b"), settings=s, progress=False)
    strip = lambda rep: [{k: v for k, v in r.items() if k != "seconds"} for r in rep["datasets"][0]["rows"]]
    assert strip(a) == strip(b)
    rows = strip(a)
    assert [r["method"] for r in rows] == ["none", "CFG", "M-SWG"]
    assert {"fd", "kid", "inception_score", "precision", "recall", "asymmetry", "contrast", "saturation",
            "clipped"} <= set(rows[0])
    table = quality.format_report(a)
    assert "M-SWG" in table and "real (floor)" in table and "reference" in table
    assert (tmp_path / "a" / "mirror_sweeps.png").exists() and (tmp_path / "a" / "mirror" / "M-SWG_w1.png").exists()


def test_demo_figures_come_from_the_images_it_shows(tmp_path, capsys):
    """The demo's figures and verdicts are computed from exactly the 8-bit images in its PNG, for the
    seeds it names, with a spread reported for every figure."""
    from windowguide.commands import demo
    from windowguide.commands.common import labels_for, prepare
    from windowguide.generate import sample
    from windowguide.metrics.features import Evaluator
    from windowguide.metrics.pixels import asymmetry
    r = demo.run(out=str(tmp_path), samples=6, steps=3, sets=3, threads=2)
    assert os.path.exists(tmp_path / "windowguide_demo.png")
    # the methods changed with #38: M-SWG where the fronts benchmark found its gain (w 0.8 on steps 0-5)
    assert [x["method"] for x in r["results"]] == ["no guidance", "M-SWG w=0.8, steps 0-5", "CFG w=1",
                                                   "CFG w=1 + M-SWG w=0.8, steps 0-5"]
    out = capsys.readouterr().out
    assert "real images (floor)" in out and r["caption"] in out and "±" in out and "lower is better" in out
    ev = Evaluator("mirror", floor_count=6, floor_sets=3, reference_count=demo.REFERENCE)
    for (title, spec), res, imgs in zip(demo.DEMO_METHODS, r["results"], r["images"]):
        assert imgs.shape == (18, 3, 24, 24)
        assert torch.equal(imgs, torch.round((imgs + 1) * 127.5) / 127.5 - 1)        # 8-bit, as shown
        assert res["asymmetry"] == pytest.approx(asymmetry(imgs).double().mean().item(), abs=1e-9)
        assert res["fd"] == pytest.approx(ev(imgs, ["fid"])["fd"], rel=1e-6)
        assert res["fd_se"] > 0 and res["asymmetry_se"] > 0
    d, net, info, g = prepare("mirror", demo.DEMO_METHODS[1][1])      # the seeds it names: set 2 is 12-17
    seeds = list(range(12, 18))
    with torch.no_grad():
        x = sample(d, (3, 24, 24), seeds, steps=3, guidance=g, cond=labels_for(seeds, 3, "all"))
    assert torch.allclose(demo.as_shown(x), r["images"][1][12:], atol=1 / 127.5 + 1e-6)
    for c, (a, b) in zip(r["changes"], demo.PAIRS):        # paired on the same seeds, like with like
        assert (c["method"], c["baseline"]) == (r["results"][a]["method"], r["results"][b]["method"])
        per = torch.tensor(r["results"][a]["asymmetry_per_image"]) - torch.tensor(r["results"][b]["asymmetry_per_image"])
        assert c["asymmetry"]["change"] == pytest.approx(per.double().mean().item(), abs=1e-9)
        assert c["asymmetry"]["verdict"] in ("lower", "higher", "within the spread")
        assert c["fd"]["se"] > 0 and c["fd"]["verdict"] in r["caption"]


def test_demo_verdict_rule():
    from windowguide.commands import demo
    assert demo._verdict(-0.3, 0.1)["verdict"] == "lower" and demo._verdict(0.3, 0.1)["verdict"] == "higher"
    assert demo._verdict(-0.15, 0.1)["verdict"] == "within the spread"
    assert demo._jackknife_se(torch.tensor([1.0, 1.0, 1.0])) == 0.0
    # jackknife of the mean equals the standard error of the mean: se^2 = (K-1)/K sum (mean_(j) - mean)^2
    v = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    loo = torch.stack([(v.sum() - v[j]) / 3 for j in range(4)])
    assert demo._jackknife_se(loo) == pytest.approx((v.std() / 2).item())


def test_free_threads_counts_idle_cores():
    from windowguide import cpu
    n = cpu.free_threads(0.05)
    assert 1 <= n <= cpu.cores_available()


@pytest.mark.parametrize("dataset", ["digits", "mirror", "scenes"])
def test_feature_networks_never_saw_the_fd_reference(dataset):
    """The memorisation check: the classifier learned the 'features' split, disjoint from the reference
    ('train') and from the floor images."""
    from windowguide.data import load
    from windowguide.metrics.features import Evaluator
    from windowguide.models.checkpoint import read_info
    assert read_info(f"{dataset}-classifier")["trained_on"] == "features"
    feats, train = load(dataset, "features").images.flatten(1), load(dataset, "train").images.flatten(1)
    probe = feats[:50]
    assert torch.cdist(probe, train).min() > 1e-3                 # no feature image is a reference image
    ev = Evaluator(dataset, floor_count=40)
    assert torch.cdist(ev.floor_images.flatten(1)[:20], feats).min() > 1e-3
    assert len(ev.real) == (len(train) - 40 if dataset == "digits" else len(train))


def test_panorama_bench_quality_part(tmp_path):
    from windowguide.bench import panorama
    r = panorama.run_quality(panorama.Settings(samples=4, steps=4, alphas=(0.0,)), str(tmp_path), progress=False)
    assert len(r["rows"]) == 8 and {"seam", "hf_ratio", "texture_ratio", "style", "fd_crops"} <= set(r["rows"][0])
    assert 0.8 < r["real"]["seam"] < 1.25 and r["real"]["style"] > 0.9


def test_the_demo_runs_what_the_readme_and_the_benchmark_say():
    """#38: the demo's M-SWG is the preset the fronts benchmark found (the README says so), it prints what to
    look for and explains the floor, and its side effect is reported beside its gain."""
    import re
    from windowguide.commands import demo
    from windowguide.presets import PRESETS
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    assert demo.BANDED == PRESETS["mirror-mswg-banded"].guidance and "`mirror-mswg-banded`" in readme
    assert demo.STEPS == PRESETS["mirror-mswg-banded"].steps
    assert [spec for _, spec in demo.DEMO_METHODS] == ["none", demo.BANDED, "cfg:w=1", "cfg:w=1+" + demo.BANDED]
    fronts = open(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "fronts_cpu.txt")).read()
    gain = re.search(r"mirror.*?banded M-SWG \(steps 0-5\): gain \+([0-9.]+) ± ([0-9.]+)", fronts, re.S)
    assert gain and f"+{gain.group(1)} ± {gain.group(2)}" in readme
    assert f"+{gain.group(1)} ± {gain.group(2)}" in demo._caption([])
    assert "what to look for" in demo.LOOK_FOR and "biased upward" in demo.FLOOR_NOTE
    assert demo.side_effect(dict(contrast=0.3, saturation=0.2), dict(contrast=0.25, saturation=0.3)) == \
        pytest.approx(0.15)
