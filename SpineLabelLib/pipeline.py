"""The stages of a case, one function each, and `run` over many inputs.

load -> detect (finds and names vertebrae, body masks) -> measure -> write outputs. The Slicer
module, the headless batch script and the `spinelabel` command all call these functions.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from .errors import NoSpineFoundError, SpineLabelError
from .result import SpineResult
from .volume import Volume, case_id as case_id_of, load_volume

log = logging.getLogger("spinelabel")

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


@contextmanager
def timed(result: SpineResult, stage: str):
    start = time.perf_counter()
    yield
    result.timings[stage] = round(time.perf_counter() - start, 3)


def load_case(path: str | Path) -> SpineResult:
    """Read an image file or DICOM folder into a new result (image, case id, input hash)."""
    from .summary import sha256_file

    path = Path(path)
    result = SpineResult(case_id_of(path), input_path=str(path))
    with timed(result, "load"):
        result.image = load_volume(path)
        result.input_sha256 = sha256_file(path)
    return result


def case_from_volume(volume: Volume, case_id: str) -> SpineResult:
    """A result for an image already in memory (a Slicer volume node, say)."""
    from .paths import safe_name

    return SpineResult(safe_name(case_id), image=volume)


def detect(result: SpineResult, model: str | None = None, modality: str = "auto",
           progress: Progress | None = None, cancel: Cancel | None = None,
           segmenter: str = "auto", input_mode: str = "slices") -> SpineResult:
    """Find the vertebral bodies, segment them and name them in anatomical order.

    segmenter: "auto" redraws the body masks with the bundled segmenter when installed, "none"
    keeps the detector's masks; or a segmenter model name or folder.
    input_mode: "slices", or "mip" for CT (the detector sees the sagittal MIP, paper 001)."""
    from . import detector, labelling

    with timed(result, "detect"):
        detector.detect(result, model=model, modality=modality, progress=progress, cancel=cancel,
                        segmenter=segmenter, input_mode=input_mode)
    if not result.vertebrae:
        raise NoSpineFoundError("no vertebra found (is this a spine CT or MRI?)")
    with timed(result, "label"):
        labelling.relabel_result(result)
    return result


def measure(result: SpineResult) -> SpineResult:
    """Heights, distances, ratios, Genant grade, volume and radiomics of every labelled body; then the
    spine's alignment (endplates, segmental and regional angles, Cobb angle, listhesis)."""
    from .alignment import measure_alignment
    from .measure import measure_result

    with timed(result, "measure"):
        measure_result(result)
    with timed(result, "alignment"):
        measure_alignment(result)
    return result


def write_outputs(result: SpineResult, out_root: str | Path) -> Path:
    """All files of the output contract into ``out_root/<case>/``, atomically."""
    from .outputs import write_case_outputs

    return write_case_outputs(result, out_root)


def measure_files(image_path: str | Path, segmentation_path: str | Path, out: str | Path,
                  centroids: str | Path | None = None) -> SpineResult:
    """Measure an existing segmentation (`spinelabel measure`): the measurement and distance tables.

    A centroid point list, when given, carries each vertebra's confidence and lock state.
    """
    from .alignment.table import write_alignment_csv
    from .segfile import read_segmentation_as_result
    from .tables import write_distances_csv, write_measurements_csv

    image = load_volume(image_path)
    result = read_segmentation_as_result(segmentation_path, image, case_id_of(image_path))
    if centroids:
        from .markups import read_markups

        for point in read_markups(centroids):
            vertebra = result.by_level(point.level)
            if vertebra is not None:
                vertebra.score, vertebra.locked = point.score, point.locked
    measure(result)
    out = Path(out)
    write_measurements_csv(result, out / f"{result.case_id}.measurements.csv")
    write_distances_csv(result, out / f"{result.case_id}.distances.csv")
    write_alignment_csv(result, out / f"{result.case_id}.alignment.csv")
    return result


def run_case(path: str | Path, out_root: str | Path, model: str | None = None, modality: str = "auto",
             progress: Progress | None = None, cancel: Cancel | None = None,
             segmenter: str = "auto", input_mode: str = "slices") -> SpineResult:
    """load -> detect -> measure -> write for one input."""
    result = load_case(path)
    detect(result, model=model, modality=modality, progress=progress, cancel=cancel, segmenter=segmenter,
           input_mode=input_mode)
    measure(result)
    write_outputs(result, out_root)
    return result


def run(inputs: Iterable[str | Path], out_root: str | Path, model: str | None = None,
        modality: str = "auto", progress_bar: bool = True,
        on_error: Callable[[str, str], None] | None = None, segmenter: str = "auto",
        input_mode: str = "slices") -> int:
    """Run every input; 0 when all succeeded, 1 when some failed (the others are complete)."""
    from tqdm import tqdm

    inputs = [Path(p) for p in inputs]
    failures = 0
    bar = tqdm(inputs, desc="spinelabel run", unit="case", disable=not progress_bar or len(inputs) < 2)
    for path in bar:
        bar.set_postfix_str(path.name[:30])
        try:
            run_case(path, out_root, model=model, modality=modality, segmenter=segmenter, input_mode=input_mode)
        except SpineLabelError as error:
            failures += 1
            (on_error or _log_error)(str(path), str(error))
    return 1 if failures else 0


def _log_error(path: str, message: str) -> None:
    log.error("%s", message if message.startswith(path) else f"{path}: {message}")
