"""A case through its stages, and `run` over many inputs: the engine's public Python API.

load -> locate bodies -> refine bodies -> disc map -> name levels (`detect`) -> discs -> measure -> write
outputs. Each
stage is a module of `stages/` with a declared input and output on the `SpineResult`; the Slicer
module, the headless batch script and the `spinelabel` command all call these functions.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..core.errors import InputError, SpineLabelError
from ..core.options import RunOptions
from ..stages.base import RunContext, present
from ..core.result import SpineResult
from ..core.volume import Volume, case_id as case_id_of, load_volume

log = logging.getLogger("spinelabel")

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


@contextmanager
def timed(result: SpineResult, stage: str):
    start = time.perf_counter()
    yield
    result.timings[stage] = round(time.perf_counter() - start, 3)


class Pipeline:
    """Stages run in order on one result: each is timed, its declared input checked, its progress
    mapped into its share of the run's progress (MONAI Label's multi-stage infer pipelines and
    nnU-Net's predictor are the model)."""

    def __init__(self, stages) -> None:
        self.stages = list(stages)

    def run(self, result: SpineResult, context: RunContext) -> SpineResult:
        total = sum(stage.share for stage in self.stages) or 1.0
        done = 0.0
        for stage in self.stages:
            missing = [item for item in stage.needs if not present(result, item)]
            if missing:
                raise SpineLabelError(f"{result.case_id}: stage {stage.name!r} needs {', '.join(missing)}")
            context.check_cancel()
            offset, width = done / total, stage.share / total
            stage_context = replace(context, progress=_scaled(context.progress, offset, width))
            with timed(result, stage.name):
                stage.run(result, stage_context)
            done += stage.share
        context.report(1.0, "done")
        return result


def _scaled(progress: Progress | None, offset: float, width: float) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(offset + width * min(max(fraction, 0.0), 1.0), message)


def finding_stages(options: RunOptions | None = None) -> list:
    """locate bodies -> refine bodies (-> the dense family's level evidence, for the ensemble)."""
    from ..core.options import ENSEMBLE
    from ..stages.fuse import FuseDenseEvidence
    from ..stages.locate import LocateBodies
    from ..stages.refine import RefineBodies

    stages = [LocateBodies(), RefineBodies()]
    if options is not None and options.model == ENSEMBLE:
        stages.append(FuseDenseEvidence())
    return stages


def naming_stages() -> list:
    """disc map (MRI: the discs between the found bodies, the sacrum's sign) -> name levels."""
    from ..stages.disc_map import MapDiscs
    from ..stages.name_levels import NameLevels

    return [MapDiscs(), NameLevels()]


def detection_stages(options: RunOptions | None = None) -> list:
    """locate bodies -> refine bodies -> disc map -> name levels."""
    return [*finding_stages(options), *naming_stages()]


def measurement_stages() -> list:
    """Body and disc measurements, then the spine's alignment."""
    from ..stages.align import MeasureAlignment
    from ..stages.measure import MeasureBodies, MeasureDiscs

    return [MeasureBodies(), MeasureDiscs(), MeasureAlignment()]


def analysis_stages(options: RunOptions | None = None) -> list:
    """The detection stages, the discs between the named bodies, then measurement: everything up to
    writing the files."""
    from ..stages.discs import SegmentDiscs

    return [*detection_stages(options), SegmentDiscs(), *measurement_stages()]


def load_case(path: str | Path) -> SpineResult:
    """Read an image file or DICOM folder into a new result (image, case id, input hash)."""
    from ..io.summary import sha256_file

    path = Path(path)
    result = SpineResult(case_id_of(path), input_path=str(path))
    with timed(result, "load"):
        result.image = load_volume(path)
        result.input_sha256 = sha256_file(path)
    return result


def case_from_volume(volume: Volume, case_id: str) -> SpineResult:
    """A result for an image already in memory (a Slicer volume node, say)."""
    from ..core.paths import safe_name

    return SpineResult(safe_name(case_id), image=volume)


def detect(result: SpineResult, options: RunOptions | None = None,
           progress: Progress | None = None, cancel: Cancel | None = None, *,
           detector=None, segmenter="options", disc_segmenter="options") -> SpineResult:
    """Find the vertebral bodies, segment them and name them in anatomical order (on MRI weighing the
    discs between them: the sacrum has one above and none below).

    options: model, modality, segmenter ("auto" redraws the body masks with the bundled segmenter
    when installed, "none" keeps the detector's masks) and input mode (`RunOptions`).
    detector / segmenter / disc_segmenter: loaded models to use instead of the options' names
    (evaluation, tests)."""
    context = RunContext((options or RunOptions()).validated(), progress, cancel, detector, segmenter,
                         disc_segmenter)
    return Pipeline(detection_stages(context.options)).run(result, context)


def naming_status(result: SpineResult | None) -> str:
    """How sure the level naming is, in one line (the Slicer status; "levels uncertain: ..." when unsure)."""
    from ..naming.confidence import naming_line

    return naming_line(result.naming if result is not None else None)


