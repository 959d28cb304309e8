"""Model files: safetensors weights plus a JSON record (architecture, dataset, training) in the metadata.

A model is named either by a path to a ``.safetensors`` file or by the name of a bundled model
(``bundled_names()``), shipped in ``windowguide/weights``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from .classifier import SmallClassifier
from .unet import SmallUNet
from ..errors import WindowguideError
from ..files import write_bytes

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights")
ARCHITECTURES = {"unet": SmallUNet, "classifier": SmallClassifier}


def atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """save_file to a temporary name, then rename: an interrupted write never leaves a half file."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(path, data)


def save_model(path: str, net: nn.Module, kind: str, **info: Any) -> None:
    """Write ``net``'s weights and {kind, config, **info} (JSON) to ``path``."""
    if kind not in ARCHITECTURES:
        raise WindowguideError(f"unknown model kind {kind!r}; accepted: {sorted(ARCHITECTURES)}")
    record = dict(kind=kind, config=net.config, **info)
    atomic_save(net.state_dict(), path, {"windowguide": json.dumps(record)})


def bundled_names() -> list[str]:
    """Names of the models shipped with the package."""
    if not os.path.isdir(WEIGHTS_DIR):
        return []
    return sorted(f[:-len(".safetensors")] for f in os.listdir(WEIGHTS_DIR) if f.endswith(".safetensors"))


def resolve(name_or_path: str) -> str:
    """The file of a bundled model name, or the path itself if it is a file."""
    if os.path.isfile(name_or_path):
        return name_or_path
    path = os.path.join(WEIGHTS_DIR, name_or_path + ".safetensors")
    if os.path.isfile(path):
        return path
    raise WindowguideError(f"no model {name_or_path!r}: not a file, and not a bundled model "
                     f"(bundled: {', '.join(bundled_names()) or 'none'})")


def read_info(name_or_path: str) -> dict[str, Any]:
    """The JSON record stored with a model file."""
    path = resolve(name_or_path)
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "windowguide" not in meta:
        raise WindowguideError(f"{path} is not a windowguide model file (no 'windowguide' metadata)")
    return json.loads(meta["windowguide"])


def load_model(name_or_path: str, kind: str | None = None, device: Any = "cpu") -> tuple[nn.Module, dict]:
    """(net in eval mode, its record). ``kind`` checks the file holds that kind of model."""
    path = resolve(name_or_path)
    info = read_info(path)
    if kind is not None and info["kind"] != kind:
        raise WindowguideError(f"{name_or_path!r} is a {info['kind']}, expected a {kind}")
    config = dict(info["config"])
    if "mults" in config:
        config["mults"] = tuple(config["mults"])
    net = ARCHITECTURES[info["kind"]](**config)
    state = {}
    with safe_open(path, "pt", device="cpu") as f:
        for key in f.keys():
            state[key] = f.get_tensor(key)
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False), info


def load_denoiser(name_or_path: str, device: Any = "cpu"):
    """(EDMDenoiser of a saved UNet, its record, the net)."""
    net, info = load_model(name_or_path, "unet", device)
    return net.denoiser(), info, net
