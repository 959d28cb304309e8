"""EDM2's network pickles (NVlabs ``edm2-img512-*.pkl``), read without running anything in them.

Such a file is ``pickle.dump(dict(ema=net, encoder=encoder, ...))`` where ``net`` and ``encoder`` are
objects of ``torch_utils.persistence``: each is stored as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class', version,
module_src: the Python source of the defining module, class_name, state: the object's __dict__}``.
Loading it with ``pickle`` executes ``module_src``. Here the allow-listed globals are replaced by
inert stand-ins: a persistent object becomes a ``Persistent`` record (class name + state; the source
is kept as a string and never run), a torch module class (``ModuleDict``) becomes a ``ModuleState``,
tensors are rebuilt by torch's own functions with their storages read by ``torch.load(...,
weights_only=True)``. Any other global stops the read (``formats.safe_pickle``).
"""
from __future__ import annotations

import collections
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import WindowguideError
from .safe_pickle import NUMPY_GLOBALS, check_tree, safe_load


@dataclass
class Persistent:
    """A ``torch_utils.persistence`` object: its class name and state (``module_src`` never runs)."""
    class_name: str
    state: dict
    module_src: str = field(repr=False, default="")

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


class ModuleState:
    """Stands in for a plain torch module (``torch.nn.ModuleDict``): keeps the pickled state."""

    def __setstate__(self, state):
        self.state = state


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise WindowguideError(f"a persistent object of an unknown form ({sorted(meta) if isinstance(meta, dict) else type(meta)})")
    state = meta["state"]
    state = state.state if isinstance(state, ModuleState) else dict(state or {})
    return Persistent(str(meta.get("class_name")), state, str(meta.get("module_src", "")))


def _storage_from_bytes(data: bytes):
    """A storage that torch pickled as the bytes of a torch.save; read with weights_only."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch's ``_rebuild_tensor_v2``, after checking that the declared tensor is a plain contiguous
    layout backed by its storage's bytes: a stride-0 view of one 4-byte storage would otherwise
    become gigabytes once materialised."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise WindowguideError(f"refusing a tensor over a {type(storage).__name__}, not a storage")
    if (not isinstance(size, (tuple, list)) or len(size) > 8 or not isinstance(stride, (tuple, list))
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in list(size) + list(stride))
            or not isinstance(storage_offset, int) or storage_offset < 0):
        raise WindowguideError(f"refusing a tensor of size {str(size)[:60]}, stride {str(stride)[:60]}")
    size, stride = tuple(size), tuple(stride)
    contiguous, step = [], 1
    for n in reversed(size):
        contiguous.insert(0, step)
        step *= max(n, 1)
    numel = math.prod(size)
    if numel and any(s != c for n, s, c in zip(size, stride, contiguous) if n > 1):
        raise WindowguideError(f"refusing a tensor of size {size} with strides {stride}: accepted: the plain "
                               f"contiguous layout {tuple(contiguous)}")
    itemsize = storage.element_size() if isinstance(storage, torch.TypedStorage) else 1
    have = storage.nbytes()
    if (storage_offset + numel) * itemsize > have:
        raise WindowguideError(f"refusing a tensor of size {size} at offset {storage_offset}: it needs "
                               f"{(storage_offset + numel) * itemsize} bytes, its storage holds {have}")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, tuple(contiguous), requires_grad,
                                           collections.OrderedDict())


ALLOWED = dict(NUMPY_GLOBALS)
ALLOWED.update({
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleState,
    ("torch.nn.modules.container", "ModuleList"): ModuleState,
    ("torch.nn.modules.container", "Sequential"): ModuleState,
})


def read_pickle(path_or_bytes) -> dict:
    """The pickle's top-level dict, with ``Persistent`` records in place of the networks."""
    data = safe_load(path_or_bytes, ALLOWED)
    if not isinstance(data, dict):
        raise WindowguideError(f"{path_or_bytes if isinstance(path_or_bytes, str) else 'the pickle'}: expected "
                               f"EDM2's dict (ema, encoder, ...), got {type(data).__name__}")
    return data


def state_dict(obj: Persistent | ModuleState, prefix: str = "") -> dict[str, torch.Tensor]:
    """The flat state dict (parameters and buffers, dotted names) of a pickled module tree."""
    state = obj.state
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is not None:
                out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(t)
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            if not isinstance(child, (Persistent, ModuleState)):
                raise WindowguideError(f"module {prefix + name} is a {type(child).__name__}, not a pickled module")
            out.update(state_dict(child, prefix + name + "."))
    return out


@dataclass
class EDM2Checkpoint:
    """What windowguide takes from an EDM2 network pickle."""
    class_name: str
    init_kwargs: dict
    state_dict: dict
    encoder: dict          # {'kind': 'StabilityVAEEncoder', 'scale', 'bias', 'vae_name'} or {'kind': 'StandardRGBEncoder'}


def read_edm2(path_or_bytes, key: str = "ema") -> EDM2Checkpoint:
    """The network under ``key`` (default the EMA) and the latent encoder of an EDM2 pickle."""
    data = read_pickle(path_or_bytes)
    if key not in data:
        raise WindowguideError(f"the pickle has no {key!r} network (it holds {sorted(map(str, data))})")
    net = data[key]
    if not isinstance(net, Persistent):
        raise WindowguideError(f"the pickle's {key!r} is a {type(net).__name__}, not an EDM2 network")
    if net.class_name != "Precond":
        raise WindowguideError(f"the pickle's {key!r} is a {net.class_name}; windowguide reads EDM2's Precond")
    check_tree((net.state.get("_init_args"), net.state.get("_init_kwargs")), "the network's constructor arguments",
               max_nodes=10_000, max_depth=16)
    kwargs = dict(zip(_PRECOND_ARGS, net.state.get("_init_args") or ()), **net.init_kwargs)
    return EDM2Checkpoint(net.class_name, _plain(kwargs), state_dict(net), _encoder(data.get("encoder")))


_PRECOND_ARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data", "logvar_channels")


def _encoder(enc) -> dict:
    if enc is None:
        return dict(kind="StandardRGBEncoder")
    if not isinstance(enc, Persistent):
        raise WindowguideError(f"the pickle's encoder is a {type(enc).__name__}, not an EDM2 encoder")
    if enc.class_name == "StandardRGBEncoder":
        return dict(kind=enc.class_name)
    if enc.class_name == "StabilityVAEEncoder":
        s = enc.state
        check_tree((s.get("scale"), s.get("bias")), "the encoder's scale and bias", max_nodes=1_000, max_depth=4)
        return dict(kind=enc.class_name, vae_name=str(s.get("vae_name")),
                    scale=np.asarray(s["scale"], np.float32).reshape(-1).tolist(),
                    bias=np.asarray(s["bias"], np.float32).reshape(-1).tolist())
    raise WindowguideError(f"unknown EDM2 encoder {enc.class_name!r}; accepted: StandardRGBEncoder, StabilityVAEEncoder")


def _plain(value: Any) -> Any:
    """Constructor arguments as JSON-able values (numpy scalars and tuples made plain)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["read_edm2", "read_pickle", "state_dict", "EDM2Checkpoint", "Persistent", "ModuleState"]
