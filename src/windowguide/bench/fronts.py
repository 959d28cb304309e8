"""``windowguide bench fronts``: methods judged at matched effect, and where guidance helps.

1. Fine sweeps: none, CFG, SWG, M-SWG at log-spaced weights down to 0.05, each point drawn on several
   seed sets (mean and spread), on the bundled models (``bench quality``'s evaluator: FD on the
   classifier's features, the mirror asymmetry, contrast, saturation, clip %, recall).
2. Pareto fronts: per method, the weights not dominated in (FD, side effect), side effect = the distance
   of contrast and saturation from the real images' (|c - c_real| + |s - s_real|); a method's front
   dominates another's when every point of the other is weakly dominated by one of its points and the two
   differ. On mirror the same for (asymmetry, side effect).
3. Guidance where it helps: each method at its best-FD weight, on in one third of the steps only (high,
   mid, low sigma); the gain is FD(none) - FD(banded). A banded M-SWG over the best pair of adjacent bands,
   with its network evaluations counted against full M-SWG's.
4. A weight schedule w(sigma) with the shape of the triangle toy's exact w* (log-sigma interpolation,
   scaled to the constant best weight's mean), against that constant w at the same cost (one M-SWG term
   per step: the same evaluations).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from . import write_report
from ..denoiser import Denoiser
from ..metrics.pixels import side_effect

METHODS = {"CFG": "cfg:w={w}", "SWG": "swg:w={w},window={k}", "M-SWG": "mswg:w={w},window={k}"}


@dataclass
class FrontSettings:
    datasets: tuple[str, ...] = ("digits", "mirror")
    weights: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
    seed_sets: int = 3
    samples: int = 100
    steps: int = 10
    window: int = 16
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(METHODS))


QUICK_FRONTS = FrontSettings(datasets=("mirror",), weights=(0.1, 0.8), seed_sets=3, samples=24, steps=6)


# --- Pareto fronts -----------------------------------------------------------------------------------

def dominates(a, b) -> bool:
    """a dominates b (every coordinate lower is better): a <= b everywhere and a < b somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept), in input order."""
    pts = [tuple(float(v) for v in p) for p in points]
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    front = []
    for i in order:                  # sorted lexicographically: only an earlier point can dominate a later
        if not any(dominates(pts[j], pts[i]) for j in front):
            front.append(i)
    return sorted(front)


def front_dominates(a, b) -> bool:
    """Front a dominates front b: every point of b is weakly dominated by a point of a, and not vice versa."""
    weak = lambda p, q: all(x <= y for x, y in zip(p, q))
    covers = lambda f, g: all(any(weak(p, q) for p in f) for q in g)
    return covers(a, b) and not covers(b, a)


# --- the toy's weight schedule -------------------------------------------------------------------------

def toy_weight_schedule(steps: int = 40):
    """(sigmas, w*) of the triangle toy's exact optimal weights (its 40 Euler steps, mean over trajectories)."""
    from ..sampling import karras_sigmas
    from ..toy import triangle
    sigmas = karras_sigmas(steps, 0.002, 80.0, 7.0)
    z = triangle.initial_noise(100)
    w, _ = triangle.optimal_weights(triangle.triangle_points(), 0.1, 0.2, z, sigmas)
    return sigmas[:-1].tolist(), w


def schedule_from(sigmas: list[float], weights: list[float], scale: float):
    """w(sigma) = scale * w*(sigma) / mean(w*): w* interpolated linearly in log sigma between the fitted
    sigmas (held constant beyond them)."""
    logs = [math.log(s) for s in sigmas]
    pairs = sorted(zip(logs, weights))
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    mean = statistics.fmean(weights)

    def w(sigma: float) -> float:
        t = math.log(max(sigma, 1e-12))
        if t <= xs[0]:
            v = ys[0]
        elif t >= xs[-1]:
            v = ys[-1]
        else:
            k = max(i for i in range(len(xs)) if xs[i] <= t)
            v = ys[k] + (ys[k + 1] - ys[k]) * (t - xs[k]) / (xs[k + 1] - xs[k]) if xs[k + 1] > xs[k] else ys[k]
        return scale * v / mean
    return w


# --- measuring ------------------------------------------------------------------------------------------

