"""The export transaction: files staged in a hidden folder with an intent.json journal, moved into place,
committed by the manifest line; `recover_dataset` finishes or rolls back an interrupted one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..core.paths import atomic_write_text
from ..io.summary import sha256_file
from ..core.volume import save_volume
from .inputs import _Prepared, markups_document
from .layout import DATASET_JSON, FILE_ENDING, HISTORY, MANIFEST, STAGING_PREFIX, PathLike, case_files
from .lock import LOCK_TIMEOUT_S, dataset_lock
from .manifest import _append_manifest, _repair_manifest_tail, _write_dataset_json, read_manifest

INTENT = "intent.json"
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):   # not possible on Windows; harmless to skip
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    for rel, history in intent["previous"].items():
        (dataset / history).parent.mkdir(parents=True, exist_ok=True)
        os.replace(dataset / rel, dataset / history)
    for rel, name in intent["files"].items():
        (dataset / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, dataset / rel)
    for folder in {(dataset / rel).parent for rel in intent["files"]} | {dataset}:
        _fsync_dir(folder)
    _append_manifest(dataset, entry)


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
