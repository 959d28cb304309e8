"""The SGG paper's comparison of regimes on recursive 2-D mixtures (docs/algorithms.md §3).

The paper's two cells: 4 classes of depth-3 trees (a well-fitted model, a blurry condition: each class
spans a whole subtree) and 24 classes of depth 1 (an under-fitted model, a sharp condition: many thin
classes for the same small net). Classes fan out from one root, each a binary tree of ``depth`` levels
(``mixture.class_fan``). Our earlier cells on one fractal tree (2 or 8 classes, depth 3 or 6) remain
available as ``tree_cell``. For each cell the same small conditional MLP (label
dropout 0.2) and a weaker one (smaller, 4x shorter training) are trained, and none / CFG /
autoguidance / SGG (CFG above the middle step's sigma, autoguidance below) are compared on the
metrics of ``toy.metrics`` at w = 1 and w = 2.

The SGG paper's claim to check: CFG wins with an under-fitted model and fine classes (fewer outliers),
autoguidance wins with a well-fitted model and coarse classes (keeps diversity), SGG gets both.
"""
from __future__ import annotations

import os

import torch

from .metrics import evaluate, outlier_thresholds
from .mixture import class_fan, fractal_tree
from .mlp import TrainConfig, trained
from .tree import METRICS, methods, sample_toy, sgg_split
from ..files import write_json

MAIN = TrainConfig(hidden=96, layers=3, steps=3000)
WEAK = TrainConfig(hidden=48, layers=2, steps=750)
CELLS = ((4, 3), (24, 1))            # the SGG paper's (classes, depth): well fitted, under-fitted
CLASS_LEVELS = {2: 1, 8: 3}          # our earlier fractal-tree cells (tree_cell)
WEIGHTS = (1.0, 2.0)


def cell(classes: int, depth: int, n_samples: int):
    """The paper's cell: ``classes`` fanned classes, each a depth-``depth`` tree (``class_fan``)."""
    return _run_cell(class_fan(classes, depth), classes, n_samples)


def tree_cell(classes: int, depth: int, n_samples: int):
    """Our earlier cell: one fractal tree, 2 or 8 subtrees as the classes."""
    gmm = fractal_tree(depth, class_level=CLASS_LEVELS[classes], width_ratio=0.12, root=(0.0, -1.0))
    return _run_cell(gmm, classes, n_samples)


def _run_cell(gmm, classes: int, n_samples: int):
    """Train the cell's two models, sample every method; returns (gmm, metrics per method, samples shown)."""
    main, weak = trained(gmm, MAIN).denoiser(), trained(gmm, WEAK).denoiser()
    thresholds = outlier_thresholds(gmm)
    rows, shown = {}, {}
    for name, make in methods(main, weak, None, sgg_split()).items():
        if name == "weight_decay":
            continue
        rows[name] = []
        for w in ([0.0] if name == "none" else WEIGHTS):
            x, cls = sample_toy(main, make(w), max(1, n_samples // classes), classes)
            rows[name].append(dict(weight=w, **evaluate(gmm, x, cls, thresholds)))
            if w in (0.0, WEIGHTS[0]):
                shown[name] = (x, cls)
    return gmm, rows, shown


def run(out_dir: str | None = None, json_path: str | None = None, n_samples: int = 2000, plot: bool = True) -> dict:
    report = {"setting": dict(cells=[list(c) for c in CELLS], weights=list(WEIGHTS),
                              n_samples=n_samples, sgg_split_sigma=sgg_split(), main=MAIN.__dict__,
                              weak=WEAK.__dict__), "cells": []}
    panels = []
    for classes, depth in CELLS:
        gmm, rows, shown = cell(classes, depth, n_samples)
        report["cells"].append(dict(classes=classes, depth=depth, components=len(gmm.weights), table=rows))
        panels.append((classes, depth, gmm, shown))
    if out_dir and plot:
        os.makedirs(out_dir, exist_ok=True)
        report["figures"] = [_plot(out_dir, panels)]
    if json_path:
        write_json(json_path, report)
    return report


def _plot(out_dir, panels) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels[0][3])
    fig, axes = plt.subplots(len(panels), len(names), figsize=(3.2 * len(names), 3.0 * len(panels)))
    for row, (classes, depth, gmm, shown) in zip(axes, panels):
        lo, hi = gmm.means.min(0).values - 0.4, gmm.means.max(0).values + 0.4
        gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 120), torch.linspace(lo[1], hi[1], 120), indexing="xy")
        dens = gmm.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1).double()).view(120, 120).exp()
        for ax, name in zip(row, names):
            x, cls = shown[name]
            ax.contourf(gx, gy, dens.sqrt(), levels=15, cmap="Greys")
            ax.scatter(x[:, 0], x[:, 1], c=cls, cmap="tab10", s=1.5, alpha=0.6)
            ax.set_title(f"{classes} classes, depth {depth}: {name}", fontsize=8)
            ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.axis("off")
    fig.tight_layout()
    path = os.path.join(out_dir, "leaves_grid.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def summary(report: dict) -> str:
    lines = ["leaves toy: classes x depth x method (log_density up, outliers down, coverage up, component_tv down)",
             f"{'classes':>7} {'depth':>5} {'method':>13} {'w':>4} " + " ".join(f"{m:>12}" for m in METRICS)]
    for c in report["cells"]:
        for name, rows in c["table"].items():
            for r in rows:
                lines.append(f"{c['classes']:>7} {c['depth']:>5} {name:>13} {r['weight']:>4.1f} "
                             + " ".join(f"{r[m]:>12.3f}" for m in METRICS))
    return "\n".join(lines)
