"""``windowguide demo``: what sliding-window guidance does, on the bundled default model, in under a minute.

The bundled ``mirror`` model draws scenes from training images that are exactly mirror-symmetric; a
16-pixel crop of a 24-pixel image cannot see both halves, so extrapolating away from the crops'
prediction (M-SWG) pushes samples toward the global symmetry the crops miss. Four grids of the same
seeds and classes, in two like-with-like pairs (none vs M-SWG; CFG vs CFG + M-SWG, at the weights the
quality benchmark recommends), go into one PNG. Every figure is computed from exactly the images shown
(8-bit, as in the PNG): the asymmetry (0 on every real image) and FD on the bundled classifier's
features, as mean ± std over ``SEED_SETS`` disjoint seed sets; each pair's verdict is read from the
change within each seed set (the same seeds with and without M-SWG), which is far less noisy than
either figure alone.
"""
from __future__ import annotations

import os
import time

import torch

from ..files import check_out_dir
from ..generate import sample
from ..images import grid, to_uint8
from ..metrics.features import Evaluator
from ..metrics.pixels import asymmetry, contrast, saturation, side_effect
from .common import labels_for, prepare

DEFAULT_MODEL = "mirror"
# M-SWG where ``windowguide bench fronts`` found its gain on mirror (benchmarks/fronts_cpu.txt, the preset
# mirror-mswg-banded): w 0.8, M-SWG's best constant weight, on steps 0-5 of 10, where 114 % of its FD gain
# lies (+0.219 +- 0.035 on 3 x 100 samples); CFG at 1 beside it. Each pair differs by M-SWG alone.
BANDED = "mswg:w=0.8,window=16,first=0,last=5"
DEMO_METHODS = [("no guidance", "none"), ("M-SWG w=0.8, steps 0-5", BANDED),
                ("CFG w=1", "cfg:w=1"), ("CFG w=1 + M-SWG w=0.8, steps 0-5", "cfg:w=1+" + BANDED)]
# (with, without): each pair differs by M-SWG alone
PAIRS = [(1, 0), (3, 2)]
SEED_SETS = 4
SAMPLES = 24
STEPS = 10
REFERENCE = 2000      # reference images for FD: a third of the training set, 4 s less on a busy CPU
# network evaluations per step relative to one full-image call, in hundredths (the progress bar's sum is
# exact): M-SWG adds 4 crops of 16 x 16 on 24 x 24 on 6 of the 10 steps
_CROPS = 6 * 400 * 256 // (576 * 10)
_COST = {"none": 100, BANDED: 100 + _CROPS, "cfg:w=1": 200, "cfg:w=1+" + BANDED: 200 + _CROPS}
LOOK_FOR = ("what to look for: each scene's left and right halves (mirror images of each other in every training "
            "image) match more closely with M-SWG (lower asymmetry); the price is stronger contrast and colour "
            "(the side effect, 0 on real images)")
FLOOR_NOTE = ("the floor is the FD of as many held-out real images: FD of a finite set is biased upward, so a "
              "less varied set (CFG's) can score below it; that is lost variety, not better than real")


