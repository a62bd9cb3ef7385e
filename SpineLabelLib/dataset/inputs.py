"""An export's inputs, read and checked before the dataset is touched: the image and the SHA-256 of its
source, level-code label maps on the image grid, and centroids."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core import anatomy, discs
from ..core.errors import InputError
from ..io.markups import markups_dict, read_markups
from ..core.result import Vertebra
from ..io.summary import sha256_file
from ..core.volume import Volume, load_volume, validate
from .layout import GEOMETRY_TOLERANCE_MM, PathLike


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


# --- reading inputs -----------------------------------------------------------------------
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
    invalid = [v for v in values.tolist() if v != 0 and int(v) not in anatomy.NAME_BY_CODE
               and not (float(v).is_integer() and discs.is_disc_label(int(v)))]
    if invalid:
        shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in invalid[:6])
        raise InputError(f"{what}: values {shown} are neither vertebral level codes (VerSe: C1=1 ... L5=24, L6=25, "
                         "S1=26, T13=28) nor disc labels (100 + code of the vertebra above)")
    if not allow_empty and not np.any((values != 0) & (values < discs.DISC_LABEL_OFFSET)):
        raise InputError(f"{what}: holds no vertebra (every voxel is 0)")
    return array.astype(np.uint8)


def _read_seg_nrrd(path: Path) -> Volume:
    """A .seg.nrrd as a level-code Volume on the file's own grid (segments named by level)."""
    from ..io.segfile import read_seg_nrrd

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

    present = [int(c) for c in np.unique(codes) if c and c < discs.DISC_LABEL_OFFSET]
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


# --- all inputs of one export ---------------------------------------------------------------
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
