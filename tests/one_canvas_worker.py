"""Run by tests/test_one_canvas.py, alone or under ``torchrun --nproc_per_node 2`` (gloo): a panorama, a
regional panorama, a gaussian (prediction-fused) panorama, an upscale and a long video, each with M-SWG
inside the windows; rank 0 (or the one process) saves them to OUT (a .pt file)."""
import sys

import numpy as np
import torch

import windowguide as wg
from windowguide import distributed
from windowguide.models.checkpoint import load_denoiser


class Counting(wg.Denoiser):
    """The network, counting the window-sized samples it evaluates."""

    def __init__(self, inner):
        self.inner, self.samples = inner, 0
        self.multiple, self.null_cond = inner.multiple, inner.null_cond
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max

    def forward(self, x, sigma, cond):
        self.samples += x.shape[0]
        return self.inner(x, sigma, cond)


def cases(counted: Counting) -> dict:
    scenes, _, _ = load_denoiser("scenes")
    bounce, _, _ = load_denoiser("bounce")
    out = {}
    with torch.no_grad():
        out["panorama"] = wg.panorama(counted, (3, 24, 72), [0, 1], window=24, stride=8, mode="gf", sampler="ddpm",
                                      vcf=True, style_alpha=0.2, steps=4, cond=torch.tensor([1, 2]),
                                      guidance=wg.MSWG(0.5, window=16))
        out["gaussian"] = wg.panorama(scenes, (3, 24, 56), [3], window=24, stride=8, mode="gaussian", sampler="heun",
                                      steps=3, cond=torch.tensor([0]))
        regions = [wg.regional.Region(torch.tensor([0]), torch.ones(24, 64)),
                   wg.regional.Region.box(torch.tensor([2]), (24, 64), 0, 32, 24, 64)]
        out["regional"] = wg.panorama(scenes, (3, 24, 64), [0], window=24, stride=8, mode="gf", sampler="ddim",
                                      steps=3, regions=regions, guidance=wg.MSWG(0.4, window=16))
        image = (np.arange(24 * 40 * 3) % 251).astype(np.uint8).reshape(24, 40, 3)
        out["upscale"] = torch.tensor(wg.upscale(scenes, image, scale=2, strength=0.5, steps=4, window=24, stride=8,
                                                 sampler="ddpm", vcf=True, cond=torch.tensor([1]),
                                                 guidance=wg.MSWG(0.5, window=16)))
        out["video"] = wg.long_video(bounce, (1, 24, 16, 16), [5], (16, 16, 16), stride=(4, 16, 16), steps=3,
                                     sampler="ddpm", vcf=True, guidance=wg.MSWG(0.5, window=(12, 16, 16)))
    return out


if __name__ == "__main__":
    r = distributed.init("cpu")
    counted = Counting(load_denoiser("scenes")[0])
    results = cases(counted)
    with open(f"{sys.argv[1]}.evaluations{r.rank}", "w") as f:     # this rank's share of the panorama's work
        f.write(str(counted.samples))
    if r.main:
        torch.save(results, sys.argv[1])
    distributed.close()
