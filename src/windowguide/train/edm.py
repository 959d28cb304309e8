"""The EDM training loop (Karras et al. 2022) for the built-in UNet.

    sigma = exp(P_mean + P_std * n),  loss = lambda(sigma) |D(x0 + sigma e, sigma, label) - x0|^2,
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

Labels are replaced by the null label with probability ``label_dropout`` so that the same net gives
the unconditional prediction CFG needs. The EMA of the weights is what gets exported. Every random
draw of step i comes from a generator seeded by (seed, i), so a run resumed from a checkpoint is the
same run. ``PRESETS`` are the recipes of the bundled models.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, fields, replace

import torch
from tqdm import tqdm

from ..data import Dataset, load
from ..models.checkpoint import load_matching_denoiser, save_model
from ..models.unet import SmallUNet, param_count
from .state import load_state, resume_step, save_state
from ..errors import NonFiniteError, WindowguideError
from ..files import check_out_dir


@dataclass
class TrainConfig:
    """Recipe of a diffusion model: data, UNet size, EDM loss settings, optimiser, EMA, checkpoints."""
    dataset: str = "digits"
    base: int = 32
    mults: tuple[int, ...] = (1, 2, 2)
    conditional: bool = True
    label_dropout: float = 0.1
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    ema: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    seed: int = 0
    checkpoint_every: int = 250
    w2s: str | None = None          # weak-to-strong guidance in training: mg, ag, branch, sgg (train/w2s.py)
    w2s_weight: float = 0.0
    w2s_split: float = 1.0          # sgg: CFG difference for sigma > split, the low source below
    w2s_low: str = "branch"         # sgg's low-noise source: branch or ag
    w2s_weak: str | None = None     # ag: the weak model (default: the preset's NAME-weak)
    w2s_source: str = "online"      # mg: the online weights (no grad) or the EMA

    def __post_init__(self):
        if not isinstance(self.mults, (tuple, list)) or not all(isinstance(m, int) for m in self.mults):
            raise WindowguideError(f"mults {self.mults!r}: accepted: integers such as 1,2,2")
        self.mults = tuple(self.mults)
        for name in ("steps", "batch", "base", "checkpoint_every", "warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WindowguideError(f"{name} {v!r}: accepted: an integer >= 1")
        if self.w2s is not None:
            self.recipe()          # refuses a bad recipe now
        for name in ("lr", "weight_decay", "ema", "label_dropout", "p_mean", "p_std", "sigma_data"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise WindowguideError(f"{name} {v!r}: accepted: a finite number")
        if not 0 <= self.label_dropout < 1:
            raise WindowguideError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.ema < 1:
            raise WindowguideError(f"need lr > 0, weight_decay >= 0, 0 <= ema < 1; got {self.lr}, "
                             f"{self.weight_decay}, {self.ema}")


    def recipe(self):
        """The W2S recipe, or None."""
        from .w2s import W2S
        return None if self.w2s is None else W2S(self.w2s, self.w2s_weight, self.w2s_split, self.w2s_low,
                                                  self.w2s_source)

    def record(self) -> dict:
        """The settings as stored and compared on resume (w2s fields only when used, so plain runs keep
        the records they always had)."""
        d = asdict(self)
        if self.w2s is None:
            d = {k: v for k, v in d.items() if not k.startswith("w2s")}
        return d


# The bundled models (``windowguide train --preset NAME``). "-weak": smaller and a quarter of the
# training (autoguidance's weak model); "-wd": the main architecture with weight decay 1.0 (AdamW,
# decoupled), the M-SWG paper's weight-regularised weak model.
PRESETS: dict[str, TrainConfig] = {}
for _ds in ("digits", "mirror"):
    PRESETS[_ds] = TrainConfig(dataset=_ds, steps=3000)
    PRESETS[f"{_ds}-weak"] = TrainConfig(dataset=_ds, base=16, mults=(1, 2), steps=750)
    PRESETS[f"{_ds}-wd"] = TrainConfig(dataset=_ds, steps=3000, weight_decay=1.0)
PRESETS["scenes"] = TrainConfig(dataset="scenes", steps=3000)   # 24 x 24 crops of wide scenes (panoramas)


def config_from(preset: str | None = None, **overrides) -> TrainConfig:
    """A preset (or the defaults) with some fields replaced."""
    if preset is not None and preset not in PRESETS:
        raise WindowguideError(f"unknown preset {preset!r}; accepted: {sorted(PRESETS)}")
    base = asdict(PRESETS[preset]) if preset else {}
    names = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise WindowguideError(f"unknown training settings {bad}; accepted: {sorted(names)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def build_net(cfg: TrainConfig, data: Dataset) -> SmallUNet:
    """The SmallUNet a recipe describes for a dataset (checks size and labels)."""
    channels, h, w = data.shape
    if cfg.conditional and data.labels is None:
        raise WindowguideError(f"dataset {cfg.dataset!r} has no labels; a conditional model needs them "
                               f"(--unconditional, or let train() choose)")
    w2s = cfg.recipe()
    net = SmallUNet(channels, cfg.base, cfg.mults, data.num_classes if cfg.conditional else 0, cfg.sigma_data,
                    branch=bool(w2s and w2s.needs_branch))
    if w2s and w2s.needs_labels and not net.num_classes:
        raise WindowguideError(f"--w2s {w2s.kind} uses the CFG difference: it needs labelled data and a "
                               f"conditional model")
    if h % net.multiple or w % net.multiple:
        raise WindowguideError(f"images of {h}x{w} are not a multiple of {net.multiple} (the UNet's factor "
                         f"for mults {cfg.mults})")
    return net


def edm_loss(net, x0, labels, gen, cfg: TrainConfig, ema=None, weak=None) -> torch.Tensor:
    """lambda(sigma) |D(x0 + sigma e, sigma) - target|^2 averaged, sigma log-normal; target = x0, or
    with a w2s recipe the guided target x0 + w stopgrad(g) (train/w2s.py)."""
    sigma = (torch.randn(x0.shape[0], generator=gen) * cfg.p_std + cfg.p_mean).exp()
    noisy = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
    sd = cfg.sigma_data
    weight = ((sigma ** 2 + sd ** 2) / (sigma * sd) ** 2).view(-1, 1, 1, 1)
    if cfg.w2s is not None:
        from .w2s import loss
        return loss(cfg.recipe(), net, x0, noisy, sigma, labels, weight, ema, weak)
    return (weight * (net(noisy, sigma, labels) - x0) ** 2).mean()


def training_batch(data: Dataset, net: SmallUNet, gen, cfg: TrainConfig):
    idx = torch.randint(0, len(data), (cfg.batch,), generator=gen)
    labels = None
    if net.num_classes:
        drop = torch.rand(cfg.batch, generator=gen) < cfg.label_dropout
        labels = torch.where(drop, torch.full_like(data.labels[idx], net.num_classes), data.labels[idx])
    return data.images[idx], labels


def _weak_model(cfg: TrainConfig, name: str | None, data: Dataset):
    """The weak model of training-time autoguidance: --w2s-weak, else the preset's NAME-weak."""
    weak_name = cfg.w2s_weak or (f"{name}-weak" if name else None)
    if weak_name is None:
        raise WindowguideError("--w2s ag needs --w2s-weak NAME_OR_PATH (no preset to take NAME-weak from)")
    return load_matching_denoiser(weak_name, data.shape, data.num_classes if cfg.conditional else 0)


