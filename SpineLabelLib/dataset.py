"""Training-set export: corrected cases into an nnU-Net-style dataset folder, without ever losing data.

Layout of a dataset folder (all names generated; nothing from the patient or the input file name):

    imagesTr/spl_0001_0000.nii.gz   the image (input grid, input voxel type)
    labelsTr/spl_0001.nii.gz        level codes (VerSe, uint8) on exactly the image grid
    centroids/spl_0001.mrk.json     Slicer markups point list, labels = level names (LPS on disk)
    original/spl_0001.nii.gz        the model's label map before correction (when given)
    history/spl_0001/<UTC time>/    previous versions moved aside by ``replace=True``
    manifest.jsonl                  append-only, one JSON line per export (the commit record)
    dataset.json                    nnU-Net v2 fields + a "spinelabel" block, rebuilt from disk
    .lock                           exclusive lock file (fcntl.flock; see `dataset_lock`)

``dataset.json`` lists *all* levels, not only those present: nnU-Net v2 requires label values
0, 1, 2, ... without gaps, and the VerSe codes skip 27 (coccyx, never written by SpineLabel), so
27 is listed as "Co" to keep them consecutive; a fixed list also keeps a model's output channels the
same whatever levels the site's cases happen to contain. Levels present are counted in the
"spinelabel" block.

Manifest line (JSON): export_id, case_id, exported_utc, spinelabel_version, source_sha256 and
source_hashed ("file", "dicom-series" = `summary.sha256_file` of the folder, or "voxels" for an
in-memory image), modality, models [{name, version, sha256, ...}], levels, corrections {basis ("label
maps" | "correction record" | "none"), relabelled [{from, to}], added, deleted, voxels_changed {level:
n}, voxels_changed_total, actions (the record reduced to action names, level names and counts)},
centroids_from ("given" | "label map"), files {role: {path, sha256}}, image_geometry, and
replaced_previous ({export_id, exported_utc, history} or null). Never a patient name, id, date or
input path: the input is identified by its SHA-256 only. The newest line of a case id wins.

Safety. Every export holds an exclusive lock for its whole duration, reads and checks all inputs
before touching the dataset, writes every file into a hidden ``.staging-*`` folder inside the
dataset with an ``intent.json`` journal, then moves files into place with ``os.replace``; the
manifest line (written with one ``write`` + fsync) is the commit point. A crash before it is rolled
back by `recover_dataset`, which every export, `validate_dataset` and `iter_dataset_cases` run first:
files placed by the interrupted export are removed and previous versions moved back from history.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import anatomy
from .errors import InputError, SpineLabelError
from .markups import markups_dict, read_markups
from .paths import atomic_write_text
from .result import Vertebra
from .summary import sha256_file
from .volume import Volume, load_volume, save_volume, validate

try:  # POSIX; absent on Windows (Slicer there), where an O_EXCL lock file is used instead
    import fcntl
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    fcntl = None

CASE_PREFIX = "spl_"
FILE_ENDING = ".nii.gz"
IMAGES, LABELS, CENTROIDS, ORIGINAL, HISTORY = "imagesTr", "labelsTr", "centroids", "original", "history"
MANIFEST, DATASET_JSON, LOCK_NAME, STAGING_PREFIX = "manifest.jsonl", "dataset.json", ".lock", ".staging-"
INTENT = "intent.json"
LOCK_TIMEOUT_S = 120.0
STALE_EXCL_LOCK_S = 3600.0          # O_EXCL fallback only: a lock file older than this is a crashed export
CRASH_ENV = "SPINELABEL_TEST_CRASH_AT"  # test hook: os._exit() at a named point of the commit
GEOMETRY_TOLERANCE_MM = 1e-3
FORMAT_VERSION = 1
_CASE_RE = re.compile(rf"^{CASE_PREFIX}(\d+)$")
_ROLES = ("image", "label", "centroids", "original")


class DatasetLockedError(SpineLabelError):
    """Another export holds the dataset lock for longer than the timeout."""


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


# --- names --------------------------------------------------------------------------------
def case_files(case_id: str) -> dict[str, str]:
    """Dataset-relative paths of a case's files, by role."""
    return {"image": f"{IMAGES}/{case_id}_0000{FILE_ENDING}", "label": f"{LABELS}/{case_id}{FILE_ENDING}",
            "centroids": f"{CENTROIDS}/{case_id}.mrk.json", "original": f"{ORIGINAL}/{case_id}{FILE_ENDING}"}


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crash_point(name: str) -> None:
    """Test hook: simulate a killed process at a named point (no cleanup, no exception handlers)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(97)


# --- hashing ------------------------------------------------------------------------------
def source_sha256(path: str | os.PathLike) -> tuple[str, str]:
    """(SHA-256, what was hashed) of an input, as the run summary computes it (a DICOM folder: its files)."""
    return sha256_file(path), ("dicom-series" if Path(path).is_dir() else "file")


def _voxel_sha256(volume: Volume) -> str:
    """Hash of voxels and geometry, for images that reach us without a source file."""
    digest = hashlib.sha256()
    digest.update(str((volume.array.dtype.str, volume.array.shape)).encode())
    digest.update(np.round(volume.ijk_to_ras, 4).tobytes())
    digest.update(np.ascontiguousarray(volume.array).tobytes())
    return digest.hexdigest()


# --- lock ---------------------------------------------------------------------------------
@contextlib.contextmanager
def dataset_lock(dataset_dir: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S):
    """Exclusive lock on a dataset folder, waiting up to ``timeout`` seconds.

    POSIX: ``fcntl.flock`` on ``<dataset>/.lock`` (released by the kernel when the process dies, so a
    killed export never blocks the next). Without fcntl (Windows): a ``.lock.excl`` file created
    with O_EXCL and removed on exit; one left by a killed process is taken over after
    STALE_EXCL_LOCK_S seconds (Windows offers no safe liveness test for another pid).
    """
    dataset = Path(dataset_dir)
    if fcntl is not None:
        fd = os.open(dataset / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait_for(lambda: _try_flock(fd), timeout, dataset)
            yield
        finally:
            os.close(fd)   # closing the descriptor releases the flock
        return
    excl = dataset / (LOCK_NAME + ".excl")
    _wait_for(lambda: _try_create_exclusive(excl), timeout, dataset)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            excl.unlink()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _try_create_exclusive(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > STALE_EXCL_LOCK_S:
                path.unlink()
        return False
    os.write(fd, f"{os.getpid()} {_utc_now()}\n".encode())
    os.close(fd)
    return True


def _wait_for(try_once, timeout: float, dataset: Path) -> None:
    deadline = time.monotonic() + timeout
    while not try_once():
        if time.monotonic() >= deadline:
            raise DatasetLockedError(f"{dataset}: another export is running (lock not free after {timeout:g} s)")
        time.sleep(0.05)


# --- reading inputs -----------------------------------------------------------------------
PathLike = str | os.PathLike


def _load_image(image: Volume | PathLike) -> tuple[Volume, str, str]:
    """The image volume and (SHA-256, what was hashed) of its source."""
    if isinstance(image, Volume):
        volume = validate(image, "image")
        if volume.metadata.get("source_sha256"):      # hashed by the pipeline when it read the file
            return volume, str(volume.metadata["source_sha256"]), "file"
        source = volume.metadata.get("source")
        if source and Path(source).exists():
            return volume, *source_sha256(source)
        return volume, _voxel_sha256(volume), "voxels"
    return load_volume(image), *source_sha256(image)


def _as_level_codes(array: np.ndarray, what: str, allow_empty: bool) -> np.ndarray:
    """uint8 level codes, or one InputError line naming the offending values."""
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)) \
                or np.any(array != np.round(array)):
            raise InputError(f"{what}: voxel values must be whole-number level codes, got {array.dtype} values")
    values = np.unique(array)
    invalid = [v for v in values.tolist() if v != 0 and int(v) not in anatomy.NAME_BY_CODE]
    if invalid:
        shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in invalid[:6])
        raise InputError(f"{what}: values {shown} are not vertebral level codes (VerSe: C1=1 ... L5=24, L6=25, "
                         "S1=26, T13=28)")
    if not allow_empty and not np.any(values != 0):
        raise InputError(f"{what}: holds no vertebra (every voxel is 0)")
    return array.astype(np.uint8)


def _read_seg_nrrd(path: Path) -> Volume:
    """A .seg.nrrd as a level-code Volume on the file's own grid (segments named by level)."""
    from .segfile import read_seg_nrrd

    return read_seg_nrrd(path)[0]


