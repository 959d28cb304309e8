"""Reference statistics: windowguide's .npz, pytorch-fid's .npz and EDM2's .pkl, read into one form
{role: {"network", "count", "mu", "sigma", "features" (optional)}} with role 'inception' or 'dinov2'.

- windowguide: ``format`` = 'windowguide-ref-1', and per role ROLE.network / .count / .mu / .sigma
  (float64) / .features (float32, when KID or precision/recall were asked for at --make-ref);
- pytorch-fid (and EDM1): ``mu``, ``sigma`` of the FID Inception;
- EDM2 (``dataset-refs/img512.pkl``): a pickled dict {'fid': {mu, sigma}, 'fd_dinov2': {mu, sigma},
  'num_images'}, read with the restricted unpickler (no code in the file runs).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import WindowguideError
from ..files import write_npz
from .stats import FeatureStats

FORMAT = "windowguide-ref-1"
_EDM2_KEYS = {"fid": "inception", "fd_dinov2": "dinov2"}


def save_reference(path: str, stats: dict[str, FeatureStats], names: dict[str, str]) -> str:
    """Write {role: statistics} (``names``: role -> network name) as a windowguide reference."""
    arrays = dict(format=np.array(FORMAT))
    for role, s in stats.items():
        arrays.update({f"{role}.network": np.array(names[role]), f"{role}.count": np.array(s.count),
                       f"{role}.mu": s.mu, f"{role}.sigma": s.sigma})
        if s.features is not None:
            arrays[f"{role}.features"] = s.features.numpy()
    return write_npz(path, **arrays)


def load_reference(path: str) -> dict[str, dict]:
    """Any of the three formats (by content, not by name) -> {role: {...}}."""
    if not os.path.isfile(path):
        raise WindowguideError(f"--ref {path!r}: no such file (accepted: a windowguide or pytorch-fid .npz, "
                               f"an EDM2 .pkl, or a bundled dataset name)")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    return _from_npz(path) if zipped else _from_edm2(path)


def _from_npz(path: str) -> dict[str, dict]:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        if "format" in keys:
            if str(z["format"]) != FORMAT:
                raise WindowguideError(f"{path}: reference format {str(z['format'])!r}; this version reads {FORMAT!r}")
            roles = sorted({k.split(".")[0] for k in keys if "." in k})
            return {r: _entry(str(z[f"{r}.network"]), int(z[f"{r}.count"]), z[f"{r}.mu"], z[f"{r}.sigma"],
                              z[f"{r}.features"] if f"{r}.features" in keys else None) for r in roles}
        if {"mu", "sigma"} <= keys:
            return {"inception": _entry("inception", 0, z["mu"], z["sigma"], None)}
    raise WindowguideError(f"{path}: an .npz without reference statistics (expected windowguide's 'format' "
                           f"key, or pytorch-fid's 'mu' and 'sigma')")


def _from_edm2(path: str) -> dict[str, dict]:
    from ..formats.safe_pickle import safe_load
    data = safe_load(path)
    if not isinstance(data, dict) or not set(data) & set(_EDM2_KEYS):
        raise WindowguideError(f"{path}: not an EDM2 reference (a dict with 'fid' and/or 'fd_dinov2')")
    count = int(data.get("num_images", 0))
    return {_EDM2_KEYS[k]: _entry(_EDM2_KEYS[k], count, v["mu"], v["sigma"], None)
            for k, v in data.items() if k in _EDM2_KEYS}


def _entry(network, count, mu, sigma, features) -> dict:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise WindowguideError(f"reference statistics of shapes {mu.shape} and {sigma.shape}; expected [D] and [D, D]")
    return dict(network=network, count=count, mu=mu, sigma=sigma,
                features=None if features is None else torch.from_numpy(np.asarray(features, np.float32)))


__all__ = ["save_reference", "load_reference", "FORMAT"]
