"""manifest.jsonl (append-only, one line per export: the commit record) and dataset.json (nnU-Net v2
fields, rebuilt from the files on disk)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Sequence

from ..core import anatomy, discs
from ..core.paths import atomic_write_text
from .layout import CENTROIDS, DATASET_JSON, FILE_ENDING, FORMAT_VERSION, HISTORY, IMAGES, LABELS, MANIFEST, ORIGINAL, PathLike, cases_on_disk


# --- manifest -----------------------------------------------------------------------------
def read_manifest(dataset_dir: PathLike) -> list[dict]:
    """Every complete manifest line, oldest first (a torn last line of a crashed export is skipped)."""
    path = Path(dataset_dir) / MANIFEST
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):
            if line.strip():
                entries.append(json.loads(line))
    return [e for e in entries if isinstance(e, dict) and "case_id" in e]


def latest_entries(entries: Sequence[dict]) -> dict[str, dict]:
    """Case id -> its newest manifest entry (a replaced case has several)."""
    return {e["case_id"]: e for e in entries}


def _append_manifest(dataset: Path, entry: dict) -> None:
    """One write of one complete line, then fsync: the export's commit point."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(dataset / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_manifest_tail(dataset: Path) -> bool:
    """Cut a torn last line (never committed) so the next line does not glue onto it."""
    path = dataset / MANIFEST
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    with open(path, "r+b") as stream:
        stream.truncate(data.rfind(b"\n") + 1)
        stream.flush()
        os.fsync(stream.fileno())
    return True


# --- dataset.json -------------------------------------------------------------------------
def nnunet_labels() -> dict[str, int]:
    """All levels with their VerSe codes, 27 (coccyx) filling the gap nnU-Net does not allow; then the
    discs at 100 + the code of the vertebra above ("L4-L5" 123; where two discs share a value, L5-L6
    and L5-S1, the usual one names it), the values between listed as unused so labels stay consecutive."""
    labels = {"background": 0, **{name: anatomy.code_of(name) for name in anatomy.ORDER}, "Co": 27}
    by_value: dict[int, str] = {}
    for upper in anatomy.ORDER:
        for below in [n for n in anatomy.ORDER if discs.is_adjacent(upper, n)]:
            value = discs.label_of(f"{upper}-{below}")
            if value not in by_value or below not in anatomy.TRANSITIONAL:
                by_value[value] = f"{upper}-{below}"
    top = max(by_value)
    for value in range(max(labels.values()) + 1, top + 1):
        labels[by_value.get(value, f"unused_{value}")] = value
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def build_dataset_json(dataset_dir: PathLike) -> dict:
    """dataset.json content from the files on disk and their manifest entries (no timestamps: rebuilding is idempotent)."""
    cases = cases_on_disk(dataset_dir)
    latest = latest_entries(read_manifest(dataset_dir))
    modalities = sorted({latest.get(c, {}).get("modality", "unknown") for c in cases})
    channel = {"ct": "CT", "mr": "MRI"}.get(modalities[0], "image") if len(modalities) == 1 else "image"
    present: dict[str, int] = {}
    for case in cases:
        for level in latest.get(case, {}).get("levels", []):
            present[level] = present.get(level, 0) + 1
    from .. import __version__
    return {
        "name": "SpineLabel corrected cases",
        "description": "Vertebral bodies labelled with VerSe level codes, exported by SpineLabel after correction",
        "channel_names": {"0": channel},   # "CT" selects nnU-Net's CT normalisation, anything else z-score
        "labels": nnunet_labels(),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "spinelabel": {
            "format_version": FORMAT_VERSION, "spinelabel_version": __version__,
            "level_codes": "VerSe: C1-C7 = 1-7, T1-T12 = 8-19, L1-L5 = 20-24, L6 = 25, S1 = 26, T13 = 28; "
                           "27 (Co) listed only to keep labels consecutive",
            "labels_policy": "all levels and discs, whether present or not",
            "disc_labels": "100 + the VerSe code of the vertebra above (L4-L5 = 123, L5-S1 = 124); values 29-100, "
                           "101, 126 and 127 (no disc below C1, S1 or Co) are unused, listed only because nnU-Net v2 "
                           "requires consecutive labels (label values are SpineLabel's own, no remapping)",
            "levels_present": {n: present[n] for n in anatomy.ORDER if n in present},
            "modalities": modalities,
            "cases": cases,
            "folders": {"images": IMAGES, "labels": LABELS, "centroids": CENTROIDS, "original": ORIGINAL,
                        "history": HISTORY},
            "manifest": MANIFEST,
        },
    }


def _write_dataset_json(dataset: Path) -> None:
    text = json.dumps(build_dataset_json(dataset), indent=2) + "\n"
    path = dataset / DATASET_JSON
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
