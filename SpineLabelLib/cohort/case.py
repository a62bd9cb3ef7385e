"""One case of a cohort, as a worker runs it: skipped when done before, else run, isolated, with a deadline.

A case is done when `<out>/<case>/` holds its outputs and the run's marker `<out>/.spinelabel-cohort/<case>.json`
records the same input hash, the same options and the same model hashes (each model named there is looked up
again, so new weights in a model folder rerun the case). The marker is written after the outputs, so a case
stopped half way (Ctrl-C, a killed worker) is simply run again. Every failure becomes a record with a one-line
reason; nothing but KeyboardInterrupt leaves this module.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import SpineLabelError
from ..core.options import RunOptions
from ..core.paths import atomic_write_text
from .inputs import CaseInput

#: hidden folder of --out holding the run's per-case markers
MARKER_FOLDER = ".spinelabel-cohort"
MARKER_FORMAT = "spinelabel-cohort-case-1"
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
#: a case past its deadline that does not stop by itself gets this much longer before its worker is stopped
HARD_STOP_GRACE = (1.5, 30.0)          # factor, seconds: hard stop at timeout * 1.5 + 30 s


@dataclass
class CaseRecord:
    """What happened to one case (a row of cases.csv, with the worker's numbers for the bench)."""

    case_id: str
    input: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    worker: str = ""                   # host:pid of the process that ran it
    peak_memory_mb: float = 0.0        # that process's peak resident memory so far
    model_loads: int = 0               # networks that process has built from weights so far

    def to_dict(self) -> dict:
        return asdict(self)


def marker_path(out_root: str | os.PathLike, case_id: str, kind: str = "json") -> Path:
    return Path(out_root) / MARKER_FOLDER / f"{case_id}.{kind}"


def input_sha256(case: CaseInput) -> str:
    """The input's identity: the file's SHA-256; for one series of a folder, of its files' sorted hashes
    (`io.summary.sha256_file`'s rule for a folder, restricted to the series)."""
    from ..core.volume import dicom_series_files
    from ..io.summary import sha256_file

    if case.series_uid is None:
        return sha256_file(case.path)
    hashes = sorted(sha256_file(f) for f in dicom_series_files(case.path, case.series_uid))
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def _current_sha256(model: dict) -> str | None:
    """The SHA-256 of the weights now installed for a model a marker names (None when it is gone): the
    registry's folder for its name, else the folder the run gave. Only hashed, not loaded: a skip is cheap."""
    from ..models.cards import read_card, sha256_of
    from ..models.registry import list_models

    folders = [card["directory"] for card in list_models() if card["name"] == model["name"]]
    folder = Path(folders[0] if folders else model.get("directory") or "")
    try:
        weights = folder / read_card(folder)["weights"]
        return sha256_of(weights) if folder.parts and weights.is_file() else None
    except (SpineLabelError, KeyError, OSError):
        return None


def is_done(out_root: str | os.PathLike, case: CaseInput, options: RunOptions, input_hash: str) -> bool:
    """Outputs exist for the same input, options and model hashes."""
    try:
        marker = json.loads(marker_path(out_root, case.case_id).read_text(encoding="utf-8"))
        summary = json.loads((Path(out_root) / case.case_id / f"{case.case_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("format") != MARKER_FORMAT or marker.get("input_sha256") != input_hash:
        return False
    if marker.get("options") != options.to_dict() or summary.get("input", {}).get("sha256") != input_hash:
        return False
    return all(_current_sha256(model) == model["sha256"] for model in marker.get("models", []))


def _model_folder(name: str, options: RunOptions) -> str:
    """Where a model a result names lives: the registry's folder for the name, else the folder the options gave."""
    from ..models.cards import read_card
    from ..models.registry import list_models

    for card in list_models():
        if card["name"] == name:
            return card["directory"]
    for choice in (options.model, options.segmenter):
        if choice and Path(choice).is_dir():
            try:
                if read_card(Path(choice))["name"] == name:
                    return str(Path(choice).resolve())
            except SpineLabelError:
                continue
    return ""


def write_marker(out_root: str | os.PathLike, case: CaseInput, options: RunOptions, input_hash: str,
                 models: list[dict]) -> None:
    named = [{"name": m["name"], "sha256": m["sha256"], "directory": _model_folder(m["name"], options)}
             for m in models]
    atomic_write_text(marker_path(out_root, case.case_id), json.dumps(
        {"format": MARKER_FORMAT, "input": case.label, "input_sha256": input_hash, "options": options.to_dict(),
         "models": named}, indent=1) + "\n")


def _in_dask_worker() -> bool:
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
        return True
    except ValueError:
        return False


@contextmanager
def hard_stop(out_root: str | os.PathLike, case: CaseInput, timeout_s: float | None):
    """In a Dask worker, a case far past its deadline (stuck inside one stage) ends its worker process: the
    marker `<case>.timeout` tells the retry to record the timeout instead of running again."""
    if not timeout_s or not _in_dask_worker():
        yield
        return

    def stop() -> None:
        atomic_write_text(marker_path(out_root, case.case_id, "timeout"), f"{timeout_s}\n")
        os._exit(70)

    factor, grace = HARD_STOP_GRACE
    timer = threading.Timer(timeout_s * factor + grace, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def load_input(case: CaseInput):
    """A new result for the case: its image, id and input hash."""
    from ..app.pipeline import timed
    from ..core.result import SpineResult
    from ..core.volume import load_volume

    result = SpineResult(case.case_id, input_path=case.path)
    with timed(result, "load"):
        result.image = load_volume(case.path, series_uid=case.series_uid)
        result.input_sha256 = input_sha256(case)
    return result


def _run(case: CaseInput, out_root: str, options: RunOptions, timeout_s: float | None) -> tuple[str, list[dict]]:
    from ..app.pipeline import analyse, check_dicom_seg_inputs, write_outputs

    check_dicom_seg_inputs([case.path], options)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    result = load_input(case)
    try:
        # A family may report progress; nobody shows it inside a cohort case.
        analyse(result, options, progress=lambda fraction, message: None,
                cancel=(lambda: time.monotonic() > deadline) if deadline else None)
    except SpineLabelError as error:
        if deadline and str(error) == "cancelled":
            raise SpineLabelError(f"ran past --case-timeout ({timeout_s:g} s)") from None
        raise
    write_outputs(result, out_root, dicom_seg=options.dicom_seg)
    return result.input_sha256, result.models


def _one_line(error: BaseException) -> str:
    from ..core.optional import explain_missing

    text = str(error).strip().splitlines()
    if isinstance(error, ModuleNotFoundError) and explain_missing(error):
        return explain_missing(error)
    if isinstance(error, SpineLabelError):
        return text[0] if text else type(error).__name__
    return f"internal error: {type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def process_case(case: CaseInput, out_root: str, options: RunOptions, force: bool = False,
                 timeout_s: float | None = None) -> CaseRecord:
    """Run (or skip) one case; never raises but KeyboardInterrupt. Runs in a Dask worker or in the caller."""
    start = time.perf_counter()
    status, reason = DONE, ""
    try:
        options = options.replace(modality=case.modality).validated() if case.modality else options
        if marker_path(out_root, case.case_id, "timeout").exists():
            raise SpineLabelError(f"ran past --case-timeout ({timeout_s:g} s); its worker was stopped")
        input_hash = input_sha256(case) if Path(case.path).exists() else None
        if input_hash and not force and is_done(out_root, case, options, input_hash):
            status = SKIPPED
        else:
            with hard_stop(out_root, case, timeout_s):
                input_hash, models = _run(case, out_root, options, timeout_s)
            write_marker(out_root, case, options, input_hash, models)
    except KeyboardInterrupt:
        raise
    except MemoryError:
        status, reason = FAILED, "out of memory"
    except Exception as error:     # isolation: any failure of one case is that case's record, not the run's
        status, reason = FAILED, _one_line(error)
    return CaseRecord(case.case_id, case.label, status, reason, round(time.perf_counter() - start, 3),
                      *_process_numbers())


def _process_numbers() -> tuple[str, float, int]:
    import socket

    from ..models.registry import NETWORK_LOADS

    try:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # kilobytes on Linux
    except ImportError:                                                  # Windows
        peak_kb = 0
    return f"{socket.gethostname()}:{os.getpid()}", round(peak_kb / 1024.0, 1), NETWORK_LOADS["count"]


def warm_models(options: RunOptions) -> None:
    """Load the run's models into this process's cache (a worker's start-up), as the stages will ask for them."""
    from ..core.options import ENSEMBLE
    from ..models.registry import load_model, segmenter_for
    from ..stages.fuse import DENSE_MODEL

    load_model(None if options.model == ENSEMBLE else options.model)
    if options.model == ENSEMBLE:
        load_model(DENSE_MODEL)
    segmenter_for(options.segmenter)
