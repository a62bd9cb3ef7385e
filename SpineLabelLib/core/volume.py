"""The `Volume` type: a voxel array in (k, j, i) order with its 4x4 IJK->RAS matrix, and its I/O.

World coordinates are RAS millimetres, as in Slicer. Files keep their own convention: ITK/NRRD/DICOM
store LPS, so reading and writing flips x and y. Loading goes through SimpleITK (NIfTI, NRRD, MHA,
DICOM series folders); every failure becomes one readable `InputError` line.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Canonical processing orientation: array axis 0 runs left->right (+R), axis 1 superior->inferior
#: (-S), axis 2 anterior->posterior (-A). A sagittal slice is then ``array[x]`` with rows running
#: head to feet and anterior on the left, as the sagittal images of the source papers.
CANONICAL_AXES_RAS = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]])  # row n = world dir of array axis n

MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0


@dataclass
class Volume:
    """A 3-D image: ``array[k, j, i]`` and ``ijk_to_ras`` mapping (i, j, k, 1) to RAS mm."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float)
        if self.array.ndim != 3:
            raise InputError(f"expected a 3-D volume, got {self.array.ndim}-D")
        if self.ijk_to_ras.shape != (4, 4):
            raise InputError("ijk_to_ras must be a 4x4 matrix")

    # --- geometry -------------------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        return tuple(reversed(self.array.shape))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of i, j, k."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    def kji_to_ras(self, kji: np.ndarray) -> np.ndarray:
        """(N, 3) array indices (k, j, i) -> (N, 3) RAS mm."""
        kji = np.atleast_2d(np.asarray(kji, dtype=float))
        ijk = kji[:, ::-1]
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_kji(self, ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS mm -> (N, 3) continuous array indices (k, j, i)."""
        ras = np.atleast_2d(np.asarray(ras, dtype=float))
        inv = self.ras_to_ijk
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        return ijk[:, ::-1]

    def with_array(self, array: np.ndarray, **metadata) -> "Volume":
        """A volume on the same grid holding another array (a label map, say)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from grid {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy(), {**self.metadata, **metadata})

    def same_grid(self, other: "Volume", tolerance_mm: float = 1e-3) -> bool:
        return (self.array.shape == other.array.shape
                and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tolerance_mm))

    # --- SimpleITK bridge -----------------------------------------------------------------
    def to_sitk(self):
        import SimpleITK as sitk

        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        if array.dtype == np.int64:
            array = array.astype(np.int32)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        ijk_to_lps = LPS_TO_RAS @ self.ijk_to_ras
        spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
        image.SetSpacing([float(s) for s in spacing])
        image.SetDirection([float(d) for d in (ijk_to_lps[:3, :3] / spacing).ravel()])
        image.SetOrigin([float(o) for o in ijk_to_lps[:3, 3]])
        return image

    @classmethod
    def from_sitk(cls, image, **metadata) -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError(f"expected a 3-D volume, got {image.GetDimension()}-D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
        spacing = np.array(image.GetSpacing(), dtype=float)
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = direction * spacing
        ijk_to_lps[:3, 3] = image.GetOrigin()
        return cls(sitk.GetArrayFromImage(image), LPS_TO_RAS @ ijk_to_lps, metadata)


def make_affine(spacing=(1.0, 1.0, 1.0), directions=None, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """IJK->RAS from spacing (i, j, k), a 3x3 direction matrix (columns) and an RAS origin."""
    matrix = np.eye(4)
    directions = np.eye(3) if directions is None else np.asarray(directions, dtype=float)
    matrix[:3, :3] = directions * np.asarray(spacing, dtype=float)
    matrix[:3, 3] = origin
    return matrix


# --- validation ---------------------------------------------------------------------------
def validate(volume: Volume, name: str = "input", check_values: bool = True) -> Volume:
    """Refuse volumes no spine tool can work on, with one line saying why."""
    if min(volume.array.shape) < 2:
        raise InputError(f"{name}: a 3-D volume needs at least 2 voxels along each axis, got shape {volume.shape_ijk}")
    spacing = volume.spacing
    if not np.all(np.isfinite(volume.ijk_to_ras)):
        raise InputError(f"{name}: geometry contains NaN or infinite values")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(f"{name}: voxel spacing {np.round(spacing, 4).tolist()} mm is outside "
                         f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm")
    if abs(np.linalg.det(volume.directions)) < 0.5:
        raise InputError(f"{name}: direction matrix is degenerate")
    if check_values:
        if not np.issubdtype(volume.array.dtype, np.number) and volume.array.dtype != np.bool_:
            raise InputError(f"{name}: voxel type {volume.array.dtype} is not numeric")
        if np.issubdtype(volume.array.dtype, np.floating) and not np.all(np.isfinite(volume.array)):
            raise InputError(f"{name}: image contains NaN or infinite voxel values")
        if volume.array.size and volume.array.min() == volume.array.max():
            raise InputError(f"{name}: image is empty (every voxel has the same value)")
    return volume


# --- reading ------------------------------------------------------------------------------
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def case_id(path: str | os.PathLike) -> str:
    """File name without its extensions (or the DICOM folder's name), made filesystem-safe."""
    from .paths import safe_name

    path = Path(path)
    name = path.name
    if not path.is_dir():
        for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        else:
            name = path.stem
    return safe_name(name)


def _check_gzip(path: Path) -> None:
    """SimpleITK reports a truncated .gz only as a generic failure; name it."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: damaged or truncated gzip file ({error})") from None


class _QuietITK:
    """Silence ITK/GDCM warnings printed to stderr while reading: failures become one InputError line."""

    def __enter__(self):
        import SimpleITK as sitk

        self.previous = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self.previous)
        return False


def load_volume(path: str | os.PathLike, check_values: bool = True, series_uid: str | None = None) -> Volume:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder into a validated `Volume`.

    series_uid: for a folder holding several DICOM series, the one to read (default: the largest)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    metadata: dict = {"source": str(path)}
    if path.is_dir():
        with _QuietITK():
            image, files = _read_dicom_folder(path, series_uid)
        # A DICOM SEG written later must reference these very files, in the array's slice order.
        metadata["dicom_files"] = list(files)
    else:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: file is empty")
        if path.name.lower().endswith(".gz"):
            _check_gzip(path)
        from ..io.header_checks import check_file_header

        check_file_header(path)
        try:
            with _QuietITK():
                image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            if "Zero-valued spacing" in str(error):   # ITK refuses it before we can look
                raise InputError(f"{path}: voxel spacing is zero along at least one axis") from None
            raise InputError(f"{path}: not a readable image (NIfTI, NRRD, MHA or a DICOM folder expected)") from None
    try:
        volume = Volume.from_sitk(image, **metadata)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    return validate(volume, str(path), check_values=check_values)


def dicom_series_ids(path: str | os.PathLike) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM series directly in a folder (GDCM's scan), sorted; () when none."""
    import SimpleITK as sitk

    with _QuietITK():
        try:
            return tuple(sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))))
        except RuntimeError:
            return ()


