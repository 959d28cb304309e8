"""Small MLP denoisers for 2-D toys, EDM-trained on exact samples of a mixture, cached on disk.

Loss (Karras et al. 2022): E_{sigma, x0, n} lambda(sigma) |D(x0 + sigma n, sigma, c) - x0|^2 with
ln sigma ~ N(P_mean, P_std^2) and lambda = (sigma^2 + sd^2) / (sigma sd)^2. Conditional models see
the null label (index num_classes) with probability ``label_dropout``, so CFG can ask them for the
unconditional prediction.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..denoiser import EDMDenoiser
from ..train.w2s import W2S, loss as w2s_loss
from .mixture import GMM


class ToyMLP(nn.Module):
    """D(x, sigma, label) = c_skip x + c_out F(c_in x, c_noise, label), F an MLP; x is [N, 2, 1, 1]."""

    def __init__(self, hidden: int = 64, layers: int = 3, num_classes: int = 0, sigma_data: float = 0.5):
        super().__init__()
        self.sigma_data, self.num_classes = sigma_data, num_classes
        self.register_buffer("freqs", torch.arange(1, 9, dtype=torch.float32) * math.pi / 4)
        dims = [2 + 16 + (16 if num_classes else 0)] + [hidden] * layers
        self.body = nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.SiLU())],
                                  nn.Linear(hidden, 2))
        self.label_emb = nn.Embedding(num_classes + 1, 16) if num_classes else None

    def forward(self, x, sigma, labels=None):
        sd, s = self.sigma_data, sigma.to(x.dtype).view(-1, 1)
        xf = x.flatten(1)
        c_noise = (s.log() / 4) * self.freqs[None]
        feats = [xf / (s ** 2 + sd ** 2).sqrt(), c_noise.cos(), c_noise.sin()]
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
            feats.append(self.label_emb(labels.long()))
        out = self.body(torch.cat(feats, dim=1))
        d = sd ** 2 / (s ** 2 + sd ** 2) * xf + s * sd / (s ** 2 + sd ** 2).sqrt() * out
        return d.view_as(x)

    def denoiser(self) -> EDMDenoiser:
        """This net as a windowguide Denoiser (null label = num_classes for CFG)."""
        null = torch.tensor(self.num_classes) if self.num_classes else None
        return EDMDenoiser(self, null_cond=null)


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 64
    layers: int = 3
    conditional: bool = True
    label_dropout: float = 0.2
    steps: int = 3000
    batch: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    p_mean: float = -1.2
    p_std: float = 1.4
    sigma_data: float = 0.5
    seed: int = 0
    w2s: str | None = None          # weak-to-strong guidance in training (train/w2s.py): mg here
    w2s_weight: float = 0.0


def cache_dir() -> str:
    return os.environ.get("WINDOWGUIDE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "windowguide"))


def _key(gmm: GMM, cfg: TrainConfig) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if not (k.startswith("w2s") and cfg.w2s is None)}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())     # plain configs keep their old keys
    for t in (gmm.means, gmm.covs, gmm.weights, gmm.labels):
        h.update(t.double().numpy().round(10).tobytes())
    return h.hexdigest()[:16]


def train(gmm: GMM, cfg: TrainConfig) -> ToyMLP:
    """Train a ToyMLP on exact samples of ``gmm`` (AdamW; cosine decay of the learning rate)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    classes = gmm.num_classes if cfg.conditional else 0
    net = ToyMLP(cfg.hidden, cfg.layers, classes, cfg.sigma_data)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    sd = cfg.sigma_data
    recipe = W2S(cfg.w2s, cfg.w2s_weight) if cfg.w2s else None
    for _ in range(cfg.steps):
        x0, labels = gmm.sample(cfg.batch, gen)
        x0 = x0.float().view(-1, 2, 1, 1)
        sigma = (torch.randn(cfg.batch, generator=gen) * cfg.p_std + cfg.p_mean).exp()
        if classes:
            drop = torch.rand(cfg.batch, generator=gen) < cfg.label_dropout
            labels = torch.where(drop, torch.full_like(labels, classes), labels)
        else:
            labels = None
        noisy = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        weight = ((sigma ** 2 + sd ** 2) / (sigma * sd) ** 2).view(-1, 1, 1, 1)
        if recipe is not None:      # the guided target x0 + w stopgrad(D(c) - D(null))
            loss = w2s_loss(recipe, net, x0, noisy, sigma, labels, weight)
        else:
            loss = (weight * (net(noisy, sigma, labels) - x0) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def trained(gmm: GMM, cfg: TrainConfig) -> ToyMLP:
    """``train``, cached under cache_dir()/toy/KEY.safetensors (KEY: hash of data and config)."""
    path = os.path.join(cache_dir(), "toy", _key(gmm, cfg) + ".safetensors")
    classes = gmm.num_classes if cfg.conditional else 0
    if os.path.exists(path):
        net = ToyMLP(cfg.hidden, cfg.layers, classes, cfg.sigma_data)
        net.load_state_dict(load_file(path))
        return net.eval()
    net = train(gmm, cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)   # a run interrupted mid-write leaves no half file behind
    return net
