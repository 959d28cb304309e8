"""``windowguide bench scale``: what a fused run holds in memory, against the number of windows and the
canvas size, with every window's state at once and with streaming view batches (``view_batch``); the wall
time of one canvas on 2 processes (torchrun, gloo, 1 thread each) against 1 process of 1 thread; and
estimates for SDXL upscales to 4096 and 8192 pixels on 1 and 8 GPUs.

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

TIMING = """
import json, sys, time, torch
from windowguide import distributed
from windowguide.fusion import panorama
from windowguide.models.checkpoint import load_denoiser
r = distributed.init("cpu")
torch.set_num_threads(1)
width, steps = int(sys.argv[1]), int(sys.argv[2])
scenes, info, net = load_denoiser("scenes")
kw = dict(window=24, stride=8, steps=steps, sampler="ddpm", mode="gf", vcf=True, cond=torch.tensor([1]), view_batch=32)
with torch.no_grad():
    panorama(scenes, (3, 24, 72), [0], **kw)            # a warm-up: the allocator, the kernels, the group
    distributed.barrier()
    t0 = time.perf_counter()
    panorama(scenes, (3, 24, width), [0], **kw)
    distributed.barrier()
    seconds = time.perf_counter() - t0
if r.main:
    print(json.dumps(dict(seconds=seconds, ranks=r.world, windows=(width - 24) // 8 + 1)))
distributed.close()
"""

QUICK = dict(widths=(256, 512), strides=(1,), views=("all", 8), canvas=(2048, 8192), timing=(4096, 4))
FULL = dict(widths=(256, 512, 1024, 2048), strides=(1, 8), views=("all", 8), canvas=(2048, 8192, 32768),
            timing=(4096, 4))
CANVAS_STRIDE = 16          # the canvas series: a fixed view batch, so only the canvas grows


def timing(width: int, steps: int, ranks: int) -> dict:
    """The panorama's wall time on ``ranks`` processes of one thread each (torchrun, gloo), warm."""
    import os
    import tempfile
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:         # torchrun runs a file, not -c
        program = os.path.join(tmp, "timing.py")
        with open(program, "w") as f:
            f.write(TIMING)
        launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        p = subprocess.run([sys.executable, *launcher, program, str(width), str(steps)], capture_output=True,
                           text=True, timeout=3600, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])


def sdxl_estimates(step_seconds: float | None = None) -> list[dict]:
    """SDXL 2x upscales to 4096 and 8192 pixels (latents 512 and 1024 a side): 128 x 128 latent windows at
    stride 64, strength 0.35 of 25 steps (9 denoising steps), CFG (2 network evaluations a window); the
    memory of the canvas and a view batch of 8 windows (``memory.fused_bytes``, fp32), and the time as
    evaluations x ``step_seconds`` (one SDXL UNet evaluation of a 128 x 128 latent) over 1 and 8 GPUs
    when that figure is given (measured on the GPU at hand)."""
    from ..memory import fused_bytes, window_count
    rows = []
    for pixels in (4096, 8192):
        side = pixels // 8
        k = window_count((side, side), (128, 128), 64)
        evaluations = k * 9 * 2
        row = dict(pixels=pixels, windows=k, evaluations=evaluations,
                   all_mib=fused_bytes(1, 4, (side, side), (128, 128), 64) / 2 ** 20,
                   view8_mib=fused_bytes(1, 4, (side, side), (128, 128), 64, view_batch=8) / 2 ** 20)
        for gpus in (1, 8):
            per_gpu = -(-k // gpus) * 9 * 2
            row[f"minutes_{gpus}"] = None if step_seconds is None else per_gpu * step_seconds / 60
        rows.append(row)
    return rows


def measure(width: int, stride: int, view) -> dict:
    """One configuration in a fresh process: the memory the fused loop added (MiB) and the windows."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROGRAM, str(width), str(stride), str(view)], capture_output=True,
                       text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return dict(width=width, stride=stride, view_batch=view, seconds=time.perf_counter() - t0, **out)


def run(json_path: str | None = None, quick: bool = False, progress: bool = True,
        sdxl_step_seconds: float | None = None) -> dict:
    """Every configuration of the grid (``QUICK`` or ``FULL``), the canvas series, the 2-process timing
    and the SDXL estimates; returns the report."""
    grid = QUICK if quick else FULL
    rows = []
    for stride in grid["strides"]:
        for width in grid["widths"]:
            for view in grid["views"]:
                rows.append(measure(width, stride, view))
                if progress:
                    print(_row(rows[-1]), flush=True)
    canvas = [measure(width, CANVAS_STRIDE, 8) for width in grid["canvas"]]
    fit = _line([3 * 24 * r["width"] / 1e6 for r in canvas], [r["added_mib"] for r in canvas])
    width, steps = grid["timing"]
    one, two = timing(width, steps, 1), timing(width, steps, 2)
    report = dict(rows=rows, canvas=canvas, canvas_fit=fit, timing=dict(one=one, two=two,
                  speedup=one["seconds"] / two["seconds"]), sdxl=sdxl_estimates(sdxl_step_seconds),
                  sdxl_step_seconds=sdxl_step_seconds, device="cpu", date=time.strftime("%Y-%m-%d"), quick=quick)
    if json_path:
        write_json(json_path, report)
    return report


def _row(r: dict) -> str:
    view = "all windows" if r["view_batch"] == "all" else f"view batch {r['view_batch']}"
    return (f"  canvas 24 x {r['width']:5d}, stride {r['stride']}: {r['windows']:5d} windows, {view:13s}: "
            f"+{r['added_mib']:7.1f} MiB")


def _line(xs: list[float], ys: list[float]) -> dict:
    """The least-squares line y = slope x + intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return dict(slope=slope, intercept=my - slope * mx)


def format_report(report: dict) -> str:
    lines = [f"windowguide bench scale ({report['date']}, {report['device']}): memory the fused loop added "
             f"(peak RSS after - before, a fresh process each; scenes, DDPM + VCF, 2 steps)"]
    lines += [_row(r) for r in report["rows"]]
    if "canvas" in report:
        fit = report["canvas_fit"]
        lines.append(f"against the canvas (stride {CANVAS_STRIDE}, view batch 8):")
        lines += [_row(r) for r in report["canvas"]]
        lines.append(f"  linear: {fit['slope']:.1f} MiB per million canvas values + {fit['intercept']:.1f} MiB "
                     f"(a float32 state is 3.8 MiB per million values)")
        t = report["timing"]
        lines.append(f"one canvas 24 x {(t['one']['windows'] - 1) * 8 + 24} ({t['one']['windows']} windows, view batches "
                     f"of 32 on both sides), 1 thread a process: 1 process {t['one']['seconds']:.2f} s, 2 processes "
                     f"(torchrun, gloo) {t['two']['seconds']:.2f} s: {t['speedup']:.2f}x")
        lines.append("SDXL 2x upscale estimates (128 x 128 latent windows, stride 64, 9 steps with CFG; fp32 canvas):")
        for r in report["sdxl"]:
            time_text = ("; time: give --sdxl-step-seconds (one SDXL UNet evaluation of a 128 x 128 latent on your "
                         "GPU)" if r["minutes_1"] is None else
                         f"; {r['minutes_1']:.1f} min on 1 GPU, {r['minutes_8']:.1f} min on 8")
            lines.append(f"  to {r['pixels']} px: {r['windows']} windows, {r['evaluations']} evaluations; canvas + "
                         f"windows {r['all_mib']:.0f} MiB all at once, {r['view8_mib']:.0f} MiB in view batches of 8"
                         f"{time_text}")
    return "\n".join(lines)


__all__ = ["run", "measure", "format_report"]
