"""``windowguide bench upscale``: window-fusion upscaling on the bundled ``scenes`` model, against the real
high-resolution images.

Held-out 24 x 96 scenes (seed 3; the model was trained on crops of seed 0's) are reduced by Lanczos to
12 x 48 (2x) and 6 x 24 (4x), then upscaled back: plain Lanczos resize, and img2img over 24 x 24 windows
(stride 8, ``strength`` of a Karras schedule, the null label) fused by MultiDiffusion (DDIM), GF (DDIM),
GF (DDPM) and GF + VCF (DDPM), each without and with M-SWG inside the windows. 4x is progressive (two x2
stages, DemoFusion's); M-SWG runs in the stages whose canvas is at least a window tall (the last).
Figures, each over all images:

- seam: the panorama benchmark's, mean |horizontal pixel step| on window-border columns over the
  other columns (real: ~1);
- hf_ratio: energy of the high-pass residual against the real images' (detail added: toward 1; blur < 1);
- fd: Fréchet distance of the 24 x 24 crops on the bundled scenes classifier's features to real crops;
- psnr / ssim: fidelity to the real high-resolution image (``metrics.pixels``; SSIM as torchmetrics').
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import write_report
from .. import metrics
from ..data import load, scenes
from ..guidance import MSWG
from ..images import grid, save_png
from ..metrics.pixels import psnr, ssim
from ..models.checkpoint import load_denoiser, load_model
from ..upscaling import progressive_stages, resize, upscale_pixels
from .panorama import border_columns, high_pass, seam_score


@dataclass
class Settings:
    """What the upscale benchmark draws: images, steps, strength, stride, the M-SWG recipe."""
    samples: int = 48
    steps: int = 32
    strength: float = 0.5
    stride: int = 8
    mswg_weight: float = 0.5
    mswg_window: int = 16


QUICK = Settings(samples=8, steps=16)

METHODS = (   # name, fusion mode, sampler, vcf
    ("multidiffusion", "multidiffusion", "ddim", False),
    ("gf", "gf", "ddim", False),
    ("gf ddpm", "gf", "ddpm", False),
    ("gf+vcf ddpm", "gf", "ddpm", True),
)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> [N, 3, H, W] in [-1, 1]."""
    return torch.tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class UpscaleMetrics:
    """Seam, detail, FD-on-crops and fidelity figures against the real high-resolution images."""

    def __init__(self, real: torch.Tensor, window: int, stride: int):
        self.real, self.window = real, window
        self.cols = border_columns(real.shape[-1], window, stride)
        self.classifier, self.cinfo = load_model("scenes-classifier", "classifier")
        with torch.no_grad():
            self.real_feats = self.classifier.features(load("scenes", "test").images)
        self.ref_hf = high_pass(real).pow(2).mean().item()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict:
        from .panorama import crops_of
        feats = self.classifier.features(crops_of(x, self.window))
        p, s = psnr(x, self.real), ssim(x, self.real)
        return dict(seam=seam_score(x, self.cols), hf_ratio=high_pass(x).pow(2).mean().item() / self.ref_hf,
                    fd=metrics.frechet_distance(self.real_feats, feats), psnr=p.mean().item(),
                    psnr_se=(p.std() / len(p) ** 0.5).item(), ssim=s.mean().item())


def upscale_all(denoiser, low: np.ndarray, scale: int, s: Settings, mode: str, sampler: str, vcf: bool,
                mswg: bool, window: int, null: int) -> np.ndarray:
    """Every low-resolution image upscaled by ``scale`` (x2 stages when 4x), image i from seed i."""
    out = []
    for i, image in enumerate(low):
        for factor in progressive_stages(scale):
            tall = image.shape[0] * factor >= window
            g = MSWG(s.mswg_weight, window=s.mswg_window) if mswg and tall else None
            image = upscale_pixels(denoiser, image, factor, s.strength, seeds=[i], steps=s.steps,
                                   cond=torch.tensor([null]), guidance=g, window=window, stride=s.stride,
                                   mode=mode, sampler=sampler, vcf=vcf)[0]
        out.append(image)
    return np.stack(out)


