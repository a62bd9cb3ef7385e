"""Cases on a Dask distributed cluster: a local one of worker processes, or an existing one by its address.

Both go through one `Client`; every case is one task (`case.process_case`), results come back as they
finish (`as_completed`). A worker process keeps its models loaded between cases (`models.registry`'s cache is
per process; the plugin below loads them when the worker starts and gives torch one thread). A worker that
dies (a crash, the nanny's memory limit) loses only its case: Dask retries it elsewhere up to
`allowed-failures` times, then reports KilledWorker, which becomes that case's one-line reason.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster, as_completed
from distributed.diagnostics.plugin import WorkerPlugin

from ..core.options import RunOptions
from .case import FAILED, CaseRecord, process_case
from .inputs import CaseInput

#: a case whose worker died this many times more than once is given up (its reason: the worker died)
ALLOWED_FAILURES = 1
DEFAULT_MEMORY_LIMIT = "3GB"
#: Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers; setting it switches off glibc's dynamic mmap
#: threshold, so every large array is mmapped and unmapped again, and a case ran 1.5-1.7x slower in a worker
#: than in a plain process (bench/cohort.py). None unsets it (Dask's rule); the thread limits stay.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


class SpineLabelWorker(WorkerPlugin):
    """Set up once per worker process: one torch thread, and the run's models loaded into the process cache."""

    name = "spinelabel-models"

    def __init__(self, options: RunOptions) -> None:
        self.options = options

    def setup(self, worker) -> None:
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
        try:
            from .case import warm_models

            warm_models(self.options)
        except Exception as error:   # noqa: BLE001 - a missing model is reported by each case, with its reason
            logging.getLogger("spinelabel").warning("worker could not preload the models: %s", error)


@contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Dask's INFO lines (workers starting, closing) are not the user's business; errors still show."""
    loggers = [logging.getLogger(name) for name in ("distributed", "dask")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def connect(workers: int, scheduler: str | None, memory_limit: str | None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``workers`` processes."""
    if scheduler:
        with _quiet_dask_logs(), Client(scheduler, timeout="30s") as client:
            yield client
        return
    # A task that killed its worker is retried once, not three times; one case at a time per worker.
    settings = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                "distributed.scheduler.worker-saturation": 1.0, **WORKER_CONFIG}
    with dask.config.set(settings), _quiet_dask_logs():
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client


def _crash_record(case: CaseInput, error: BaseException) -> CaseRecord:
    name = type(error).__name__
    if name == "KilledWorker":
        reason = "its worker died while running it (a crash or the worker memory limit), also on a retry"
    else:
        reason = f"worker error: {name}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return CaseRecord(case.case_id, case.label, FAILED, reason.rstrip(": "))


def run_on_cluster(cases: list[CaseInput], out_root: str, options: RunOptions, on_record: Callable[[CaseRecord], None],
                   *, workers: int, scheduler: str | None, memory_limit: str | None, force: bool,
                   timeout_s: float | None) -> None:
    """Every case as one task; ``on_record`` is called in the caller's process as each one finishes."""
    with connect(workers, scheduler, memory_limit) as client:
        client.register_plugin(SpineLabelWorker(options))
        run_id = uuid.uuid4().hex[:8]
        futures = {client.submit(process_case, case, out_root, options, force, timeout_s, pure=False,
                                 key=f"spinelabel-{run_id}-{n}"): case for n, case in enumerate(cases)}
        try:
            for future, value in as_completed(futures, with_results=True, raise_errors=False):
                case = futures[future]
                if not isinstance(value, CaseRecord):
                    # without raise_errors, a failed future gives its exc_info (type, error, traceback)
                    error = value[1] if isinstance(value, tuple) and len(value) == 3 else value
                    value = _crash_record(case, error)
                on_record(value)
        finally:
            client.cancel(list(futures))