def run(out: str = ".", model: str = DEFAULT_MODEL, samples: int = SAMPLES, steps: int = STEPS,
        sets: int = SEED_SETS, threads: int | None = None, progress: bool = True) -> dict:
    """Sample ``sets`` disjoint sets of ``samples`` seeds per method (seeds 0 .. sets*samples-1, class
    seed mod K), write ``windowguide_demo.png`` into ``out``; returns the figures (``measure``: pooled
    over all seeds, with their standard errors), the paired changes (``paired``), the real-image floor,
    the images and the caption.

    threads: CPU threads (default: the cores idle now, so a busy machine does not slow it 2-5x)."""
    check_out_dir(out)
    t0 = time.perf_counter()
    chosen = _threads(threads)
    ev = Evaluator(model, floor_count=samples, floor_sets=sets, reference_count=REFERENCE)
    bar = _bar(sum(_COST.get(spec, 200) for _, spec in DEMO_METHODS) * sets, progress)
    floor = dict(method="real images (floor)", **measure(ev, ev.floor_images, sets))
    results, images = [], []
    for title, g_spec in DEMO_METHODS:
        denoiser, net, info, g = prepare(model, g_spec)
        bar.set_description(title)
        drawn = []
        for k in range(sets):
            seeds = list(range(k * samples, (k + 1) * samples))
            with torch.no_grad():
                x = sample(denoiser, tuple(info["shape"]), seeds, steps=steps, guidance=g,
                           cond=labels_for(seeds, net.num_classes, "all"))
            drawn.append(as_shown(x))
            bar.update(_COST.get(g_spec, 200))
        images.append(torch.cat(drawn))
        results.append(dict(method=title, spec=g_spec, **measure(ev, images[-1], sets)))
        if progress:
            bar.write(f"{title:34s} {line(results[-1], floor)}")
    bar.close()
    changes = [paired(results[a], results[b]) for a, b in PAIRS]
    caption = _caption(changes)
    seconds = time.perf_counter() - t0
    how = (f"{sets * samples} seeds per method (0-{sets * samples - 1}, class = seed mod 3), {steps} Heun steps; "
           f"FD reference: {REFERENCE} training images; ± = standard error (asymmetry: over images; FD: jackknife over {sets} seed sets of {samples})")
    path = _figure(images, results, floor, caption, os.path.join(out, "windowguide_demo.png"), how)
    if progress:
        print(f"{'real images (floor)':34s} {line(floor, floor)}\n{caption}\n{LOOK_FOR}\n"
              f"lower is better for every figure; FD is on the bundled mirror-classifier's features, not a "
              f"published FID; {FLOOR_NOTE}\nimage: {os.path.abspath(path)}\n({how}; {chosen} CPU thread(s); "
              f"{seconds:.0f} s)")
    return dict(path=path, results=results, floor=floor, changes=changes, caption=caption, images=images,
                threads=chosen, seconds=seconds)


def as_shown(x: torch.Tensor) -> torch.Tensor:
    """The images as the PNG shows them: clipped and rounded to 8 bits, back in [-1, 1]."""
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _threads(threads: int | None) -> int:
    from ..cpu import free_threads
    n = free_threads() if threads is None else int(threads)
    torch.set_num_threads(n)
    return n


def _bar(total: int, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total, disable=not progress,
                bar_format="{desc}{percentage:3.0f}% |{bar}| about {remaining} left")


def measure(ev: Evaluator, x: torch.Tensor, sets: int) -> dict:
    """FD of all of x against the reference, with its jackknife over ``sets`` equal seed sets
    (FD_(j): x without set j; se^2 = (K-1)/K sum_j (FD_(j) - mean)^2), and the per-image asymmetry
    with its mean and standard error std/sqrt(n)."""
    n = len(x) // sets
    keep = [torch.cat([torch.arange(i * n, (i + 1) * n) for i in range(sets) if i != j]) for j in range(sets)]
    out = dict(fd=ev(x, ["fid"])["fd"], fd_leave_out=[ev(x[k], ["fid"])["fd"] for k in keep])
    out["fd_se"] = _jackknife_se(torch.tensor(out["fd_leave_out"], dtype=torch.float64))
    x01 = x.clamp(-1, 1)
    out.update(contrast=contrast(x01).mean().item(), saturation=saturation(x01).mean().item())
    if ev.dataset == "mirror":
        a = asymmetry(x.clamp(-1, 1)).double()
        out.update(asymmetry=a.mean().item(), asymmetry_se=(a.std() / len(a) ** 0.5).item(),
                   asymmetry_per_image=a.tolist())
    return out


def _jackknife_se(leave_out: torch.Tensor) -> float:
    k = len(leave_out)
    return float(((k - 1) / k * ((leave_out - leave_out.mean()) ** 2).sum()).sqrt())