def run_quality(s: Settings, out_dir: str, progress: bool = True) -> dict:
    """Every method at 2x and 4x; rows of figures and grids in out_dir."""
    denoiser, info, net = load_denoiser("scenes")
    window = info["shape"][1]
    real_u8 = (((scenes(s.samples, window, 4 * window, seed=3).images.clamp(-1, 1) + 1) * 127.5).round()
               .to(torch.uint8).permute(0, 2, 3, 1).numpy())
    real = to_unit(real_u8)
    um = UpscaleMetrics(real, window, s.stride)
    rows = []
    for scale in (2, 4):
        low = np.stack([resize(r, 1 / scale, "lanczos") for r in real_u8])
        t0 = time.perf_counter()
        plain = to_unit(np.stack([resize(r, scale, "lanczos") for r in low]))
        rows.append(dict(scale=scale, method="lanczos resize", mswg=False, seconds=time.perf_counter() - t0,
                         **um(plain)))
        shown = [plain[:6]]
        for name, mode, sampler, vcf in METHODS:
            for mswg in (False, True):
                t0 = time.perf_counter()
                with torch.no_grad():
                    x = to_unit(upscale_all(denoiser, low, scale, s, mode, sampler, vcf, mswg, window,
                                            net.num_classes))
                row = dict(scale=scale, method=name, mswg=mswg, seconds=time.perf_counter() - t0, **um(x))
                rows.append(row)
                shown.append(x[:6])
                if progress:
                    print(f"  {scale}x {name:14s} mswg={mswg!s:5s} seam {row['seam']:.3f} hf {row['hf_ratio']:.3f} "
                          f"FD {row['fd']:.3f} PSNR {row['psnr']:.2f} SSIM {row['ssim']:.3f} "
                          f"({row['seconds']:.1f} s)", flush=True)
        # one column per image: real, resize, then the methods in the rows' order
        save_png(grid(torch.cat([real[:6]] + shown), nrow=6, scale=3),
                 os.path.join(out_dir, f"upscale_{scale}x.png"))
    return dict(rows=rows, real=um(real), classifier_test_accuracy=um.cinfo.get("test_accuracy"), window=window,
                samples=s.samples, steps=s.steps, strength=s.strength, stride=s.stride,
                mswg=f"mswg:w={s.mswg_weight:g},window={s.mswg_window}")


_MEMORY_CHILD = """
import json, resource, sys, torch
from diffusers import DDIMScheduler
from windowguide.adapters.base import vp_denoiser
from windowguide.adapters.sd import sd_unet_model
from windowguide.bench.panorama import _speed_unet
from windowguide.guidance import CFG
from windowguide.upscaling import denoise_windows
size, height, width, max_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(2)
unet = _speed_unet(size)
den = vp_denoiser(sd_unet_model(unet), DDIMScheduler(beta_schedule="scaled_linear"), 8)
cond = torch.randn(1, 77, unet.config.cross_attention_dim)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
window = unet.config.sample_size or 64
with torch.no_grad():
    denoise_windows(den, torch.randn(1, 4, height, width), torch.tensor([1.0, 0.0]), [0], cond,
                    CFG(1.0, null=torch.randn(1, 77, unet.config.cross_attention_dim)), (window, window),
                    stride=window // 2, max_batch=max_batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(loaded_mib=loaded / 1024, peak_mib=peak / 1024)))
"""


def run_memory(size: str = "sd", canvases=((64, 128), (64, 256)), max_batches=(2, None)) -> dict:
    """Peak resident memory of one fused img2img step (CFG) over windows of a UNet (SD 1.x's configuration,
    random weights, fp32), each in a fresh process: the growth over the loaded model for each canvas
    (latent pixels) and view batch. Bounded activations grow with ``max_batch``, not with the windows."""
    import json
    import subprocess
    import sys
    rows = []
    for h, w in canvases:
        for mb in max_batches:
            out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, size, str(h), str(w), json.dumps(mb)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            from ..windows import layout
            window = 64 if size == "sd" else 32
            windows = layout(h, w, window, stride=window // 2).n
            rows.append(dict(canvas=[h, w], windows=windows, max_batch=mb, loaded_mib=r["loaded_mib"],
                             peak_mib=r["peak_mib"], growth_mib=r["peak_mib"] - r["loaded_mib"]))
    return dict(unet=size, rows=rows)


def run_comfyui(s: Settings, out_dir: str, stride: int = 16) -> dict | None:
    """The ComfyUI rows at 2x: the fusion sampler against the tiles one after another (Ultimate SD Upscale's
    way), same ComfyUI model (the bundled scenes model), windows, steps and sigmas (``bench.comfyui``);
    seconds side by side and the upscale figures of both. None where there is no ComfyUI."""
    from .comfyui import measure_comfyui_upscale
    _, info, _ = load_denoiser("scenes")
    window = info["shape"][1]
    real_u8 = (((scenes(s.samples, window, 4 * window, seed=3).images.clamp(-1, 1) + 1) * 127.5).round()
               .to(torch.uint8).permute(0, 2, 3, 1).numpy())
    low = np.stack([resize(r, 0.5, "lanczos") for r in real_u8])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "comfyui_upscale.npz")
    row = measure_comfyui_upscale(low, 2, s.steps, s.strength, window, stride, path)
    if row is None:
        return None
    images = np.load(path)
    um = UpscaleMetrics(to_unit(real_u8), window, stride)
    row["figures"] = {k: um(torch.tensor(images[k])) for k in ("fused", "tiles")}
    row["figures"]["real"] = um(to_unit(real_u8))
    n = min(6, len(low))                    # rows: real, fusion sampler, tiles one after another
    save_png(grid(torch.cat([to_unit(real_u8)[:n], torch.tensor(images["fused"][:n]), torch.tensor(images["tiles"][:n])]),
                  nrow=n, scale=3), os.path.join(out_dir, "comfyui_upscale_2x.png"))
    return row