def _embed_cropped(label: Volume, image: Volume) -> Volume | None:
    """Slicer may crop a .seg.nrrd to its extent: put it back on the image grid when it is a sub-grid."""
    if not np.allclose(label.ijk_to_ras[:3, :3], image.ijk_to_ras[:3, :3], atol=GEOMETRY_TOLERANCE_MM):
        return None
    offset = image.ras_to_kji(label.origin)[0]
    start = np.round(offset).astype(int)
    stop = start + np.array(label.array.shape)
    if np.any(np.abs(offset - start) * image.spacing[::-1] > GEOMETRY_TOLERANCE_MM) or np.any(start < 0) \
            or np.any(stop > np.array(image.array.shape)):
        return None
    full = np.zeros(image.array.shape, dtype=label.array.dtype)
    full[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = label.array
    return image.with_array(full)


def _load_label_map(labels: Volume | PathLike, image: Volume, what: str, allow_empty: bool) -> np.ndarray:
    """Level codes on the image grid; geometry must match within GEOMETRY_TOLERANCE_MM."""
    from_seg = False
    if isinstance(labels, Volume):
        volume = labels
    elif str(labels).lower().endswith(".seg.nrrd"):
        volume, from_seg = _read_seg_nrrd(Path(labels)), True
    else:
        volume = load_volume(labels, check_values=False)
    if not volume.same_grid(image, GEOMETRY_TOLERANCE_MM):
        embedded = _embed_cropped(volume, image) if from_seg else None
        if embedded is None:
            difference = np.abs(volume.ijk_to_ras - image.ijk_to_ras).max() \
                if volume.array.shape == image.array.shape else float("nan")
            raise InputError(f"{what} geometry does not match the image (shape {volume.shape_ijk} vs "
                             f"{image.shape_ijk}, largest matrix difference {difference:.4g} mm)")
        volume = embedded
    return _as_level_codes(volume.array, what, allow_empty)


def _read_markups_points(path: PathLike) -> list[tuple[str, np.ndarray]]:
    """(level, RAS) of the labelled points of a .mrk.json (unlabelled ones were judged spurious)."""
    return [(v.level, v.centroid_ras) for v in read_markups(path) if v.level]


def _centroids_from_label_map(image: Volume, codes: np.ndarray) -> list[tuple[str, np.ndarray]]:
    from scipy import ndimage

    present = [int(c) for c in np.unique(codes) if c]
    centres = ndimage.center_of_mass(np.ones(codes.shape, np.uint8), codes, present)
    return [(anatomy.name_of(c), image.kji_to_ras(np.array(centre))[0]) for c, centre in zip(present, centres)]


def _points_from(centroids, image: Volume, codes: np.ndarray) -> tuple[list[tuple[str, np.ndarray]], str]:
    """Centroids in anatomical order (C1 first), from the argument or from the label map."""
    if centroids is None:
        points, origin = _centroids_from_label_map(image, codes), "label map"
    elif isinstance(centroids, (str, os.PathLike)):
        points, origin = _read_markups_points(centroids), "given"
    else:
        points, origin = [(v.level, np.asarray(v.centroid_ras, float)) for v in centroids if v.level], "given"
    return sorted(points, key=lambda point: anatomy.order_index(point[0])), origin


def markups_document(name: str, points: Sequence[tuple[str, np.ndarray]]) -> dict:
    """A Slicer point list holding only level names and positions (rounded to a micrometre)."""
    vertebrae = [Vertebra(level, np.round(np.asarray(ras, float), 3), score=1.0, source="manual")
                 for level, ras in points]
    return markups_dict(vertebrae, name=name)


# --- correction record --------------------------------------------------------------------
def corrections_from_maps(original: np.ndarray, corrected: np.ndarray) -> dict:
    """Levels relabelled (most of a level's voxels now carry another level), added, deleted; voxels changed.

    ``voxels_changed[L]`` counts voxels whose membership in level L differs between the two maps.
    """
    original_codes = {int(c) for c in np.unique(original) if c}
    corrected_codes = {int(c) for c in np.unique(corrected) if c}
    relabelled = []
    for code in sorted(original_codes):
        values, counts = np.unique(corrected[original == code], return_counts=True)
        target = int(values[np.argmax(counts)])
        if target not in (0, code) and 2 * counts.max() > counts.sum():
            relabelled.append((code, target))
    sources, targets = {a for a, _ in relabelled}, {b for _, b in relabelled}
    changed = original != corrected
    per_level = np.bincount(original[changed], minlength=256) + np.bincount(corrected[changed], minlength=256)
    return {
        "basis": "label maps",
        "relabelled": [{"from": anatomy.name_of(a), "to": anatomy.name_of(b)} for a, b in relabelled],
        "added": [anatomy.name_of(c) for c in sorted(corrected_codes - original_codes - targets)],
        "deleted": [anatomy.name_of(c) for c in sorted(original_codes - corrected_codes - sources)],
        "voxels_changed": {anatomy.name_of(c): int(per_level[c]) for c in sorted(original_codes | corrected_codes)
                           if per_level[c]},
        "voxels_changed_total": int(changed.sum()),
    }


def _level_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value in anatomy.CODE_BY_NAME else None


def _sanitised_actions(record: Sequence[dict]) -> list[dict]:
    """The correction record reduced to action names, level names and counts: no free text can leak."""
    actions = []
    for item in record or []:
        clean = {"action": re.sub(r"[^a-z0-9_]+", "_", str(item.get("action", "")).lower())[:40]}
        for key in ("level", "from", "to", "old", "new", "from_level", "to_level"):
            if _level_or_none(item.get(key)):
                clean[key] = item[key]
        for key in ("voxels", "voxels_changed", "instance"):
            if isinstance(item.get(key), (int, float)) and not isinstance(item.get(key), bool):
                clean[key] = item[key]
        actions.append(clean)
    return actions


def corrections_from_record(record: Sequence[dict]) -> dict:
    """The same summary from `SpineResult.corrections` when no original label map is available."""
    actions = _sanitised_actions(record)
    summary = {"basis": "correction record" if actions else "none", "relabelled": [], "added": [],
               "deleted": [], "voxels_changed": {}, "voxels_changed_total": None}
    for item in actions:
        action = item["action"]
        source = item.get("from") or item.get("old") or item.get("from_level")
        target = item.get("to") or item.get("new") or item.get("to_level")
        level = item.get("level") or target or source
        if any(word in action for word in ("relabel", "rename")) and source and target:
            summary["relabelled"].append({"from": source, "to": target})
        elif any(word in action for word in ("add", "create")) and level:
            summary["added"].append(level)
        elif any(word in action for word in ("delete", "remove")) and level:
            summary["deleted"].append(level)
        voxels = item.get("voxels_changed", item.get("voxels"))
        if voxels is not None and level:
            summary["voxels_changed"][level] = summary["voxels_changed"].get(level, 0) + int(voxels)
    if summary["voxels_changed"]:
        summary["voxels_changed_total"] = sum(summary["voxels_changed"].values())
    return summary


def _sanitised_models(model: dict | Sequence[dict] | None) -> list[dict]:
    models = [model] if isinstance(model, dict) else list(model or [])
    keep = ("name", "version", "sha256", "hash", "task", "modality")
    return [{k: str(m[k])[:200] for k in keep if m.get(k) not in (None, "")} for m in models]


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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):   # not possible on Windows; harmless to skip
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- dataset.json -------------------------------------------------------------------------
def nnunet_labels() -> dict[str, int]:
    """All levels with their VerSe codes; 27 (coccyx) fills the gap nnU-Net does not allow."""
    labels = {"background": 0, **{name: anatomy.code_of(name) for name in anatomy.ORDER}, "Co": 27}
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def cases_on_disk(dataset_dir: PathLike) -> list[str]:
    """Case ids with both an image and a label file, in number order."""
    dataset = Path(dataset_dir)
    images = {p.name[: -len("_0000" + FILE_ENDING)] for p in (dataset / IMAGES).glob(f"*_0000{FILE_ENDING}")}
    labels = {p.name[: -len(FILE_ENDING)] for p in (dataset / LABELS).glob(f"*{FILE_ENDING}")}
    return sorted(images & labels, key=_case_sort_key)


