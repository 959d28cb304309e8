"""``windowguide bench panorama``: fusion methods on wide procedural scenes, and speed against diffusers.

Quality: the bundled ``scenes`` model (trained on 24 x 24 crops of 24 x 96 scenes, stationary along
the width), unconditional (null label), fills 24 x 96 canvases (windows of 24, stride 8) for every combination of fusion mode
(multidiffusion / gf / gaussian), sampler (ddim eta 0 / ddpm), VCF (on / off, stochastic state
fusion only) and Style Alignment alpha. Measured against real scenes:

- seam: mean |horizontal pixel step| on the columns where a window starts or ends, divided by the
  same on the other columns (real scenes: ~1; a visible seam: > 1);
- hf_ratio: energy of the high-pass residual x - box3(x) against the real scenes' (blur: < 1);
- texture_ratio: variance of that residual on the bottom 3 rows (always ground, i.i.d. texture of
  known std), against the real scenes' (the noise-level deficit of plain averaging under DDPM);
- style: share of panoramas whose 4 non-overlapping crops the classifier puts in one palette
  class (real: ~1), and crop_colour_spread: std of the crop mean colours within a panorama;
- FD on the 4 non-overlapping 24 x 24 crops, on the bundled classifier's features.

Speed: our multidiffusion against diffusers' StableDiffusionPanoramaPipeline with the same
UNet2DConditionModel, canvas, steps and views, interleaved runs, output compared.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .. import metrics
from . import write_report
from ..data import load, scenes
from ..fusion import panorama
from ..images import grid, save_png
from ..models.checkpoint import load_denoiser, load_model
from ..sampling import karras_sigmas
from ..windows import layout


@dataclass
class Settings:
    """What the panorama benchmark draws: panoramas, steps, canvas width, stride, SA alphas."""
    samples: int = 48
    steps: int = 32
    width: int = 96
    stride: int = 8
    alphas: tuple[float, ...] = (0.0, 0.5)


QUICK = Settings(samples=12, steps=16, alphas=(0.0, 0.5))


def configs(alphas) -> list[dict]:
    """Every fusion setting: mode x sampler x VCF (stochastic state fusion only) x SA alpha."""
    out = []
    for mode in ("multidiffusion", "gf", "gaussian"):
        for sampler in ("ddim", "ddpm"):
            for vcf in ((False, True) if sampler == "ddpm" and mode != "gaussian" else (False,)):
                for alpha in alphas:
                    out.append(dict(mode=mode, sampler=sampler, vcf=vcf, style_alpha=alpha))
    return out


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """x - 3x3 box blur (replicate padding)."""
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1 / 9, dtype=x.dtype)
    return x - F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


def border_columns(width: int, window: int, stride: int) -> list[int]:
    """Columns c where a window starts or ends inside the canvas (the step from c-1 to c crosses it)."""
    lay = layout(window, width, window, stride=stride)
    cols = {l for l in lay.lefts if l > 0} | {l + window for l in lay.lefts if l + window < width}
    return sorted(cols)


def seam_score(x: torch.Tensor, cols: list[int]) -> float:
    """Mean |x[..., c] - x[..., c-1]| on border columns over the same on the other columns."""
    step = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))      # [W-1], entry c-1 = step into c
    border = torch.tensor([c - 1 for c in cols])
    inner = torch.tensor([c for c in range(x.shape[-1] - 1) if c not in set(cols) - {0} and c + 1 not in cols])
    return (step[border].mean() / step[inner].mean()).item()


def crops_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """The non-overlapping size x size crops, [N * W // size, C, size, size]."""
    n = x.shape[-1] // size
    return torch.stack([x[..., i * size:(i + 1) * size] for i in range(n)], dim=1).flatten(0, 1)


class PanoramaMetrics:
    """Seam, high-frequency, texture, style and FD-on-crops figures against real scenes."""
    def __init__(self, width: int, window: int, stride: int):
        self.real = scenes(200, window, width, seed=2).images
        self.classifier, self.cinfo = load_model("scenes-classifier", "classifier")
        self.window, self.cols = window, border_columns(width, window, stride)
        real_crops = load("scenes", "test").images
        with torch.no_grad():
            self.real_feats = self.classifier.features(real_crops)
        self.ref = self._raw(self.real)

    def _raw(self, x):
        hp = high_pass(x.clamp(-1, 1))
        return dict(hf=hp.pow(2).mean().item(), texture=hp[:, :, -3:].var().item())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict:
        x = x.clamp(-1, 1)
        raw = self._raw(x)
        crops = crops_of(x, self.window)
        feats = self.classifier.features(crops)
        k = x.shape[-1] // self.window
        classes = self.classifier.head(feats).argmax(1).view(-1, k)
        colours = crops.mean(dim=(2, 3)).view(-1, k, x.shape[1])
        return dict(seam=seam_score(x, self.cols), hf_ratio=raw["hf"] / self.ref["hf"],
                    texture_ratio=raw["texture"] / self.ref["texture"],
                    style=(classes == classes[:, :1]).all(1).double().mean().item(),
                    crop_colour_spread=colours.std(1).mean().item(),
                    fd_crops=metrics.frechet_distance(self.real_feats, feats))

    def real_row(self) -> dict:
        """The same figures for real scenes: the values a perfect sampler would reach."""
        return self(self.real[: max(32, len(self.real) // 2)])


def run_quality(s: Settings, out_dir: str, progress: bool = True) -> dict:
    """Every fusion setting on the bundled scenes model; rows of figures and grids in out_dir."""
    denoiser, info, net = load_denoiser("scenes")
    window = info["shape"][1]
    pm = PanoramaMetrics(s.width, window, s.stride)
    sigmas = karras_sigmas(s.steps, 0.002, 80.0)
    seeds = list(range(s.samples))
    # unconditional (the null label): with a class label the palette is fixed and style consistency
    # across the canvas would hold by construction, leaving nothing for SA to do
    cond = torch.full((len(seeds),), net.num_classes)
    rows = []
    for cfg in configs(s.alphas):
        t0 = time.perf_counter()
        with torch.no_grad():
            x = panorama(denoiser, (3, window, s.width), seeds, window=window, stride=s.stride, sigmas=sigmas,
                         cond=cond, **cfg)
        row = dict(**cfg, seconds=time.perf_counter() - t0, **pm(x))
        rows.append(row)
        name = f"{cfg['mode']}_{cfg['sampler']}{'_vcf' if cfg['vcf'] else ''}_sa{cfg['style_alpha']:g}.png"
        save_png(grid(x[:8], nrow=1, scale=3), os.path.join(out_dir, name))
        if progress:
            print(f"  {cfg['mode']:14s} {cfg['sampler']:4s} vcf={cfg['vcf']!s:5s} alpha={cfg['style_alpha']:<4g} "
                  f"seam {row['seam']:.3f} hf {row['hf_ratio']:.3f} texture {row['texture_ratio']:.3f} "
                  f"style {row['style']:.2f} FD {row['fd_crops']:.3f} ({row['seconds']:.1f} s)", flush=True)
    return dict(rows=rows, real=pm.real_row(), classifier_test_accuracy=pm.cinfo.get("test_accuracy"),
                window=window, width=s.width, stride=s.stride, samples=s.samples, steps=s.steps)


# ------------------------------------------------------------------------------------------- speed

def _speed_unet(size: str):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    if size == "sd":   # Stable Diffusion 1.x/2.x's UNet configuration (random weights)
        return UNet2DConditionModel(cross_attention_dim=768).eval()
    return UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=64,
                                attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")).eval()


def run_speed(unet_size: str = "small", steps: int = 3, width: int = 640, repeats: int = 3,
              device: str = "cpu", view_batches=(1, 4, 16)) -> dict:
    """Median seconds of our panorama and of diffusers' pipeline at each view_batch_size, interleaved."""
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline

    from ..adapters.sd import sd_denoiser
    from ..guidance import CFG
    dev = torch.device(device)
    unet = _speed_unet(unet_size).to(dev)
    scheduler = DDIMScheduler(clip_sample=False)
    pipe = StableDiffusionPanoramaPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    dim = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 77, dim, generator=g).to(dev), torch.randn(1, 77, dim, generator=g).to(dev)
    canvas = (4, 64, width // 8)
    latents = torch.randn(canvas, generator=torch.Generator().manual_seed(0))[None].to(dev)
    denoiser, _ = sd_denoiser(unet=unet, scheduler=scheduler)
    views = layout(64, width // 8, 64, stride=8).n
    outputs = {}

    def ours():
        outputs["ours"] = panorama(denoiser, canvas, [0], window=64, stride=8, sampler="ddim", steps=steps,
                                   guidance=CFG(6.5, null=neg), cond=pos, device=dev)

    def theirs(vb):
        def fn():
            outputs[vb] = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=512, width=width,
                               num_inference_steps=steps, guidance_scale=7.5, latents=latents.clone(),
                               output_type="latent", view_batch_size=vb).images
        return fn

    fns = {"ours": ours, **{f"diffusers_vb{vb}": theirs(vb) for vb in view_batches}}
    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()                                   # warm-up
        order = list(fns)
        for r in range(repeats):
            for k in (order if r % 2 == 0 else order[::-1]):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fns[k]()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best_vb = min(view_batches, key=lambda vb: med[f"diffusers_vb{vb}"])
    return dict(unet=unet_size, unet_params=sum(p.numel() for p in unet.parameters()), steps=steps,
                latent_canvas=list(canvas[1:]), views=views, device=str(dev), seconds=med,
                ratio_vs_best=med[f"diffusers_vb{best_vb}"] / med["ours"], best_view_batch=best_vb,
                ratio_vs_vb1=med["diffusers_vb1"] / med["ours"],
                max_abs_diff={str(vb): (outputs["ours"] - outputs[vb]).abs().max().item() for vb in view_batches})


def run(json_path: str | None = None, quick: bool = False, out_dir: str = "runs/bench/panorama",
        speed: bool = True, device: str = "cpu", progress: bool = True) -> dict:
    """Quality part and (optionally) the speed part; writes the JSON report."""
    s = QUICK if quick else Settings()
    t0 = time.perf_counter()
    report = dict(quality=run_quality(s, out_dir, progress))
    if speed:
        report["speed"] = run_speed(repeats=2 if quick else 3, device=device)
    report["seconds"] = time.perf_counter() - t0
    write_report(report, json_path)
    return report


def format_report(report: dict) -> str:
    """The report as a plain-text table."""
    q = report["quality"]
    lines = [f"panorama {q['window']}x{q['width']}, windows {q['window']} stride {q['stride']}, "
             f"{q['samples']} samples, {q['steps']} steps (classifier accuracy {q['classifier_test_accuracy']:.3f})",
             f"{'mode':14s} {'sampler':7s} {'vcf':5s} {'alpha':>5s} | {'seam':>6s} {'hf':>6s} {'texture':>7s} "
             f"{'style':>5s} {'spread':>6s} {'FD':>7s}"]
    r = q["real"]
    lines.append(f"{'real scenes':14s} {'':7s} {'':5s} {'':5s} | {r['seam']:6.3f} {r['hf_ratio']:6.3f} "
                 f"{r['texture_ratio']:7.3f} {r['style']:5.2f} {r['crop_colour_spread']:6.3f} {r['fd_crops']:7.3f}")
    for r in q["rows"]:
        lines.append(f"{r['mode']:14s} {r['sampler']:7s} {r['vcf']!s:5s} {r['style_alpha']:5g} | {r['seam']:6.3f} "
                     f"{r['hf_ratio']:6.3f} {r['texture_ratio']:7.3f} {r['style']:5.2f} "
                     f"{r['crop_colour_spread']:6.3f} {r['fd_crops']:7.3f}")
    if "speed" in report:
        sp = report["speed"]
        secs = ", ".join(f"{k} {v:.2f} s" for k, v in sp["seconds"].items())
        lines.append(f"\nspeed ({sp['device']}, UNet {sp['unet_params'] / 1e6:.1f}M params, latent canvas "
                     f"{sp['latent_canvas']}, {sp['views']} views, {sp['steps']} DDIM steps, CFG): {secs}")
        lines.append(f"diffusers at its best view_batch_size ({sp['best_view_batch']}) / ours = "
                     f"{sp['ratio_vs_best']:.2f}; diffusers at view_batch_size 1 / ours = {sp['ratio_vs_vb1']:.2f}; "
                     f"max abs difference of the latents {max(sp['max_abs_diff'].values()):.2e}")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)