def _w2s_record(cfg: TrainConfig) -> dict:
    """{'w2s': recipe} for the model's record when trained with weak-to-strong guidance."""
    return {} if cfg.w2s is None else {"w2s": asdict(cfg.recipe())}


def _check_weights(net, ema, step: int, out_dir: str, saved: int) -> None:
    """Never overwrite a good checkpoint with non-finite weights."""
    for name, module in (("weights", net), ("EMA weights", ema)):
        if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            raise NonFiniteError(f"step {step}: the {name} are NaN or infinite; training stopped, the files in "
                                 f"{out_dir} are from step {saved} (lower --lr?)")


def train(cfg: TrainConfig, out_dir: str, progress: bool = True, name: str | None = None,
          data: Dataset | None = None) -> str:
    """Train (or resume) into ``out_dir``: ``state.safetensors`` (resumable) and ``model.safetensors``
    (the EMA net with its record), both rewritten every ``checkpoint_every`` steps. Returns the model path.
    ``data``: the training split of ``cfg.dataset`` when the caller has read it already."""
    data = data if data is not None else load(cfg.dataset, "train")
    if cfg.conditional and data.labels is None:
        print(f"dataset {cfg.dataset!r} has no labels: training an unconditional model", flush=True)
        cfg = replace(cfg, conditional=False)
    check_out_dir(out_dir)
    torch.manual_seed(cfg.seed)     # the initial weights
    net = build_net(cfg, data)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path, model_path = os.path.join(out_dir, "state.safetensors"), os.path.join(out_dir, "model.safetensors")
    config = cfg.record()
    weak = _weak_model(cfg, name, data) if cfg.w2s is not None and cfg.recipe().needs_weak else None
    start = load_state(state_path, config, net, ema, opt) if os.path.exists(state_path) else 0
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc=f"train {name or cfg.dataset}")
    loss_avg = None
    for step in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0, labels = training_batch(data, net, gen, cfg)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        loss = edm_loss(net, x0, labels, gen, cfg, ema, weak)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"step {step + 1}: the loss is {loss.item()}; training stopped, the files in "
                                 f"{out_dir} are from step {resume_step(state_path)} (lower --lr?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _check_weights(net, ema, step + 1, out_dir, resume_step(state_path))
            save_state(state_path, step + 1, config, net, ema, opt)
            save_model(model_path, ema, "unet", dataset=data.name, shape=list(data.shape),
                       class_names=list(data.class_names), train=config, steps_done=step + 1,
                       loss=loss_avg, params=param_count(net), preset=name, **_w2s_record(cfg))
    if start >= cfg.steps and not os.path.exists(model_path):
        save_model(model_path, ema, "unet", dataset=data.name, shape=list(data.shape),
                   class_names=list(data.class_names), train=config, steps_done=start, preset=name,
                   **_w2s_record(cfg))
    return model_path
