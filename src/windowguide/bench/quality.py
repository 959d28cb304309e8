"""``windowguide bench quality``: every guidance method at a sweep of weights on the bundled models.

For each dataset (bundled main model NAME, weak models NAME-weak and NAME-wd, classifier
NAME-classifier) and each method, samples are drawn for fixed seeds 0..N-1 (class = seed mod K,
Heun), and measured against the real training images on the classifier's features (the classifier
never saw those: see ``metrics.features`` for the protocol and the real-vs-real floor):
FD, KID, IS, precision and recall (k = 3), plus exact pixel statistics: the mirror asymmetry
(the coherence metric of the ``mirror`` data; 0 on every real image), RMS contrast, HSV saturation
and the share of values the sampler put outside [-1, 1].
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from . import write_report
from ..metrics.features import Evaluator
from ..commands.common import labels_for, prepare
from ..generate import sample
from ..images import grid, save_png

# (label, SPEC with {w}); combinations keep their first term fixed at w = 1 and sweep the second.
METHODS = [
    ("none", "none"),
    ("CFG", "cfg:w={w}"),
    ("autoguidance", "ag:w={w}"),
    ("weight-decay", "wd:w={w}"),
    ("SWG", "swg:w={w},window={k}"),
    ("M-SWG", "mswg:w={w},window={k}"),
    ("CFG1 + M-SWG", "cfg:w=1+mswg:w={w},window={k}"),
    ("AG1 + M-SWG", "ag:w=1+mswg:w={w},window={k}"),
    ("SGG (CFG / AG)", "sgg:split={split},cfg={w},ag={w}"),
]


@dataclass
class Settings:
    """What the quality benchmark sweeps: datasets, weights, samples, steps, SWG window, SGG split."""
    datasets: tuple[str, ...] = ("digits", "mirror")
    weights: tuple[float, ...] = (0.5, 1.0, 2.0)
    samples: int = 300
    steps: int = 16
    window: int = 16            # 2/3 of the 24-px side, a multiple of the UNet's factor 4
    split: float = 1.0          # SGG: CFG for sigma > 1, autoguidance below
    batch: int = 250
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(m for m, _ in METHODS))


QUICK = Settings(weights=(1.0,), samples=100, steps=10)


def run_dataset(dataset: str, s: Settings, out_dir: str, progress: bool = True) -> dict:
    """Every method at every weight on one dataset: rows of metrics, grids in out_dir/dataset."""
    ev = Evaluator(dataset, s.samples)
    seeds = list(range(s.samples))
    rows = []
    for label, template in METHODS:
        if label not in s.methods:
            continue
        for w in ([0.0] if label == "none" else s.weights):
            g_spec = template.format(w=w, k=s.window, split=s.split)
            denoiser, net, info, g = prepare(dataset, g_spec)
            cond = labels_for(seeds, net.num_classes, "all")
            t0 = time.perf_counter()
            with torch.no_grad():
                x = sample(denoiser, tuple(info["shape"]), seeds, steps=s.steps, sampler="heun", guidance=g,
                           cond=cond, batch_size=s.batch)
            row = dict(method=label, weight=w, spec=g_spec, seconds=time.perf_counter() - t0, **ev(x))
            rows.append(row)
            path = os.path.join(out_dir, dataset, f"{label.replace(' ', '').replace('/', '-')}_w{w:g}.png")
            save_png(grid(x[:64], nrow=8, scale=2), path)
            if progress:
                print(f"  {dataset:7s} {label:15s} w={w:<5g} FD {row['fd']:8.3f}  "
                      + (f"asym {row['asymmetry']:.4f}  " if "asymmetry" in row else "")
                      + f"({row['seconds']:.1f} s)", flush=True)
    return dict(dataset=dataset, classifier_test_accuracy=ev.info.get("test_accuracy"),
                real=ev.floor(s.samples), protocol=ev.protocol, rows=rows)


def best_rows(rows: list[dict]) -> list[dict]:
    """Per method: the weight with the lowest FD, and (where measured) the lowest asymmetry."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        fd = min(mine, key=lambda r: r["fd"])
        entry = dict(method=method, best_fd=fd)
        if "asymmetry" in fd:
            entry["best_coherence"] = min(mine, key=lambda r: r["asymmetry"])
        table.append(entry)
    return table


