"""Training of the bundled video model (``bounce``): EDM's loss on bouncing-blob clips (``toy.bounce``),

    L = E ||D(x0 + sigma n, sigma) - x0||^2 (sigma^2 + sd^2) / (sigma sd)^2,   ln sigma ~ N(-1.2, 1.2^2),

Adam with an EMA of the weights; ``scripts/make_weights.sh`` runs it."""
from __future__ import annotations

import copy
import time

import torch

from ..models.checkpoint import load_model, save_model
from ..models.video import VideoUNet
from ..toy.bounce import bouncing_clips


def train_video(path: str, steps: int = 4000, batch: int = 32, clips: int = 4000, frames: int = 12, size: int = 12,
                base: int = 16, mults: tuple = (1, 2, 2), lr: float = 2e-3, ema: float = 0.998, seed: int = 0,
                progress: bool = True, init: str | None = None) -> dict:
    """Train a VideoUNet on ``clips`` clips of seed ``seed`` and save its EMA weights to ``path``; ``init``: a
    saved video model to continue from (its EMA weights start both the net and the average)."""
    torch.manual_seed(seed)
    data, _ = bouncing_clips(clips, frames, size, seed)
    net = VideoUNet(channels=1, base=base, mults=tuple(mults))
    if init is not None:
        net.load_state_dict(load_model(init, "video")[0].state_dict())
    avg = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    before = 0 if init is None else int(load_model(init, "video")[1].get("steps", 0))
    gen = torch.Generator().manual_seed(seed + 1 + before)      # a continued run draws new batches
    sd, t0, loss_avg = net.sigma_data, time.perf_counter(), None
    for step in range(steps):
        x0 = data[torch.randint(0, clips, (batch,), generator=gen)]
        sigma = (torch.randn(batch, generator=gen) * 1.2 - 1.2).exp()
        noisy = x0 + sigma.view(-1, 1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        weight = ((sigma ** 2 + sd ** 2) / (sigma * sd) ** 2).view(-1, 1, 1, 1, 1)
        loss = (weight * (net(noisy, sigma) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        for g in opt.param_groups:                        # a short warm-up, then a cosine decay
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())
        opt.step()
        with torch.no_grad():
            for a, p in zip(avg.parameters(), net.parameters()):
                a.lerp_(p, 1 - ema)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if progress and (step % 100 == 0 or step == steps - 1):
            print(f"  step {step:5d} loss {loss_avg:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    info = dict(shape=[1, frames, size, size], dataset=f"bounce (toy.bounce, {clips} clips, seed {seed})",
                steps=before + steps, batch=batch, ema=ema, final_loss=loss_avg, seconds=time.perf_counter() - t0)
    save_model(path, avg, "video", **info)
    return info


if __name__ == "__main__":
    import sys
    train_video(sys.argv[1] if len(sys.argv) > 1 else "bounce.safetensors",
                steps=int(sys.argv[2]) if len(sys.argv) > 2 else 4000, init=sys.argv[3] if len(sys.argv) > 3 else None)
