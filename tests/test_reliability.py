"""Nothing lost, nothing silent: bad input, faults and concurrency on the command line and the files."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from windowguide import spec
from windowguide.cli import main
from windowguide.commands import sample as sample_cmd
from windowguide.data import load_images
from windowguide.errors import NonFiniteError, WindowguideError
from windowguide.generate import parse_seeds, sample
from windowguide.guidance import MSWG, SWG, GuidedDenoiser
from windowguide.models.checkpoint import load_model
from windowguide.train.edm import TrainConfig, train


def _tiny(tmp_path_factory, conditional=True):
    d = tmp_path_factory.mktemp("m")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", images=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 3)
    cfg = TrainConfig(dataset=str(d / "data.npz"), base=8, mults=(1, 2), batch=4, steps=4, checkpoint_every=4,
                      conditional=conditional)
    return train(cfg, str(d / "run"), progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_uncond(tmp_path_factory):
    return _tiny(tmp_path_factory, conditional=False)


def files(out):
    return sorted(f for f in os.listdir(out) if not f.startswith(".")) if os.path.isdir(out) else []


# ------------------------------------------------------------------------ 1. a failed run poisons nothing

@pytest.mark.parametrize("bad", [["--steps", "0"], ["--sampler", "rk4"], ["--device", "cuda:7"],
                                 ["--seeds", str(2 ** 64)], ["--guidance", "cfg:w=1"], ["--batch-size", "0"]])
def test_a_refused_run_writes_nothing_and_the_corrected_run_works(tmp_path, tiny_uncond, capsys, bad):
    out = str(tmp_path / "pz")
    args = ["sample", "--model", tiny_uncond, "--seeds", "0-1", "--steps", "2", "--out", out]
    assert main(args + bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("windowguide: error:") and "Traceback" not in err
    assert not os.path.exists(out)
    assert main(args) == 0
    assert "000001.png" in files(out)


def test_panorama_demo_and_train_check_the_output_path_first(tmp_path, tiny, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    t0 = time.perf_counter()
    assert main(["panorama", "--model", tiny, "--width", "16", "--out", str(target)]) == 2
    assert main(["demo", "--out", str(target)]) == 2
    assert main(["train", "--dataset", "digits", "--steps", "2", "--out", str(target)]) == 2
    assert time.perf_counter() - t0 < 20                                   # refused, not computed
    assert capsys.readouterr().err.count("exists and is not a folder") == 3


# ------------------------------------------------------------------------ 2, 3. concurrency, kills, corrupt files

def _cli(*args):
    return [sys.executable, "-m", "windowguide", *args]


def test_killed_corrupted_and_concurrent_runs_end_with_the_uninterrupted_images(tmp_path, tiny):
    common = ["sample", "--model", tiny, "--steps", "6", "--batch-size", "3"]
    ref = str(tmp_path / "ref")
    sample_cmd.run(tiny, "none", "0-59", ref, steps=6, batch_size=3, progress=False)
    out = str(tmp_path / "shared")
    rng = random.Random(0)
    for _ in range(2):                                     # SIGKILL at a random moment
        p = subprocess.Popen(_cli(*common, "--seeds", "0-59", "--out", out), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.5, 5.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
    pngs = [f for f in files(out) if f[0].isdigit()]
    if pngs:                                               # a PNG damaged by hand
        with open(os.path.join(out, pngs[0]), "r+b") as f:
            f.truncate(20)
    a = subprocess.Popen(_cli(*common, "--seeds", "0-39", "--out", out), stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen(_cli(*common, "--seeds", "20-59", "--out", out), stderr=subprocess.PIPE, text=True)
    err_a, err_b = a.communicate()[1], b.communicate()[1]
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    if pngs:
        assert "does not decode; drawing it again" in err_a + err_b
    assert main(common + ["--seeds", "0-59", "--out", out]) == 0      # a re-run completes and rebuilds
    z, zr = np.load(os.path.join(out, "samples.npz")), np.load(os.path.join(ref, "samples.npz"))
    assert z["seeds"].tolist() == list(range(60))                     # every seed exactly once
    assert np.array_equal(z["images"], zr["images"])                  # equal to the uninterrupted run
    json.load(open(os.path.join(out, "settings.json")))               # never corrupted
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]     # no temporary left behind


def test_a_png_that_does_not_decode_is_redrawn_with_a_warning(tmp_path, tiny):
    out = str(tmp_path / "s")
    sample_cmd.run(tiny, "none", "0-2", out, steps=2, progress=False)
    good = open(os.path.join(out, "000001.png"), "rb").read()
    with open(os.path.join(out, "000001.png"), "wb") as f:
        f.write(good[:30])
    with pytest.warns(UserWarning, match="000001.png does not decode; drawing it again"):
        sample_cmd.run(tiny, "none", "0-2", out, steps=2, progress=False)
    assert open(os.path.join(out, "000001.png"), "rb").read() == good


# ------------------------------------------------------------------------ 4. NaN goes noticed

def test_training_stops_at_a_non_finite_loss_and_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file
    import windowguide.train.edm as edm
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8))
    cfg = dict(dataset=str(tmp_path / "d.npz"), base=8, mults=(1, 2), batch=4, checkpoint_every=2,
               conditional=False)
    good = load_file(train(TrainConfig(steps=2, **cfg), str(tmp_path / "two"), progress=False))
    real, calls = edm.edm_loss, {"n": 0}

    def nan_at_step_3(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 3 else loss
    monkeypatch.setattr(edm, "edm_loss", nan_at_step_3)
    out = str(tmp_path / "run")
    with pytest.raises(NonFiniteError, match=r"step 3: the loss is nan; training stopped, the files in .* are from step 2"):
        train(TrainConfig(steps=4, **cfg), out, progress=False)
    kept = load_file(os.path.join(out, "model.safetensors"))
    assert all(torch.equal(good[k], kept[k]) for k in good)          # the step-2 checkpoint, untouched
    assert load_model(os.path.join(out, "model.safetensors"))[1]["steps_done"] == 2
    monkeypatch.setattr(edm, "edm_loss", real)
    assert main(["train", "--dataset", cfg["dataset"], "--base", "8", "--mults", "1,2", "--batch", "4",
                 "--steps", "6", "--checkpoint-every", "2", "--lr", "1e30", "--out", str(tmp_path / "cli")]) == 1
    assert "the loss is inf; training stopped" in capsys.readouterr().err


def test_sampling_a_nan_denoiser_fails_naming_step_sigma_and_seeds():
    def nan_after(x, sigma, cond=None):
        out = torch.tanh(x)
        out[1] = out[1] * float("nan") if sigma[0] < 5 else out[1]
        return out
    with pytest.raises(NonFiniteError, match=r"step \d+/8 \(sigma=[\d.]+\).*seeds \[11\]"):
        sample(nan_after, (1, 4, 4), [10, 11, 12], steps=8, sampler="euler")
    with pytest.raises(WindowguideError, match="mask holds NaN"):
        MSWG(1.0, window=4, mask=torch.tensor([[float("nan")]]))
    with pytest.raises(WindowguideError, match="weight must be finite"):
        SWG(float("inf"), window=4)


def test_cli_sampling_of_a_nan_model_exits_1_and_writes_no_png(tmp_path, tiny):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    state = load_file(tiny)
    state["conv_out.bias"] = torch.full_like(state["conv_out.bias"], float("nan"))
    bad = str(tmp_path / "nan.safetensors")
    with safe_open(tiny, "pt") as f:
        save_file(state, bad, metadata=f.metadata())
    out = str(tmp_path / "o")
    assert main(["sample", "--model", bad, "--seeds", "0-1", "--steps", "2", "--out", out]) == 1
    assert not [f for f in files(out) if f.endswith(".png")]


# ------------------------------------------------------------------------ 5. training data

def test_sixteen_bit_pngs_keep_their_scale(tmp_path):
    from PIL import Image
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "a" / "y.png")
    d = load_images(str(tmp_path / "a"))
    assert d.images[0].mean().item() == pytest.approx(0.0, abs=1e-4)       # mid-grey, not near-white
    assert d.images[1].mean().item() == pytest.approx(1.0)


def test_folder_and_label_problems_are_named(tmp_path):
    from PIL import Image
    root = tmp_path / "set"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / c / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stray.png")
    with pytest.raises(WindowguideError, match=r"stray.png.*beside the class folders"):
        load_images(str(root))
    os.remove(root / "stray.png")
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(WindowguideError, match="bad.png: not a readable image"):
        load_images(str(root))
    os.remove(root / "dog" / "bad.png")
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    os.symlink(outside, root / "dog" / "link.png")
    with pytest.warns(UserWarning, match="leading out of the folder were not followed"):
        assert len(load_images(str(root))) == 2
    x = np.zeros((3, 8, 8), np.uint8)
    np.savez(tmp_path / "f.npz", images=x, labels=np.array([0.0, 1.5, 2.0]))
    with pytest.raises(WindowguideError, match=r"labels must be integers, found \[1.5\]"):
        load_images(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "r.npz", images=x, labels=np.array([3, 1000000, 3]))
    with pytest.warns(UserWarning, match="remapped"):
        d = load_images(str(tmp_path / "r.npz"))
    assert d.labels.tolist() == [0, 1, 0] and d.class_names == ("3", "1000000")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(WindowguideError, match="no array named 'images'"):
        load_images(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "one.npz", pics=x)
    assert len(load_images(str(tmp_path / "one.npz"))) == 3
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(WindowguideError, match="no array named 'images'"):
        load_images(str(tmp_path / "empty.npz"))


# ------------------------------------------------------------------------ 6, 7. seeds and SPECs

@pytest.mark.parametrize("bad, match", [("0-3,5-1", "descending"), ([1.5], "not an integer"),
                                        ([True], "not an integer"), (True, "got bool"), ([2 ** 63], "outside"),
                                        ("-1", "bad seed range"), ("0-3,2", "given twice")])
def test_bad_seeds_are_refused(bad, match):
    with pytest.raises(WindowguideError, match=match):
        parse_seeds(bad)


def test_seed_ranges_stay_lazy():
    s = parse_seeds("0-10000000000")
    assert len(s) == 10 ** 10 + 1 and s[-1] == 10 ** 10 and str(s) == "0-10000000000"


@pytest.mark.parametrize("bad, match", [("cfg:w=1,w=2", "given twice"), ("swg:w=1,stride=4,n=2", "not both"),
                                        ("sgg:split=1,cfg=2,ag=1,colour=3", "does not take"),
                                        ("cfg:w=nan", "finite"), ("swg:w=1,window=4,n=1000", "distinct positions")])
def test_bad_specs_are_refused_with_the_syntax(tiny, bad, match):
    with pytest.raises(WindowguideError, match=match):
        d, net, info, g = sample_cmd.prepare(tiny, bad)
        GuidedDenoiser(d, g).check(tuple(info["shape"]))


@pytest.mark.parametrize("churn", ["nan", "-1", "inf"])
def test_bad_churn_is_a_usage_error(tmp_path, tiny, churn, capsys):
    with pytest.raises(SystemExit) as e:
        main(["panorama", "--model", tiny, "--churn", churn, "--out", str(tmp_path / "p")])
    assert e.value.code == 2 and "finite number >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------------ 8. batch size

def test_batch_size_changes_at_most_the_last_bits():
    """What the README states: with per-seed noise, only floating-point kernel choices differ between
    batch sizes, so 8-bit images differ by at most one grey level."""
    from windowguide.models.checkpoint import load_denoiser
    from windowguide.images import to_uint8
    d, _, _ = load_denoiser("digits")
    seeds, cond = list(range(16)), torch.arange(16) % 10
    with torch.no_grad():
        a = to_uint8(sample(d, (1, 24, 24), seeds, steps=6, cond=cond, batch_size=16)).astype(int)
        b = to_uint8(sample(d, (1, 24, 24), seeds, steps=6, cond=cond, batch_size=1)).astype(int)
    assert np.abs(a - b).max() <= 1


# ------------------------------------------------------------------------ 9. one line, the right exit code

def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_cli_failures_are_one_line_with_exit_codes(tmp_path, tiny, capsys):
    from safetensors.torch import save_file
    good = open(tiny, "rb").read()
    info = json.loads(__import__("safetensors").safe_open(tiny, "pt").metadata()["windowguide"])
    no_shape = {k: v for k, v in info.items() if k != "shape"}
    save_file({"x": torch.zeros(1)}, str(tmp_path / "noshape.safetensors"),
              metadata={"windowguide": json.dumps(no_shape)})
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"windowguide": json.dumps(info)})
    (tmp_path / "afile").write_text("x")
    (tmp_path / "imgs" / "0").mkdir(parents=True)
    (tmp_path / "imgs" / "0" / "a.png").write_bytes(b"junk")
    np.savez(tmp_path / "empty.npz")
    out = str(tmp_path / "o")
    cases = [
        (["sample", "--model", "digits", "--device", "cuda", "--out", out], "no CUDA GPU"),
        (["sample", "--model", "digits", "--out", str(tmp_path / "afile")], "not a folder"),
        (["sample", "--model", _write(tmp_path / "t.safetensors", good[:len(good) // 2]), "--out", out], "safetensors"),
        (["sample", "--model", _write(tmp_path / "r.safetensors", os.urandom(300)), "--out", out], "safetensors"),
        (["sample", "--model", _write(tmp_path / "e.safetensors", b""), "--out", out], "safetensors"),
        (["sample", "--model", str(tmp_path / "other.safetensors"), "--out", out], "do not fit the architecture"),
        (["sample", "--model", str(tmp_path / "noshape.safetensors"), "--out", out], "lacks ['shape']"),
        (["sample", "--model", "digits", "--guidance", "ag:w=1,model=mirror", "--out", out], "shape"),
        (["train", "--dataset", str(tmp_path / "imgs"), "--steps", "1", "--out", out], "a.png: not a readable image"),
        (["train", "--dataset", str(tmp_path / "empty.npz"), "--steps", "1", "--out", out], "no array"),
        (["train", "--dataset", "digits", "--base", "3", "--steps", "1", "--out", out], "base 3"),
        (["train", "--dataset", "digits", "--mults", "1,0", "--steps", "1", "--out", out], "mults"),
        (["sample", "--model", "digits", "--batch-size", "-1", "--out", out], "--batch-size -1"),
        (["sample", "--model", tiny, "--guidance", "cfg:w=1", "--class", "none", "--seeds", "0", "--steps", "1",
          "--out", str(tmp_path / "fine")], None),
    ]
    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err
        if message is None:
            assert code == 0
            continue
        assert code == 2, (args, err)
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert not os.path.exists(out)


def test_ctrl_c_says_how_to_resume(tmp_path, tiny, capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(sample_cmd, "sample", interrupt)
    assert main(["sample", "--model", tiny, "--seeds", "0", "--steps", "1", "--out", str(tmp_path / "o")]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err


# ------------------------------------------------------------------------ 10. bounded allocations

def test_a_crafted_model_file_is_refused_before_allocation(tmp_path, tiny):
    from safetensors.torch import save_file
    info = json.loads(__import__("safetensors").safe_open(tiny, "pt").metadata()["windowguide"])
    info["config"]["base"] = 1024
    info["config"]["mults"] = [16, 16, 16]
    path = str(tmp_path / "crafted.safetensors")
    save_file({"x": torch.zeros(1)}, path, metadata={"windowguide": json.dumps(info)})
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WindowguideError, match="do not fit the architecture"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000     # KiB: no GBs touched


def test_grid_is_capped_and_panoramas_go_in_batches(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(sample_cmd, "GRID_LIMIT", 4)
    out = str(tmp_path / "s")
    sample_cmd.run(tiny, "none", "0-9", out, steps=1, progress=False)
    from PIL import Image
    assert Image.open(os.path.join(out, "grid.png")).size == Image.open(os.path.join(out, "grid.png")).size
    assert np.load(os.path.join(out, "samples.npz"))["images"].shape[0] == 10
    w4 = Image.open(os.path.join(out, "grid.png")).size
    monkeypatch.setattr(sample_cmd, "GRID_LIMIT", 9)
    sample_cmd.collect(out, 3, "all", (1, 8, 8))
    assert Image.open(os.path.join(out, "grid.png")).size[0] > w4[0]          # 3 columns instead of 2
    from windowguide.commands import panorama as pano_cmd
    sizes = []
    real = pano_cmd.panorama
    monkeypatch.setattr(pano_cmd, "panorama", lambda d, c, seeds, **kw: sizes.append(len(seeds)) or
                        real(d, c, seeds, **kw))
    pano_cmd.run(tiny, width=16, stride=4, seeds="0-4", steps=1, out=str(tmp_path / "p"), progress=False,
                 batch_size=2)
    assert sizes == [2, 2, 1]


# ------------------------------------------------------------------------ 11, 12. messages and files

def test_resume_refusals_name_the_settings_that_differ(tmp_path, tiny, capsys):
    out = str(tmp_path / "s")
    sample_cmd.run(tiny, "none", "0-1", out, steps=2, progress=False)
    sample_cmd.run(tiny, "none", "0-1", out, klass="all", steps=2, progress=False)      # same as omitted
    with pytest.raises(WindowguideError, match=r"steps: 2 there, 3 now"):
        sample_cmd.run(tiny, "none", "0-1", out, steps=3, progress=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8))
    cfg = dict(dataset=str(tmp_path / "d.npz"), mults=(1, 2), batch=2, steps=2, checkpoint_every=2, conditional=False)
    train(TrainConfig(base=8, **cfg), str(tmp_path / "t"), progress=False)
    with pytest.raises(WindowguideError, match=r"\(base: 8 there, 16 now\)"):
        train(TrainConfig(base=16, **cfg), str(tmp_path / "t"), progress=False)


def test_files_follow_the_umask_and_never_write_through_links(tmp_path, tiny, capsys):
    old = os.umask(0o022)
    try:
        out = str(tmp_path / "s")
        sample_cmd.run(tiny, "none", "0", out, steps=1, progress=False)
        for name in ("000000.png", "settings.json", "samples.npz"):
            assert os.stat(os.path.join(out, name)).st_mode & 0o777 == 0o644
        from windowguide.models.checkpoint import atomic_save
        atomic_save({"x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
        assert os.stat(tmp_path / "w.safetensors").st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    assert main(["sample", "--model", tiny, "--seeds", "0", "--out", str(tmp_path / "dangling")]) == 2
    assert "symbolic link to nothing" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "nowhere")


# ------------------------------------------------------------------------ properties

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="cfgswmadlnoe:=,+0123456789.-/ ", max_size=40))
def test_random_specs_build_or_raise_our_error(text):
    net = type("Net", (), {"block_names": lambda self: ["mid"]})()
    ctx = spec.Context(net=net, load=lambda name: (lambda x, s, c=None: x), model_name="m")
    try:
        spec.build(text, ctx)
    except WindowguideError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789-, x.", max_size=20), st.integers(-5, 2 ** 64),
                 st.lists(st.one_of(st.integers(-3, 2 ** 64), st.floats(), st.booleans()), max_size=5)))
def test_random_seeds_parse_or_raise_our_error(value):
    try:
        s = parse_seeds(value)
    except WindowguideError:
        return
    assert len(s) >= 1 and all(0 <= v < 2 ** 63 for v in s[:50])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.complex64]),
       st.lists(st.integers(0, 9), min_size=1, max_size=4),
       st.sampled_from([None, "int", "float", "nan", "short", "neg"]), st.booleans())
def test_random_arrays_load_or_raise_our_error(tmp_path_factory, dtype, shape, labels, add_nan):
    a = np.ones(shape, dtype=dtype)
    if add_nan and a.size and np.issubdtype(dtype, np.floating):
        a.flat[0] = np.nan
    n = shape[0]
    y = {None: None, "int": np.arange(n), "float": np.arange(n) + 0.5, "nan": np.full(n, np.nan),
         "short": np.arange(max(n - 1, 0)), "neg": -np.ones(n)}[labels]
    path = tmp_path_factory.mktemp("a") / "x.npz"
    np.savez(path, images=a, **({} if y is None else {"labels": y}))
    try:
        d = load_images(str(path))
    except WindowguideError:
        return
    assert torch.isfinite(d.images).all() and d.images.abs().max() <= 1
