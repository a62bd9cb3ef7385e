"""All contract files of one case, written into `out_root/<case>/` as a whole or not at all.

Everything goes into a hidden temporary sibling folder first; only when every file is complete
does that folder take the final name. A previous output folder for the case survives any failure.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..alignment.table import write_alignment_csv
from .dicom_seg import dicom_source_files, write_dicom_seg
from .markups import write_markups
from ..core.paths import safe_name
from .qc import write_qc_png
from ..core.result import SpineResult
from .segfile import write_label_nifti, write_seg_nrrd
from .summary import write_summary_json
from .tables import write_discs_csv, write_distances_csv, write_measurements_csv


def case_files(case: str, dicom_seg: bool = False) -> dict[str, str]:
    """Contract file names of a case (DESIGN.md, output contract of `spinelabel run`); with
    ``dicom_seg`` also the DICOM Segmentation object (DICOM series inputs only)."""
    files = {
        "segmentation": f"{case}.seg.nrrd",
        "label_map": f"{case}_seg.nii.gz",
        "markups": f"{case}.mrk.json",
        "measurements": f"{case}.measurements.csv",
        "distances": f"{case}.distances.csv",
        "summary": f"{case}.json",
        "qc": f"{case}.qc.png",
        "alignment": f"{case}.alignment.csv",
        "discs": f"{case}.discs.csv",
    }
    if dicom_seg:
        files["dicom_seg"] = f"{case}.seg.dcm"     # asked for (`RunOptions.dicom_seg`), DICOM inputs only
    return files


#: contract file key -> the engine's writer of that file
WRITERS: dict[str, Callable[[SpineResult, Path], object]] = {
    "segmentation": write_seg_nrrd,
    "label_map": write_label_nifti,
    "markups": write_markups,
    "measurements": write_measurements_csv,
    "distances": write_distances_csv,
    "alignment": write_alignment_csv,
    "discs": write_discs_csv,
    "summary": write_summary_json,
    "qc": write_qc_png,
    "dicom_seg": write_dicom_seg,
}

#: writes one contract file to the path it is given (a shell's own writer, Slicer's storage node say)
FileWriter = Callable[[Path], object]


def _write_all(result: SpineResult, folder: Path, case: str, writers: dict[str, FileWriter],
               dicom_seg: bool) -> None:
    if dicom_seg:   # the SEG needs the source series: refuse before writing anything
        dicom_source_files(result)
    for key, name in case_files(case, dicom_seg).items():
        if key in writers:
            writers[key](folder / name)
        else:
            WRITERS[key](result, folder / name)


def _replace_folder(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``; an existing ``final`` is set aside first and restored on failure."""
    if not final.exists():
        os.rename(new, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    old.rmdir()
    os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_case_outputs(result: SpineResult, out_root: str | os.PathLike,
                       writers: dict[str, FileWriter] | None = None, dicom_seg: bool = False) -> Path:
    """Write every contract file for the case; returns `out_root/<case>/`.

    writers: contract file key -> a writer replacing the engine's for that file (the batch script
    lets Slicer's storage nodes write the .seg.nrrd and .mrk.json); they run inside the staging
    folder, so a failure there leaves the previous outputs untouched too.
    dicom_seg: also write `<case>.seg.dcm` (the input must have been a DICOM series folder)."""
    unknown = set(writers or {}) - set(WRITERS)
    if unknown:
        raise ValueError(f"no contract file called {sorted(unknown)}")
    case = safe_name(result.case_id)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / case
    staging = Path(tempfile.mkdtemp(prefix=f".{case}.tmp-", dir=out_root))
    try:
        _write_all(result, staging, case, writers or {}, dicom_seg)
        _replace_folder(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
