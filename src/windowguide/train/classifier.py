"""Training of the benchmark's feature classifier (cross-entropy, AdamW, shift and noise augmentation).

Augmentation: random shifts of up to ``shift`` pixels (reflect padding) and additive gaussian noise of
std up to ``noise`` so that the features are not thrown by the small artefacts of generated images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..data import load
from ..models.checkpoint import save_model
from ..models.classifier import SmallClassifier
from ..errors import WindowguideError


@dataclass
class ClassifierConfig:
    """Recipe of the feature classifier (the bundled ones use the defaults)."""
    dataset: str = "digits"
    width: int = 32
    steps: int = 1500
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 2
    noise: float = 0.1
    seed: int = 0


def augment(x: torch.Tensor, gen: torch.Generator, shift: int, noise: float) -> torch.Tensor:
    """Random translation by up to ``shift`` px and gaussian noise of a random std in [0, noise]."""
    n, _, h, w = x.shape
    if shift:
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    std = torch.rand(n, 1, 1, 1, generator=gen) * noise
    return x + std * torch.randn(x.shape, generator=gen)


@torch.no_grad()
def accuracy(net: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Fraction of ``images`` whose arg-max class is the label."""
    hits = sum((net(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
               for i in range(0, len(labels), batch))
    return hits / len(labels)


def train_classifier(cfg: ClassifierConfig, path: str, progress: bool = True) -> float:
    """Train on the 'features' split (never the FD reference, which is 'train'), write the model to
    ``path``; returns the accuracy on images it has not seen ('train' for digits, 'test' otherwise; for
    a user's images: on a fixed random seventh held out from training)."""
    from ..data import BUILTIN, held_out
    if cfg.dataset in BUILTIN:
        data = load(cfg.dataset, "features")
        test = load(cfg.dataset, "train" if cfg.dataset == "digits" else "test")
    else:                       # a user's images: hold a seventh out for the accuracy
        data, test = held_out(load(cfg.dataset, "all"))
    if data.labels is None:
        raise WindowguideError(f"dataset {cfg.dataset!r} has no labels: a classifier cannot be trained")
    torch.manual_seed(cfg.seed)
    net = SmallClassifier(data.shape[0], data.num_classes, cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.steps), disable=not progress, desc=f"classifier {cfg.dataset}"):
        idx = torch.randint(0, len(data), (cfg.batch,), generator=gen)
        x = augment(data.images[idx], gen, cfg.shift, cfg.noise)
        loss = F.cross_entropy(net(x), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    acc = accuracy(net, test.images, test.labels)
    save_model(path, net, "classifier", dataset=data.name, shape=list(data.shape),
               class_names=list(data.class_names), train=asdict(cfg), test_accuracy=acc,
               trained_on="features" if cfg.dataset in BUILTIN else "all but a held-out seventh")
    return acc
