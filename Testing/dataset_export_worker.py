"""Helper for Testing/test_dataset.py: one export in its own process (concurrency and crash tests).

usage: python dataset_export_worker.py DATASET IMAGE LABELS [--replace] [--wait-for FILE]
Prints the case id; exit 0 on success, 1 on a SpineLabelError (message on stderr). The crash tests set
SpineLabelLib.dataset.CRASH_ENV so the process dies (exit 97) at a named point of the commit.
"""
import sys
import time
from pathlib import Path

from SpineLabelLib.dataset import export_case
from SpineLabelLib.core.errors import SpineLabelError


def main(argv: list[str]) -> int:
    dataset, image, labels = argv[:3]
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
