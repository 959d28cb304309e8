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
MAX_DIM = 16384      # feature dimension: DINOv2-L 1024, Inception 2048; a larger reference is refused
_EDM2_KEYS = {"fid": "inception", "fd_dinov2": "dinov2"}


def save_reference(path: str, stats: dict[str, FeatureStats], names: dict[str, str],
                   protocol: str = "pytorch-fid") -> str:
    """Write {role: statistics} (``names``: role -> network name) as a windowguide reference, with the
    input protocol the features were computed under."""
    arrays = dict(format=np.array(FORMAT), protocol=np.array(protocol))
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


def reference_protocol(path: str) -> str:
    """The input protocol a reference was made with: windowguide's records it (older ones:
    pytorch-fid), pytorch-fid's .npz is 'pytorch-fid', EDM2's .pkl is 'edm2'."""
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if not zipped:
        return "edm2"
    with np.load(path, allow_pickle=False) as z:
        return str(z["protocol"]) if "protocol" in z.files else "pytorch-fid"


def _from_npz(path: str) -> dict[str, dict]:
    try:
        return _read_npz(path)
    except WindowguideError:
        raise
    except (ValueError, OSError, KeyError, EOFError) as e:    # numpy's own words would advise allow_pickle
        msg = "holds object arrays, which are never unpickled" if "allow_pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise WindowguideError(f"{path}: not a readable reference .npz ({msg})") from None


def _read_npz(path: str) -> dict[str, dict]:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        if "format" in keys:
            if str(z["format"]) != FORMAT:
                raise WindowguideError(f"{path}: reference format {str(z['format'])!r}; this version reads {FORMAT!r}")
            roles = sorted({k.split(".")[0] for k in keys if "." in k and k != "protocol"})
            missing = [f"{r}.{k}" for r in roles for k in ("network", "count", "mu", "sigma") if f"{r}.{k}" not in keys]
            if missing or not roles:
                raise WindowguideError(f"{path}: a windowguide reference without {missing or 'any role'}")
            return {r: _entry(str(z[f"{r}.network"]), int(z[f"{r}.count"]), z[f"{r}.mu"], z[f"{r}.sigma"],
                              z[f"{r}.features"] if f"{r}.features" in keys else None, path) for r in roles}
        if {"mu", "sigma"} <= keys:
            return {"inception": _entry("inception", 0, z["mu"], z["sigma"], None, path)}
    raise WindowguideError(f"{path}: an .npz without reference statistics (expected windowguide's 'format' "
                           f"key, or pytorch-fid's 'mu' and 'sigma')")


def _from_edm2(path: str) -> dict[str, dict]:
    from ..formats.safe_pickle import safe_load
    data = safe_load(path)
    if not isinstance(data, dict) or not set(data) & set(_EDM2_KEYS):
        raise WindowguideError(f"{path}: not an EDM2 reference (a dict with 'fid' and/or 'fd_dinov2')")
    out = {}
    for k, v in data.items():
        if k not in _EDM2_KEYS:
            continue
        if not isinstance(v, dict) or not {"mu", "sigma"} <= set(v):
            raise WindowguideError(f"{path}: the EDM2 reference's {k!r} is not a dict with 'mu' and 'sigma'")
        if not all(isinstance(v[a], np.ndarray) for a in ("mu", "sigma")):
            raise WindowguideError(f"{path}: the EDM2 reference's {k} mu and sigma must be arrays, got "
                                   f"{type(v['mu']).__name__} and {type(v['sigma']).__name__}")
        out[_EDM2_KEYS[k]] = _entry(_EDM2_KEYS[k], _count(data.get("num_images", 0), path), v["mu"], v["sigma"], None,
                                    path)
    return out


def _count(value, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise WindowguideError(f"{path}: num_images {str(value)[:40]!r} is not a count")
    return int(value)


def _entry(network, count, mu, sigma, features, path: str = "the reference") -> dict:
    """One role's statistics, checked before any image is read: shapes [D] and [D, D], finite, sigma
    symmetric and positive semi-definite (a covariance), features [N, D]."""
    try:
        mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    except (TypeError, ValueError) as e:
        raise WindowguideError(f"{path}: mu and sigma are not numeric arrays ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or len(mu) < 1:
        raise WindowguideError(f"{path}: reference statistics of shapes {mu.shape} and {sigma.shape}; expected [D] and "
                               f"[D, D]")
    if len(mu) > MAX_DIM:
        raise WindowguideError(f"{path}: feature dimension {len(mu)}; accepted: at most {MAX_DIM}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise WindowguideError(f"{path}: mu or sigma holds NaN or infinite values")
    scale = max(1.0, float(np.abs(sigma).max()))
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise WindowguideError(f"{path}: sigma is not symmetric (max |S - S^T| {np.abs(sigma - sigma.T).max():.3g}); "
                               f"not a covariance")
    low = float(np.linalg.eigvalsh((sigma + sigma.T) / 2).min())
    if low < -1e-6 * scale:
        raise WindowguideError(f"{path}: sigma has a negative eigenvalue ({low:.3g}); a covariance is positive "
                               f"semi-definite")
    if features is not None:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != len(mu) or not np.isfinite(features).all():
            raise WindowguideError(f"{path}: features of shape {features.shape}; expected [N, {len(mu)}], finite")
    return dict(network=network, count=count, mu=mu, sigma=sigma,
                features=None if features is None else torch.from_numpy(np.asarray(features, np.float32)))


__all__ = ["save_reference", "load_reference", "reference_protocol", "FORMAT"]
