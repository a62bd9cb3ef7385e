"""What image readers silently 'repair', refused before reading.

ITK replaces every NaN and infinite voxel of a NIfTI file by 0 (fixed only in ITK 6,
InsightSoftwareConsortium/ITK#6683) and turns a zero or negative NIfTI pixdim or MetaImage
ElementSpacing into 1 mm: the case would run on invented values and fail later with a misleading
"no vertebra found". So the header (and, for floating-point NIfTI, the voxels) are read here first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import InputError


def check_file_header(path: Path) -> None:
    """Raise InputError (one line) for a zero/negative voxel spacing or non-finite NIfTI voxels."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)


def _refuse_spacing(path: Path, spacing) -> None:
    values = [round(float(v), 4) for v in spacing]
    if not all(np.isfinite(values)) or min(values) <= 0:
        raise InputError(f"{path}: voxel spacing {values} mm is zero, negative or not a number along at least one axis")


def _raw_nifti_header(path: Path):
    """The header as stored: `nibabel.load` would 'fix' a zero or negative pixdim before we see it."""
    import gzip

    import nibabel

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        first = stream.read(4)
        stream.seek(0)
        size = int.from_bytes(first, "little") if first else 0
        kind = nibabel.Nifti2Header if size == 540 or int.from_bytes(first, "big") == 540 else nibabel.Nifti1Header
        return kind.from_fileobj(stream, check=False)


def _check_nifti(path: Path) -> None:
    import logging

    import nibabel

    try:
        header = _raw_nifti_header(path)
    except Exception:            # not a NIfTI header: the reader gives its own one-line error
        return
    if int(header["dim"][0]) >= 3:
        _refuse_spacing(path, header["pixdim"][1:4])
    if int(header["sform_code"]) > 0:
        _refuse_spacing(path, np.linalg.norm(header.get_sform()[:3, :3], axis=0))
    if header.get_data_dtype().kind in "fc":
        quiet = logging.getLogger("nibabel")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            voxels = np.asanyarray(nibabel.load(str(path)).dataobj)
        finally:
            quiet.setLevel(level)
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise InputError(f"{path}: image contains {bad} NaN or infinite voxel values")


def _check_metaimage(path: Path) -> None:
    with open(path, "rb") as stream:
        head = stream.read(1 << 16).decode("latin-1", errors="replace")
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("ElementSpacing", "ElementSize"):
            try:
                _refuse_spacing(path, [float(v) for v in value.split()])
            except ValueError:
                raise InputError(f"{path}: {key.strip()} is not a list of numbers: {value.strip()!r}") from None
        if key.strip() == "ElementDataFile":
            break


def _check_nrrd(path: Path) -> None:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:            # the reader gives its own one-line error
        return
    if "spacings" in header:
        spacings = [float(s) for s in np.atleast_1d(header["spacings"]) if np.isfinite(float(s))]
        if spacings:
            _refuse_spacing(path, spacings)
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(row, dtype=float) for row in directions if row is not None and np.all(np.isfinite(row))]
        if rows:
            _refuse_spacing(path, [np.linalg.norm(row) for row in rows])


__all__ = ["check_file_header"]
