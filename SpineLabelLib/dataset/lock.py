"""Exclusive lock on a dataset folder: fcntl.flock on POSIX, an O_EXCL lock file where fcntl is absent."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..core.errors import SpineLabelError
from .layout import LOCK_NAME, _utc_now

try:  # POSIX; absent on Windows (Slicer there), where an O_EXCL lock file is used instead
    import fcntl
except ImportError:  # pragma: no cover - the fallback is tested by setting this module's fcntl to None
    fcntl = None

LOCK_TIMEOUT_S = 120.0
STALE_EXCL_LOCK_S = 3600.0          # O_EXCL fallback only: a lock file older than this is a crashed export


class DatasetLockedError(SpineLabelError):
    """Another export holds the dataset lock for longer than the timeout."""


@contextlib.contextmanager
def dataset_lock(dataset_dir: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S):
    """Exclusive lock on a dataset folder, waiting up to ``timeout`` seconds.

    POSIX: ``fcntl.flock`` on ``<dataset>/.lock`` (released by the kernel when the process dies, so a
    killed export never blocks the next). Without fcntl (Windows): a ``.lock.excl`` file created
    with O_EXCL and removed on exit; one left by a killed process is taken over after
    STALE_EXCL_LOCK_S seconds (Windows offers no safe liveness test for another pid).
    """
    dataset = Path(dataset_dir)
    if fcntl is not None:
        fd = os.open(dataset / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait_for(lambda: _try_flock(fd), timeout, dataset)
            yield
        finally:
            os.close(fd)   # closing the descriptor releases the flock
        return
    excl = dataset / (LOCK_NAME + ".excl")
    _wait_for(lambda: _try_create_exclusive(excl), timeout, dataset)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            excl.unlink()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _try_create_exclusive(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > STALE_EXCL_LOCK_S:
                path.unlink()
        return False
    os.write(fd, f"{os.getpid()} {_utc_now()}\n".encode())
    os.close(fd)
    return True


def _wait_for(try_once, timeout: float, dataset: Path) -> None:
    deadline = time.monotonic() + timeout
    while not try_once():
        if time.monotonic() >= deadline:
            raise DatasetLockedError(f"{dataset}: another export is running (lock not free after {timeout:g} s)")
        time.sleep(0.05)
