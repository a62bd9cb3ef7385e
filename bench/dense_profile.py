"""Where a detector's time goes on one phantom case (one torch thread, as the benches); prints JSON.

    python bench/dense_profile.py [--model vertebra-dense-detector|vertebra-detector|ensemble]
        [--levels C3-L5] [--modality ct] [--real vb2-06] [--suite lidc] [--out bench/out/dense_profile.json]

The case is the one of bench/detect_eval.py's phantom suites with these levels (same seed, spacing,
rotation, lordosis), so the numbers are those of the bench's slowest CT case; with --real, a case
of the real lumbar MRI validation split instead; with --suite, the first case of that suite of
bench/robustness.py (lidc: the real 512 x 512 chest CT). The whole of
`find_bodies` (locate, refine, and for the ensemble fuse) runs under cProfile with CPU time as its
clock; the report gives, per part, the CPU seconds spent inside it (cumulative, so parts nest:
`level_index` is inside `detect_dense`), the total CPU and wall seconds and the load average (the
machine is shared: wall seconds depend on the other jobs, CPU seconds much less), and the
functions with most CPU time of their own ([name, own s, cumulative s, calls]).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detect_eval  # noqa: E402  (bench/detect_eval.py: the phantom suites)
from report import write_report  # noqa: E402

REPO = detect_eval.REPO

#: (part, function name, file ending): the functions whose cumulative CPU time is reported.
PARTS = [
    ("locate stage", "run", "stages/locate.py"),
    ("dense detector", "_detect", "models/dense/infer.py"),
    ("canonical resample (view)", "at", "core/canonical.py"),
    ("stage 1 column probability", "column_probability", "models/dense/infer.py"),
    ("stage 2 level index", "level_index", "models/dense/infer.py"),
    ("aggregation", "aggregate", "models/dense/aggregate.py"),
    ("masks to the input grid", "to_input_grid", "models/maskrcnn/infer.py"),
    ("mask r-cnn detector", "_detect_volume", "models/maskrcnn/infer.py"),
    ("refine stage", "run", "stages/refine.py"),
    ("segmenter U-Net", "slab_probability", "models/body_unet/infer.py"),
    ("segmenter assignment", "assign_to_bodies", "models/body_unet/infer.py"),
    ("centroids of redrawn masks", "move_centroids", "stages/refine.py"),
    ("fuse stage (ensemble)", "run", "stages/fuse.py"),
    ("all SimpleITK resampling", "resample", "core/volume.py"),
]


def phantom_case(levels: str, modality: str):
    for suite, cases in detect_eval.PHANTOM_SUITES.items():
        for position, (span, kind, fractures, _) in enumerate(cases):
            if span == levels and kind == modality and not fractures:
                cases = detect_eval.phantom_cases(suite, position + 1)
                return list(cases)[-1]
    raise SystemExit(f"no phantom suite case {levels} {modality} in bench/detect_eval.py")


def cumulative(stats: pstats.Stats, name: str, ending: str) -> float | None:
    found = [value[3] for (path, _, function), value in stats.stats.items()
             if function == name and path.replace("\\", "/").endswith(ending)]
    return round(sum(found), 3) if found else None


def top_functions(stats: pstats.Stats, count: int) -> list:
    """The functions with most CPU time of their own (not their callees'): where a speed-up pays."""
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:count]
    return [[f"{Path(path).name}:{line}:{function}", round(value[2], 3), round(value[3], 3), value[1]]
            for (path, line, function), value in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vertebra-dense-detector")
    parser.add_argument("--levels", default="C3-L5")
    parser.add_argument("--modality", default="ct")
    parser.add_argument("--real", default=None, help="a real MRI validation case (e.g. vb2-06) instead of a phantom")
    parser.add_argument("--suite", default=None, help="the first case of a bench/robustness.py suite (e.g. lidc)")
    parser.add_argument("--top", type=int, default=25, help="also list the N functions with most own CPU time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (SPINELABEL_THREADS)")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "dense_profile.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ["SPINELABEL_THREADS"] = str(args.threads)     # the engine's own setting (torch_threads)
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.core.result import SpineResult
    from SpineLabelLib.models.registry import load_model

    if args.suite:
        import robustness  # bench/robustness.py: its suites' cases, one definition

        case_id, image, _ = next(iter(robustness.CASES[args.suite](1)))
    elif args.real:
        case_id, image, _ = next(c for c in detect_eval.real_cases(None) if c[0] == args.real)
    else:
        case_id, image, _ = phantom_case(args.levels, args.modality)
    options = RunOptions(model=args.model)
    for name in ("vertebra-detector", "vertebra-dense-detector", "vertebral-body-segmenter"):
        load_model(name)                                 # loading is not part of a case's time
    find_bodies(SpineResult("warm-up", image=image), options)    # imports and first-call set-up
    result = SpineResult(case_id, image=image)
    load_before = os.getloadavg()
    profile = cProfile.Profile(time.process_time)
    wall, cpu = time.time(), time.process_time()
    profile.enable()
    find_bodies(result, options)
    profile.disable()
    wall, cpu = time.time() - wall, time.process_time() - cpu
    stats = pstats.Stats(profile)
    report = {"case": case_id, "model": args.model, "input_shape": list(image.array.shape),
              "torch_threads": torch.get_num_threads(), "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "levels": [v.level for v in result.vertebrae],
              "cpu_seconds_by_part": {part: cumulative(stats, name, ending) for part, name, ending in PARTS},
              "top_own_cpu_seconds": top_functions(stats, args.top),
              "note": "cumulative CPU seconds under cProfile (parts nest); profiling adds a few per cent"}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