def dicom_series_files(path: str | os.PathLike, series_uid: str | None = None) -> tuple[str, ...]:
    """The files of one DICOM series of the folder in slice order (what `load_volume` reads): the
    series ``series_uid``, or the largest one."""
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageSeriesReader()
    with _QuietITK():
        try:
            series = reader.GetGDCMSeriesIDs(str(path))
        except RuntimeError:
            series = ()
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if series_uid is not None:
            if series_uid not in series:
                raise InputError(f"{path}: the DICOM series of this case is no longer in the folder")
            return tuple(reader.GetGDCMSeriesFileNames(str(path), series_uid))
        # The largest series is the one a person means when pointing at a folder.
        return tuple(max((reader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len))


def _read_dicom_folder(path: Path, series_uid: str | None = None):
    """(image, its files in slice order) of the folder's series ``series_uid`` (default: the largest)."""
    import SimpleITK as sitk

    files = dicom_series_files(path, series_uid)
    if len(files) < 2:
        raise InputError(f"{path}: DICOM series has a single slice; a 3-D volume is needed")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute(), files
    except RuntimeError as error:
        raise InputError(f"{path}: DICOM series could not be read ({str(error).strip().splitlines()[-1]})") from None


# --- writing ------------------------------------------------------------------------------
def save_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write through a temporary file and a rename, so a failure leaves no partial file."""
    import SimpleITK as sitk

    from .paths import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
    return path


# --- orientation and resampling -----------------------------------------------------------
@dataclass(frozen=True)
class Reorientation:
    """How an array was permuted and flipped to reach canonical orientation (exact, no resampling)."""

    permutation: tuple[int, int, int]   # canonical axis n takes original array axis permutation[n]
    flips: tuple[bool, bool, bool]      # flip canonical axis n after permuting


def canonical_reorientation(volume: Volume) -> Reorientation:
    """Nearest axis permutation/flip that brings the array into CANONICAL_AXES_RAS orientation."""
    from itertools import permutations

    axis_dirs = volume.directions[:, ::-1].T          # row m = RAS direction of array axis m (k, j, i)
    similarity = CANONICAL_AXES_RAS @ axis_dirs.T      # [canonical axis n, array axis m]
    best = max(permutations(range(3)), key=lambda p: sum(abs(similarity[n, p[n]]) for n in range(3)))
    flips = tuple(bool(similarity[n, best[n]] < 0) for n in range(3))
    return Reorientation(tuple(int(m) for m in best), flips)


def reorient(volume: Volume, how: Reorientation) -> Volume:
    """Apply a `Reorientation`; voxel values are unchanged, only their order and the matrix."""
    array = np.transpose(volume.array, how.permutation)
    # Build the matrix mapping new (k', j', i') indices to old (k, j, i) ones.
    kji_new_to_old = np.zeros((4, 4))
    kji_new_to_old[3, 3] = 1.0
    for n, (m, flip) in enumerate(zip(how.permutation, how.flips)):
        size = array.shape[n]
        if flip:
            kji_new_to_old[m, n] = -1.0
            kji_new_to_old[m, 3] = size - 1
        else:
            kji_new_to_old[m, n] = 1.0
    for n, flip in enumerate(how.flips):
        if flip:
            array = np.flip(array, axis=n)
    swap = np.eye(4)[[2, 1, 0, 3]]                     # kji <-> ijk
    ijk_to_ras = volume.ijk_to_ras @ swap @ kji_new_to_old @ swap
    return Volume(np.ascontiguousarray(array), ijk_to_ras, dict(volume.metadata))


def undo_reorientation(array: np.ndarray, how: Reorientation) -> np.ndarray:
    """Bring an array computed in canonical orientation back to the original array order."""
    for n, flip in enumerate(how.flips):
        if flip:
            array = np.flip(array, axis=n)
    return np.ascontiguousarray(np.transpose(array, np.argsort(how.permutation)))


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    how = canonical_reorientation(volume)
    return reorient(volume, how), how


def resample(volume: Volume, spacing, reference: Volume | None = None, label: bool = False,
             default_value: float | None = None) -> Volume:
    """Resample onto a new grid with SimpleITK.

    With ``reference`` the output takes that grid exactly (``spacing`` ignored). Otherwise the grid
    keeps the input's directions and extent with the new spacing (i, j, k) in mm. Labels use
    nearest-neighbour interpolation, images linear.
    """
    import SimpleITK as sitk

    image = volume.to_sitk()
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    if default_value is None:
        default_value = 0.0 if label else float(volume.array.min())
    if reference is not None:
        out = sitk.Resample(image, reference.to_sitk(), sitk.Transform(), interpolator,
                            default_value, image.GetPixelID())
        return Volume.from_sitk(out, **volume.metadata)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    old_size = np.array(image.GetSize())
    extent = old_size * np.array(image.GetSpacing())
    size = np.maximum(1, np.round(extent / spacing)).astype(int)
    # Keep the physical centre: origin moves by half a voxel difference along each axis.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = direction @ ((spacing - np.array(image.GetSpacing())) / 2.0)
    origin = np.array(image.GetOrigin()) + shift
    out = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), interpolator,
                        [float(o) for o in origin], [float(s) for s in spacing],
                        image.GetDirection(), default_value, image.GetPixelID())
    return Volume.from_sitk(out, **volume.metadata)


def resample_to_canonical(volume: Volume, spacing: float, label: bool = False) -> Volume:
    """Resample onto an axis-aligned canonical grid (true sagittal slices even for oblique input).

    The grid covers the input's whole bounding box in RAS at isotropic ``spacing`` mm.
    """
    return resample(volume, None, reference=canonical_grid(volume, spacing), label=label)


def sub_grid(volume: Volume, low_kji, high_kji) -> Volume:
    """An empty grid of voxels low..high-1 (k, j, i) of ``volume``: same spacing and directions,
    origin at voxel ``low``, so its voxels are the same physical points as the whole grid's there."""
    low = np.asarray(low_kji, int)
    shape = tuple(int(b) - int(a) for a, b in zip(low, high_kji))
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = volume.kji_to_ras(low[None].astype(float))[0]
    return Volume(np.zeros(shape, np.uint8), matrix)


def covering_part(volume: Volume, reference: Volume, margin: int = 2) -> Volume:
    """The part of ``volume`` that resampling onto ``reference`` reads: the input voxels around the
    reference grid's corners plus ``margin`` (linear interpolation reads the voxel either side, and
    a point is inside the buffer up to half a voxel beyond its last centre). Resampling it gives
    exactly the whole volume's values, at a fraction of the copying on a large CT."""
    shape = np.array(reference.array.shape) - 1
    corners = np.array([[a, b, c] for a in (0, shape[0]) for b in (0, shape[1]) for c in (0, shape[2])], float)
    inside = volume.ras_to_kji(reference.kji_to_ras(corners))
    low = np.clip(np.floor(inside.min(axis=0)).astype(int) - margin, 0, volume.array.shape)
    high = np.clip(np.ceil(inside.max(axis=0)).astype(int) + margin + 1, 0, volume.array.shape)
    if np.any(high <= low):                      # the grid misses the volume: nothing to read
        return volume
    part = sub_grid(volume, low, high)
    return Volume(volume.array[tuple(slice(a, b) for a, b in zip(low, high))], part.ijk_to_ras, dict(volume.metadata))


def canonical_grid(volume: Volume, spacing: float, points_kji: np.ndarray | None = None,
                   margin_mm=(0.0, 0.0, 0.0)) -> Volume:
    """An empty canonical grid at isotropic ``spacing`` covering the given input voxels (default:
    the whole volume) plus ``margin_mm`` along each canonical axis (left-right, S-I, A-P)."""
    if points_kji is None:
        k, j, i = volume.array.shape
        points_kji = np.array([[a, b, c] for a in (0, k - 1) for b in (0, j - 1) for c in (0, i - 1)], float)
    axes = CANONICAL_AXES_RAS                              # row n = RAS dir of canonical axis n
    projected = volume.kji_to_ras(np.asarray(points_kji, float)) @ axes.T
    low = projected.min(axis=0) - np.asarray(margin_mm, float)
    high = projected.max(axis=0) + np.asarray(margin_mm, float)
    shape_kji = np.maximum(1, np.floor((high - low) / spacing + 1e-6).astype(int) + 1)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = axes[::-1].T * spacing            # columns: dirs of i, j, k
    ijk_to_ras[:3, 3] = low @ axes                         # RAS point of voxel 0
    return Volume(np.zeros(tuple(shape_kji), dtype=np.uint8), ijk_to_ras)


def sagittal_slices(canonical: Volume, centre_x: int | None = None, half_width: int | None = None) -> np.ndarray:
    """Sagittal slices (x, rows S->I, cols A->P) from a canonical volume, optionally a slab."""
    if centre_x is None or half_width is None:
        return canonical.array
    low = max(0, centre_x - half_width)
    return canonical.array[low: centre_x + half_width + 1]


def sagittal_mip(canonical: Volume, centre_x: int, half_width: int) -> np.ndarray:
    """Maximum-intensity projection over a sagittal slab through the spine (paper 001's CT input)."""
    return sagittal_slices(canonical, centre_x, half_width).max(axis=0)


def label_centres(labels: np.ndarray, numbers: list[int]) -> np.ndarray:
    """Mean voxel index (k, j, i) of each label in ``numbers`` (NaN for an absent one), as scipy's
    center_of_mass gives it with unit weights, from one pass over the labelled voxels (a CT grid
    has tens of millions of voxels and a few hundred thousand labelled ones)."""
    where = np.nonzero(labels)
    values = labels[where].astype(np.int64)
    size = max(int(values.max(initial=0)), max(numbers, default=0)) + 1
    counts = np.bincount(values, minlength=size)[numbers].astype(float)
    sums = np.stack([np.bincount(values, weights=axis.astype(float), minlength=size)[numbers] for axis in where], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]
