"""A cohort run: every case once (in this process, or on Dask), a progress bar, then the cohort's tables and report.

`--workers 1` without `--scheduler` runs the cases here, one after another, and needs no Dask; more workers
or a scheduler address go through `dask_backend` (the optional 'cohort' extra). Either way a case is the same
`case.process_case` call, so the outputs do not depend on where it ran. Stopping the run (Ctrl-C) keeps every
finished case (its outputs and marker are on disk) and still writes the tables for what finished.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.options import RunOptions
from .case import DONE, FAILED, MARKER_FOLDER, SKIPPED, CaseRecord, process_case
from .inputs import CaseInput


@dataclass
class CohortRun:
    """The cases of a run and what happened to each (in the cases' order); ``interrupted`` when stopped early."""

    cases: list[CaseInput]
    records: dict[str, CaseRecord] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(record.status == status for record in self.records.values())

    @property
    def ordered(self) -> list[CaseRecord]:
        return [self.records[c.case_id] for c in self.cases if c.case_id in self.records]


class _Progress:
    """tqdm bar with done / skipped / failed and the rate in cases per hour."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="spinelabel run", unit="case", disable=not enabled or total < 2)
        self.start = time.perf_counter()
        self.counts = {DONE: 0, SKIPPED: 0, FAILED: 0}

    def update(self, record: CaseRecord) -> None:
        self.counts[record.status] += 1
        hours = max(time.perf_counter() - self.start, 1e-6) / 3600.0
        finished = self.counts[DONE] + self.counts[FAILED]
        self.bar.set_postfix_str(f"done {self.counts[DONE]}, skipped {self.counts[SKIPPED]}, "
                                 f"failed {self.counts[FAILED]}, {finished / hours:.0f} cases/h", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _clear_timeouts(out_root: Path, cases: list[CaseInput]) -> None:
    """A new run tries again the cases an earlier one stopped for running too long."""
    for case in cases:
        (out_root / MARKER_FOLDER / f"{case.case_id}.timeout").unlink(missing_ok=True)


def _worth_tables(run: CohortRun) -> bool:
    """Tables for a cohort, or for any run that produced something; one input that failed writes nothing
    (its one line says why, and `Bad input -> nothing half-written`)."""
    return len(run.cases) > 1 and bool(run.records) or run.count(DONE) + run.count(SKIPPED) > 0


def run_cohort(cases: list[CaseInput], out_root: str | os.PathLike, options: RunOptions | None = None, *,
               workers: int = 1, scheduler: str | None = None, memory_limit: str | None = None,
               force: bool = False, case_timeout: float | None = None, progress_bar: bool = True,
               on_record: Callable[[CaseRecord], None] | None = None, write_tables: bool = True) -> CohortRun:
    """Run every case into ``out_root/<case>/``; then cohort.csv, cases.csv and report.html in ``out_root``."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if case_timeout is not None and case_timeout <= 0:
        raise InputError(f"--case-timeout must be a positive number of seconds, got {case_timeout:g}")
    options = (options or RunOptions()).validated()
    if options.dicom_seg:   # a missing optional extra stops the run now, in one line naming it
        from ..app.pipeline import check_dicom_seg_inputs

        check_dicom_seg_inputs([], options)
    out_root = Path(out_root)       # created by the first case written: a run where all fails leaves nothing
    _clear_timeouts(out_root, cases)
    run = CohortRun(list(cases))
    progress = _Progress(len(cases), progress_bar)
    start = time.perf_counter()

    def finished(record: CaseRecord) -> None:
        run.records[record.case_id] = record
        progress.update(record)
        if on_record is not None:
            on_record(record)

    try:
        if scheduler or workers > 1:
            from .dask_backend import run_on_cluster

            run_on_cluster(run.cases, str(out_root), options, finished, workers=workers, scheduler=scheduler,
                           memory_limit=memory_limit, force=force, timeout_s=case_timeout)
        else:
            for case in run.cases:
                finished(process_case(case, str(out_root), options, force, case_timeout))
    except KeyboardInterrupt:
        run.interrupted = True
        raise
    finally:
        progress.close()
        run.seconds = round(time.perf_counter() - start, 3)
        if write_tables and _worth_tables(run):
            from .report import write_report
            from .tables import write_cohort_tables

            write_cohort_tables(out_root, run)
            write_report(out_root, run)
    return run
