"""``windowguide bench demo``: the README's first command timed as a new user meets it.

``windowguide demo`` runs as a fresh process (interpreter start, imports, model and classifier load
included) ``repeats`` times, alone and beside one single-threaded busy loop (another job on a 2-core
machine); reported: the median and the largest wall time, the time to the first progress line (what
is computed and how long is left) and to the first method's figures, and the CPU threads the demo chose.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

_BUSY = "while True: pass"


def _one(out: str) -> dict:
    """One fresh ``python -m windowguide demo``: wall time, first progress and first figures."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "windowguide", "demo", "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    marks: dict = {}

    def watch(stream, name):
        text = []
        for chunk in iter(lambda: stream.read(1), ""):
            text.append(chunk)
            if "progress_s" not in marks and "left" in "".join(text[-8:]):
                marks["progress_s"] = time.perf_counter() - t0
            if "figures_s" not in marks and "asymmetry" in "".join(text[-12:]):
                marks["figures_s"] = time.perf_counter() - t0
        marks[name] = "".join(text)

    readers = [threading.Thread(target=watch, args=(proc.stdout, "stdout")),
               threading.Thread(target=watch, args=(proc.stderr, "stderr"))]
    for r in readers:
        r.start()
    proc.wait()
    for r in readers:
        r.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"windowguide demo failed ({proc.returncode}): {marks.get('stderr', '')[-500:]}")
    threads = re.search(r"(\d+) CPU thread", marks["stdout"])
    return dict(wall_s=wall, progress_s=marks.get("progress_s"), figures_s=marks.get("figures_s"),
                threads=int(threads.group(1)) if threads else None)


def run(json_path: str | None = None, repeats: int = 3, loads: tuple[int, ...] = (0, 1)) -> dict:
    """Time the demo ``repeats`` times with 0 and with 1 busy process beside it."""
    scratch = tempfile.mkdtemp(prefix="wg-bench-demo-")
    rows = []
    try:
        for load in loads:
            busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(load)]
            try:
                runs = [_one(os.path.join(scratch, f"{load}-{i}")) for i in range(repeats)]
            finally:
                for p in busy:
                    p.kill()
                    p.wait()
            walls = sorted(r["wall_s"] for r in runs)
            rows.append(dict(busy_processes=load, runs=runs, median_s=walls[len(walls) // 2], max_s=walls[-1]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = dict(cpus=os.cpu_count(), repeats=repeats, date=time.strftime("%Y-%m-%d"), rows=rows)
    if json_path:
        from ..files import write_json
        write_json(json_path, report)
    return report


def format_report(report: dict) -> str:
    lines = [f"windowguide demo as a fresh process, {report['repeats']} runs per row, {report['cpus']} CPUs, "
             f"{report['date']}",
             f"{'busy processes beside it':>26s} {'median s':>9s} {'max s':>7s} {'first progress s':>17s} "
             f"{'first figures s':>16s} {'threads':>8s}"]
    for r in report["rows"]:
        first = max((x["progress_s"] or float("nan")) for x in r["runs"])
        figs = max((x["figures_s"] or float("nan")) for x in r["runs"])
        lines.append(f"{r['busy_processes']:>26d} {r['median_s']:9.1f} {r['max_s']:7.1f} {first:17.1f} "
                     f"{figs:16.1f} {r['runs'][0]['threads']!s:>8s}")
    lines.append("(first progress / first figures: the largest over the runs)")
    return "\n".join(lines)


__all__ = ["run", "format_report"]