class Counted(Denoiser):
    """``inner`` that counts the samples it evaluates (network evaluations); a Denoiser, so the guided
    denoiser and the samplers take it as the model."""

    def __init__(self, inner):
        self.inner, self.evaluations = inner, 0
        self.multiple, self.sigma_min, self.sigma_max = inner.multiple, inner.sigma_min, inner.sigma_max
        self.null_cond = getattr(inner, "null_cond", None)

    def init_noise_scale(self, sigma):
        return self.inner.init_noise_scale(sigma)

    def forward(self, x, sigma, cond):
        self.evaluations += x.shape[0]
        return self.inner(x, sigma, cond)


def _draw(dataset, spec, seeds, steps, guidance=None):
    """Samples of a recipe on the bundled model (or ``guidance`` built here) and the evaluations they took."""
    from ..commands.common import labels_for, prepare
    from ..generate import sample
    denoiser, net, info, g = prepare(dataset, spec)
    counted = Counted(denoiser)
    g = _rebind(guidance if guidance is not None else g, denoiser, counted)
    cond = labels_for(seeds, net.num_classes, "all")
    with torch.no_grad():
        x = sample(counted, tuple(info["shape"]), seeds, steps=steps, sampler="heun", guidance=g, cond=cond,
                   batch_size=250)
    return x, counted.evaluations


def _rebind(g, old, new):
    """The guidance with terms that named the plain denoiser as their net naming the counted one."""
    from dataclasses import replace
    from ..guidance import Guidance
    return Guidance(tuple(replace(t, net=new) if getattr(t, "net", None) is old else t for t in Guidance.of(g)))


def _point(ev, dataset, spec, s: FrontSettings, guidance=None) -> dict:
    """Metrics of one recipe on every seed set: mean and standard deviation of each, evaluations per sample."""
    runs, evals = [], []
    for j in range(s.seed_sets):
        seeds = list(range(j * 100000, j * 100000 + s.samples))
        x, n = _draw(dataset, spec, seeds, s.steps, guidance)
        runs.append(ev(x))
        evals.append(n / s.samples)
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    spread = {k: statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in keys}
    return dict(spec=spec, mean=mean, std=spread, evaluations=statistics.fmean(evals))


def _shifted(pts, q, real, sign):
    """A method's front with each point moved by one seed-set standard deviation (sign +1: worse)."""
    xy = [(p["mean"][q] + sign * p["std"][q], side_effect(p["mean"], real) + sign * _side_std(p)) for p in pts]
    return [xy[i] for i in pareto_front(xy)]


def _side_std(p) -> float:
    return p["std"].get("contrast", 0.0) + p["std"].get("saturation", 0.0)


def run_dataset(dataset: str, s: FrontSettings, progress: bool = True) -> dict:
    """Sweeps, fronts, dominance, band gains and the w(sigma) trial on one bundled dataset."""
    from ..metrics.features import Evaluator
    ev = Evaluator(dataset, s.samples)
    real = ev.floor(s.samples)
    say = print if progress else (lambda *a, **k: None)
    points = {"none": [dict(weight=0.0, **_point(ev, dataset, "none", s))]}
    for method in s.methods:
        points[method] = []
        for w in s.weights:
            p = dict(weight=w, **_point(ev, dataset, METHODS[method].format(w=w, k=s.window), s))
            points[method].append(p)
            say(f"  {dataset} {method:6s} w={w:<5g} FD {p['mean']['fd']:.3f} ± {p['std']['fd']:.3f}", flush=True)
    report = dict(dataset=dataset, real=real, points=points, fronts={}, dominance=[])
    quality = ["fd"] + (["asymmetry"] if "asymmetry" in real else [])
    for q in quality:
        fronts = {}
        for method, pts in points.items():
            xy = [(p["mean"][q], side_effect(p["mean"], real)) for p in pts]
            fronts[method] = [pts[i]["weight"] for i in pareto_front(xy)], [xy[i] for i in pareto_front(xy)]
        report["fronts"][q] = {m: dict(weights=f[0], points=f[1]) for m, f in fronts.items()}
        for a in fronts:
            for b in fronts:
                if a != b and front_dominates(fronts[a][1], fronts[b][1]):
                    clear = front_dominates(_shifted(points[a], q, real, +1), _shifted(points[b], q, real, -1))
                    report["dominance"].append(dict(quality=q, winner=a, loser=b, beyond_spread=clear))
    report["bands"] = bands(ev, dataset, s, points, say)
    report["schedule"] = schedule_trial(ev, dataset, s, points, say)
    return report


