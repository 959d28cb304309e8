"""Benchmarks that print figures and write JSON reports."""
from __future__ import annotations

import os
from ..files import write_json


def write_report(report: dict, json_path: str | None) -> None:
    """Write a report as indented JSON (creating the folder); nothing when no path is given."""
    if not json_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    write_json(json_path, report)
