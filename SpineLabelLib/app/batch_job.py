"""Many cases in the background, one child process at a time: the panel's "Apply to all volumes in the
scene" and "Apply to a folder".

Each case is one `BackgroundRun` (so cancel, progress and the one-line failure work as for one case);
`poll()` is called from the panel's timer, moves on to the next case when one ends, and gives one
progress over all cases. A case that fails is recorded and the others still run. For scene volumes,
``on_done(case, job)`` is called on the caller's thread as each case finishes (the panel puts its
result into the scene there); folder cases write their outputs themselves. No Qt, no `slicer`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .background import CANCELLED, DONE, FAILED, RUNNING, BackgroundRun, Status

#: the cohort report another tool may write into the output folder; the panel opens it when present
COHORT_REPORT = "report.html"
#: image files a folder batch picks up (DICOM series are the folder's sub-folders)
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class BatchCase:
    """One case: an in-memory volume (``volume``, e.g. a scene node's image, ``key`` = its node id) or
    an input file/folder (``path``)."""

    name: str
    volume: Any = None
    path: str | None = None
    key: str = ""


@dataclass
class CaseOutcome:
    name: str
    state: str          # DONE, FAILED or CANCELLED
    message: str = ""


@dataclass
class BatchStatus:
    state: str
    fraction: float
    message: str
    outcomes: list[CaseOutcome] = field(default_factory=list)


def folder_inputs(folder: str | os.PathLike) -> list[Path]:
    """The cases of an input folder: its image files and its DICOM series sub-folders, sorted by name."""
    from ..core.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found = [p for p in sorted(folder.iterdir())
             if (p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)) or (p.is_dir() and any(p.iterdir()))]
    if not found:
        raise InputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) or DICOM folders in it")
    return found


def cases_from_folder(folder: str | os.PathLike) -> list[BatchCase]:
    from ..core.volume import case_id

    return [BatchCase(case_id(p), path=str(p)) for p in folder_inputs(folder)]


class BatchRun:
    """Cases one after another in a child process each; `start()`, `poll()` until not running."""

    def __init__(self, cases: list[BatchCase], options=None, out: str | os.PathLike | None = None,
                 on_done: Callable[[BatchCase, BackgroundRun], None] | None = None, python: str | None = None):
        if not cases:
            raise ValueError("a batch needs at least one case")
        if any(c.path is not None for c in cases) and out is None:
            raise ValueError("cases from files need an output folder")
        self.cases, self.options, self.python = list(cases), options, python
        self.out = None if out is None else Path(out)
        self.on_done = on_done
        self.outcomes: list[CaseOutcome] = []
        self.job: BackgroundRun | None = None
        self._cancelled = False

    # --- running -------------------------------------------------------------------------------
    def start(self) -> None:
        self._start_next()

    def _start_next(self) -> None:
        self.job = None
        while len(self.outcomes) < len(self.cases):
            case = self.cases[len(self.outcomes)]
            try:
                job = BackgroundRun(case.volume, case.name, self.options, self.python,
                                    input_path=case.path, out=self.out if case.path is not None else None)
                job.start()
            except Exception as error:       # e.g. options refused: this case fails, the next may run
                self.outcomes.append(CaseOutcome(case.name, FAILED, _one_line(error)))
                continue
            self.job = job
            return

    def poll(self) -> BatchStatus:
        if self.job is not None:
            status = self.job.poll()
            if status.state == RUNNING:
                return self._status(status)
            self._finish_case(status)
            if not self._cancelled:
                self._start_next()
        return self._status(None)

    def _finish_case(self, status: Status) -> None:
        case, job = self.cases[len(self.outcomes)], self.job
        outcome = CaseOutcome(case.name, status.state, "" if status.state == DONE else status.message)
        if status.state == DONE and self.on_done is not None:
            try:
                self.on_done(case, job)
            except Exception as error:        # showing the result failed: the case failed, the rest run
                outcome = CaseOutcome(case.name, FAILED, _one_line(error))
        job.cleanup()
        self.outcomes.append(outcome)

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> BatchStatus:
        """Block until every case has ended (console and tests)."""
        end = None if timeout is None else time.monotonic() + timeout
        status = self.poll()
        while status.state == RUNNING:
            if end is not None and time.monotonic() > end:
                raise TimeoutError("batch still running")
            time.sleep(interval)
            status = self.poll()
        return status

    def cancel(self) -> None:
        """Stop the running case now; the cases not yet started are recorded as cancelled."""
        self._cancelled = True
        if self.job is not None:
            self.job.cancel()
            self.job.cleanup()
            self.job = None
        for case in self.cases[len(self.outcomes):]:
            self.outcomes.append(CaseOutcome(case.name, CANCELLED, "cancelled"))

    # --- reporting -----------------------------------------------------------------------------
    def _status(self, current: Status | None) -> BatchStatus:
        total = len(self.cases)
        finished = len(self.outcomes)
        if self.job is None:
            state = CANCELLED if self._cancelled else (FAILED if self.failures() else DONE)
            return BatchStatus(state, 1.0, self.summary(), list(self.outcomes))
        part = current.fraction if current is not None else 0.0
        name = self.cases[finished].name
        detail = f": {current.message}" if current is not None and current.message else ""
        return BatchStatus(RUNNING, (finished + part) / total, f"case {finished + 1} of {total} ({name}){detail}",
                           list(self.outcomes))

    def failures(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.state == FAILED]

    def summary(self) -> str:
        """"3 cases: 2 done, 1 failed" and one line per failed case."""
        counts = {state: sum(o.state == state for o in self.outcomes) for state in (DONE, FAILED, CANCELLED)}
        head = f"{len(self.cases)} cases: {counts[DONE]} done, {counts[FAILED]} failed"
        if counts[CANCELLED]:
            head += f", {counts[CANCELLED]} cancelled"
        return "\n".join([head, *(f"  {o.name}: {o.message}" for o in self.failures())])

    def report_path(self) -> Path | None:
        """Hook for the cohort runner: ``<out>/report.html`` when something wrote it, else None."""
        if self.out is None:
            return None
        path = self.out / COHORT_REPORT
        return path if path.is_file() else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
