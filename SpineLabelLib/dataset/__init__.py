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

Modules: `layout` (names, case ids, records), `inputs` (reading and checking an export's inputs),
`corrections` (the correction summary), `manifest` (manifest.jsonl, dataset.json), `lock` (the dataset
lock), `journal` (staging, commit, `recover_dataset`), `reading` (`iter_dataset_cases`,
`validate_dataset`); the export itself (`export_case`, `export_result`) is here.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import anatomy
from ..core.discs import DISC_LABEL_OFFSET
from ..core.errors import InputError, SpineLabelError
from ..core.volume import Volume
from .corrections import _sanitised_actions, _sanitised_models, corrections_from_maps, corrections_from_record
from .inputs import _prepare, _Prepared, markups_document, source_sha256
from .journal import INTENT, _commit, _discard_staging, _history_dir, _stage, recover_dataset
from .layout import (_CASE_RE, CASE_PREFIX, CENTROIDS, DATASET_JSON, FILE_ENDING, FORMAT_VERSION, GEOMETRY_TOLERANCE_MM,
                     HISTORY, IMAGES, LABELS, LOCK_NAME, MANIFEST, ORIGINAL, STAGING_PREFIX, DatasetCase, ExportRecord,
                     PathLike, _utc_now, case_files, cases_on_disk)
from .lock import LOCK_TIMEOUT_S, STALE_EXCL_LOCK_S, DatasetLockedError, dataset_lock
from .manifest import _write_dataset_json, build_dataset_json, latest_entries, nnunet_labels, read_manifest
from .reading import iter_dataset_cases, read_centroids, validate_dataset

__all__ = [
    "CASE_PREFIX", "CENTROIDS", "DATASET_JSON", "FILE_ENDING", "FORMAT_VERSION",
    "GEOMETRY_TOLERANCE_MM", "HISTORY", "IMAGES", "INTENT", "LABELS", "LOCK_NAME", "LOCK_TIMEOUT_S", "MANIFEST",
    "ORIGINAL", "STAGING_PREFIX", "STALE_EXCL_LOCK_S", "DatasetCase", "DatasetLockedError", "ExportRecord",
    "PathLike", "build_dataset_json", "case_files", "cases_on_disk", "corrections_from_maps",
    "corrections_from_record", "dataset_lock", "export_case", "export_result", "iter_dataset_cases",
    "latest_entries", "markups_document", "nnunet_labels", "read_centroids", "read_manifest", "recover_dataset",
    "source_sha256", "validate_dataset",
]


# --- export -------------------------------------------------------------------------------
def _next_case_id(dataset: Path, entries: Sequence[dict]) -> str:
    """One more than any number ever used (files, history or manifest): ids are never reused."""
    names = [e.get("case_id", "") for e in entries]
    for folder in (IMAGES, LABELS, CENTROIDS, ORIGINAL, HISTORY):
        names += [p.name.split(".")[0].removesuffix("_0000") for p in (dataset / folder).glob("*")]
    numbers = [int(m.group(1)) for m in map(_CASE_RE.match, names) if m]
    return f"{CASE_PREFIX}{max(numbers, default=0) + 1:04d}"


def _manifest_entry(case_id: str, prepared: _Prepared, info: dict, model, corrections, modality: str,
                    replaced: dict | None) -> dict:
    from .. import __version__
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
        "disc_labels": sorted(int(v) for v in present if v >= DISC_LABEL_OFFSET),
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
    from ..io.segfile import label_map_with_discs

    before = None
    if original is not None and original.instances is not None:
        before = result.image.with_array(label_map_with_discs(original))
    return export_case(dataset_dir, image, result.image.with_array(label_map_with_discs(result)),
                       centroids=result.vertebrae, original=before,
                       model=result.models, corrections=result.corrections, replace=replace,
                       modality=result.modality, **options)
