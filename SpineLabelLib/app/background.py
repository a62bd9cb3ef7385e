"""Run detection and measurement in a separate Python process, so Slicer's window never freezes.

Why a process and not a thread or a timer-driven loop: a torch forward pass holds the CPU for seconds
in one call, so cooperative stepping would still freeze the GUI; Python threads inside Slicer only
progress while the main thread runs Python; a process is truly parallel, can be cancelled at any
moment by killing it (with its children: `PythonSlicer` is a launcher), and a crash or out-of-memory
in it cannot take Slicer down. The exchange is through files in a private temporary folder:

    job.json + input.npz  --worker-->  progress.json (rewritten atomically), status.json, result.npz
(arrays + JSON, no pickled objects)

No pipes: nothing can block on a full pipe buffer, and `poll()` is cheap enough for a 200 ms timer.
No Qt and no `slicer` import, so it is tested with plain Python.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:                  # this file also runs as the worker script: no package imports at load
    from SpineLabelLib.core.options import RunOptions

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


@dataclass
class Status:
    state: str
    fraction: float = 0.0
    message: str = ""


class BackgroundRun:
    """One detection job in a child process: `start()`, then `poll()` until not running, then `result()`.

    Either an in-memory ``volume`` (a Slicer volume node's image; the result comes back), or a file or
    DICOM folder ``input_path`` whose outputs the child writes into ``out`` (`pipeline.run_case`, the
    output contract of `spinelabel run`); the panel's folder batch runs one of these per input."""

    def __init__(self, volume, case_id: str, options: RunOptions | None = None, python: str | None = None, *,
                 input_path: str | os.PathLike | None = None, out: str | os.PathLike | None = None):
        from SpineLabelLib.core.options import RunOptions   # absolute: this file also runs as the worker script

        if (volume is None) == (input_path is None) or (input_path is not None and out is None):
            raise ValueError("BackgroundRun needs a volume, or an input path and an output folder")
        self.volume, self.case_id = volume, case_id
        self.input_path = None if input_path is None else str(input_path)
        self.out = None if out is None else str(out)
        self.options = (options or RunOptions()).validated()
        self.python = python or sys.executable       # PythonSlicer inside Slicer
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None
        self._final: Status | None = None

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="spinelabel-"))
        if self.volume is not None:
            np.savez(self.folder / "input.npz", array=self.volume.array, ijk_to_ras=self.volume.ijk_to_ras)
        job = {"case_id": self.case_id, "options": self.options.to_dict(), "engine_root": str(Path(__file__).resolve().parents[2]),
               "sys_path": [p for p in sys.path if p], "input_path": self.input_path, "out": self.out}
        (self.folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        options = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        with open(self.folder / "log.txt", "wb") as log:
            self.process = subprocess.Popen([self.python, str(Path(__file__).resolve()), str(self.folder)],
                                            stdout=log, stderr=subprocess.STDOUT, **options)

    def poll(self) -> Status:
        if self._final is not None:
            return self._final
        if self.process is None:
            return Status(FAILED, 0.0, "not started")
        code = self.process.poll()
        if code is None:
            progress = _read_json(self.folder / "progress.json") or {}
            return Status(RUNNING, float(progress.get("fraction", 0.0)), str(progress.get("message", "")))
        status = _read_json(self.folder / "status.json") or {}
        if code == 0 and status.get("state") == DONE:
            self._final = Status(DONE, 1.0, "done")
        else:
            self._final = Status(FAILED, 1.0, status.get("message") or self._log_tail() or f"worker exit {code}")
        return self._final

    def wait(self, timeout: float | None = None) -> Status:
        """Block until the job ends (console and tests)."""
        if self.process is not None:
            self.process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        """Stop now: kill the worker and everything it started."""
        if self.process is not None and self.process.poll() is None:
            if os.name == "posix":
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
            self.process.wait()
        self._final = Status(CANCELLED, 0.0, "cancelled")

    def result(self):
        """The finished `SpineResult` (written by our own worker into our private folder)."""
        if self.poll().state != DONE:
            raise RuntimeError("the background run has not finished successfully")
        if self.input_path is not None:
            raise RuntimeError("a file job writes its outputs into its output folder; it returns no result")
        from ..core.result import load_snapshot

        return load_snapshot(self.folder / "result.npz")

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.cancel()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "log.txt").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- the worker (child process) ---------------------------------------------------------------
def _worker(folder: Path) -> int:
    from SpineLabelLib.app import pipeline
    from SpineLabelLib.core.errors import SpineLabelError
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.core.paths import atomic_path, atomic_write_text
    from SpineLabelLib.core.result import save_snapshot
    from SpineLabelLib.core.volume import Volume, validate

    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))

    def progress(fraction: float, message: str) -> None:
        atomic_write_text(folder / "progress.json", json.dumps({"fraction": fraction, "message": message}))

    try:
        progress(0.0, "detecting vertebrae")
        options = RunOptions.from_dict(job["options"])
        if job.get("input_path"):           # a file or DICOM folder: the output contract into `out`
            pipeline.run_case(job["input_path"], job["out"], options, progress=progress)
            atomic_write_text(folder / "status.json", json.dumps({"state": DONE}))
            return 0
        data = np.load(folder / "input.npz")
        result = pipeline.case_from_volume(validate(Volume(data["array"], data["ijk_to_ras"])), job["case_id"])
        pipeline.analyse(result, options, progress=progress)
        with atomic_path(folder / "result.npz") as tmp:
            save_snapshot(result, tmp)
        atomic_write_text(folder / "status.json", json.dumps({"state": DONE}))
        return 0
    except SpineLabelError as error:
        atomic_write_text(folder / "status.json", json.dumps({"state": FAILED, "message": str(error)}))
        return 1
    except Exception as error:     # a bug: one line for the user, the traceback in log.txt
        import traceback

        traceback.print_exc()
        atomic_write_text(folder / "status.json", json.dumps(
            {"state": FAILED, "message": f"internal error: {type(error).__name__}: {error}"}))
        return 1


if __name__ == "__main__":
    _folder = Path(sys.argv[1])
    _job = json.loads((_folder / "job.json").read_text(encoding="utf-8"))
    # Run as a file: not this folder (its modules are package modules), but the engine's root first,
    # then the parent's import paths this interpreter lacks (a test's fixtures, say).
    sys.path[0] = _job["engine_root"]
    sys.path += [p for p in _job.get("sys_path", []) if p not in sys.path]
    sys.exit(_worker(_folder))
