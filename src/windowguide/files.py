"""Writing files so that nothing is ever half-written, and folders that several processes can share.

Every file the project writes goes through ``atomic_write``: the bytes go to a unique temporary name
in the same folder, and ``os.replace`` renames it over the target. A reader (or a resumed run) sees
either the old file or the whole new one, never a truncated one, whatever kills the writer. The new
file gets the permissions the umask allows (as ``open`` would), and a symbolic link at the target is
replaced, never written through.

``locked(folder)`` serialises the short read-modify-write sections of processes that share an output
folder (the settings record, the rebuilt ``samples.npz``), with an advisory ``fcntl`` lock.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import numpy as np

from .errors import WindowguideError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = True) -> str:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a normal file follows the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str, obj: Any) -> str:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=1), binary=False)


def write_npz(path: str, **arrays: np.ndarray) -> str:
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def write_png(array: np.ndarray, path: str) -> str:
    """An [H, W, C] uint8 array (C = 1 or 3) as PNG, atomically."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def read_png(path: str) -> np.ndarray | None:
    """[H, W, C] uint8 of a PNG, or None when the file does not decode (truncated, corrupt)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im)
    except (OSError, SyntaxError, ValueError):
        return None
    return a[..., None] if a.ndim == 2 else a


def check_out_dir(out: str, flag: str = "--out") -> str:
    """Refuse an output folder that cannot be one, before any work: an existing file, a dangling
    symbolic link, or a place we may not write. Creates nothing."""
    if os.path.islink(out) and not os.path.exists(out):
        raise WindowguideError(f"{flag} {out}: a symbolic link to nothing; give a folder")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise WindowguideError(f"{flag} {out}: exists and is not a folder; give a folder (new or existing)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise WindowguideError(f"{flag} {out}: the folder is not writable")
        return out
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise WindowguideError(f"{flag} {out}: cannot create it ({parent} is not a writable folder)")
    return out


@contextlib.contextmanager
def locked(folder: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (its ``.lock`` file) for a short section."""
    import fcntl
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


__all__ = ["atomic_write", "write_bytes", "write_json", "write_npz", "write_png", "read_png", "check_out_dir",
           "locked"]


def pretrained_dir(folder: str | None, env: str) -> tuple[str | None, str | None]:
    """(``folder`` or $env, None) when it is a saved Hugging Face model folder (has config.json), else
    (folder, what is wrong) for the caller's error message: windowguide never downloads weights."""
    folder = folder or os.environ.get(env)
    if not folder:
        return None, "no folder was given"
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return folder, f"{folder!r} holds no config.json"
    return folder, None

