"""What a newcomer meets: help texts, the default window on pipeline folders, metrics on few images and
its labels, a finished run re-run, the Ctrl-C message."""
import argparse
import json

import numpy as np
import pytest
import torch

from windowguide.cli import build_parser, main


def test_every_option_and_choice_of_every_subcommand_is_described():
    parser = build_parser()
    assert "``" not in (parser.description or "") and parser.description
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        helps = {a.dest: a.help for a in sub._choices_actions}
        assert helps.get(name), f"{name} has no one-line description"
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"windowguide {name} {action.option_strings or action.dest}: no help text"
            if action.choices and not action.option_strings:          # a positional with choices: each named
                assert all(str(c) in action.help for c in action.choices), (name, action.dest)
    demo = sub.choices["demo"].format_help()
    assert "CFG" in demo and "M-SWG" in demo
    assert "scenes" in sub.choices["sample"].format_help()


def test_spec_errors_read_as_sentences(capsys):
    assert main(["sample", "--model", "mirror", "--guidance", "mswg:windw=3", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err
    assert "'window']. SPEC is" in err or "]. SPEC" in err


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from pipes import tiny_sd
    root = tmp_path_factory.mktemp("sd")
    tiny_sd(root).save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.mark.parametrize("pixels, latent", [(32, 16), (128, 64)])
def test_pipeline_folders_take_the_one_default_window(sd_folder, tmp_path, pixels, latent):
    """The issue's command: cfg:w=6.5+mswg:w=0.5 with no window, on 16 x 16 and 64 x 64 latents (tiny
    VAE factor 2, UNet factor 2): the window is 5/8 of the side rounded up, 10 and 40."""
    from windowguide import spec
    from windowguide.guidance import SWG
    assert main(["sample", "--model", str(sd_folder), "--prompt", "a red cat", "--guidance", "cfg:w=6.5+mswg:w=0.5",
                 "--height", str(pixels), "--width", str(pixels), "--steps", "2", "--seeds", "0",
                 "--out", str(tmp_path / "o")]) == 0
    term = next(t for t in spec.build("mswg:w=0.5", spec.Context(net=None, load=None)) if isinstance(t, SWG))
    assert term.layouts((latent, latent), 2)[0].window == ((5 * latent + 7) // 8,) * 2


def test_metrics_on_fewer_images_than_is_needs_leaves_it_out_and_labels_the_network(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["metrics", str(tmp_path), "--ref", "mirror", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    got = json.loads((tmp_path / "m.json").read_text())
    assert "is" not in got and "10 splits" in got["left_out"]["is"] and "left out is" in out
    assert got["labels"]["fid"] == "FD on mirror-classifier" and "FD on mirror-classifier" in out
    assert "fid " not in out.lower().replace("fid:", "")
    assert main(["metrics", str(tmp_path), "--ref", "mirror", "--metrics", "is"]) == 2       # asked for: an error
    assert "10 splits" in capsys.readouterr().err


def test_a_finished_run_rerun_says_so(tmp_path, capsys):
    args = ["sample", "--model", "mirror-weak", "--seeds", "0-2", "--steps", "2", "--out", str(tmp_path / "s")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert f"all 3 seeds already in {tmp_path / 's'}" in capsys.readouterr().out


def test_ctrl_c_in_a_benchmark_does_not_promise_a_resume(monkeypatch, capsys):
    from windowguide.bench import quality

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(quality, "run", interrupt)
    assert main(["bench", "quality", "--quick"]) == 130
    err = capsys.readouterr().err
    assert "resume" in err and "does not resume" in err


def test_the_demo_png_is_ignored_in_a_checkout():
    import os
    root = os.path.join(os.path.dirname(__file__), "..")
    assert "/windowguide_demo.png" in open(os.path.join(root, ".gitignore")).read().split()
    assert "MIT License" in open(os.path.join(root, "LICENSE")).read()