def run(json_path: str | None = None, quick: bool = False, out_dir: str = "runs/bench/upscale",
        progress: bool = True, memory: bool = True, comfyui: bool = True) -> dict:
    """The upscale benchmark (quality, the ComfyUI rows where ComfyUI is found, and unless ``quick`` the
    memory part); writes the JSON report and the grids."""
    s = QUICK if quick else Settings()
    t0 = time.perf_counter()
    report = dict(quality=run_quality(s, out_dir, progress))
    if comfyui:
        report["comfyui"] = run_comfyui(s, out_dir)
    if memory and not quick:
        report["memory"] = run_memory()
    report["seconds"] = time.perf_counter() - t0
    write_report(report, json_path)
    return report


def format_report(report: dict) -> str:
    """The report as a plain-text table."""
    q = report["quality"]
    lines = [f"upscale of held-out 24x96 scenes from 12x48 (2x) and 6x24 (4x, progressive): {q['samples']} images, "
             f"windows {q['window']} stride {q['stride']}, strength {q['strength']}, {q['steps']} steps, "
             f"M-SWG {q['mswg']}",
             f"{'scale':5s} {'method':16s} {'mswg':5s} | {'seam':>6s} {'hf':>6s} {'FD':>7s} {'PSNR':>6s} {'±':>5s} "
             f"{'SSIM':>6s} {'s':>6s}"]
    r = q["real"]
    lines.append(f"{'':5s} {'real images':16s} {'':5s} | {r['seam']:6.3f} {r['hf_ratio']:6.3f} {r['fd']:7.3f} "
                 f"{'inf':>6s} {'':5s} {r['ssim']:6.3f}")
    for r in q["rows"]:
        lines.append(f"{r['scale']:<5d} {r['method']:16s} {r['mswg']!s:5s} | {r['seam']:6.3f} {r['hf_ratio']:6.3f} "
                     f"{r['fd']:7.3f} {r['psnr']:6.2f} {r['psnr_se']:5.2f} {r['ssim']:6.3f} {r['seconds']:6.1f}")
    c = report.get("comfyui")
    if c:
        lines.append(f"\nComfyUI 2x, {c['model']}, {c['windows']} windows, {c['steps']} euler steps, {c['images']} "
                     f"images (the same windows, sigmas and model both ways):")
        for name, label in (("real", "real images"), ("fused", "fusion sampler (windows batched, fused every step)"),
                            ("tiles", "tiles one after another (Ultimate SD Upscale's way)")):
            f = c["figures"][name]
            said = f"{c['seconds'][name]:6.1f} s" if name in c["seconds"] else ""
            psnr = "   inf" if name == "real" else f"{f['psnr']:6.2f}"
            lines.append(f"  {label:54s} seam {f['seam']:6.3f}  hf {f['hf_ratio']:5.3f}  PSNR {psnr}  {said}")
        lines.append(f"  speed-up of the fusion sampler: {c['speedup']:.2f}x")
    if "memory" in report:
        lines.append(f"\nmemory of one fused img2img step with CFG, UNet {report['memory']['unet']} (fp32, random "
                     f"weights), windows 64 stride 32, peak RSS over the loaded model:")
        for r in report["memory"]["rows"]:
            lines.append(f"  latent {r['canvas'][0]}x{r['canvas'][1]} ({r['windows']} windows), max_batch "
                         f"{r['max_batch'] or 'all'}: +{r['growth_mib']:.0f} MiB (loaded {r['loaded_mib']:.0f} MiB)")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)
