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
import re
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
    if not isinstance(out, str) or not out.strip():
        raise WindowguideError(f"{flag} {out!r}: empty; give a folder (new or existing)")
    if os.path.islink(out.rstrip("/")) and not os.path.exists(out):
        raise WindowguideError(f"{flag} {out}: a symbolic link to nothing; give a folder")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise WindowguideError(f"{flag} {out}: exists and is not a folder; give a folder (new or existing)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise WindowguideError(f"{flag} {out}: the folder is not writable")
        return out
    if os.path.exists(out.rstrip("/") or "/"):            # 'FILE/' names a file as if it were a folder
        raise WindowguideError(f"{flag} {out}: {out.rstrip('/')} exists and is not a folder; give a folder")
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


STALE_TMP_S = 15 * 60     # a temporary of ours this old is left by a killed writer (a write takes seconds)
_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")       # atomic_write's mkstemp names


def remove_stale_temporaries(folder: str, age_s: float = STALE_TMP_S) -> list[str]:
    """Delete this project's own temporaries (``.NAME.XXXXXXXX.tmp``) older than ``age_s`` in ``folder``:
    what a writer killed mid-write (SIGKILL) leaves; a live writer's are younger and kept."""
    import time
    removed = []
    if not os.path.isdir(folder):
        return removed
    now = time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if _TMP.match(name) and os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(OSError):
                if now - os.path.getmtime(path) > age_s:
                    os.unlink(path)
                    removed.append(path)
    return removed


def _hash_file(path: str, limit: int = 1 << 24) -> str:
    """sha256 of a small file, or for a safetensors / large file of its size, header and last bytes."""
    import hashlib
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= limit:
            h.update(f.read())
        else:                                  # safetensors: the header names every tensor, dtype and offset
            head = f.read(8)
            n = int.from_bytes(head, "little") if path.endswith(".safetensors") else 0
            h.update(head + f.read(min(n, 1 << 26) if 0 < n < size else 1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()[:16]


def fingerprint(path: str) -> dict[str, str]:
    """{file: hash} of a model file or of every file in a model folder (relative names), so that a
    resumed run can tell that the network changed under the same path, and say which file did."""
    if os.path.isfile(path):
        return {os.path.basename(path): _hash_file(path)}
    out = {}
    for d, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(d, name)
            if name.startswith(".") or not os.path.isfile(full):
                continue
            out[os.path.relpath(full, path)] = _hash_file(full)
    return out


def regular_file(path: str, what: str = "the file") -> str:
    """``path`` when it is a regular file (a link to one is fine); a FIFO, a device, a folder or nothing is
    refused by name before it is opened, since opening a FIFO blocks forever."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise WindowguideError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise WindowguideError(f"{what} {path}: {kind}; accepted: a regular file")
    return path


def content_hash(path: str) -> str:
    """sha256 of a file's whole content (input images, masks: what shapes a result, by content)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


__all__ = ["atomic_write", "write_bytes", "write_json", "write_npz", "write_png", "read_png", "check_out_dir",
           "locked", "fingerprint", "remove_stale_temporaries", "regular_file", "content_hash"]


def pretrained_dir(folder: str | None, env: str) -> tuple[str | None, str | None]:
    """(``folder`` or $env, None) when it is a saved Hugging Face model folder (has config.json), else
    (folder, what is wrong) for the caller's error message: windowguide never downloads weights."""
    folder = folder or os.environ.get(env)
    if not folder:
        return None, "no folder was given"
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return folder, f"{folder!r} holds no config.json"
    return folder, None