def plot(report: dict, path: str) -> str:
    """Each metric against w, one line per method, none and real as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["fd", "inception_score", "precision", "recall", "asymmetry", "contrast", "saturation", "clipped"]
    keys = [k for k in keys if k in report["rows"][0]]
    fig, axes = plt.subplots(2, (len(keys) + 1) // 2, figsize=(4 * ((len(keys) + 1) // 2), 7))
    for ax, key in zip(axes.flat, keys):
        for method in dict.fromkeys(r["method"] for r in report["rows"]):
            mine = [r for r in report["rows"] if r["method"] == method]
            if method == "none":
                ax.axhline(mine[0][key], color="k", ls="--", label="none")
            else:
                ax.plot([r["weight"] for r in mine], [r[key] for r in mine], "o-", label=method)
        ax.axhline(report["real"][key], color="grey", ls=":", label="real (floor, same count)")
        ax.set_xlabel("weight w")
        ax.set_title(key)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{report['dataset']}: guidance weight sweeps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    """The paper's layout: per method the best weight for FD and (mirror) the best for coherence."""
    has_asym = "asymmetry" in report["rows"][0]
    head = (f"{'method':16s} | {'w(FD)':>5s} {'FD':>7s} {'IS':>5s} {'prec':>5s} {'rec':>5s}"
            + (f" {'asym':>6s} | {'w(coh)':>6s} {'asym':>6s} {'FD':>7s}" if has_asym else "")
            + f" | {'contr':>5s} {'sat':>5s} {'clip%':>5s}")
    lines = [f"{report['dataset']} (classifier accuracy on unseen images {report['classifier_test_accuracy']:.3f}; "
             f"{report.get('protocol', '')})", head]
    real = report["real"]
    lines.append(f"{'real (floor)':16s} | {'':5s} {real['fd']:7.3f} {real['inception_score']:5.2f} "
                 f"{real['precision']:5.3f} {real['recall']:5.3f}"
                 + (f" {real['asymmetry']:6.4f} | {'':6s} {'':6s} {'':7s}" if has_asym else "")
                 + f" | {real['contrast']:5.3f} {real['saturation']:5.3f} {100 * real['clipped']:5.2f}")
    for entry in best_rows(report["rows"]):
        r = entry["best_fd"]
        line = (f"{entry['method']:16s} | {r['weight']:5g} {r['fd']:7.3f} {r['inception_score']:5.2f} "
                f"{r['precision']:5.3f} {r['recall']:5.3f}")
        if has_asym:
            c = entry["best_coherence"]
            line += f" {r['asymmetry']:6.4f} | {c['weight']:6g} {c['asymmetry']:6.4f} {c['fd']:7.3f}"
        lines.append(line + f" | {r['contrast']:5.3f} {r['saturation']:5.3f} {100 * r['clipped']:5.2f}")
    return "\n".join(lines)


def run(json_path: str | None = None, quick: bool = False, out_dir: str = "runs/bench/quality",
        settings: Settings | None = None, progress: bool = True) -> dict:
    """The whole benchmark; writes plots, grids and (if asked) the JSON report."""
    s = settings or (QUICK if quick else Settings())
    t0 = time.perf_counter()
    reports = []
    for dataset in s.datasets:
        rep = run_dataset(dataset, s, out_dir, progress)
        rep["plot"] = plot(rep, os.path.join(out_dir, f"{dataset}_sweeps.png"))
        if not quick and settings is None:    # the full run: models trained with w2s targets, 1 evaluation
            from . import w2s
            rep["w2s_rows"] = w2s.rows(dataset, w2s.W2SSettings(samples=s.samples, steps=s.steps), out_dir,
                                       progress)
        reports.append(rep)
    report = dict(settings={k: getattr(s, k) for k in Settings.__dataclass_fields__}, datasets=reports,
                  seconds=time.perf_counter() - t0, torch_threads=torch.get_num_threads())
    write_report(report, json_path)
    return report


def format_report(report: dict) -> str:
    """All datasets' tables and the run time."""
    parts = [format_table(r) for r in report["datasets"]]
    if any("w2s_rows" in r for r in report["datasets"]):
        from . import w2s
        parts.append(w2s.format_report(dict(settings=dict(w2s.W2SSettings().__dict__, samples=report["settings"]["samples"],
                                                          steps=report["settings"]["steps"]),
                                            datasets={r["dataset"]: r["w2s_rows"] for r in report["datasets"]
                                                      if "w2s_rows" in r}, seconds=report["seconds"])))
    parts.append(f"total {report['seconds']:.0f} s; plots and grids under the output folder")
    return "\n\n".join(parts)
