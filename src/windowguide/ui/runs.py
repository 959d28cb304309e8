"""The page's work as plain functions: every result is made by the CLI's own code path (the same argument
parser and command) in a fresh folder of its own, so the page's images are the CLI's bit for bit, two
tabs never share a folder, and each result carries the command that reproduces it."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import WindowguideError


@dataclass
class Result:
    """One run: its images (uint8 HWC, by seed), the command line, the folder, the settings."""
    command: str
    images: list[np.ndarray]
    seeds: list[int]
    folder: str
    settings: dict = field(default_factory=dict)


_ACTIVE: set = set()            # the page's running jobs (one at a time: the app's queue), for Stop
_LOCK = threading.Lock()
_PERCENT = re.compile(r"(?:^|\s)(?:(?P<desc>[^\r\n:]+): )?\s*(?P<pct>\d{1,3})%\|")


_REPORT = threading.local()


@contextlib.contextmanager
def reporting(progress: Callable[[float, str], None]):
    """Within the block, this thread's runs report their progress bars to ``progress(fraction, what)``."""
    _REPORT.fn = progress
    try:
        yield
    finally:
        _REPORT.fn = None


def cli(argv: list[str], progress: Callable[[float, str], None] | None = None) -> None:
    """Run a windowguide command as a child process (``python -m windowguide ...``), so that ``stop``
    ends it; its progress bars are passed to ``progress(fraction, what)``. Bad input raises
    ``WindowguideError`` with the CLI's message (argparse's too), a failed run ``RunError``."""
    proc = subprocess.Popen([sys.executable, "-m", "windowguide", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    progress = progress or getattr(_REPORT, "fn", None)
    with _LOCK:
        _ACTIVE.add(proc)
    lines = []
    try:
        for line in _segments(proc.stderr):
            lines.append(line)
            m = _PERCENT.search(line)
            if m and progress is not None:
                progress(min(int(m.group("pct")), 100) / 100, (m.group("desc") or "").strip())
        proc.wait()
    finally:
        with _LOCK:
            _ACTIVE.discard(proc)
    _raise_for(proc.returncode, lines, argv)


def _segments(stream):
    """The text of a stream cut at carriage returns and newlines (a progress bar redraws with \\r)."""
    part = ""
    for chunk in iter(lambda: stream.read(256), ""):
        part += chunk
        *done, part = re.split(r"[\r\n]", part)
        yield from (d for d in done if d.strip())
    if part.strip():
        yield part


def _raise_for(code: int, lines: list[str], argv: list[str]) -> None:
    """The child's end as this process's exception: stopped, bad input (exit 2) or a failed run."""
    from ..errors import RunError
    if code == 0:
        return
    if code < 0:
        raise WindowguideError("stopped")
    said = [l for l in lines if "error:" in l or "failed:" in l]
    message = (said[-1] if said else (lines[-1] if lines else f"exit status {code}")).strip()
    message = re.sub(r"^windowguide( \w+)?: (error: )?", "", message)
    raise (WindowguideError if code == 2 else RunError)(message)


def stop() -> int:
    """End every running page job (its whole process group); returns how many were running."""
    with _LOCK:
        running = list(_ACTIVE)
    for proc in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return len(running)


def command_line(argv: list[str]) -> str:
    """The shell command of an argument list, without the run's own --out folder."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        shown.append(a)
    return "windowguide " + " ".join(shlex.quote(a) for a in shown)


def _run(argv: list[str], root: str | None, pattern: str, progress=None) -> Result:
    """Run the command into a fresh folder, read its PNGs and settings, and remove the folder (the page
    keeps what it shows in memory; a stopped or failed run's folder goes too)."""
    import shutil
    from ..files import read_png
    folder = tempfile.mkdtemp(prefix="wg-ui-", dir=root)
    try:
        cli(argv + ["--out", folder], progress)
        rx = re.compile(pattern)
        names = sorted((n for n in os.listdir(folder) if rx.match(n)), key=lambda n: int(rx.match(n).group(1)))
        settings = {}
        if os.path.exists(os.path.join(folder, "settings.json")):
            with open(os.path.join(folder, "settings.json")) as f:
                settings = json.load(f)
        return Result(command_line(argv), [read_png(os.path.join(folder, n)) for n in names],
                      [int(rx.match(n).group(1)) for n in names], folder, settings)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sample(model: str, guidance: str, seeds: str, steps: int, sampler: str, klass: str | None = None,
           prompt: str | None = None, root: str | None = None, progress=None) -> Result:
    """``windowguide sample --model M --guidance G --seeds S --steps N --sampler X [--class K | --prompt P]``."""
    argv = ["sample", "--model", model, "--guidance", guidance or "none", "--seeds", str(seeds), "--steps",
            str(int(steps)), "--sampler", sampler]
    if klass not in (None, ""):
        argv += ["--class", str(klass)]
    if prompt:
        argv += ["--prompt", prompt]
    return _run(argv, root, r"^(\d+)\.png$", progress)


def panorama(model: str, width: int, stride: int, mode: str, sampler: str, steps: int, seeds: str,
             guidance: str = "none", vcf: bool = False, style_alpha: float = 0.0, circular: bool = False,
             klass: str | None = None, prompt: str | None = None, root: str | None = None,
             progress=None) -> Result:
    """``windowguide panorama --model M --width W --stride S --mode F --sampler X ...``."""
    argv = ["panorama", "--model", model, "--width", str(int(width)), "--stride", str(int(stride)), "--mode", mode,
            "--sampler", sampler, "--steps", str(int(steps)), "--seeds", str(seeds), "--guidance", guidance or "none"]
    if vcf:
        argv.append("--vcf")
    if style_alpha:
        argv += ["--style-alpha", f"{float(style_alpha):g}"]
    if circular:
        argv.append("--circular")
    if klass not in (None, ""):
        argv += ["--class", str(klass)]
    if prompt:
        argv += ["--prompt", prompt]
    return _run(argv, root, r"^panorama_(\d+)\.png$", progress)


def python_recipe(result: Result) -> str:
    """The Python that reproduces a page run of a bundled / EDM model bit for bit: the CLI's own model and
    SPEC loading (``commands.common.prepare``), its labels per seed and its schedule, then ``wg.sample`` or
    ``wg.panorama``; it ends with the uint8 images the CLI writes as PNGs."""
    s = result.settings
    klass = s.get("klass")
    head = ("import torch\nimport windowguide as wg\nfrom windowguide.commands.common import labels_for, prepare\n"
            "from windowguide.images import to_uint8\n\n"
            f"denoiser, net, info, guidance = prepare({s.get('model', 'mirror')!r}, {s.get('guidance', 'none')!r})\n"
            f"seeds = {list(result.seeds)}\n"
            f"cond = labels_for(seeds, net.num_classes, {klass!r})\n")
    if s.get("canvas"):
        c, h, w = s["canvas"]
        call = (f"x = wg.panorama(denoiser, ({c}, {h}, {w}), seeds, window={tuple(s['window'])}, stride={s['stride']}, "
                f"mode={s['mode']!r}, fuse={s.get('fuse')!r},\n"
                f"                    sampler={s['sampler']!r}, sigmas=wg.sampling.karras_sigmas({s['steps']}, 0.002, 80.0), "
                f"guidance=guidance, cond=cond,\n"
                f"                    vcf={s['vcf']}, style_alpha={s['style_alpha']}, circular={s['circular']}, "
                f"max_batch={s.get('max_batch')}{_options(s)})\n")
    else:
        call = (f"x = wg.sample(denoiser, info['shape'], seeds, steps={s['steps']}, sampler={s['sampler']!r}, "
                f"guidance=guidance, cond=cond{_options(s)})\n")
    return head + "with torch.no_grad():\n    " + call + "images = to_uint8(x)          # uint8 [N, H, W, C]: the CLI's PNGs\n"


def _options(settings: dict) -> str:
    return "".join(f", {k}={v!r}" for k, v in sorted((settings.get("sampler_options") or {}).items()))


def bundle(results: list[Result], labels: list[str], root: str | None = None) -> str:
    """A zip of every result's PNGs and one settings.json (labels, commands, settings); returns its path."""
    from ..files import write_png
    _forget_old_zips(root)
    folder = tempfile.mkdtemp(prefix="wg-ui-zip-", dir=root)
    path = os.path.join(folder, "windowguide_results.zip")
    with zipfile.ZipFile(path, "w") as z:
        for i, (label, r) in enumerate(zip(labels, results)):
            for seed, im in zip(r.seeds, r.images):
                buf = os.path.join(folder, "tmp.png")
                write_png(im, buf)
                z.write(buf, f"{i:02d}_{_slug(label)}/{seed:06d}.png")
        z.writestr("settings.json", json.dumps([dict(label=l, command=r.command, settings=r.settings)
                                                for l, r in zip(labels, results)], indent=1))
    return path


KEEP_ZIPS = 8          # the page offers the latest results' zips; older ones are removed


def _forget_old_zips(root: str | None) -> None:
    import glob
    import shutil
    folders = sorted(glob.glob(os.path.join(root or tempfile.gettempdir(), "wg-ui-zip-*")), key=os.path.getmtime)
    for old in folders[:-KEEP_ZIPS]:
        shutil.rmtree(old, ignore_errors=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in text)[:60]


__all__ = ["Result", "cli", "stop", "reporting", "command_line", "sample", "panorama", "python_recipe", "bundle"]
