"""Helper for Testing/test_dataset.py: one export in its own process (concurrency and crash tests).

usage: python dataset_export_worker.py DATASET IMAGE LABELS [--replace] [--wait-for FILE] [--crash-at POINT]
Prints the case id; exit 0 on success, 1 on a SpineLabelError (message on stderr). ``--crash-at`` makes the
process die (exit 97, no cleanup) at a point of the commit: staged (journal written), history (previous
files moved aside, none placed), placed-1 (first file placed), placed (all placed, no manifest line),
manifest (manifest line written). It wraps the calls the commit makes, so the product carries no hook.
"""
import os
import sys
import time
from pathlib import Path

from SpineLabelLib.core.errors import SpineLabelError
from SpineLabelLib.dataset import export_case, journal
from SpineLabelLib.dataset.layout import STAGING_PREFIX

CRASH_POINTS = ("staged", "history", "placed-1", "placed", "manifest")


def _die() -> None:
    os._exit(97)                         # like a killed process: no exception handlers, no cleanup


def _crash_after_journal() -> None:
    write = journal.atomic_write_text

    def writing(path, text):
        written = write(path, text)
        if Path(path).name == journal.INTENT:
            _die()
        return written

    journal.atomic_write_text = writing


def _staged(path) -> bool:
    return Path(path).parent.name.startswith(STAGING_PREFIX)


def _crash_around_placing(before_first: bool) -> None:
    """Die before the first staged file is placed (all history moves done) or right after it."""
    replace = os.replace

    def replacing(source, target):
        placing = _staged(source) and not _staged(target)      # not a temporary file renamed while staging
        if placing and before_first:
            _die()
        replace(source, target)
        if placing:
            _die()

    os.replace = replacing               # this process only exports, so patching os is contained


def _crash_around_manifest(after: bool) -> None:
    append = journal._append_manifest

    def appending(dataset, entry):
        if after:
            append(dataset, entry)
        _die()

    journal._append_manifest = appending


def crash_at(point: str) -> None:
    if point not in CRASH_POINTS:
        raise SystemExit(f"unknown crash point {point!r}; one of {CRASH_POINTS}")
    if point == "staged":
        _crash_after_journal()
    elif point in ("history", "placed-1"):
        _crash_around_placing(before_first=point == "history")
    else:
        _crash_around_manifest(after=point == "manifest")


def main(argv: list[str]) -> int:
    dataset, image, labels = argv[:3]
    if "--crash-at" in argv:
        crash_at(argv[argv.index("--crash-at") + 1])
    if "--wait-for" in argv:   # start line: both processes begin exporting together
        start = Path(argv[argv.index("--wait-for") + 1])
        while not start.exists():
            time.sleep(0.01)
    try:
        record = export_case(dataset, image, labels, replace="--replace" in argv,
                             model={"name": "test-model", "version": "0"})
    except SpineLabelError as error:
        print(error, file=sys.stderr)
        return 1
    print(record.case_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
