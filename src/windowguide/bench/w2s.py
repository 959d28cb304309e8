"""Weak-to-strong guidance at training time, measured: ``windowguide bench w2s`` (and rows of
``windowguide bench quality``).

For each dataset, the bundled recipe is trained with the same budget and seed five times: plainly
(the baseline) and with each training target of ``train/w2s.py`` (mg, branch, ag with the bundled
NAME-weak, sgg with the branch below sigma 1), all at weight w. The baseline is sampled without
guidance and with CFG at w (2 network evaluations per step); every w2s model without guidance (1
evaluation per step). Each row reports FD against the feature protocol of ``metrics.features``, the
mirror asymmetry, the evaluations per step, and the training cost per iteration relative to the
baseline (``iteration_costs``: the recipes' iterations timed interleaved on the same batch).
Models are kept under OUT/models, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..commands.common import labels_for
from ..files import write_json
from ..generate import sample
from ..guidance import CFG
from ..metrics.features import Evaluator
from ..models.checkpoint import load_denoiser
from ..train.edm import config_from, train

KINDS = ("mg", "branch", "ag", "sgg")


@dataclass
class W2SSettings:
    datasets: tuple[str, ...] = ("digits", "mirror")
    train_steps: int = 400
    weight: float = 1.0
    samples: int = 300
    steps: int = 16
    cost_repeats: int = 7        # timed training iterations per recipe (medians kept)


def _config(dataset: str, kind: str | None, s: W2SSettings):
    extra = {} if kind is None else dict(w2s=kind, w2s_weight=s.weight, w2s_weak=f"{dataset}-weak")
    return config_from(dataset, steps=s.train_steps, checkpoint_every=s.train_steps, **extra)


def train_variants(dataset: str, s: W2SSettings, out_dir: str, progress: bool = True) -> dict:
    """{kind or 'baseline': model path}; trained once, then reused."""
    out = {}
    for kind in (None,) + KINDS:
        name = kind or "baseline"
        folder = os.path.join(out_dir, "models", f"{dataset}-{name}-{s.train_steps}")
        out[name] = train(_config(dataset, kind, s), folder, progress, name=dataset)
    return out


def iteration_costs(dataset: str, s: W2SSettings, repeats: int = 7) -> dict:
    """Seconds of one training iteration (loss, backward, optimiser step) per recipe, relative to the
    plain one: the recipes are run interleaved on the same batch, in alternating order, medians kept,
    so a busy machine affects them alike."""
    from ..data import load
    from ..models.checkpoint import load_matching_denoiser
    from ..train.edm import training_batch, build_net, edm_loss
    data = load(dataset, "train")
    setups = {}
    for kind in (None,) + KINDS:
        cfg = _config(dataset, kind, s)
        torch.manual_seed(0)
        net = build_net(cfg, data)
        weak = (load_matching_denoiser(cfg.w2s_weak, data.shape, data.num_classes)
                if kind is not None and cfg.recipe().needs_weak else None)
        setups[kind or "baseline"] = (cfg, net, torch.optim.AdamW(net.parameters(), lr=cfg.lr), weak)
    times = {k: [] for k in setups}
    order = list(setups)
    for r in range(repeats + 1):
        for k in (order if r % 2 == 0 else order[::-1]):
            cfg, net, opt, weak = setups[k]
            gen = torch.Generator().manual_seed(r)
            x0, labels = training_batch(data, net, gen, cfg)
            t0 = time.perf_counter()
            loss = edm_loss(net, x0, labels, gen, cfg, None, weak)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:                                   # the first round warms up
                times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {k: v / med["baseline"] for k, v in med.items()}


def rows(dataset: str, s: W2SSettings, out_dir: str, progress: bool = True) -> list[dict]:
    """The benchmark rows of one dataset (see the module docstring)."""
    models = train_variants(dataset, s, out_dir, progress)
    cost = iteration_costs(dataset, s, s.cost_repeats)
    ev = Evaluator(dataset, s.samples)
    seeds = list(range(s.samples))
    table = []
    runs = [("baseline, no guidance", "baseline", None, 1), (f"baseline + CFG w={s.weight:g}", "baseline",
                                                              CFG(s.weight), 2)]
    runs += [(f"trained with {k} w={s.weight:g}", k, None, 1) for k in KINDS]
    for label, name, guidance, evals in runs:
        denoiser, info, net = load_denoiser(models[name])
        with torch.no_grad():
            x = sample(denoiser, tuple(info["shape"]), seeds, steps=s.steps, guidance=guidance,
                       cond=labels_for(seeds, net.num_classes, "all"))
        m = ev(x)
        row = dict(method=label, evaluations_per_step=evals, train_cost=cost[name],
                   fd=m["fd"], **({"asymmetry": m["asymmetry"]} if "asymmetry" in m else {}))
        table.append(row)
        if progress:
            print(f"  {dataset:7s} {label:28s} FD {row['fd']:.3f}", flush=True)
    table.append(dict(method="real images (floor)", evaluations_per_step=0, train_cost=0.0,
                      **{k: v for k, v in ev.floor().items() if k in ("fd", "asymmetry")}))
    return table


def run(json_path: str | None = None, out_dir: str = "runs/bench/w2s", settings: W2SSettings | None = None,
        progress: bool = True) -> dict:
    s = settings or W2SSettings()
    t0 = time.perf_counter()
    report = dict(settings=s.__dict__, datasets={d: rows(d, s, out_dir, progress) for d in s.datasets})
    report["seconds"] = time.perf_counter() - t0
    if json_path:
        write_json(json_path, report)
    return report


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [f"weak-to-strong guidance in training: {s['train_steps']} training steps each, same seed; "
             f"{s['samples']} samples, {s['steps']} Heun steps"]
    for dataset, table in report["datasets"].items():
        asym = "asymmetry" in table[0]
        lines.append(f"{dataset:7s} {'method':28s} {'evals/step':>10s} {'FD':>7s}" + (f" {'asym':>7s}" if asym else "")
                     + f" {'train cost':>10s}")
        for r in table:
            lines.append(f"{'':7s} {r['method']:28s} {r['evaluations_per_step']:>10d} {r['fd']:>7.3f}"
                         + (f" {r['asymmetry']:>7.4f}" if asym else "") + f" {r['train_cost']:>10.2f}")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)


__all__ = ["W2SSettings", "train_variants", "rows", "run", "format_report"]
