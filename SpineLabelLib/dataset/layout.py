"""Layout of a dataset folder: file and folder names, generated case ids, the records callers and
training receive, and which cases are on disk."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

CASE_PREFIX = "spl_"
FILE_ENDING = ".nii.gz"
IMAGES, LABELS, CENTROIDS, ORIGINAL, HISTORY = "imagesTr", "labelsTr", "centroids", "original", "history"
MANIFEST, DATASET_JSON, LOCK_NAME, STAGING_PREFIX = "manifest.jsonl", "dataset.json", ".lock", ".staging-"
GEOMETRY_TOLERANCE_MM = 1e-3
FORMAT_VERSION = 1
_CASE_RE = re.compile(rf"^{CASE_PREFIX}(\d+)$")
_ROLES = ("image", "label", "centroids", "original")
PathLike = str | os.PathLike


@dataclass
class DatasetCase:
    """One case of a dataset as training reads it (paths absolute; centroids/original may be None)."""

    case_id: str
    image_path: Path
    label_path: Path
    centroids_path: Path | None
    manifest_entry: dict
    original_path: Path | None = None


@dataclass
class ExportRecord:
    """What an export wrote: the generated case id and the absolute paths of its files."""

    case_id: str
    paths: dict[str, Path]
    manifest_entry: dict = field(default_factory=dict)


def case_files(case_id: str) -> dict[str, str]:
    """Dataset-relative paths of a case's files, by role."""
    return {"image": f"{IMAGES}/{case_id}_0000{FILE_ENDING}", "label": f"{LABELS}/{case_id}{FILE_ENDING}",
            "centroids": f"{CENTROIDS}/{case_id}.mrk.json", "original": f"{ORIGINAL}/{case_id}{FILE_ENDING}"}


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cases_on_disk(dataset_dir: PathLike) -> list[str]:
    """Case ids with both an image and a label file, in number order."""
    dataset = Path(dataset_dir)
    images = {p.name[: -len("_0000" + FILE_ENDING)] for p in (dataset / IMAGES).glob(f"*_0000{FILE_ENDING}")}
    labels = {p.name[: -len(FILE_ENDING)] for p in (dataset / LABELS).glob(f"*{FILE_ENDING}")}
    return sorted(images & labels, key=_case_sort_key)


def _case_sort_key(case_id: str) -> tuple[int, str]:
    match = _CASE_RE.match(case_id)
    return (int(match.group(1)) if match else 1 << 62, case_id)
