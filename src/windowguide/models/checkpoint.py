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
from .edm2 import EDM2Precond
from .unet import SmallUNet
from .video import VideoUNet
from ..errors import WindowguideError
from ..files import write_bytes

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights")
ARCHITECTURES = {"unet": SmallUNet, "classifier": SmallClassifier, "edm2": EDM2Precond, "video": VideoUNet}
DENOISERS = ("unet", "edm2", "video")          # kinds that are diffusion models


def atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None,
                check: Any = None) -> None:
    """save_file to a temporary name, then rename: an interrupted write never leaves a half file.
    ``check(tmp_path)``: read the new file back before it replaces ``path`` (a file that does not
    load never replaces a good one)."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    if check is None:
        write_bytes(path, data)
        return
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write_bytes(tmp, data)
        check(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def _open(path: str):
    """safe_open, with a clear error for a file that is not safetensors (empty, truncated, random)."""
    try:
        return safe_open(path, "pt", device="cpu")
    except Exception as e:   # safetensors raises its own SafetensorError, an OSError, or a ValueError
        raise WindowguideError(f"{path}: not a readable .safetensors file ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


REQUIRED = {"unet": ("config", "shape"), "classifier": ("config",), "edm2": ("config", "shape"),
            "video": ("config", "shape")}
# What a record may declare: one sample is at most 64 x 4096 x 4096 values (a record of 65536 x 65536 would
# make ``sample`` allocate tens of GB before anything else could fail).
MAX_CHANNELS, MAX_SIDE = 64, 4096


def check_shape(shape: Any, where: str) -> list[int]:
    """A record's sample shape [C, H, W] ([C, T, H, W] for a video model): positive ints within
    ``MAX_CHANNELS`` and ``MAX_SIDE``."""
    ok = (isinstance(shape, list) and len(shape) in (3, 4)
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape))
    if not ok or shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_SIDE:
        raise WindowguideError(f"{where}: the record's shape {str(shape)[:60]} is not [C, H, W] (or [C, T, H, W]) with C <= {MAX_CHANNELS} "
                               f"and H, W <= {MAX_SIDE}")
    return shape


def read_info(name_or_path: str) -> dict[str, Any]:
    """The JSON record stored with a model file, checked to name a known kind and its fields."""
    path = resolve(name_or_path)
    with _open(path) as f:
        meta = f.metadata() or {}
    if "windowguide" not in meta:
        raise WindowguideError(f"{path} is not a windowguide model file (no 'windowguide' metadata)")
    try:
        info = json.loads(meta["windowguide"])
    except ValueError:
        raise WindowguideError(f"{path}: the 'windowguide' metadata is not JSON") from None
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind not in ARCHITECTURES:
        raise WindowguideError(f"{path}: model kind {kind!r} is unknown; accepted: {sorted(ARCHITECTURES)}")
    missing = [k for k in REQUIRED[kind] if k not in info]
    if missing or not isinstance(info["config"], dict):
        raise WindowguideError(f"{path}: the model record lacks {missing or ['a config dict']}; it cannot be "
                               f"rebuilt (was it written by windowguide?)")
    if "shape" in info:
        check_shape(info["shape"], path)
    res = info["config"].get("img_resolution")
    if res is not None and (not isinstance(res, int) or not 1 <= res <= MAX_SIDE):
        raise WindowguideError(f"{path}: img_resolution {res!r}; accepted: 1..{MAX_SIDE}")
    return info


def _build(path: str, info: dict) -> nn.Module:
    """The architecture of the record, on the meta device (no memory), or a clear error."""
    config = dict(info["config"])
    for key in ("mults", "channel_mult", "attn_resolutions", "resample_filter"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    try:
        with torch.device("meta"):
            return ARCHITECTURES[info["kind"]](**config)
    except TypeError as e:
        raise WindowguideError(f"{path}: the config {info['config']} does not fit a {info['kind']} ({e})") from None
    except WindowguideError as e:
        raise WindowguideError(f"{path}: {e}") from None


def _check_header(path: str, f, net: nn.Module) -> None:
    """The file's tensor names and shapes must be the architecture's, before anything is allocated."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or extra or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}" if extra else "",
            f"{wrong[0]} is {stored[wrong[0]]}, the recipe needs {expected[wrong[0]]}" if wrong else "") if part)
        raise WindowguideError(f"{path}: the weights do not fit the architecture in its record ({detail})")


def load_model(name_or_path: str, kind: str | None = None, device: Any = "cpu") -> tuple[nn.Module, dict]:
    """(net in eval mode, its record). ``kind`` checks the file holds that kind of model. The record is
    checked and the tensor shapes in the file's header are compared with the architecture before
    any weight is read."""
    path = resolve(name_or_path)
    info = read_info(path)
    if kind is not None and info["kind"] != kind:
        raise WindowguideError(f"{name_or_path!r} is a {info['kind']}, expected a {kind}")
    meta_net = _build(path, info)
    with _open(path) as f:
        _check_header(path, f, meta_net)
        try:
            state = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as e:
            raise WindowguideError(f"{path}: the weights cannot be read ({type(e).__name__}); the file is "
                                   f"truncated or damaged") from None
    net = meta_net
    net.load_state_dict(state, assign=True)     # the meta-device net takes the file's tensors as they are
    return net.to(device).eval().requires_grad_(False), info


def load_denoiser(name_or_path: str, device: Any = "cpu"):
    """(EDMDenoiser of a saved diffusion model (a SmallUNet or an EDM2 net), its record, the net)."""
    kind = read_info(name_or_path)["kind"]
    if kind not in DENOISERS:
        raise WindowguideError(f"{name_or_path!r} is a {kind}, not a diffusion model ({', '.join(DENOISERS)})")
    net, info = load_model(name_or_path, kind, device)
    return net.denoiser(), info, net


def load_matching_denoiser(name_or_path: str, shape, num_classes: int, device: Any = "cpu"):
    """A weak model's denoiser, refused unless it makes images of ``shape`` and takes the same classes
    as the model it is to guide (autoguidance at sampling or training time)."""
    denoiser, info, _ = load_denoiser(name_or_path, device)
    if list(info.get("shape", [])) != list(shape):
        raise WindowguideError(f"weak model {name_or_path!r} makes images of shape {info.get('shape')}, the main "
                               f"model {list(shape)}; a weak model must match the main one")
    k_weak = info["config"].get("num_classes", 0)
    if k_weak != num_classes:
        raise WindowguideError(f"weak model {name_or_path!r} has {k_weak} classes, the main model {num_classes}; "
                               f"a weak model must take the same conditions")
    return denoiser
