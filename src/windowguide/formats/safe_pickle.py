"""A restricted unpickler: a pickle may name only the globals on an allow-list.

``pickle.load`` calls whatever callable a file names, so a pickle from the internet can run any code.
This reader resolves a global only if it is on the list (numpy arrays and dtypes, ordered dicts, and
``dnnlib.util.EasyDict`` read as a plain dict); any other global stops the read with an error that
names it, before anything it names is called. Used for EDM2's reference statistics (and, with a
longer list, EDM2's network pickles).
"""
from __future__ import annotations

import collections
import io
import pickle
from typing import Any, Callable

import numpy as np

from ..errors import WindowguideError


class _PlainDict(dict):
    """Stands in for dnnlib's EasyDict (a dict with attribute access; only the items matter here)."""


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct, core.multiarray.scalar


_RECONSTRUCT, _SCALAR = _numpy_reconstruct()

NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("dnnlib", "EasyDict"): _PlainDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: dict[tuple[str, str], Any], source: str):
        super().__init__(file)
        self.allowed, self.source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise WindowguideError(f"{self.source}: refusing to load: the pickle names the global {module}.{name}, "
                                   f"which is not on windowguide's allow-list (nothing in the file was run)") from None

    def persistent_load(self, pid):
        raise WindowguideError(f"{self.source}: refusing to load: the pickle holds persistent id {pid!r}")


def safe_load(path_or_bytes, allowed: dict[tuple[str, str], Any] | None = None,
              opener: Callable = open) -> Any:
    """Unpickle a file (or bytes) allowing only ``allowed`` globals (default: numpy arrays and dicts)."""
    allowed = NUMPY_GLOBALS if allowed is None else allowed
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return RestrictedUnpickler(io.BytesIO(path_or_bytes), allowed, "<bytes>").load()
    with opener(path_or_bytes, "rb") as f:
        try:
            return RestrictedUnpickler(f, allowed, str(path_or_bytes)).load()
        except WindowguideError:
            raise
        except Exception as e:   # truncated or not a pickle at all
            raise WindowguideError(f"{path_or_bytes}: not a readable pickle ({type(e).__name__}: {e})") from None


__all__ = ["safe_load", "RestrictedUnpickler", "NUMPY_GLOBALS"]
