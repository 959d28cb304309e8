"""``windowguide bench generate``: what the bookkeeping of ``windowguide sample`` costs, and the
throughput with one and two processes.

- overhead: ``commands.sample.run`` (per-seed PNGs written atomically, done-checks, settings,
  manifest, npz and grid rebuilt) against bare ``wg.sample`` of the same seeds, batches and steps
  (the model loaded and the images converted to uint8 in memory), interleaved, medians of the repeats;
- throughput: the CLI as a fresh process, plain ``python`` and ``torchrun --nproc_per_node=2``
  (gloo; OMP_NUM_THREADS=1 per rank as torchrun sets it), wall time including start-up, images/s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from ..commands import sample as sample_cmd
from ..commands.common import labels_for
from ..generate import sample
from ..images import to_uint8
from ..models.checkpoint import load_denoiser


def overhead(model: str, n: int, steps: int, batch: int, repeats: int) -> dict:
    seeds = list(range(n))
    scratch = tempfile.mkdtemp(prefix="wg-bench-")

    def bare():                          # what a user of the library writes: load, sample, convert
        denoiser, info, net = load_denoiser(model)
        shape = tuple(info["shape"])
        for i in range(0, n, batch):
            chunk = seeds[i:i + batch]
            with torch.no_grad():
                to_uint8(sample(denoiser, shape, chunk, steps=steps, cond=labels_for(chunk, net.num_classes, "all")))

    def command():
        out = os.path.join(scratch, "out")
        shutil.rmtree(out, ignore_errors=True)
        sample_cmd.run(model, seeds=f"0-{n - 1}", out=out, steps=steps, batch_size=batch, progress=False)

    times = {"bare": [], "command": []}
    try:
        for r in range(repeats + 1):
            for name, fn in (("bare", bare), ("command", command))[::1 if r % 2 else -1]:
                t0 = time.perf_counter()
                fn()
                if r:
                    times[name].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return dict(bare_s=med["bare"], command_s=med["command"], overhead=med["command"] / med["bare"] - 1)


def throughput(model: str, n: int, steps: int, batch: int) -> dict:
    args = ["-m", "windowguide", "sample", "--model", model, "--seeds", f"0-{n - 1}", "--steps", str(steps),
            "--batch-size", str(batch)]
    out = {}
    for label, prefix, env in (("1 process", [sys.executable], {}),
                               ("torchrun 2 processes", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         "--nproc_per_node=2"], {"OMP_NUM_THREADS": "1"})):
        folder = tempfile.mkdtemp(prefix="wg-bench-")
        try:
            t0 = time.perf_counter()
            subprocess.run(prefix + args + ["--out", os.path.join(folder, "s")], check=True, capture_output=True,
                           env=dict(os.environ, **env))
            wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        out[label] = dict(seconds=wall, images_per_s=n / wall)
    return out


def run(json_path: str | None = None, quick: bool = False, model: str = "digits") -> dict:
    n, steps, batch, repeats = (64, 8, 32, 1) if quick else (512, 16, 64, 3)
    report = dict(model=model, images=n, steps=steps, batch=batch, sampler="heun",
                  overhead=overhead(model, n, steps, batch, repeats), throughput=throughput(model, n, steps, batch),
                  threads=torch.get_num_threads(), cpus=os.cpu_count())
    from . import write_report
    write_report(report, json_path)
    return report


def format_report(r: dict) -> str:
    o = r["overhead"]
    lines = [f"generation: {r['model']}, {r['images']} images, {r['steps']} Heun steps, batch {r['batch']} "
             f"({r['cpus']} CPUs)",
             f"  bookkeeping: wg.sample {o['bare_s']:.2f} s, windowguide sample {o['command_s']:.2f} s: "
             f"overhead {100 * o['overhead']:+.1f} %"]
    for label, t in r["throughput"].items():
        lines.append(f"  {label:22s} {t['seconds']:6.1f} s wall (start-up included)  {t['images_per_s']:6.1f} images/s")
    return "\n".join(lines)


__all__ = ["run", "format_report", "overhead", "throughput"]
