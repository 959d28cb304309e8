"""``windowguide bench speed``: what guidance costs, measured side by side in one run.

(a) overhead: guided sampling (CFG + M-SWG) through ``GuidedDenoiser`` divided by exactly the same
    network calls made by hand (one full-size batch of cond+uncond, one batch of all crops per step).
(b) batched_speedup: one call per crop (the released code's loop; ``max_batch=1`` at batch size 1)
    divided by all crops in one call.
(c) mswg_cost_ratio: M-SWG sampling divided by unguided sampling, next to the FLOP-based
    expectation 1 + N (k/H)^2 for N crops of side k on an H x H image.
(d) finite_check_cost: unguided Euler sampling with the per-step NaN/inf check divided by the same
    loop without it (the check is one reduction of the prediction per step).
(e) EDM2 (random weights, the real architecture): M-SWG (window 40, 2 per side) on 64 x 64 x 4 latents,
    its cost ratio against unguided sampling divided by the FLOP floor (FLOPs of the full pass plus the
    four crop passes over the full pass, counted by torch's FlopCounterMode, attention included):
    1.00 means M-SWG costs exactly its extra network FLOPs. EDM2-XS on the CPU; on a GPU also EDM2-S at
    batch 1, 8 and 64.

Methods are run interleaved, in alternating order (A B C, C B A, ...), and the median of each is
kept, so a noisy machine affects all of them alike.
"""
from __future__ import annotations

import platform

import torch

from ..generate import sample
from ..guidance import CFG, MSWG, GuidedDenoiser
from ..models.unet import SmallUNet, param_count
from ..sampling import PerSampleNoise, finite_check, karras_sigmas, sample_euler
from ..windows import layout
from ..files import write_json
from .timing import flops, time_interleaved


@torch.no_grad()
def _direct_cfg_mswg(net, x, sigmas, labels, null, lay, w_cfg, w_swg):
    """Hand-written Euler sampling with CFG + M-SWG: the same network calls, no library in between."""
    n = x.shape[0]
    mask = lay.overlap_mask(x.device, x.dtype)
    for i in range(len(sigmas) - 1):
        s = torch.full((n,), sigmas[i], device=x.device)
        both = net(torch.cat([x, x]), torch.cat([s, s]), torch.cat([labels, null]))
        pos, unc = both[:n], both[n:]
        crops = net(lay.crop(x), s.repeat_interleave(lay.n), labels.repeat_interleave(lay.n))
        swg = lay.fold(crops)
        d = pos + w_cfg * (pos - unc) + w_swg * mask * (pos - swg)
        x = d + (sigmas[i + 1] / sigmas[i]) * (x - d)
    return x


def measure(size: int, batch: int, steps: int, repeats: int, device, base: int = 32) -> dict:
    torch.manual_seed(0)
    net = SmallUNet(3, base, (1, 2, 2), num_classes=10)
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)   # untrained, but not the zero output of a fresh net
    net = net.to(device).eval()
    window = (size * 5) // 8 // net.multiple * net.multiple      # k ≈ 5/8 H (40 for 64)
    den = net.denoiser()
    seeds = list(range(batch))
    labels = torch.arange(batch, device=device) % 10
    null = torch.full_like(labels, 10)
    sigmas = karras_sigmas(steps, 0.002, 80.0).tolist()
    lay = layout(size, size, window, windows_per_side=2)
    shape = (3, size, size)
    x0 = PerSampleNoise.from_seeds(seeds)(torch.empty(batch, *shape, device=device)) * sigmas[0]
    g = CFG(1.0) + MSWG(0.5, window=window)

    def guided_lib():
        return sample(den, shape, seeds, steps=steps, sampler="euler", guidance=g, cond=labels, device=device)

    def guided_direct():
        return _direct_cfg_mswg(net, x0, sigmas, labels, null, lay, 1.0, 0.5)

    # (a) is checked for identical output before it is timed
    diff = (guided_lib() - guided_direct()).abs().max().item()
    one = dict(
        lib=guided_lib, direct=guided_direct,
        unguided=lambda: sample(den, shape, seeds, steps=steps, sampler="euler", device=device),
        mswg=lambda: sample(den, shape, seeds, steps=steps, sampler="euler", guidance=MSWG(0.5, window=window),
                            device=device),
        mswg_b1=lambda: sample(den, shape, [0], steps=steps, sampler="euler", guidance=MSWG(0.5, window=window),
                               device=device),
        mswg_b1_per_crop=lambda: sample(den, shape, [0], steps=steps, sampler="euler",
                                        guidance=MSWG(0.5, window=window), max_batch=1, device=device),
        # (d) the per-step finite check alone: the same sampler loop with and without it
        euler_checked=lambda: sample_euler(den, x0, sigmas, callback=finite_check(seeds, steps)),
        euler_unchecked=lambda: sample_euler(den, x0, sigmas),
    )
    t = time_interleaved(one, repeats, device)
    n_crops = lay.n
    return {
        "image": size, "window": window, "windows": n_crops, "batch": batch, "steps": steps,
        "net_params": param_count(net),
        "seconds": {k: round(v, 5) for k, v in t.items()},
        "overhead": t["lib"] / t["direct"],
        "lib_vs_direct_max_abs_diff": diff,
        "batched_speedup": t["mswg_b1_per_crop"] / t["mswg_b1"],
        "mswg_cost_ratio": t["mswg"] / t["unguided"],
        "flop_expectation": 1 + n_crops * (window / size) ** 2,
        "finite_check_cost": t["euler_checked"] / t["euler_unchecked"],
    }


