"""`<case>.seg.dcm`: the body masks as a DICOM Segmentation object (BINARY) referencing the source series.

Written with highdicom (the optional `dicom` extra) only when the input was a DICOM series folder:
a SEG must reference the instances it segments, so the reader records the series' file paths in the
volume's metadata (`dicom_files`, in the order of the array's k axis). One segment per labelled
vertebral body, numbered 1..N cranio-caudally, labelled with the level name and carrying the same
SNOMED CT category and type as the `.seg.nrrd` (`segfile.terminology_dict`), so Slicer's DICOM SEG
plugin shows the same names and terminology. Patient and study identifiers are copied from the
source by highdicom; they never reach a file name (the case writer names the file from the case id).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import anatomy
from ..core.errors import InputError
from ..core.paths import atomic_path
from ..core.result import SpineResult

#: where the DICOM reader leaves the series' files, one per k slice, in array order
DICOM_FILES_KEY = "dicom_files"
#: the SEG's series number: far from scanner series numbers so it sorts after them
SERIES_NUMBER = 901
SERIES_DESCRIPTION = "SpineLabel vertebral bodies"


def dicom_source_files(result: SpineResult) -> list[str]:
    """The source series' files of the result's image, or an InputError saying a SEG needs them."""
    files = list((result.image.metadata if result.image is not None else {}).get(DICOM_FILES_KEY) or [])
    if not files:
        raise InputError(f"{result.case_id}: a DICOM SEG needs a DICOM series folder as input "
                         "(it references the source slices)")
    if len(files) != result.image.array.shape[0]:
        raise InputError(f"{result.case_id}: the image has {result.image.array.shape[0]} slices but the "
                         f"DICOM series {len(files)} files")
    return files


def _coded(triple: list[str]):
    """slicerio's [scheme, value, meaning] -> highdicom's CodedConcept."""
    from highdicom.sr import CodedConcept

    scheme, value, meaning = triple
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segment_descriptions(levels: list[str]) -> list:
    """One SegmentDescription per level, segment number = position in ``levels`` + 1."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__
    from .segfile import terminology_dict

    algorithm = hd.AlgorithmIdentificationSequence(name="SpineLabel", version=str(__version__),
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, level in enumerate(levels, start=1):
        terminology = terminology_dict(level)   # the .seg.nrrd's terminology: one source for both files
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=level,
            segmented_property_category=_coded(terminology["category"]),
            segmented_property_type=_coded(terminology["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=_display_colour(level)))
    return descriptions


def _display_colour(level: str):
    """The level's fixed colour (as in the .seg.nrrd); None where this highdicom cannot convert RGB."""
    from highdicom.color import CIELabColor

    if not hasattr(CIELabColor, "from_rgb"):      # added after highdicom 0.22
        return None
    return CIELabColor.from_rgb(*(255.0 * float(c) for c in anatomy.COLOUR_BY_NAME[level]))


def segment_label_map(result: SpineResult) -> tuple[np.ndarray, list[str]]:
    """(k, j, i) array of segment numbers 1..N, and the level of each number, cranial first.

    DICOM wants segment numbers from 1 without gaps; level codes have gaps, so they are renumbered."""
    level_map = result.level_map() if result.instances is not None else np.zeros(result.image.array.shape, np.uint8)
    present = {int(v) for v in np.unique(level_map)} - {0}
    levels = sorted((anatomy.name_of(code) for code in present), key=anatomy.order_index)
    numbers = np.zeros(max(present, default=0) + 1, dtype=np.uint8)
    for number, level in enumerate(levels, start=1):
        numbers[anatomy.code_of(level)] = number
    return numbers[level_map], levels


def _read_sources(files: list[str]) -> list:
    import pydicom

    # Pixel data is not needed to reference a slice or copy its geometry; leaving it saves memory.
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]


def build_segmentation(result: SpineResult):
    """The highdicom Segmentation for a result whose image came from a DICOM series."""
    import highdicom as hd

    from .. import __version__

    files = dicom_source_files(result)
    labels, levels = segment_label_map(result)
    if not levels:
        raise InputError(f"{result.case_id}: no labelled vertebral body to write as DICOM SEG")
    sources = _read_sources(files)
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape[1:] != (rows, columns):
        raise InputError(f"{result.case_id}: mask grid {labels.shape[1:]} differs from the DICOM slices "
                         f"({rows} rows, {columns} columns)")
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,                           # label-map style: frame k <-> source file k
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(levels),
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="SpineLabel", manufacturer_model_name="SpineLabel",
        software_versions=str(__version__), device_serial_number="0",
        series_description=SERIES_DESCRIPTION, content_label="VERTEBRAE",
        content_description="Vertebral bodies named by level",
    )


def write_dicom_seg(result: SpineResult, path: str | os.PathLike) -> Path:
    """Write `<case>.seg.dcm` (an InputError, and no file, when the input was not a DICOM series)."""
    path = Path(path)
    segmentation = build_segmentation(result)
    with atomic_path(path) as tmp:
        segmentation.save_as(str(tmp))
    return path


def files_in_slice_order(files, volume) -> list[str]:
    """The series' files ordered along the volume's k axis (a SEG's frame k must be slice k).

    A viewer such as Slicer lists a loaded series' instances in its own order; each file's position
    (ImagePositionPatient, LPS) is mapped into the volume's grid and the files sorted by k. An
    InputError when the files are not one per slice of this volume."""
    import pydicom

    files = [str(f) for f in files]
    if len(files) != volume.array.shape[0]:
        raise InputError(f"the DICOM series has {len(files)} files but the volume {volume.array.shape[0]} slices")
    positions = []
    for path in files:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        if "ImagePositionPatient" not in dataset:
            raise InputError(f"{path}: no ImagePositionPatient; cannot place the slice")
        lps = np.asarray([float(x) for x in dataset.ImagePositionPatient])
        positions.append(lps * np.array([-1.0, -1.0, 1.0]))              # LPS -> RAS
    k = volume.ras_to_kji(np.asarray(positions))[:, 0]
    if np.max(np.abs(k - np.round(k))) > 0.1 or len(set(np.round(k).astype(int))) != len(files):
        raise InputError("the DICOM files do not lie one per slice on the volume's grid")
    return [files[i] for i in np.argsort(k)]


def export_dicom_seg(result: SpineResult, files, out_folder: str | os.PathLike) -> Path:
    """`<out>/<case>.seg.dcm` for a result whose image came from the DICOM files ``files`` (any order):
    the panel's "Export DICOM SEG" (the case's files are found in Slicer's DICOM database)."""
    result.image.metadata[DICOM_FILES_KEY] = files_in_slice_order(files, result.image)
    return write_dicom_seg(result, Path(out_folder) / f"{result.case_id}.seg.dcm")