def find_bodies(result: SpineResult, options: RunOptions | None = None, progress: Progress | None = None,
                cancel: Cancel | None = None, *, detector=None, segmenter="options") -> SpineResult:
    """locate -> refine only (no naming, no error when nothing is found): for evaluation tools that
    score the detector's own level guesses or name the bodies themselves."""
    context = RunContext((options or RunOptions()).validated(), progress, cancel, detector, segmenter)
    return Pipeline(finding_stages(context.options)).run(result, context)


def analyse(result: SpineResult, options: RunOptions | None = None, progress: Progress | None = None,
            cancel: Cancel | None = None) -> SpineResult:
    """detect, then measure, with one progress over all stages (the Slicer background job)."""
    context = RunContext((options or RunOptions()).validated(), progress, cancel)
    return Pipeline(analysis_stages(context.options)).run(result, context)


def measure(result: SpineResult) -> SpineResult:
    """Heights, distances, ratios, Genant grade, volume and radiomics of every labelled body; then the
    spine's alignment (endplates, segmental and regional angles, Cobb angle, listhesis)."""
    return Pipeline(measurement_stages()).run(result, RunContext(RunOptions()))


def write_outputs(result: SpineResult, out_root: str | Path, writers: dict | None = None,
                  dicom_seg: bool = False) -> Path:
    """All files of the output contract into ``out_root/<case>/``, atomically (`outputs.write_case_outputs`)."""
    from ..io.outputs import write_case_outputs

    return write_case_outputs(result, out_root, writers, dicom_seg=dicom_seg)


def check_dicom_seg_inputs(inputs: Iterable[str | Path], options: RunOptions) -> None:
    """With ``dicom_seg``, refuse (one line) any input that is not a folder, before any case runs:
    a DICOM SEG references its source series, and a run should not half-succeed for a typo."""
    if not options.dicom_seg:
        return
    # A missing optional extra should stop the run now (one line naming it), not after every case's work.
    import highdicom  # noqa: F401
    import pydicom  # noqa: F401

    for path in inputs:
        if not Path(path).is_dir():
            raise InputError(f"{path}: --dicom-seg needs DICOM series folders as inputs, and this is not a folder")


def measure_files(image_path: str | Path, segmentation_path: str | Path, out: str | Path,
                  centroids: str | Path | None = None) -> SpineResult:
    """Measure an existing segmentation (`spinelabel measure`): the measurement, distance, alignment and disc
    tables (discs are the file's disc segments, "L4-L5" or label 100 + code above; none, no rows).

    A centroid point list, when given, carries each vertebra's confidence and lock state.
    """
    from ..alignment.table import write_alignment_csv
    from ..io.segfile import read_segmentation_as_result
    from ..io.tables import write_discs_csv, write_distances_csv, write_measurements_csv

    image = load_volume(image_path)
    result = read_segmentation_as_result(segmentation_path, image, case_id_of(image_path))
    if centroids:
        from ..io.markups import read_markups

        for point in read_markups(centroids):
            vertebra = result.by_level(point.level)
            if vertebra is not None:
                vertebra.score, vertebra.locked = point.score, point.locked
    measure(result)
    out = Path(out)
    write_measurements_csv(result, out / f"{result.case_id}.measurements.csv")
    write_distances_csv(result, out / f"{result.case_id}.distances.csv")
    write_alignment_csv(result, out / f"{result.case_id}.alignment.csv")
    write_discs_csv(result, out / f"{result.case_id}.discs.csv")
    return result


def run_case(path: str | Path, out_root: str | Path, options: RunOptions | None = None,
             progress: Progress | None = None, cancel: Cancel | None = None) -> SpineResult:
    """load -> detect -> measure -> write for one input."""
    options = (options or RunOptions()).validated()
    check_dicom_seg_inputs([path], options)
    result = load_case(path)
    analyse(result, options, progress=progress, cancel=cancel)
    write_outputs(result, out_root, dicom_seg=options.dicom_seg)
    result.view = None                       # the canonical grids are big; the files are written
    return result


def run(inputs: Iterable[str | Path], out_root: str | Path, options: RunOptions | None = None,
        progress_bar: bool = True, on_error: Callable[[str, str], None] | None = None,
        on_case: Callable[[SpineResult], None] | None = None) -> int:
    """Run every input; 0 when all succeeded, 1 when some failed (the others are complete).
    on_case(result) is called after each case that succeeded (the command line prints a line)."""
    from tqdm import tqdm

    inputs = [Path(p) for p in inputs]
    options = (options or RunOptions()).validated()
    check_dicom_seg_inputs(inputs, options)
    failures = 0
    bar = tqdm(inputs, desc="spinelabel run", unit="case", disable=not progress_bar or len(inputs) < 2)
    for path in bar:
        bar.set_postfix_str(path.name[:30])
        try:
            result = run_case(path, out_root, options)
            if on_case is not None:
                on_case(result)
        except SpineLabelError as error:
            failures += 1
            (on_error or _log_error)(str(path), str(error))
    return 1 if failures else 0


def _log_error(path: str, message: str) -> None:
    log.error("%s", message if message.startswith(path) else f"{path}: {message}")
