"""Reading a dataset back: the committed cases for training, centroid files, and validation of the whole
folder (files, manifest and dataset.json agree)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import InputError
from ..io.summary import sha256_file
from .inputs import _read_markups_points
from .journal import recover_dataset
from .layout import CENTROIDS, DATASET_JSON, GEOMETRY_TOLERANCE_MM, IMAGES, LABELS, MANIFEST, ORIGINAL, STAGING_PREFIX, DatasetCase, PathLike, case_files, cases_on_disk
from .manifest import build_dataset_json, latest_entries, read_manifest


def iter_dataset_cases(dataset_dir: PathLike) -> Iterator[DatasetCase]:
    """The committed cases (newest version of each), in case-number order, for training.

    Interrupted exports are recovered first when the folder is writable; a read-only dataset is read as it is.
    """
    dataset = Path(dataset_dir)
    if not dataset.is_dir():
        raise InputError(f"{dataset}: no such dataset folder")
    with contextlib.suppress(PermissionError, OSError):
        recover_dataset(dataset)
    latest = latest_entries(read_manifest(dataset))
    for case_id in cases_on_disk(dataset):
        entry = latest.get(case_id)
        if entry is None:
            continue
        rels = case_files(case_id)
        optional = {role: dataset / rels[role] if (dataset / rels[role]).exists() else None
                    for role in ("centroids", "original")}
        yield DatasetCase(case_id, dataset / rels["image"], dataset / rels["label"], optional["centroids"],
                          entry, optional["original"])


def read_centroids(path: PathLike) -> list[tuple[str, np.ndarray]]:
    """(level, RAS mm) pairs of a dataset's centroids file (or any Slicer point list)."""
    return _read_markups_points(path)


def _header_geometry(path: Path) -> tuple[tuple, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(reader.GetDirection()).reshape(3, 3) * np.array(reader.GetSpacing())
    matrix[:3, 3] = reader.GetOrigin()
    return tuple(reader.GetSize()), matrix


def _case_problems(dataset: Path, case_id: str, entry: dict, check_hashes: bool) -> list[str]:
    problems = []
    for role, info in entry.get("files", {}).items():
        path = dataset / info["path"]
        if not path.exists():
            problems.append(f"{case_id}: {role} file {info['path']} is missing")
        elif check_hashes and sha256_file(path) != info.get("sha256"):
            problems.append(f"{case_id}: {role} file {info['path']} differs from what was exported (SHA-256)")
    for role in ("image", "label"):
        if role not in entry.get("files", {}):
            problems.append(f"{case_id}: manifest entry lists no {role} file")
    rels = case_files(case_id)
    if not problems:
        try:
            image, label = (_header_geometry(dataset / rels[r]) for r in ("image", "label"))
            if image[0] != label[0] or not np.allclose(image[1], label[1], atol=GEOMETRY_TOLERANCE_MM):
                problems.append(f"{case_id}: label geometry differs from the image")
        except RuntimeError:
            problems.append(f"{case_id}: image or label file is not readable")
    return problems


def validate_dataset(dataset_dir: PathLike, recover: bool = True, check_hashes: bool = True) -> list[str]:
    """Problems with a dataset folder, one line each ([] = images, labels, manifest and dataset.json agree).

    With ``recover`` (default) interrupted exports are rolled back first, as the next export would; with
    ``recover=False`` nothing is changed and pending ones are reported.
    """
    dataset = Path(dataset_dir)
    if not dataset.is_dir():
        return [f"{dataset}: no such folder"]
    problems = []
    if recover:
        recover_dataset(dataset)
    else:
        problems += [f"interrupted export pending recovery: {p.name}" for p in dataset.glob(STAGING_PREFIX + "*")]
    manifest = dataset / MANIFEST
    raw = manifest.read_bytes() if manifest.exists() else b""
    if raw and not raw.endswith(b"\n"):
        problems.append("manifest.jsonl ends with a torn line")
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
        try:
            entry = json.loads(line)
            assert isinstance(entry, dict) and {"case_id", "export_id", "files", "source_sha256"} <= entry.keys()
        except (ValueError, AssertionError):
            problems.append(f"manifest.jsonl line {number} is not a complete export record")
    latest = latest_entries(read_manifest(dataset))
    on_disk = cases_on_disk(dataset)
    for case_id in on_disk:
        if case_id not in latest:
            problems.append(f"{case_id}: files on disk without a manifest entry")
    for case_id, entry in latest.items():
        problems += _case_problems(dataset, case_id, entry, check_hashes)
    problems += _stray_files(dataset, set(on_disk))
    problems += _dataset_json_problems(dataset)
    return problems


def _stray_files(dataset: Path, cases: set[str]) -> list[str]:
    expected = {rel for case in cases for rel in case_files(case).values()}
    stray = []
    for folder in (IMAGES, LABELS, CENTROIDS, ORIGINAL):
        for path in sorted((dataset / folder).glob("*")):
            rel = f"{folder}/{path.name}"
            if rel not in expected:
                stray.append(f"{rel}: not part of any case (an image without label, or an unknown file)")
    return stray


def _dataset_json_problems(dataset: Path) -> list[str]:
    path = dataset / DATASET_JSON
    if not path.exists():
        return ["dataset.json is missing"] if (dataset / MANIFEST).exists() else []
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return ["dataset.json is not valid JSON"]
    expected = build_dataset_json(dataset)
    problems = [f"dataset.json field {key!r} is {content.get(key)!r}, expected {expected[key]!r}"
                for key in ("channel_names", "labels", "numTraining", "file_ending") if content.get(key) != expected[key]]
    if content.get("spinelabel") != expected["spinelabel"] and not problems:
        problems.append("dataset.json 'spinelabel' block does not match the files on disk")
    return problems
