"""Shared by the bench scripts: write the JSON report to a file under bench/out and print it."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, path: str | Path) -> None:
    text = json.dumps(report, indent=1, default=float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
