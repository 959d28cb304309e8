"""A restricted unpickler: a pickle may name only the globals on an allow-list.

``pickle.load`` calls whatever callable a file names, so a pickle from the internet can run any code.
This reader resolves a global only if it is on the list (numpy arrays and dtypes, ordered dicts, and
``dnnlib.util.EasyDict`` read as a plain dict); any other global stops the read with an error that
names it, before anything it names is called. Even the allowed ones are stand-ins that check what
the file gives them before numpy sees it: a dtype must be a plain native numeric one (no fields,
offsets, subarrays or objects), an array's data must be exactly as long as its shape needs, and
``numpy.ndarray`` cannot be called to allocate. ``check_tree`` bounds what a consumer expands. Used for EDM2's reference statistics (and, with a
longer list, EDM2's network pickles).
"""
from __future__ import annotations

import collections
import io
import math
import pickle
from typing import Any, Callable

import numpy as np

from ..errors import WindowguideError


class _PlainDict(dict):
    """Stands in for dnnlib's EasyDict (a dict with attribute access; only the items matter here)."""


# The numeric dtypes a file may declare (numpy's pickled codes): no fields, offsets, subarrays or objects.
PLAIN_DTYPES = ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
MAX_DIMS = 8


class _DtypeSpec:
    """What ``numpy.dtype(code, align, copy)`` in a pickle becomes: the code, checked; its pickled
    state (byte order, and None for fields/subarray/names) is checked in ``__setstate__`` before any
    numpy dtype is built, since numpy trusts that state (a field offset outside the item crashes or
    reads foreign memory)."""

    def __init__(self, code=None, align=False, copy=False, *rest):
        if not isinstance(code, str) or code not in PLAIN_DTYPES or rest:
            raise WindowguideError(f"refusing dtype {code!r}: accepted: plain numeric dtypes {', '.join(PLAIN_DTYPES)}")
        self.dtype = np.dtype(code)

    def __setstate__(self, state):
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4) and state[1] in ("<", ">", "|", "=")
              and state[2:5] == (None, None, None) and state[5:8] == (-1, -1, 0)
              and (len(state) == 8 or state[8] in (None, {})))
        if not ok:
            raise WindowguideError(f"refusing a dtype state {str(state)[:120]}: only plain numeric dtypes (no fields, "
                                   f"offsets, subarrays or metadata) are accepted")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _plain_dtype(d) -> np.dtype:
    if isinstance(d, _DtypeSpec):
        return d.dtype
    raise WindowguideError(f"refusing an array whose dtype is a {type(d).__name__}; accepted: plain numeric dtypes")


def _shape(shape) -> tuple[int, ...]:
    if (not isinstance(shape, tuple) or len(shape) > MAX_DIMS
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
        raise WindowguideError(f"refusing an array shape {str(shape)[:80]}: accepted: up to {MAX_DIMS} sizes >= 0")
    return shape


class _SafeArray(np.ndarray):
    """An ndarray whose pickled state is checked before numpy reads it: a plain dtype, a shape, and
    raw bytes exactly as long as the shape needs (so nothing is read past the data)."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise WindowguideError(f"refusing an array state of an unknown form ({type(state).__name__})")
        _, shape, dtype, fortran, raw = state
        shape, dtype = _shape(shape), _plain_dtype(dtype)
        need = math.prod(shape) * dtype.itemsize
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != need or not isinstance(fortran, bool):
            raise WindowguideError(f"refusing an array of shape {shape} and dtype {dtype}: its data holds "
                                   f"{len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__} bytes, "
                                   f"the shape needs {need}")
        super().__setstate__((1, shape, dtype, fortran, bytes(raw)))


class _NdarrayClass:
    """Stands in for ``numpy.ndarray`` as a global: only ``_reconstruct`` may use it (calling it
    would allocate an array of any size the file asks for)."""

    def __call__(self, *args, **kwargs):
        raise WindowguideError("refusing a pickle that calls numpy.ndarray directly")


_NDARRAY = _NdarrayClass()


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise WindowguideError(f"refusing to reconstruct an array of class {cls!r}")
    return np.ndarray.__new__(_SafeArray, (0,), np.uint8)


def _scalar(dtype, data):
    dtype = _plain_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise WindowguideError(f"refusing a {dtype} scalar of {len(data) if isinstance(data, (bytes, bytearray)) else '?'} bytes")
    return np.frombuffer(bytes(data), dtype)[0]


NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeSpec,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("dnnlib", "EasyDict"): _PlainDict,
}


def check_tree(obj: Any, what: str, max_nodes: int = 100_000, max_depth: int = 64) -> None:
    """Refuse containers that would expand past ``max_nodes`` items or ``max_depth`` levels when
    walked as a tree (shared sublists count each time they are reached, as a flattening or a JSON
    dump would reach them): a pickle of a few hundred bytes can share one list 60 levels deep."""
    budget = [max_nodes]

    def walk(o, depth):
        if depth > max_depth:
            raise WindowguideError(f"{what}: nested deeper than {max_depth} levels; refused")
        budget[0] -= 1
        if budget[0] < 0:
            raise WindowguideError(f"{what}: more than {max_nodes} values when expanded (shared sublists?); refused")
        if isinstance(o, dict):
            for k, v in o.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple, set, frozenset)):
            for v in o:
                walk(v, depth + 1)

    walk(obj, 0)


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
        try:
            return RestrictedUnpickler(io.BytesIO(path_or_bytes), allowed, "<bytes>").load()
        except WindowguideError:
            raise
        except RecursionError:
            raise WindowguideError("<bytes>: nested too deeply to read; refused") from None
        except Exception as e:
            raise WindowguideError(f"<bytes>: not a readable pickle ({type(e).__name__}: {e})") from None
    with opener(path_or_bytes, "rb") as f:
        try:
            return RestrictedUnpickler(f, allowed, str(path_or_bytes)).load()
        except WindowguideError:
            raise
        except RecursionError:
            raise WindowguideError(f"{path_or_bytes}: nested too deeply to read; refused") from None
        except Exception as e:   # truncated or not a pickle at all
            raise WindowguideError(f"{path_or_bytes}: not a readable pickle ({type(e).__name__}: {e})") from None


__all__ = ["safe_load", "RestrictedUnpickler", "NUMPY_GLOBALS", "check_tree", "PLAIN_DTYPES"]
