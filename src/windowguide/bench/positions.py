"""``windowguide bench positions``: which positional embedding should a transformer's crop get?

A small DiT (diffusers' DiTTransformer2DModel, pixel space, patch 2) is trained here on the bundled
``mirror`` images (24 x 24, eps-prediction on the linear VP schedule). Then, at several noise levels,
the model is run on the whole noisy image and on its four 16 x 16 crops (2 per side, as SWG does),
and each crop prediction is compared with the same region of the whole-image prediction (relative
MSE), with the crop's embedding chosen two ways: 'stretch' (diffusers' default: the crop's own grid
spread over the trained range, like the M-SWG authors' resize) and 'slice' (the rows of the whole
image's embedding where the crop lies: its true location).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def train_tiny_dit(steps: int = 1500, seed: int = 0, progress: bool = True):
    from diffusers import DiTTransformer2DModel
    from ..data import load
    from ..denoiser import VPSchedule
    data = load("mirror", "train")
    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=3, out_channels=3,
                                num_layers=4, sample_size=24, patch_size=2, num_embeds_ada_norm=data.num_classes)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-4)
    abar = VPSchedule.linear().alphas_cumprod.float()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(data), (64,), generator=gen)
        x0, y = data.images[idx], data.labels[idx]
        t = torch.randint(0, 1000, (64,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(dit(a.sqrt() * x0 + (1 - a).sqrt() * eps, timestep=t, class_labels=y).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 250 == 0:
            print(f"  tiny DiT step {step}: loss {loss.item():.4f}", flush=True)
    return dit.eval(), data


@torch.no_grad()
def crop_agreement(dit, data, timesteps=(100, 300, 600, 900), n: int = 256, seed: int = 1) -> dict:
    from ..adapters.dit import sliced_positions
    from ..denoiser import VPSchedule
    from ..windows import layout
    abar = VPSchedule.linear().alphas_cumprod.float()
    lay = layout(24, 24, 16, windows_per_side=2)
    gen = torch.Generator().manual_seed(seed)
    x0, y = data.images[:n], data.labels[:n]
    rows = []
    for t in timesteps:
        a = abar[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=gen)
        tt = torch.full((n,), t)
        full = lay.crop(dit(xt, timestep=tt, class_labels=y).sample)
        crops, tc, yc = lay.crop(xt), tt.repeat_interleave(lay.n), y.repeat_interleave(lay.n)
        stretch = dit(crops, timestep=tc, class_labels=yc).sample
        with sliced_positions(dit.pos_embed, lay.regions(n), (16, 16)):
            sliced = dit(crops, timestep=tc, class_labels=yc).sample
        denom = full.square().mean()
        rows.append(dict(t=t, stretch=((stretch - full).square().mean() / denom).item(),
                         slice=((sliced - full).square().mean() / denom).item()))
    return dict(rows=rows)


def run(json_path: str | None = None, quick: bool = False) -> dict:
    t0 = time.perf_counter()
    dit, data = train_tiny_dit(300 if quick else 1500)
    report = crop_agreement(dit, data)
    report["train_steps"] = 300 if quick else 1500
    report["seconds"] = time.perf_counter() - t0
    from . import write_report
    write_report(report, json_path)
    return report


def format_report(r: dict) -> str:
    lines = [f"crop vs whole-image prediction of a tiny DiT on mirror ({r['train_steps']} training steps), "
             f"relative MSE over the crop (lower = the crop sees what the whole image sees)",
             f"{'t':>5} {'stretch':>10} {'slice':>10}"]
    lines += [f"{row['t']:>5} {row['stretch']:>10.4f} {row['slice']:>10.4f}" for row in r["rows"]]
    return "\n".join(lines)


__all__ = ["run", "format_report", "train_tiny_dit", "crop_agreement"]