def paired(a: dict, b: dict) -> dict:
    """The change from method b to method a on the same seeds: asymmetry per seed
    (d_i = asym_a,i - asym_b,i, mean ± d's standard error), FD by the jackknife of the difference
    (d_(j) = FD_a,(j) - FD_b,(j)). Verdict 'lower' / 'higher' when |change| > 2 se, else 'within
    the spread'."""
    out = dict(method=a["method"], baseline=b["method"])
    if "asymmetry" in a:
        d = torch.tensor(a["asymmetry_per_image"], dtype=torch.float64) - torch.tensor(b["asymmetry_per_image"],
                                                                                      dtype=torch.float64)
        out["asymmetry"] = _verdict(d.mean().item(), (d.std() / len(d) ** 0.5).item())
    d = torch.tensor(a["fd_leave_out"], dtype=torch.float64) - torch.tensor(b["fd_leave_out"], dtype=torch.float64)
    out["fd"] = _verdict(a["fd"] - b["fd"], _jackknife_se(d))
    return out


def _verdict(change: float, se: float) -> dict:
    verdict = ("lower" if change < 0 else "higher") if abs(change) > 2 * se else "within the spread"
    return dict(change=change, se=se, verdict=verdict)


def line(r: dict, real: dict | None = None) -> str:
    """A panel's figures; with the real images' ``real``, the side effect |contrast - real| + |saturation - real|."""
    asym = f"asymmetry {r['asymmetry']:.4f} ± {r['asymmetry_se']:.4f}   " if "asymmetry" in r else ""
    side = f"   side effect {side_effect(r, real):.4f}" if real is not None else ""
    return f"{asym}FD {r['fd']:.3f} ± {r['fd_se']:.3f}{side}"



def _caption(changes: list[dict]) -> str:
    """One honest line per pair: what adding M-SWG changed on the same seeds, and whether that is more
    than twice its standard error."""
    def part(c, key):
        v = c[key]
        return f"{'FD' if key == 'fd' else key} {v['change']:+.3g} ± {v['se']:.2g} ({v['verdict']})"
    return ("; ".join(f"{c['method']} vs {c['baseline']}: " + ", ".join(part(c, k) for k in ("asymmetry", "fd") if k in c)
                      for c in changes)
            + ". FD on 96 images varies by about 0.2, more than M-SWG's FD gain; 'windowguide bench fronts' resolves "
              "it on 3 x 100 samples: +0.219 ± 0.035 for this banded M-SWG")


def _figure(images: list[torch.Tensor], results: list[dict], floor: dict, caption: str, path: str,
            how: str) -> str:
    """Two rows, each a like-with-like pair (without and with M-SWG), every image the figures are
    computed from, each panel titled with its method and figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, axes = plt.subplots(len(PAIRS), 2, figsize=(12, 1.6 + 5.0 * len(PAIRS)),
                             gridspec_kw=dict(hspace=0.18, wspace=0.04, top=0.9, bottom=0.13, left=0.01, right=0.99))
    for row, (a, b) in enumerate(PAIRS):
        for col, i in enumerate((b, a)):
            ax = axes[row, col]
            ax.imshow(grid(images[i], nrow=12, scale=2), interpolation="nearest")
            ax.set_title(f"{results[i]['method']}\n{line(results[i], floor)}", fontsize=9)
            ax.axis("off")
    fig.suptitle("windowguide demo: the bundled 'mirror' model, the same seeds and classes in every panel\n"
                 "each row adds M-SWG to the left panel's recipe; lower asymmetry and lower FD are better",
                 fontsize=11)
    notes = (f"{LOOK_FOR[0].upper() + LOOK_FOR[1:]}.\nTraining images are exactly mirror-symmetric, so asymmetry "
             "(mean |x - flip(x)| / 2; 0 on every real image) measures global coherence. FD: Fréchet distance on the "
             "bundled mirror-classifier's features (not a published FID); side effect: |contrast - real| + "
             f"|saturation - real|.\nReal images (floor): {line(floor, floor)}; {FLOOR_NOTE}.\n{how}.\n"
             + caption.replace("; CFG", ";\nCFG"))
    fig.text(0.5, 0.01, notes, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
