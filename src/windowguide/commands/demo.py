"""``windowguide demo``: what sliding-window guidance does, on the bundled default model, in < 1 minute.

The bundled ``mirror`` model draws mirror-symmetric scenes; a crop of the image cannot see both halves,
so extrapolating away from the crop prediction (M-SWG) pushes samples toward the global symmetry the
crops miss. Three grids of the same seeds and classes (none / M-SWG / CFG + M-SWG, at the weight the
quality benchmark recommends) go into one PNG; the asymmetry (0 on real data) and FD on the bundled
classifier's features are printed as mean ± std over three disjoint seed sets, with the real-image floor
and a one-line caption that says whether each change is larger than that spread.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from ..files import check_out_dir
from ..generate import sample
from ..images import grid
from ..metrics.features import Evaluator
from .common import labels_for, prepare

DEFAULT_MODEL = "mirror"
# The benchmark's recommendation on mirror (``windowguide bench quality``, benchmarks/quality_cpu.txt):
# M-SWG at its best-FD weight (1), and CFG 1 + M-SWG at its best-FD weight (1).
DEMO_METHODS = [("no guidance", "none"), ("M-SWG w=1", "mswg:w=1,window=16"),
                ("CFG w=1 + M-SWG w=1", "cfg:w=1+mswg:w=1,window=16")]
SEED_SETS = 3


def run(out: str = ".", model: str = DEFAULT_MODEL, samples: int = 64, steps: int = 12,
        progress: bool = True) -> dict:
    """Sample ``SEED_SETS`` disjoint sets of ``samples`` seeds per method, write ``windowguide_demo.png``
    into ``out``; returns the figures (mean and spread over the sets, and the real-image floor)."""
    check_out_dir(out)
    t0 = time.perf_counter()
    ev = Evaluator(model, floor_count=samples)
    panels, results = [], []
    for title, g_spec in DEMO_METHODS:
        denoiser, net, info, g = prepare(model, g_spec)
        per_set, first = [], None
        for k in range(SEED_SETS):
            seeds = list(range(k * samples, (k + 1) * samples))
            with torch.no_grad():
                x = sample(denoiser, tuple(info["shape"]), seeds, steps=steps, guidance=g,
                           cond=labels_for(seeds, net.num_classes, "all"))
            per_set.append(ev(x))
            first = x if first is None else first
        results.append(dict(method=title, spec=g_spec, **_spread(per_set)))
        if progress:
            print(f"{title:24s} {_line(results[-1])}", flush=True)
        panels.append(grid(first[:36], nrow=6, scale=3))
    floor = _spread([ev.floor()])
    caption = _caption(results, floor, samples)
    path = _figure(panels, results, caption, os.path.join(out, "windowguide_demo.png"))
    if progress:
        print(f"{'real images (floor)':24s} {_line(floor)}\n{caption}\nimage: {path}\n"
              f"({SEED_SETS} seed sets of {samples} per method, {steps} Heun steps; "
              f"{time.perf_counter() - t0:.0f} s)")
    return dict(path=path, results=results, floor=floor, caption=caption, seconds=time.perf_counter() - t0)


def _spread(sets: list[dict]) -> dict:
    """Mean and standard deviation over seed sets of FD and asymmetry."""
    out = {}
    for key in ("fd", "asymmetry"):
        if key in sets[0]:
            v = torch.tensor([m[key] for m in sets], dtype=torch.float64)
            out[key], out[f"{key}_std"] = v.mean().item(), (v.std().item() if len(v) > 1 else 0.0)
    return out


def _line(r: dict) -> str:
    asym = f"asymmetry {r['asymmetry']:.4f} ± {r['asymmetry_std']:.4f}   " if "asymmetry" in r else ""
    return f"{asym}FD {r['fd']:.3f} ± {r['fd_std']:.3f}"


def _caption(results: list[dict], floor: dict, samples: int) -> str:
    """One honest line: what M-SWG changed, and whether the change is larger than the spread."""
    base, mswg = results[0], results[1]
    def change(key):
        d = mswg[key] - base[key]
        noise = max(base[f"{key}_std"], mswg[f"{key}_std"])
        verdict = "within the spread" if abs(d) <= noise else ("lower" if d < 0 else "higher")
        return f"{key} {base[key]:.3g} -> {mswg[key]:.3g} ({verdict})"
    parts = [change(k) for k in ("asymmetry", "fd") if k in base]
    return (f"{mswg['method']} vs none: {', '.join(parts)}; ± = std over {SEED_SETS} sets of {samples}; "
            f"real images: FD {floor['fd']:.3g}")


def _figure(panels: list[np.ndarray], results: list[dict], caption: str, path: str) -> str:
    """The grids side by side, each titled with its method and figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8))
    for ax, panel, r in zip(np.atleast_1d(axes), panels, results):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(f"{r['method']}\n{_line(r)}", fontsize=9)
        ax.axis("off")
    fig.suptitle("windowguide demo: same seeds and classes (asymmetry of real images = 0)", fontsize=11)
    fig.text(0.5, 0.02, caption, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
