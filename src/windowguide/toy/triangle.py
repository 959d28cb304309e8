"""The M-SWG paper's analytic toy (docs/algorithms.md §2): guidance with "the same error, but stronger".

Data, as the authors' notebook builds it: an equilateral triangle of side 2, (-1, 0), (1, 0), (0, sqrt 3),
centred at its centroid and scaled by 0.75 (circumradius 0.866). A model with error delta is the exact
denoiser of the data blurred by N(0, delta^2 I):

    y_delta(x, t) = (t^2 y*(x; sqrt(t^2 + delta^2)) + delta^2 x) / (t^2 + delta^2),
    y*(x; s) = sum_k softmax_k(-|x - p_k|^2 / (2 s^2)) p_k      (the exact posterior mean).

Guided: y = y_pos + w (y_pos - y_neg) with delta_pos = 0.1, delta_neg = 0.2, w = 1; 40 Euler steps on
the Karras schedule 0.002..80, rho 7; 100 trajectories from one global seed (numpy's legacy
``np.random.seed(0); np.random.randn(100, 2)``, times sigma_max). The paper's metric is the authors':
per sample sqrt(sum_c min_k (x_c - p_kc)^2) (each coordinate's nearest vertex coordinate), averaged;
the true nearest-point distance is reported beside it. The optimal weight per step,
w* = |y_opt - y_pos| / |y_pos - y_neg|, is averaged over trajectories that are themselves guided by w*
(the paper's figure). Everything runs through windowguide's own denoiser protocol, AutoGuidance term
and Euler sampler.
"""
from __future__ import annotations

import math
import os

import torch

from ..denoiser import EDMDenoiser
from ..generate import sample
from ..guidance import AutoGuidance, GuidedDenoiser
from ..sampling import karras_sigmas, sample_euler
from ..files import write_json

PAPER = {"guided": 5.8e-2, "positive": 1.2e-1, "negative": 2.4e-1}


def triangle_points(scale: float = 0.75) -> torch.Tensor:
    """The side-2 triangle (-1, 0), (1, 0), (0, sqrt 3), centred at its centroid, times ``scale``
    (circumradius 2 scale / sqrt 3), [3, 2] float64."""
    base = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, math.sqrt(3)]], dtype=torch.float64)
    return scale * (base - base.mean(0))


def initial_noise(trajectories: int, seed: int = 0) -> torch.Tensor:
    """The authors' starting noise: one global numpy seed, ``np.random.randn(N, 2)``, [N, 2, 1, 1]."""
    import numpy as np
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        z = np.random.randn(trajectories, 2)
    finally:
        np.random.set_state(state)          # the caller's numpy stream is left as it was
    return torch.from_numpy(z).view(trajectories, 2, 1, 1)