def _case_sort_key(case_id: str) -> tuple[int, str]:
    match = _CASE_RE.match(case_id)
    return (int(match.group(1)) if match else 1 << 62, case_id)


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
    from . import __version__
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
            "labels_policy": "all levels, whether present or not",
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


# --- transaction: stage, commit, roll back ------------------------------------------------
def _stage(dataset: Path, case_id: str, prepared: "_Prepared") -> tuple[Path, dict[str, str], dict]:
    """Write every file of the case into a hidden staging folder; return it, rel path -> staged name, file info."""
    staging = dataset / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    rels = case_files(case_id)
    save_volume(prepared.image, staging / f"image{FILE_ENDING}")
    save_volume(prepared.image.with_array(prepared.labels), staging / f"label{FILE_ENDING}")
    atomic_write_text(staging / "centroids.mrk.json",
                      json.dumps(markups_document(case_id, prepared.points), indent=2) + "\n")
    roles = ["image", "label", "centroids"]
    if prepared.original is not None:
        save_volume(prepared.image.with_array(prepared.original), staging / f"original{FILE_ENDING}")
        roles.append("original")
    staged_name = {"image": f"image{FILE_ENDING}", "label": f"label{FILE_ENDING}",
                   "centroids": "centroids.mrk.json", "original": f"original{FILE_ENDING}"}
    files = {rels[role]: staged_name[role] for role in roles}
    info = {role: {"path": rels[role], "sha256": sha256_file(staging / staged_name[role])} for role in roles}
    return staging, files, info


