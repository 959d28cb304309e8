"""``windowguide bench video``: what temporal guidance and fusion along time do, on the bundled ``bounce`` video
model (a 3-D UNet trained on 12-frame, 12 x 12 clips of a blob moving at constant speed and bouncing off the
walls, ``toy.bounce``), with the exact metrics of that motion (speed_cv, drift, jerk, presence) and the real
clips' floor, each as the mean ± sd over seed sets.

- clips (12 frames, the model's length): no guidance; M-SWG with crops in space only (12 x 8 x 8), in time only
  (8 x 12 x 12), and in both (8 x 8 x 8);
- a long video (36 frames, 3x the clip): the whole video in one call (the model outside its clip length),
  clip-length windows (12, stride 6) fused by MultiDiffusion (DDIM), GF (DDIM), GF (DDPM) and GF + VCF (DDPM).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from . import write_report
from ..guidance import MSWG
from ..models.checkpoint import load_denoiser
from ..sampling import karras_sigmas
from ..toy.bounce import bouncing_clips, temporal_metrics
from ..video import long_video


@dataclass
class Settings:
    """Seed sets, videos per set, steps, the M-SWG weight, the long video's length and stride."""
    sets: int = 3
    videos: int = 16
    steps: int = 32
    weight: float = 0.5
    long_frames: int = 36
    stride: int = 6


QUICK = Settings(sets=1, videos=8, steps=12)

CLIP_ROWS = (("none", None), ("spatial M-SWG", (12, 8, 8)), ("temporal M-SWG", (8, 12, 12)),
             ("both M-SWG", (8, 8, 8)))
LONG_ROWS = (("whole video, one call", None, "ddim", False), ("multidiffusion", "multidiffusion", "ddim", False),
             ("gf", "gf", "ddim", False), ("gf ddpm", "gf", "ddpm", False), ("gf+vcf ddpm", "gf", "ddpm", True))


def spread(rows: list[dict]) -> dict:
    """Each metric's mean and sd over the seed sets."""
    keys = rows[0].keys()
    return {k: (statistics.mean(r[k] for r in rows), statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0)
            for k in keys}


def save_strip(x: torch.Tensor, path: str, videos: int = 4) -> None:
    """The first ``videos`` videos [N, C, T, H, W] as rows of frames in one PNG."""
    from ..images import grid, save_png
    v = x[:videos]
    frames = v.permute(0, 2, 1, 3, 4).reshape(-1, *v.shape[1:2], *v.shape[3:])
    save_png(grid(frames.repeat(1, 3 // frames.shape[1], 1, 1), nrow=v.shape[2], scale=4), path)


def run_clips(den, s: Settings, progress: bool, out_dir: str | None = None) -> list[dict]:
    """The clip rows: 12-frame clips without guidance and with M-SWG's crops in space, time or both."""
    sigmas = karras_sigmas(s.steps, 0.002, 80.0)
    import windowguide as wg
    out = []
    for name, window in CLIP_ROWS:
        t0, sets = time.perf_counter(), []
        g = None if window is None else MSWG(s.weight, window=window)
        for k in range(s.sets):
            seeds = range(k * 1000, k * 1000 + s.videos)
            with torch.no_grad():
                x = wg.sample(den, (1, 12, 12, 12), seeds, sampler="ddim", sigmas=sigmas, guidance=g)
            sets.append(temporal_metrics(x))
            if out_dir and k == 0:
                save_strip(x, os.path.join(out_dir, f"clip_{name.replace(' ', '_')}.png"))
        row = dict(name=name, window=window, seconds=time.perf_counter() - t0, **spread(sets))
        out.append(row)
        if progress:
            print(f"  clip {name:16s} " + _fmt(row), flush=True)
    return out


def run_long(den, s: Settings, progress: bool, out_dir: str | None = None) -> list[dict]:
    """The long-video rows: the whole video in one call, and clip-length windows fused along time."""
    sigmas = karras_sigmas(s.steps, 0.002, 80.0)
    import windowguide as wg
    out = []
    for name, mode, sampler, vcf in LONG_ROWS:
        t0, sets = time.perf_counter(), []
        for k in range(s.sets):
            seeds = range(k * 1000, k * 1000 + s.videos)
            with torch.no_grad():
                if mode is None:
                    x = wg.sample(den, (1, s.long_frames, 12, 12), seeds, sampler=sampler, sigmas=sigmas)
                else:
                    x = long_video(den, (1, s.long_frames, 12, 12), seeds, (12, 12, 12), stride=(s.stride, 12, 12),
                                   mode=mode, sampler=sampler, vcf=vcf, sigmas=sigmas)
            sets.append(temporal_metrics(x))
            if out_dir and k == 0:
                save_strip(x, os.path.join(out_dir, f"long_{name.replace(' ', '_').replace(',', '')}.png"))
        row = dict(name=name, seconds=time.perf_counter() - t0, **spread(sets))
        out.append(row)
        if progress:
            print(f"  long {name:22s} " + _fmt(row), flush=True)
    return out


def real_rows(s: Settings) -> dict:
    """The metrics of real clips (12 and long_frames frames), over seed sets of the same size."""
    def over(frames):
        return spread([temporal_metrics(bouncing_clips(s.videos, frames, 12, seed=100 + k)[0]) for k in range(s.sets)])
    return dict(clip=over(12), long=over(s.long_frames))


def _fmt(row: dict) -> str:
    return " ".join(f"{k} {row[k][0]:.3f}±{row[k][1]:.3f}" for k in ("speed_cv", "drift", "jerk", "presence"))


def run(json_path: str | None = None, quick: bool = False, progress: bool = True,
        out_dir: str | None = "runs/bench/video") -> dict:
    """The video benchmark; writes the JSON report and strips of frames (the first videos of each row)."""
    s = QUICK if quick else Settings()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    den, info, _ = load_denoiser("bounce")
    t0 = time.perf_counter()
    report = dict(settings=s.__dict__, model=dict(steps=info.get("steps"), final_loss=info.get("final_loss")),
                  real=real_rows(s), clips=run_clips(den, s, progress, out_dir),
                  long=run_long(den, s, progress, out_dir))
    if out_dir:
        save_strip(bouncing_clips(4, s.long_frames, 12, seed=100)[0], os.path.join(out_dir, "long_real.png"))
    report["seconds"] = time.perf_counter() - t0
    write_report(report, json_path)
    return report


def format_report(report: dict) -> str:
    """The report as a plain-text table (mean ± sd over the seed sets)."""
    s = report["settings"]
    lines = [f"bounce video model: {s['sets']} seed sets x {s['videos']} videos, {s['steps']} DDIM steps, M-SWG w "
             f"{s['weight']}; mean ± sd over the sets (lower is better except presence)",
             f"{'clips (12 frames)':28s} {'speed_cv':>15s} {'drift':>15s} {'jerk':>15s} {'presence':>15s}"]
    spread = (lambda v: f" ± {v:5.3f}") if s["sets"] > 1 else (lambda v: "  (1 set)")   # no sd from one set
    row = lambda name, r: f"{name:28s} " + " ".join(f"{r[k][0]:7.3f}{spread(r[k][1])}" for k in
                                                   ("speed_cv", "drift", "jerk", "presence"))
    lines.append(row("real clips", report["real"]["clip"]))
    lines += [row(r["name"], r) for r in report["clips"]]
    lines.append(f"long video ({s['long_frames']} frames; windows 12, stride {s['stride']})")
    lines.append(row("real videos", report["real"]["long"]))
    lines += [row(r["name"], r) for r in report["long"]]
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)
