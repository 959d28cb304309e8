"""``windowguide bench scale``: what a fused run holds in memory, against the number of windows and the
canvas size, with every window's state at once and with streaming view batches (``view_batch``).

Each configuration runs in a fresh process (``python -c``), which reports the peak resident memory it
reached (``resource.getrusage().ru_maxrss``) and the same process's memory right before sampling; the
figure is their difference: what the fused loop itself added (the canvas, the windows' states, the
network's activations), in MiB. The bundled ``scenes`` model (24 x 24 windows, 3 channels), DDPM with VCF,
2 steps; stride 1 makes hundreds of windows on a short canvas, stride 8 the same canvas with few.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from ..files import write_json

PROGRAM = """
import json, resource, sys, torch
torch.set_num_threads(1)
from windowguide.fusion import panorama
from windowguide.models.checkpoint import load_denoiser
width, stride, view = int(sys.argv[1]), int(sys.argv[2]), (None if sys.argv[3] == "all" else int(sys.argv[3]))
scenes, info, net = load_denoiser("scenes")
with torch.no_grad():       # a warm-up on one window: the allocator, the kernels
    panorama(scenes, (3, 24, 24), [0], window=24, stride=8, steps=2, sampler="ddpm", mode="gf", vcf=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    x = panorama(scenes, (3, 24, width), [0], window=24, stride=stride, steps=2, sampler="ddpm", mode="gf", vcf=True,
                 view_batch=view)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(added_mib=(after - before) / 1024, windows=(width - 24) // stride + 1)))
"""

QUICK = dict(widths=(256, 512), strides=(1,), views=("all", 8))
FULL = dict(widths=(256, 512, 1024, 2048), strides=(1, 8), views=("all", 8))


def measure(width: int, stride: int, view) -> dict:
    """One configuration in a fresh process: the memory the fused loop added (MiB) and the windows."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROGRAM, str(width), str(stride), str(view)], capture_output=True,
                       text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return dict(width=width, stride=stride, view_batch=view, seconds=time.perf_counter() - t0, **out)


def run(json_path: str | None = None, quick: bool = False, progress: bool = True) -> dict:
    """Every configuration of the grid (``QUICK`` or ``FULL``); returns the report."""
    grid = QUICK if quick else FULL
    rows = []
    for stride in grid["strides"]:
        for width in grid["widths"]:
            for view in grid["views"]:
                rows.append(measure(width, stride, view))
                if progress:
                    print(_row(rows[-1]), flush=True)
    report = dict(rows=rows, device="cpu", date=time.strftime("%Y-%m-%d"), quick=quick)
    if json_path:
        write_json(json_path, report)
    return report


def _row(r: dict) -> str:
    view = "all windows" if r["view_batch"] == "all" else f"view batch {r['view_batch']}"
    return (f"  canvas 24 x {r['width']:5d}, stride {r['stride']}: {r['windows']:5d} windows, {view:13s}: "
            f"+{r['added_mib']:7.1f} MiB")


def format_report(report: dict) -> str:
    lines = [f"windowguide bench scale ({report['date']}, {report['device']}): memory the fused loop added "
             f"(peak RSS after - before, a fresh process each; scenes, DDPM + VCF, 2 steps)"]
    lines += [_row(r) for r in report["rows"]]
    return "\n".join(lines)


__all__ = ["run", "measure", "format_report"]
