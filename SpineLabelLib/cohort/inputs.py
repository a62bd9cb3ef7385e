"""The cases of a cohort run: image files, DICOM series folders, a folder searched (`recursive`), or a CSV manifest.

Every case gets an id made from its path (the file name, or the folder's path below the searched root), never
from what the images say (DICOM tags carry patient data): `core.volume.case_id`'s rule. A folder holding several
DICOM series gives one case per series (told apart by SeriesInstanceUID, numbered in UID order: `<folder>_s1`...).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import InputError
from ..core.options import MODALITIES
from ..core.paths import safe_name
from ..core.volume import VOLUME_SUFFIXES, case_id, dicom_series_ids

#: manifest columns: the input's path (required), and optionally its case id and modality
MANIFEST_PATH, MANIFEST_CASE, MANIFEST_MODALITY = "path", "case_id", "modality"
#: files a folder search never takes as inputs: segmentations beside their images (SpineLabel's own names)
_NOT_IMAGES = (".seg.nrrd", "_seg.nii.gz", "_seg.nii")
#: files that cannot be DICOM slices: a folder holding only these is not scanned for series
_NOT_DICOM = (*VOLUME_SUFFIXES, ".json", ".csv", ".tsv", ".png", ".jpg", ".txt", ".md", ".html", ".py")


@dataclass(frozen=True)
class CaseInput:
    """One case: its id (the output folder's name), what to read and how."""

    case_id: str
    path: str
    series_uid: str | None = None     # one series of a DICOM folder holding several
    modality: str | None = None       # from the manifest: overrides the run's modality for this case
    series_number: int = 0            # 1, 2 ... when the folder holds several series (UID order), else 0

    @property
    def label(self) -> str:
        """The input as cases.csv shows it: the path, and which series of the folder (never its UID)."""
        return f"{self.path} [series {self.series_number}]" if self.series_number else self.path


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(VOLUME_SUFFIXES) and not name.endswith(_NOT_IMAGES)


def _series_cases(folder: Path, name: str) -> list[CaseInput]:
    """One case per DICOM series of a folder; a single series keeps the folder's name."""
    uids = dicom_series_ids(folder)
    if len(uids) <= 1:
        return [CaseInput(name, str(folder), uids[0] if uids else None)]
    return [CaseInput(f"{name}_s{n}", str(folder), uid, series_number=n) for n, uid in enumerate(uids, start=1)]


def _might_hold_dicom(files: list[str]) -> bool:
    return any(not name.startswith(".") and not name.lower().endswith(_NOT_DICOM) for name in files)


def search_folder(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[CaseInput]:
    """Every image file and every DICOM series below ``root`` (hidden entries and ``exclude``, the run's
    output folder, left out); case ids from the path below the root, so equal file names do not collide."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: --recursive needs a folder")
    skip = Path(exclude).resolve() if exclude else None
    cases: list[CaseInput] = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and (here / d).resolve() != skip)
        relative = here.relative_to(root).parts
        for name in sorted(files):
            path = here / name
            if not name.startswith(".") and is_image_file(path):
                cases.append(CaseInput(safe_name("_".join([*relative, case_id(path)])), str(path)))
        if _might_hold_dicom(files) and dicom_series_ids(here):
            cases += _series_cases(here, safe_name("_".join(relative) or case_id(here)))
    return cases


def read_manifest(manifest: str | os.PathLike) -> list[CaseInput]:
    """Cases listed in a CSV file: a `path` column (relative paths are relative to the manifest's folder),
    optional `case_id` (made filesystem-safe) and `modality` columns."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{manifest}: cannot read the manifest ({error})") from None
    if not rows or MANIFEST_PATH not in rows[0]:
        raise InputError(f"{manifest}: a manifest needs a header row with a {MANIFEST_PATH!r} column")
    cases = []
    for line, row in enumerate(rows, start=2):
        text = (row.get(MANIFEST_PATH) or "").strip()
        if not text:
            raise InputError(f"{manifest}, line {line}: empty path")
        path = Path(text) if Path(text).is_absolute() else manifest.parent / text
        modality = (row.get(MANIFEST_MODALITY) or "").strip().lower() or None
        if modality is not None and modality not in MODALITIES:
            raise InputError(f"{manifest}, line {line}: modality must be one of {', '.join(MODALITIES)}, "
                             f"got {modality!r}")
        given = (row.get(MANIFEST_CASE) or "").strip()
        name = safe_name(given) if given else case_id(path)
        cases.append(CaseInput(name, str(path), modality=modality))
    return cases


def _unique(cases: list[CaseInput], told: set[str]) -> list[CaseInput]:
    """Ids made unique by a numeric suffix, except those a manifest gave (``told``): a repeat there is an error."""
    seen: dict[str, int] = {}
    unique = []
    for case in cases:
        name = case.case_id
        if name in seen:
            if name in told:
                raise InputError(f"case id {name!r} is given to more than one input")
            seen[name] += 1
            while f"{name}_{seen[name]}" in seen:
                seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 1)
        unique.append(case if name == case.case_id else replace(case, case_id=name))
    return unique


def discover(inputs: list[str | os.PathLike] = (), manifest: str | os.PathLike | None = None,
             recursive: bool = False, out: str | os.PathLike | None = None) -> list[CaseInput]:
    """The run's cases in a stable order. A path that does not exist stays a case (it fails with its reason);
    a DICOM folder given directly is one case per series it holds."""
    cases: list[CaseInput] = []
    told: set[str] = set()
    if manifest is not None:
        listed = read_manifest(manifest)
        told = {case.case_id for case in listed}
        cases += listed
    for item in inputs:
        path = Path(item)
        if recursive and path.is_dir():
            cases += search_folder(path, exclude=out)
        elif path.is_dir():
            cases += _series_cases(path, case_id(path))
        else:
            cases.append(CaseInput(case_id(path), str(path)))
    if not cases:
        raise InputError("no inputs: give image files, DICOM folders, a folder with --recursive, or --inputs CSV")
    return _unique(cases, told)
