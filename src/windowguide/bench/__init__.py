"""Benchmarks that print figures and write JSON reports."""
from __future__ import annotations

import json
import os


def write_report(report: dict, json_path: str | None) -> None:
    """Write a report as indented JSON (creating the folder); nothing when no path is given."""
    if not json_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
