"""Where a family's seconds go on one case, stage by stage; prints JSON.

    python bench/stage_times.py [--families dense,ensemble] [--case ct-C3-L5-ct] [--threads 1] [--repeat 2]

The case is one of bench/robustness.py's phantoms (default: the C3-L5 CT, the slowest case of the
robustness suites for every family). Per family: the best of ``--repeat`` runs of the detection
and naming stages (as bench/families.py times them, models loaded first) in wall and CPU seconds
(CPU: this process, all threads), each stage's wall seconds (``result.timings``), and the 1-min
load average before the run: the machine is shared, so wall seconds depend on the other jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
import robustness  # noqa: E402


def time_family(family: str, image, threads: int, repeat: int) -> dict:
    import torch

    from SpineLabelLib.app.pipeline import Pipeline, find_bodies, naming_stages
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.core.result import SpineResult
    from SpineLabelLib.stages.base import RunContext

    os.environ["SPINELABEL_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    families.load_models_first(family)
    options = RunOptions(model=families.FAMILIES[family])
    runs = []
    for _ in range(repeat):
        load = os.getloadavg()[0]
        result = SpineResult("case", image=image)
        wall, cpu = time.time(), time.process_time()
        find_bodies(result, options)
        Pipeline(naming_stages()).run(result, RunContext(options))
        runs.append({"seconds": round(time.time() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                     "loadavg_1min": round(load, 2), "stages": {k: round(v, 2) for k, v in result.timings.items()},
                     "levels": [v.level for v in result.vertebrae]})
    return min(runs, key=lambda r: r["cpu_seconds"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="dense,ensemble")
    parser.add_argument("--case", default="ct-C3-L5-ct")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    image = next(im for case, im, _ in robustness.CASES["phantoms"](None) if case == args.case)
    out = {"case": args.case, "torch_threads": args.threads, "cpu_count": os.cpu_count(),
           "families": {f: time_family(f, image, args.threads, args.repeat) for f in args.families.split(",")}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
