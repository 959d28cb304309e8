"""The autoguidance toy (Karras et al. 2024), with the M-SWG paper's weight-decayed weak model and SGG.

Data: two interleaved fractal trees (two classes), an exact Gaussian mixture. Models: small MLPs,
EDM-trained on exact samples: the main model (conditional, label dropout 0.2, which also gives the
unconditional prediction CFG needs); a weak model, smaller and trained 4x shorter (autoguidance); a
weight-decayed model, the main model's architecture and budget with AdamW weight decay 0.1 ("same
error, but stronger"). Sampling: Heun, 32 steps, sigma 0.002..80; SGG splits at the sigma of the
middle step, as the SGG paper's recipe switches after half the steps. Metrics: ``toy.metrics``.
"""
from __future__ import annotations

import os

import torch

from ..generate import sample
from ..guidance import CFG, AutoGuidance, Segmented
from ..sampling import karras_sigmas
from . import metrics as M
from .mixture import GMM, interleaved_trees
from .mlp import TrainConfig, trained
from ..files import write_json

STEPS = 32
MAIN = TrainConfig(hidden=128, layers=4, steps=5000)
WEAK = TrainConfig(hidden=64, layers=3, steps=1250)
DECAYED = TrainConfig(hidden=128, layers=4, steps=5000, weight_decay=0.1)
METRICS = ("log_density", "outliers", "coverage", "component_tv")


def sgg_split(steps: int = STEPS) -> float:
    """The sigma of the middle step of the Karras schedule (the SGG recipe's half-way switch)."""
    return karras_sigmas(steps)[steps // 2].item()


def methods(main, weak, decayed, split: float) -> dict:
    """Guidance of each method at weight w."""
    return {
        "none": lambda w: None,
        "cfg": lambda w: CFG(w),
        "autoguidance": lambda w: AutoGuidance(weak, w),
        "weight_decay": lambda w: AutoGuidance(decayed, w),
        "sgg": lambda w: Segmented(CFG(w), AutoGuidance(weak, w), sigma_split=split),
    }


def sample_toy(denoiser, guidance, n_per_class: int, classes: int, steps: int = STEPS):
    """n_per_class samples of every class, seeds 0..N-1 (class = seed mod classes)."""
    seeds = list(range(n_per_class * classes))
    cls = torch.tensor(seeds) % classes
    x = sample(denoiser, (2, 1, 1), seeds, steps=steps, sampler="heun", guidance=guidance, cond=cls)
    return x.flatten(1), cls


def sweep(gmm: GMM, models: dict, weights, n_per_class: int) -> dict:
    """metrics[method][i] at weights[i]; samples kept for plotting at every weight."""
    main = models["main"]
    thresholds = M.outlier_thresholds(gmm)
    table, samples = {}, {}
    for name, make in methods(models["main"], models["weak"], models["decayed"], sgg_split()).items():
        table[name], samples[name] = [], []
        for w in (weights if name != "none" else [0.0]):
            x, cls = sample_toy(main, make(w), n_per_class, gmm.num_classes)
            table[name].append(dict(weight=w, **M.evaluate(gmm, x, cls, thresholds)))
            samples[name].append((x, cls))
    return {"table": table, "samples": samples}


def run(out_dir: str | None = None, json_path: str | None = None, weights=(0.5, 1.0, 2.0, 3.0),
        n_per_class: int = 1000, plot: bool = True) -> dict:
    gmm = interleaved_trees(depth=4, width_ratio=0.12)
    nets = {"main": trained(gmm, MAIN), "weak": trained(gmm, WEAK), "decayed": trained(gmm, DECAYED)}
    models = {k: v.denoiser() for k, v in nets.items()}
    result = sweep(gmm, models, list(weights), n_per_class)
    gen = torch.Generator().manual_seed(7)
    cls = torch.arange(2 * n_per_class) % 2
    truth, _ = gmm.sample(len(cls), gen, cls)
    report = {"setting": dict(components=len(gmm.weights), classes=2, steps=STEPS, sampler="heun",
                              sgg_split_sigma=sgg_split(), n_per_class=n_per_class, weights=list(weights),
                              main=MAIN.__dict__, weak=WEAK.__dict__, decayed=DECAYED.__dict__,
                              outlier_threshold="1st percentile of log p(x|c) over exact samples"),
              "exact_samples": M.evaluate(gmm, truth, cls, M.outlier_thresholds(gmm)),
              "table": result["table"]}
    if out_dir and plot:
        os.makedirs(out_dir, exist_ok=True)
        report["figures"] = plot_sweep(out_dir, "tree", gmm, report["table"], result["samples"], weights)
    if json_path:
        write_json(json_path, report)
    return report


def plot_sweep(out_dir, prefix, gmm, table, samples, weights) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, metric in zip(axes, METRICS):
        for name, rows in table.items():
            ws = [r["weight"] for r in rows]
            vals = [r[metric] for r in rows]
            if name == "none":
                ax.axhline(vals[0], color="k", ls="--", lw=1, label="none")
            else:
                ax.plot(ws, vals, marker="o", label=name)
        ax.set_xlabel("guidance weight w"), ax.set_title(metric)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"{prefix}_metrics.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    # samples at w = 1 (or the first weight) over the exact density of the classes
    lo, hi = gmm.means.min(0).values - 0.4, gmm.means.max(0).values + 0.4
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 160), torch.linspace(lo[1], hi[1], 160), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1).double()
    dens = gmm.log_prob(grid).view(160, 160).exp()
    idx = list(weights).index(1.0) if 1.0 in weights else 0
    fig, axes = plt.subplots(1, len(samples), figsize=(3.6 * len(samples), 3.6))
    for ax, (name, runs) in zip(axes, samples.items()):
        x, cls = runs[0 if name == "none" else idx]
        ax.contourf(gx, gy, dens.sqrt(), levels=20, cmap="Greys")
        ax.scatter(x[:, 0], x[:, 1], c=cls, cmap="coolwarm", s=2, alpha=0.6)
        ax.set_title(name if name == "none" else f"{name}, w = {weights[idx]}")
        ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.set_aspect("equal"), ax.axis("off")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"{prefix}_samples.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def summary(report: dict) -> str:
    lines = [f"{report.get('title', 'tree toy')}: metrics per method and weight "
             f"(log_density up, outliers down, coverage up, component_tv down)",
             f"{'method':>13} {'w':>4} " + " ".join(f"{m:>12}" for m in METRICS)]
    e = report["exact_samples"]
    lines.append(f"{'exact data':>13} {'':>4} " + " ".join(f"{e[m]:>12.3f}" for m in METRICS))
    for name, rows in report["table"].items():
        for r in rows:
            lines.append(f"{name:>13} {r['weight']:>4.1f} " + " ".join(f"{r[m]:>12.3f}" for m in METRICS))
    return "\n".join(lines)
