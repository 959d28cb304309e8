"""What a newcomer met first (#38): one thread rule, a fast --help, extras checked before work, progress
on long commands, honest small print."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from windowguide.cli import main
from windowguide.files import write_png


def test_every_computing_command_takes_the_idle_cores(monkeypatch, tmp_path):
    import windowguide.cpu as cpu
    from windowguide.commands import sample, upscale
    seen = []
    monkeypatch.setattr(sample, "run", lambda *a, **k: seen.append(torch.get_num_threads()) or {})
    monkeypatch.setattr(upscale, "run", lambda *a, **k: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    monkeypatch.delenv("WINDOWGUIDE_THREADS", raising=False)             # (tests/conftest.py fixes it otherwise)
    monkeypatch.setattr(cpu, "free_threads", lambda window=0.25: 1)
    assert main(["sample", "--model", "digits", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", "--model", "digits", "--threads", "2", "--out", str(tmp_path / "b")]) == 0
    assert main(["upscale", "x.png", "--model", "scenes", "--out", str(tmp_path / "c")]) == 0
    assert seen == [1, 2, 1] and torch.get_num_threads() == before       # the caller's count comes back
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")                            # torchrun: the idle cores shared
    monkeypatch.setattr(cpu, "free_threads", lambda window=0.25: 2)
    try:
        assert cpu.use_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_help_imports_no_torch():
    code = ("import sys, contextlib, io\nfrom windowguide.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(['--help'])\n"
            "    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stderr[-2000:]


def test_video_without_its_extra_says_so_before_any_work(tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_av)
    monkeypatch.delitem(sys.modules, "av", raising=False)
    out = tmp_path / "v"
    assert main(["video", "--model", "bounce", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[video]'" in err and not out.exists()


def test_upscale_shows_progress_and_names_the_input_size(tmp_path, capsys):
    write_png(np.full((8, 8, 3), 90, np.uint8), str(tmp_path / "in.png"))
    assert main(["upscale", str(tmp_path / "in.png"), "--model", "scenes", "--steps", "4", "--strength", "0.5",
                 "--out", str(tmp_path / "u")]) == 0
    assert "ddim (fused states)" in capsys.readouterr().err            # the steps' bar
    write_png(np.full((9, 8, 3), 90, np.uint8), str(tmp_path / "odd.png"))
    from windowguide.models.checkpoint import load_denoiser
    from windowguide.upscaling import upscale_pixels
    den, _, _ = load_denoiser("digits")
    with pytest.raises(Exception, match=r"resize the input, 8x9, first"):
        upscale_pixels(den, np.full((9, 8, 3), 90, np.uint8), 1)


def test_small_print():
    from windowguide.bench.video import format_report
    from windowguide.commands.metrics import format_result
    text = format_result(dict(count=16, reference="r.npz", networks={"inception": "inception"}, kid=-0.002,
                              kid_std=0.003))
    assert "unbiased estimate" in text
    r = {"speed_cv": (0.1, 0.0), "drift": (0.2, 0.0), "jerk": (0.3, 0.0), "presence": (1.0, 0.0)}
    report = dict(settings=dict(sets=1, videos=2, steps=4, weight=0.5, long_frames=24, stride=4),
                  real=dict(clip=r, long=r), clips=[dict(name="none", **r)], long=[dict(name="none", **r)], seconds=1)
    assert "± 0.000" not in format_report(report) and "(1 set)" in format_report(report)
    from windowguide.commands.demo import _bar
    bar = _bar(10, True)
    bar.set_description("CFG w=1")
    assert ": :" not in str(bar)
    bar.close()
    import tomllib
    meta = tomllib.load(open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb"))
    assert meta["project"]["license"] == "MIT"
    assert "weights/README.md" in meta["tool"]["setuptools"]["package-data"]["windowguide"]
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    assert "pip install windowguide`" not in readme and "(`pip install windowguide`)" not in readme
    for command in ("upscale", "video", "ui", "presets"):
        assert f"    windowguide {command} " in readme