def _best(points, method):
    return min(points[method], key=lambda p: p["mean"]["fd"])


def bands(ev, dataset, s: FrontSettings, points, say) -> dict:
    """Each method at its best-FD weight on in one third of the steps only; banded M-SWG over the best
    pair of adjacent thirds, its evaluations against full M-SWG's."""
    n = s.steps
    thirds = [(0, n // 3 - 1), (n // 3, 2 * n // 3 - 1), (2 * n // 3, n - 1)]
    none_fd = points["none"][0]["mean"]["fd"]
    out = {}
    for method in s.methods:
        best = _best(points, method)
        rows = []
        for first, last in thirds:
            p = _point(ev, dataset, f"{best['spec']},first={first},last={last}", s)
            rows.append(dict(steps=[first, last], gain=none_fd - p["mean"]["fd"], std=p["std"]["fd"],
                             evaluations=p["evaluations"]))
            say(f"  {dataset} {method:6s} steps {first}-{last}: FD gain {rows[-1]['gain']:+.3f} ± {p['std']['fd']:.3f}",
                flush=True)
        out[method] = dict(weight=best["weight"], full_gain=none_fd - best["mean"]["fd"],
                           full_evaluations=best["evaluations"], bands=rows)
    m = out.get("M-SWG")
    if m is not None:
        pairs = [(0, 1), (1, 2)]
        a, b = max(pairs, key=lambda ab: m["bands"][ab[0]]["gain"] + m["bands"][ab[1]]["gain"])
        first, last = m["bands"][a]["steps"][0], m["bands"][b]["steps"][1]
        p = _point(ev, dataset, f"{_best(points, 'M-SWG')['spec']},first={first},last={last}", s)
        gain = none_fd - p["mean"]["fd"]
        m["banded"] = dict(steps=[first, last], gain=gain, std=p["std"]["fd"], evaluations=p["evaluations"],
                           gain_kept=gain / m["full_gain"] if m["full_gain"] else float("nan"),
                           cost=(p["evaluations"] - points["none"][0]["evaluations"])
                           / (m["full_evaluations"] - points["none"][0]["evaluations"]))
    return out


def schedule_trial(ev, dataset, s: FrontSettings, points, say) -> dict:
    """M-SWG with w(sigma) shaped like the toy's w* against its constant best weight, same cost."""
    from ..commands.common import prepare
    from ..generate import schedule_sigmas
    from ..guidance import MSWG, Guidance
    best = _best(points, "M-SWG")
    denoiser = prepare(dataset, "none")[0]
    sig = schedule_sigmas("heun", denoiser, s.steps).tolist()
    toy_sigmas, toy_w = toy_weight_schedule()
    w = schedule_from(toy_sigmas, toy_w, best["weight"])
    g = Guidance(tuple(MSWG(w(sig[i]), window=s.window, steps=(i, i)) for i in range(s.steps)))
    p = _point(ev, dataset, "none", s, guidance=g)
    say(f"  {dataset} M-SWG w(sigma): FD {p['mean']['fd']:.3f} ± {p['std']['fd']:.3f} vs constant "
        f"{best['mean']['fd']:.3f} ± {best['std']['fd']:.3f}", flush=True)
    return dict(constant=dict(weight=best["weight"], fd=best["mean"]["fd"], std=best["std"]["fd"],
                              evaluations=best["evaluations"]),
                scheduled=dict(weights=[w(sig[i]) for i in range(s.steps)], fd=p["mean"]["fd"], std=p["std"]["fd"],
                               evaluations=p["evaluations"]))


def plot_fronts(report: dict, path: str) -> str:
    """One PNG per dataset: every point, each method's front joined, the real images' point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    qs = list(report["fronts"])
    fig, axes = plt.subplots(1, len(qs), figsize=(6 * len(qs), 4.5), squeeze=False)
    real = report["real"]
    for ax, q in zip(axes[0], qs):
        for method, pts in report["points"].items():
            xy = [(p["mean"][q], side_effect(p["mean"], real)) for p in pts]
            line = ax.plot([v[1] for v in xy], [v[0] for v in xy], "o", alpha=0.35)[0]
            f = report["fronts"][q][method]["points"]
            f = sorted(f, key=lambda v: v[1])
            ax.plot([v[1] for v in f], [v[0] for v in f], "-o", color=line.get_color(), label=method)
        ax.plot([0.0], [real[q]], "k*", markersize=12, label="real images")
        ax.set_xlabel("side effect: |contrast - real| + |saturation - real|")
        ax.set_ylabel(q)
        ax.set_title(f"{report['dataset']}: {q} against side effect (fronts joined)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run(json_path: str | None = None, quick: bool = False, out_dir: str = "runs/bench/fronts",
        settings: FrontSettings | None = None, progress: bool = True) -> dict:
    """The whole fronts benchmark (``--quick``: QUICK_FRONTS); writes the plots and (if asked) the JSON report."""
    s = settings or (QUICK_FRONTS if quick else FrontSettings())
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    reports = []
    for dataset in s.datasets:
        rep = run_dataset(dataset, s, progress)
        rep["plot"] = plot_fronts(rep, os.path.join(out_dir, f"{dataset}_fronts.png"))
        reports.append(rep)
    report = dict(settings={k: getattr(s, k) for k in FrontSettings.__dataclass_fields__}, datasets=reports,
                  seconds=time.perf_counter() - t0, torch_threads=torch.get_num_threads())
    write_report(report, json_path)
    return report


def format_report(report: dict) -> str:
    """The fronts report as text: every point with its spread, the fronts, dominance, bands, the schedule."""
    lines = []
    s = report["settings"]
    lines.append(f"fronts: {s['seed_sets']} seed sets x {s['samples']} samples, {s['steps']} Heun steps, weights "
                 f"{', '.join(f'{w:g}' for w in s['weights'])}")
    for rep in report["datasets"]:
        lines.append(f"\n{rep['dataset']} (real: FD {rep['real']['fd']:.3f}"
                     + (f", asymmetry {rep['real']['asymmetry']:.4f}" if "asymmetry" in rep["real"] else "") + ")")
        for method, pts in rep["points"].items():
            for p in pts:
                m, sd = p["mean"], p["std"]
                lines.append(f"  {method:6s} w={p['weight']:<5g} FD {m['fd']:7.3f} ± {sd['fd']:.3f}"
                             + (f"  asym {m['asymmetry']:.4f} ± {sd['asymmetry']:.4f}" if "asymmetry" in m else "")
                             + f"  side {side_effect(m, rep['real']):.4f}  recall {m['recall']:.3f}"
                             f"  evals/sample {p['evaluations']:.0f}")
        for q, fronts in rep["fronts"].items():
            lines.append(f"  front ({q}, side effect): " + "; ".join(
                f"{m}: w {', '.join(f'{w:g}' for w in f['weights'])}" for m, f in fronts.items()))
        wins = [f"{d['winner']} > {d['loser']} ({d['quality']}{', beyond 1 sd' if d['beyond_spread'] else ', within the spread'})"
                for d in rep["dominance"]]
        lines.append("  dominance: " + (", ".join(wins) if wins else "no front dominates another"))
        for method, b in rep["bands"].items():
            lines.append(f"  {method} at w={b['weight']:g}: full gain {b['full_gain']:+.3f}; by third of the steps: "
                         + ", ".join(f"{r['steps'][0]}-{r['steps'][1]} {r['gain']:+.3f} ± {r['std']:.3f}"
                                     for r in b["bands"]))
            if "banded" in b:
                d = b["banded"]
                lines.append(f"  banded M-SWG (steps {d['steps'][0]}-{d['steps'][1]}): gain {d['gain']:+.3f} ± "
                             f"{d['std']:.3f} = {100 * d['gain_kept']:.0f} % of full, at {100 * d['cost']:.0f} % of "
                             f"its extra evaluations")
        sc = rep["schedule"]
        lines.append(f"  M-SWG w(sigma) from the toy's w*: FD {sc['scheduled']['fd']:.3f} ± {sc['scheduled']['std']:.3f} "
                     f"vs constant w={sc['constant']['weight']:g} {sc['constant']['fd']:.3f} ± {sc['constant']['std']:.3f} "
                     f"(evaluations {sc['scheduled']['evaluations']:.0f} vs {sc['constant']['evaluations']:.0f})")
    lines.append(f"\ntotal {report['seconds']:.0f} s")
    return "\n".join(lines)