def measure_edm2(size: str, batch: int, steps: int, repeats: int, device) -> dict:
    """(e): EDM2-{size} at 64 x 64 latents, random weights, M-SWG against unguided Euler sampling."""
    from ..models.edm2 import EDM2Precond, edm2_config
    torch.manual_seed(0)
    net = EDM2Precond(**edm2_config(size))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.5)                       # every branch computes (zero gains would not change FLOPs)
    net = net.to(device).eval()
    den, shape, seeds = net.denoiser(), (4, 64, 64), list(range(batch))
    labels = torch.arange(batch, device=device) % 1000
    lay = layout(64, 64, 40, windows_per_side=2)
    x = torch.randn(batch, *shape, device=device)
    sigma = torch.ones(batch, device=device)
    onehot = torch.nn.functional.one_hot(labels, 1000).float()
    full = flops(net, x, sigma, onehot)
    crops = flops(net, lay.crop(x), sigma.repeat_interleave(lay.n), onehot.repeat_interleave(lay.n, 0))
    guided = MSWG(0.2, window=40)
    t = time_interleaved(dict(
        unguided=lambda: sample(den, shape, seeds, steps=steps, sampler="euler", cond=labels, device=device),
        mswg=lambda: sample(den, shape, seeds, steps=steps, sampler="euler", guidance=guided, cond=labels,
                            device=device)), repeats, device)
    ratio, floor = t["mswg"] / t["unguided"], (full + crops) / full
    return {"model": f"EDM2-{size.upper()}", "batch": batch, "steps": steps, "net_params": param_count(net),
            "gflops_per_eval": full / batch / 1e9, "seconds": {k: round(v, 4) for k, v in t.items()},
            "mswg_cost_ratio": ratio, "flop_floor": floor, "cost_vs_floor": ratio / floor,
            "seconds_per_step_mswg": t["mswg"] / steps}


def run(json_path: str | None = None, quick: bool = False, device: str | None = None) -> dict:
    """Run the speed benchmark at 64x64 and 128x128; write and return the report."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    repeats, steps = (3, 4) if quick else (10, 8)
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "results": [measure(64, 4, steps, repeats, dev), measure(128, 2, steps, repeats, dev)],
    }
    from .pipelines import measure_dit, measure_modular_sdxl, measure_sd
    report["pipelines"] = [measure_sd(32, 4 if quick else 10, 3 if quick else 7, dev),
                           measure_dit(32, 4 if quick else 10, 3 if quick else 7, dev),
                           measure_modular_sdxl(32, 4 if quick else 10, 3 if quick else 7, dev)]
    from .comfyui import measure_comfyui
    report["comfyui"] = measure_comfyui(4 if quick else 8, 3 if quick else 7)
    edm2_repeats = 1 if quick else 3
    report["edm2"] = [measure_edm2("xs", 1, 2, edm2_repeats, dev)]
    if dev.type == "cuda":
        report["edm2"] += [measure_edm2("s", b, 4, edm2_repeats, dev) for b in (1, 8, 64)]
    if json_path:
        write_json(json_path, report)
    return report


def format_report(report: dict) -> str:
    lines = [f"device {report['device']}, {report['threads']} threads, torch {report['torch']}",
             f"{'image':>6} {'overhead':>9} {'batched_speedup':>16} {'mswg_cost_ratio':>16} {'flop_expectation':>17} "
             f"{'finite_check_cost':>18}"]
    for r in report["results"]:
        lines.append(f"{r['image']:>6} {r['overhead']:>9.3f} {r['batched_speedup']:>16.2f} "
                     f"{r['mswg_cost_ratio']:>16.2f} {r['flop_expectation']:>17.2f} {r['finite_check_cost']:>18.3f}")
    for r in report.get("pipelines", []):
        if "guider_overhead_w0" in r:
            lines.append(f"{r['model']}, {r['steps']} DDIM steps: SlidingWindowGuidance at weight 0 / diffusers' "
                         f"ClassifierFreeGuidance {r['guider_overhead_w0']:.3f}; with M-SWG 0.5 "
                         f"{r['guider_mswg_ratio']:.3f}")
            continue
        line = f"{r['model']}: our loop / the pipeline's (CFG, {r['steps']} DDIM steps) {r['loop_ratio']:.3f}"
        if "patch_overhead_w0" in r:
            line += f"; wg.patch at weight 0 / unpatched {r['patch_overhead_w0']:.3f}"
        if "mswg_cost_ratio" in r:
            line += (f"; M-SWG cost {r['mswg_cost_ratio']:.3f} / FLOP floor {r['flop_floor']:.3f} = "
                     f"{r['mswg_cost_vs_floor']:.3f}")
        lines.append(line)
    c = report.get("comfyui")
    lines.append("ComfyUI: no ComfyUI found (set COMFYUI_PATH)" if c is None else
                 f"{c['model']}: M-SWG node / plain KSampler {c['mswg_cost_ratio']:.3f}, FLOP floor "
                 f"{c['flop_floor']:.3f} ({c['cost_vs_floor']:.3f} of it); the same crops one call at a time / "
                 f"batched {c['batched_speedup']:.2f}")
    if report.get("edm2"):
        lines.append(f"{'EDM2 (64x64x4, random weights)':31s} {'batch':>5} {'GFLOP/eval':>10} {'mswg_cost_ratio':>16} "
                     f"{'flop_floor':>11} {'cost_vs_floor':>14} {'s/step (M-SWG)':>15}")
        for r in report["edm2"]:
            lines.append(f"{r['model']:31s} {r['batch']:>5} {r['gflops_per_eval']:>10.1f} {r['mswg_cost_ratio']:>16.3f} "
                         f"{r['flop_floor']:>11.3f} {r['cost_vs_floor']:>14.3f} {r['seconds_per_step_mswg']:>15.2f}")
    return "\n".join(lines)


__all__ = ["run", "measure", "format_report", "GuidedDenoiser"]