def _history_dir(dataset: Path, case_id: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, n = stamp, 1
    while (dataset / HISTORY / case_id / name).exists():
        n += 1
        name = f"{stamp}-{n}"
    return f"{HISTORY}/{case_id}/{name}"


def _commit(dataset: Path, staging: Path, intent: dict, entry: dict) -> None:
    """Move previous files to history, staged files into place, then append the manifest line."""
    atomic_write_text(staging / INTENT, json.dumps(intent))   # journal first: recovery needs it
    _crash_point("staged")
    for rel, history in intent["previous"].items():
        (dataset / history).parent.mkdir(parents=True, exist_ok=True)
        os.replace(dataset / rel, dataset / history)
    _crash_point("history")
    for n, (rel, name) in enumerate(intent["files"].items()):
        (dataset / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, dataset / rel)
        if n == 0:
            _crash_point("placed-1")
    for folder in {(dataset / rel).parent for rel in intent["files"]} | {dataset}:
        _fsync_dir(folder)
    _crash_point("placed")
    _append_manifest(dataset, entry)
    _crash_point("manifest")


def _discard_staging(staging: Path) -> None:
    # The journal goes first: a staging folder without one is junk, never a reason to touch the dataset.
    with contextlib.suppress(FileNotFoundError):
        (staging / INTENT).unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _recover_one(dataset: Path, staging: Path, committed: set[str]) -> str:
    """Finish or roll back one interrupted export; safe to run again if interrupted itself."""
    intent_path = staging / INTENT
    if not intent_path.exists():
        _discard_staging(staging)
        return f"removed unfinished staging folder {staging.name}"
    intent = json.loads(intent_path.read_text(encoding="utf-8"))
    if intent["export_id"] in committed:
        _discard_staging(staging)
        return f"finished committed export of {intent['case_id']}"
    if intent.get("state") != "restoring":
        for rel, name in intent["files"].items():
            if not (staging / name).exists() and (dataset / rel).exists():
                (dataset / rel).unlink()     # placed by the interrupted export: its staged copy is gone
        intent["state"] = "restoring"
        atomic_write_text(intent_path, json.dumps(intent))
    for rel, history in intent["previous"].items():
        if (dataset / history).exists() and not (dataset / rel).exists():
            os.replace(dataset / history, dataset / rel)
    _remove_empty_dirs(dataset / HISTORY / intent["case_id"], stop=dataset / HISTORY)
    _discard_staging(staging)
    return f"rolled back interrupted export of {intent['case_id']}"


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    while folder != stop and folder.is_dir():
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def recover_dataset(dataset_dir: PathLike, timeout: float = LOCK_TIMEOUT_S, _locked: bool = False) -> list[str]:
    """Undo (or finish) exports interrupted by a crash; return what was done. Runs before every export."""
    dataset = Path(dataset_dir)
    if not dataset.is_dir():
        return []
    with contextlib.nullcontext() if _locked else dataset_lock(dataset, timeout):
        actions = ["cut a torn manifest line"] if _repair_manifest_tail(dataset) else []
        committed = {e.get("export_id") for e in read_manifest(dataset)}
        for staging in sorted(p for p in dataset.glob(STAGING_PREFIX + "*") if p.is_dir()):
            actions.append(_recover_one(dataset, staging, committed))
        for junk in dataset.glob(f".{DATASET_JSON}.*.part*"):   # atomic_path temp of a killed rebuild
            junk.unlink()
        if (dataset / MANIFEST).exists():
            _write_dataset_json(dataset)
        return actions


# --- export -------------------------------------------------------------------------------
@dataclass
class _Prepared:
    image: Volume
    labels: np.ndarray
    original: np.ndarray | None
    points: list[tuple[str, np.ndarray]]
    points_from: str
    sha256: str
    hashed: str


def _prepare(image, labels, centroids, original) -> _Prepared:
    """Read and check every input before the dataset is touched (errors leave nothing behind)."""
    volume, sha, hashed = _load_image(image)
    codes = _load_label_map(labels, volume, "label map", allow_empty=False)
    before = None if original is None else _load_label_map(original, volume, "original label map", allow_empty=True)
    points, points_from = _points_from(centroids, volume, codes)
    return _Prepared(volume, codes, before, points, points_from, sha, hashed)


def _next_case_id(dataset: Path, entries: Sequence[dict]) -> str:
    """One more than any number ever used (files, history or manifest): ids are never reused."""
    names = [e.get("case_id", "") for e in entries]
    for folder in (IMAGES, LABELS, CENTROIDS, ORIGINAL, HISTORY):
        names += [p.name.split(".")[0].removesuffix("_0000") for p in (dataset / folder).glob("*")]
    numbers = [int(m.group(1)) for m in map(_CASE_RE.match, names) if m]
    return f"{CASE_PREFIX}{max(numbers, default=0) + 1:04d}"


def _manifest_entry(case_id: str, prepared: _Prepared, info: dict, model, corrections, modality: str,
                    replaced: dict | None) -> dict:
    from . import __version__
    if prepared.original is not None:    # the maps are the truth; the record only adds the action list
        summary = corrections_from_maps(prepared.original, prepared.labels)
    else:
        summary = corrections_from_record(corrections or [])
    summary["actions"] = _sanitised_actions(corrections or [])
    present = set(np.unique(prepared.labels).tolist())
    return {
        "export_id": uuid.uuid4().hex, "case_id": case_id, "exported_utc": _utc_now(),
        "spinelabel_version": __version__, "source_sha256": prepared.sha256, "source_hashed": prepared.hashed,
        "modality": modality if modality in ("ct", "mr") else "unknown",
        "models": _sanitised_models(model),
        "levels": [name for name in anatomy.ORDER if anatomy.code_of(name) in present],
        "corrections": summary, "centroids_from": prepared.points_from, "files": info,
        "image_geometry": {"shape_ijk": [int(n) for n in prepared.image.shape_ijk],
                           "spacing_mm": [round(float(s), 6) for s in prepared.image.spacing]},
        "replaced_previous": replaced,
    }


def export_case(dataset_dir: PathLike, image: Volume | PathLike, labels: Volume | PathLike,
                centroids: PathLike | Sequence[Any] | None = None, original: Volume | PathLike | None = None,
                model: dict | Sequence[dict] | None = None, corrections: Sequence[dict] | None = None,
                replace: bool = False, *, modality: str = "unknown",
                lock_timeout: float = LOCK_TIMEOUT_S) -> ExportRecord:
    """Add one corrected case to a dataset folder (created when missing) under a generated case id.

    ``labels``/``original``: level-code label maps (Volume, NIfTI/NRRD file, or .seg.nrrd) on the image
    grid; ``centroids``: a .mrk.json, a list of `Vertebra`, or None (centres of the label map). The
    same source image (SHA-256) twice is refused unless ``replace``, which keeps the case id and moves
    the previous files to ``history/``. Raises InputError / DatasetLockedError / SpineLabelError, each
    one line; the dataset is then as it was.
    """
    prepared = _prepare(image, labels, centroids, original)
    dataset = Path(dataset_dir)
    dataset.mkdir(parents=True, exist_ok=True)
    with dataset_lock(dataset, lock_timeout):
        recover_dataset(dataset, _locked=True)
        entries = read_manifest(dataset)
        previous = _current_entry_for_source(dataset, entries, prepared.sha256)
        if previous is not None and not replace:
            raise InputError(f"this image is already in the dataset as {previous['case_id']} "
                             "(same SHA-256); use --replace to replace it")
        case_id = previous["case_id"] if previous else _next_case_id(dataset, entries)
        staging, files, info = _stage(dataset, case_id, prepared)
        moved, replaced = {}, None
        if previous is not None:
            history = _history_dir(dataset, case_id)
            moved = {rel: f"{history}/{rel}" for rel in case_files(case_id).values() if (dataset / rel).exists()}
            replaced = {"export_id": previous.get("export_id"), "exported_utc": previous.get("exported_utc"),
                        "history": history}
        entry = _manifest_entry(case_id, prepared, info, model, corrections, modality, replaced)
        intent = {"export_id": entry["export_id"], "case_id": case_id, "files": files, "previous": moved}
        try:
            _commit(dataset, staging, intent, entry)
        except BaseException as error:
            outcome = recover_dataset(dataset, _locked=True)
            if isinstance(error, OSError) and not any("finished committed" in a for a in outcome):
                raise SpineLabelError(f"export failed, dataset left as it was: {error}") from None
            raise
        _discard_staging(staging)
        try:
            _write_dataset_json(dataset)
        except OSError as error:   # the case is committed; recovery rebuilds dataset.json next time
            raise SpineLabelError(f"exported as {case_id}, but dataset.json could not be rebuilt ({error}); "
                                  "the next export or validation rebuilds it") from None
    paths = {role: dataset / rel["path"] for role, rel in info.items()}
    return ExportRecord(case_id, {**paths, "manifest": dataset / MANIFEST, "dataset_json": dataset / DATASET_JSON},
                        entry)


def _current_entry_for_source(dataset: Path, entries: Sequence[dict], sha: str) -> dict | None:
    """The newest entry of the case holding this source image, if that case is still on disk."""
    on_disk = set(cases_on_disk(dataset))
    for entry in reversed(entries):
        if entry.get("source_sha256") == sha and entry["case_id"] in on_disk:
            return latest_entries(entries)[entry["case_id"]]
    return None


def export_result(dataset_dir: PathLike, result, original=None, replace: bool = False, **options) -> ExportRecord:
    """Export a corrected `SpineResult` (Slicer button, pipeline); ``original`` is the model's result before correction."""
    if result.image is None or result.instances is None:
        raise InputError(f"{result.case_id}: nothing to export (no image or no body masks)")
    image = result.image
    if result.input_sha256:   # the pipeline hashed the input file: use it, so duplicates are found
        image = Volume(image.array, image.ijk_to_ras)
        image.metadata["source_sha256"] = result.input_sha256
    before = None
    if original is not None and original.instances is not None:
        before = original.level_volume() if original.image is not None else result.image.with_array(original.level_map())
    return export_case(dataset_dir, image, result.level_volume(), centroids=result.vertebrae, original=before,
                       model=result.models, corrections=result.corrections, replace=replace,
                       modality=result.modality, **options)


# --- reading a dataset --------------------------------------------------------------------
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
