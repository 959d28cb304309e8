"""The one run folder every command that writes results uses (``sample``, ``panorama`` with or without
regions, ``upscale``, ``video``; the page runs the CLI's commands, so its runs are these folders too).

A folder holds the results of one recipe. ``claim`` is called after every input has been checked and
before anything is drawn: under the folder's lock it writes ``settings.json`` once, or compares the
folder's record with this run's and refuses, by name, another command's folder or any setting that
differs. The record carries fingerprints of everything that shapes the result besides the settings: the
model's files and each input file by content (the image to upscale, region masks), so a resume after
an edit under the same path is refused, naming the file. Results go through ``files.atomic_write``
(a unique temporary per write, a link at the target replaced and never written through); ``subfolder``
does the same for a folder of results; ``done`` tells a finished result from a missing or broken one,
which a resume draws again.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Callable

from ..errors import WindowguideError
from ..files import content_hash, fingerprint, locked, read_png, regular_file, remove_stale_temporaries, write_json

SETTINGS = "settings.json"


def _model_files(model) -> dict | None:
    """The fingerprint of the model named in the settings (a bundled name, a file, a folder)."""
    from ..models.checkpoint import resolve
    if not isinstance(model, str):
        return None
    if os.path.isdir(model) or os.path.isfile(model):
        return fingerprint(model)
    try:
        return fingerprint(resolve(model))
    except WindowguideError:
        return None


def input_hashes(inputs: dict[str, str] | None) -> dict[str, str]:
    """{name: content hash} of the input files that shape the result (each checked to be a regular file)."""
    return {name: content_hash(regular_file(path, name)) for name, path in sorted((inputs or {}).items())}


def region_inputs(regions: list[dict] | None) -> dict[str, str]:
    """{name: path} of the region masks among the regions' entries (recorded by content, not by path)."""
    return {f"region {i} mask": e["mask"] for i, e in enumerate(regions or []) if isinstance(e.get("mask"), str)}


def read_settings(out: str) -> dict | None:
    """The folder's settings record, None when there is none; a clear error for one that cannot be read
    (not a regular file, not JSON, not a record)."""
    path = os.path.join(out, SETTINGS)
    if not os.path.lexists(path):
        return None
    try:
        regular_file(path, SETTINGS)
        with open(path) as f:
            old = json.load(f)
    except WindowguideError as e:
        raise WindowguideError(f"{e}; remove it or choose another --out") from None
    except (OSError, ValueError):
        raise WindowguideError(f"{path} is not readable JSON; remove it or choose another --out") from None
    if not isinstance(old, dict):
        raise WindowguideError(f"{path} is not a settings record; remove it or choose another --out")
    return old


def claim(out: str, command: str, settings: dict, inputs: dict[str, str] | None = None) -> dict:
    """Write OUT/settings.json once, or check that the folder holds this command's results of this recipe,
    naming what differs; under the folder's lock, so concurrent runs agree. The record gets ``command``,
    the model's fingerprint (``files.fingerprint``) and the content hashes of ``inputs`` ({name: path}).
    Stale temporaries of a killed writer are removed. Returns the record."""
    record = {**settings, "command": command}
    files = _model_files(settings.get("model"))
    if files is not None:
        record["model_files"] = files
    if inputs:
        record["inputs"] = input_hashes(inputs)
    record = json.loads(json.dumps(record))
    with locked(out):
        remove_stale_temporaries(out)
        old = read_settings(out)
        if old is None:
            write_json(os.path.join(out, SETTINGS), record)
        else:
            _compare(out, command, old, record)
    return record


def _compare(out: str, command: str, old: dict, new: dict) -> None:
    """Refuse a folder of another command, of another network, of other inputs or other settings."""
    if "command" in old and old["command"] != command:
        raise WindowguideError(f"{out} holds the results of 'windowguide {old['command']}'; 'windowguide {command}' "
                               f"writes its own folder: choose another --out")
    if "model_files" in old and old.get("model_files") != new.get("model_files"):
        changed = _changed(old["model_files"] or {}, new.get("model_files") or {})
        raise WindowguideError(f"{out} holds samples of another network: the model's files changed since it was "
                               f"started ({changed}); choose another --out, or put the old model back")
    if "inputs" in old and old.get("inputs") != new.get("inputs"):
        changed = _changed(old["inputs"] or {}, new.get("inputs") or {})
        raise WindowguideError(f"{out} was made from other input files: {changed} changed since it was started; "
                               f"choose another --out, or put the old file back")
    old, new = dict(old), dict(new)
    for key in ("model_files", "inputs"):       # a folder of an earlier version has no fingerprint to compare
        old.pop(key, None)
        new.pop(key, None)
    if "command" not in old:                    # nor a command
        new.pop("command", None)
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        detail = "; ".join(f"{k}: {_short(old.get(k))} there, {_short(new.get(k))} now" for k in differ[:8])
        raise WindowguideError(f"{out} holds results made with other settings ({detail}); choose another --out or "
                               f"the same settings")


def _changed(was: dict, now: dict) -> str:
    keys = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")


def _short(value, limit: int = 80) -> str:
    """A value as quoted in a message, cut to ``limit`` characters (a message never echoes megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def subfolder(out: str, name: str) -> str:
    """OUT/NAME as a real folder of this run: a symbolic link planted there is removed (as ``atomic_write``
    replaces a link at a file's place), so results never land outside ``out``; stale temporaries cleaned."""
    path = os.path.join(out, name)
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    os.makedirs(path, exist_ok=True)
    remove_stale_temporaries(path)
    return path


def done(path: str, decodes: Callable[[str], object] = read_png) -> bool:
    """Whether a result is on disk as a regular file and decodes; a broken one is reported and drawn again."""
    if not os.path.lexists(path):
        return False
    if os.path.islink(path) or not os.path.isfile(path) or decodes(path) is None:
        warnings.warn(f"{path} does not decode; drawing it again", stacklevel=3)
        return False
    return True


__all__ = ["claim", "read_settings", "input_hashes", "region_inputs", "subfolder", "done", "SETTINGS"]
