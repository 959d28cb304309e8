"""One canvas across processes (#36 item 2): under ``torchrun --nproc_per_node 2`` (gloo, one thread each)
each step's windows are split over the ranks and the canvas sums added by an all-reduce; the panorama, the
regional and gaussian panoramas, the upscale and the long video (M-SWG inside the windows) equal one
process's within float tolerance (the sums are added in another order) and are identical from run to run."""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "one_canvas_worker.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _run(out, ranks):
    cmd = [sys.executable, WORKER, str(out)] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", WORKER, str(out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def test_two_processes_make_the_one_process_canvas(tmp_path):
    one, two, again = _run(tmp_path / "one.pt", 1), _run(tmp_path / "two.pt", 2), _run(tmp_path / "again.pt", 2)
    assert set(one) == {"panorama", "gaussian", "regional", "upscale", "video"}
    for name in one:
        a, b = one[name].double(), two[name].double()
        assert a.shape == b.shape, name
        # the sums are added in another order: relative 1e-4 of the canvas's scale (gaussian weights, near 0 at a
        # window's corners, are the most sensitive; measured 1.2e-5); uint8 images: one level
        tol = 1.0 if one[name].dtype == torch.uint8 else 1e-4 * max(1.0, float(a.abs().max()))
        assert float((a - b).abs().max()) <= tol, (name, float((a - b).abs().max()))
        assert torch.equal(two[name], again[name]), name          # the same from run to run
    assert not torch.equal(one["panorama"][0], one["panorama"][1])  # the seeds differ: the test can see a mix-up
    # the work is split: each rank evaluates about half of the panorama's window samples (7 windows: 4 + 3)
    alone = int(open(f"{tmp_path / 'one.pt'}.evaluations0").read())
    shares = [int(open(f"{tmp_path / 'two.pt'}.evaluations{r}").read()) for r in (0, 1)]
    assert sum(shares) == alone and max(shares) <= 0.6 * alone, (alone, shares)


def _cli(args, ranks):
    cmd = [sys.executable, "-m", "windowguide", *args] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "windowguide",
         *args]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_panorama_and_upscale_make_one_canvas_and_rank_0_writes(tmp_path):
    # one seed on two ranks: both draw it, each a share of the windows; one PNG, written once; a re-run resumes
    import numpy as np
    from windowguide.files import read_png, write_png
    pano = ["panorama", "--model", "scenes", "--width", "72", "--steps", "3", "--sampler", "ddpm", "--vcf",
            "--mode", "gf", "--guidance", "mswg:w=0.5,window=16", "--class", "1", "--seeds", "0"]
    picture = tmp_path / "in.png"
    write_png((np.arange(24 * 40 * 3) % 251).astype(np.uint8).reshape(24, 40, 3), str(picture))
    up = ["upscale", str(picture), "--model", "scenes", "--scale", "2", "--strength", "0.5", "--steps", "4",
          "--sampler", "ddpm", "--vcf", "--guidance", "mswg:w=0.5,window=16", "--class", "1", "--seeds", "3"]
    one, two = tmp_path / "panorama1", tmp_path / "panorama2"
    _cli(pano + ["--out", str(one)], 1)
    assert _cli(pano + ["--out", str(two)], 2).stdout.count("panoramas:") == 1
    a, b = (read_png(str(d / "panorama_000000.png")).astype(int) for d in (one, two))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1              # the sums' order: at most a level
    assert sorted(p.name for p in two.iterdir() if p.suffix == ".png") == \
        sorted(p.name for p in one.iterdir() if p.suffix == ".png")
    written = (two / "panorama_000000.png").stat().st_mtime_ns
    _cli(pano + ["--out", str(two)], 2)                                  # finished: nothing drawn again
    assert (two / "panorama_000000.png").stat().st_mtime_ns == written
    # the upscale (its windows split the same way, as the worker's upscale shows): one PNG, said once
    assert _cli(up + ["--out", str(tmp_path / "up")], 2).stdout.count("upscaled:") == 1
    assert [p.name for p in (tmp_path / "up").iterdir() if p.suffix == ".png"] == ["upscaled_000003.png"]
    assert read_png(str(tmp_path / "up" / "upscaled_000003.png")).shape == (48, 80, 3)