def paper_distance(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The authors' metric per sample: sqrt(sum_c min_k (x_c - p_kc)^2)."""
    return ((x.double().flatten(1)[:, None, :] - points[None]) ** 2).min(dim=1).values.sum(1).sqrt()


def exact_denoiser(points: torch.Tensor, delta: float = 0.0):
    """y_delta(x, t) above, as a windowguide denoiser on x of shape [N, 2, 1, 1]."""
    def D(x, sigma, cond=None):
        xf, t2 = x.double().flatten(1), sigma.double().view(-1, 1) ** 2
        s2 = t2 + delta ** 2
        logits = -((xf[:, None, :] - points[None]) ** 2).sum(-1) / (2 * s2)
        y_star = torch.softmax(logits, dim=1) @ points
        return ((t2 * y_star + delta ** 2 * xf) / s2).to(x.dtype).view_as(x)
    return EDMDenoiser(D)


def nearest_distance(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance of each sample to its nearest data point."""
    return torch.cdist(x.double().flatten(1), points).min(dim=1).values


def _trajectory(denoiser, z, sigmas):
    """States and predictions along an Euler trajectory from x = sigma_0 z: lists of [N, 2]."""
    xs, preds = [], []

    def keep(i, x, denoised, s):
        xs.append(x.flatten(1).double())
        preds.append(denoised.flatten(1).double())
    final = sample_euler(denoiser, z * sigmas[0].item(), sigmas, callback=keep)
    xs.append(final.flatten(1).double())
    return xs, preds


def optimal_weights(points, delta_pos, delta_neg, z, sigmas) -> tuple[list[float], torch.Tensor]:
    """(mean w* per step, final samples) of Euler trajectories guided by w* itself:

        w*_i = |y_opt - y_pos| / |y_pos - y_neg|,   y = y_pos + w*_i (y_pos - y_neg)   per sample."""
    opt, pos, neg = exact_denoiser(points), exact_denoiser(points, delta_pos), exact_denoiser(points, delta_neg)
    x, means = z * sigmas[0].item(), []
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        yo, yp, yn = (m(x, s) for m in (opt, pos, neg))
        w = (yo - yp).flatten(1).norm(dim=1) / (yp - yn).flatten(1).norm(dim=1).clamp_min(1e-12)
        means.append(w.mean().item())
        y = yp + w.view(-1, 1, 1, 1) * (yp - yn)
        x = y + (s_next / s) * (x - y)
    return means, x


def run(out_dir: str | None = None, json_path: str | None = None, delta_pos: float = 0.1, delta_neg: float = 0.2,
        weight: float = 1.0, steps: int = 40, trajectories: int = 100, plot: bool = True) -> dict:
    """Run the triangle toy; returns (and optionally writes) the report, and PNG figures to out_dir."""
    points = triangle_points()
    sigmas = karras_sigmas(steps, 0.002, 80.0, 7.0)
    z = initial_noise(trajectories)
    opt, pos, neg = exact_denoiser(points), exact_denoiser(points, delta_pos), exact_denoiser(points, delta_neg)
    models = {"exact": opt, "positive": pos, "negative": neg,
              "guided": GuidedDenoiser(pos, AutoGuidance(neg, weight))}
    runs = {k: _trajectory(m, z, sigmas) for k, m in models.items()}
    report = {"setting": dict(delta_pos=delta_pos, delta_neg=delta_neg, weight=weight, steps=steps,
                              trajectories=trajectories, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                              triangle="side 2, centred, x 0.75 (circumradius 0.866)",
                              noise="np.random.seed(0); np.random.randn(N, 2) * sigma_max"),
              "paper_mean_distance": PAPER, "mean_distance": {}, "nearest_point_distance": {},
              "trajectory_error": {}, "prediction_error": {}}
    exact_xs, exact_preds = runs["exact"]
    for k, (xs, preds) in runs.items():
        report["mean_distance"][k] = paper_distance(xs[-1], points).mean().item()
        report["nearest_point_distance"][k] = nearest_distance(xs[-1], points).mean().item()
        # distance to the exact sampler's trajectory from the same initial noise, per step (mean over runs)
        report["trajectory_error"][k] = [(a - b).norm(dim=1).mean().item() for a, b in zip(xs, exact_xs)]
        # the model's prediction against the exact denoiser's at the same state
        report["prediction_error"][k] = [
            (p - opt(x.view(-1, 2, 1, 1), s).flatten(1).double()).norm(dim=1).mean().item()
            for x, p, s in zip(xs[:-1], preds, sigmas[:-1].tolist())]
    report["optimal_weight"], report["optimal_guided_distance"] = {}, {}
    for dn in (0.2, 0.3, 0.4, 0.5):
        means, final = optimal_weights(points, delta_pos, dn, z, sigmas)
        report["optimal_weight"][str(dn)] = means
        report["optimal_guided_distance"][str(dn)] = paper_distance(final, points).mean().item()
    report["sigmas"] = sigmas[:-1].tolist()
    # the same guided run through the public API, with per-seed noise instead of the global seed
    check = sample(models["guided"], (2, 1, 1), list(range(trajectories)), steps=steps, sampler="euler",
                   sigmas=sigmas, dtype=torch.float64)
    report["guided_via_sample_api"] = paper_distance(check, points).mean().item()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        if plot:
            report["figures"] = _plot(out_dir, points, runs, report)
    if json_path:
        write_json(json_path, report)
    return report


def _plot(out_dir, points, runs, report) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for ax, (name, (xs, _)) in zip(axes, runs.items()):
        traj = torch.stack(xs)                      # [steps+1, N, 2]
        for j in range(min(traj.shape[1], 40)):
            ax.plot(traj[-15:, j, 0], traj[-15:, j, 1], lw=0.6, alpha=0.6)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=6, c="k", zorder=3)
        ax.scatter(points[:, 0], points[:, 1], marker="*", s=160, c="red", zorder=4)
        ax.set_title(f"{name}: mean dist {report['mean_distance'][name]:.3f}")
        ax.set_xlim(-1.3, 1.3), ax.set_ylim(-1.0, 1.4), ax.set_aspect("equal")
    fig.suptitle("Triangle toy: last 15 steps of Euler trajectories (red: data)")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "triangle_trajectories.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sig = report["sigmas"]
    for dn, ws in report["optimal_weight"].items():
        axes[0].plot(sig, ws, marker=".", label=f"delta_neg = {dn}")
    axes[0].set_xscale("log"), axes[0].set_yscale("log"), axes[0].invert_xaxis()
    axes[0].set_xlabel("sigma"), axes[0].set_ylabel("mean w* (along w*-guided trajectories)"), axes[0].legend()
    axes[0].set_title("optimal weight w* = |y_opt - y_pos| / |y_pos - y_neg|")
    for name, errs in report["prediction_error"].items():
        if name != "exact":
            axes[1].plot(sig, errs, label=name)
    axes[1].set_xscale("log"), axes[1].set_yscale("log"), axes[1].invert_xaxis()
    axes[1].set_xlabel("sigma"), axes[1].set_ylabel("|D - y_opt|"), axes[1].legend()
    axes[1].set_title("prediction error along each sampler's trajectory")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "triangle_weights.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def summary(report: dict) -> str:
    lines = ["triangle toy (the paper's setup): mean final distance, authors' metric and nearest point",
             f"{'sampler':>10} {'measured':>10} {'paper':>8} {'nearest pt':>11}"]
    for k, v in report["mean_distance"].items():
        lines.append(f"{k:>10} {v:>10.4f} {PAPER.get(k, float('nan')):>8.3f} "
                     f"{report['nearest_point_distance'][k]:>11.4f}")
    return "\n".join(lines)
