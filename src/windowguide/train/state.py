"""Resumable training state: model, EMA and optimiser moments in one safetensors file."""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..models.checkpoint import atomic_save
from ..errors import WindowguideError


def save_state(path: str, step: int, config: dict, net: nn.Module, ema: nn.Module | None,
               opt: torch.optim.Optimizer) -> None:
    """Everything needed to continue a run bit-for-bit at ``step``."""
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    meta = {"step": str(step), "config": json.dumps(config, sort_keys=True),
            "param_groups": json.dumps(opt_state["param_groups"])}
    atomic_save(tensors, path, meta)


def load_state(path: str, config: dict, net: nn.Module, ema: nn.Module | None,
               opt: torch.optim.Optimizer) -> int:
    """Restore a run saved by ``save_state``; returns the step to continue from. A state written by
    a different configuration is refused rather than silently continued."""
    config = json.loads(json.dumps(config, sort_keys=True))     # tuples as lists, as stored
    try:
        f = safe_open(path, "pt", device="cpu")
    except Exception as e:
        raise WindowguideError(f"{path}: not a readable training state ({type(e).__name__}); remove it to start "
                               f"over") from None
    with f:
        meta = f.metadata()
        saved = json.loads(meta["config"])
        if saved != config:
            diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            detail = "; ".join(f"{k}: {saved.get(k)!r} there, {config.get(k)!r} now" for k in diff)
            raise WindowguideError(f"{path} was written by a run with other settings ({detail}); "
                                   f"use another --out folder or the same settings to resume")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def resume_step(path: str) -> int:
    """The step a saved state stopped at (0 if there is none)."""
    if not os.path.exists(path):
        return 0
    with safe_open(path, "pt") as f:
        return int(f.metadata()["step"])
