"""Detector families side by side: Mask R-CNN, dense (paper 002) and the ensemble; prints JSON.

    python bench/families.py [--families mask-rcnn,dense,ensemble] [--suites real,real_ct,ct,mr,fractures]
        [--limit N] [--out bench/out/families.json]

Each family runs in its own process on the same cases (so peak memory is that family's own);
per suite the metrics of bench/detect_eval.py (recall, precision, id_rate, loc_error_mm, Dice,
seconds, cpu_seconds, peak_rss_gb) plus identification per region (cervical / thoracic / lumbar)
as in paper 002's Table 1. Suites: real = real lumbar MRI validation split (never trained on),
real_ct = the TotalSegmentator example CT (T12-L5 labels, never trained on), ct / mr / fractures =
the phantom suites of detect_eval.py (seeds never trained on).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detect_eval  # noqa: E402  (bench/detect_eval.py: cases and metrics)
from report import write_report  # noqa: E402

REPO = detect_eval.REPO
from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.core.result import SpineResult  # noqa: E402
from SpineLabelLib.core.volume import load_volume  # noqa: E402

FAMILIES = {"mask-rcnn": "vertebra-detector", "dense": "vertebra-dense-detector", "ensemble": "ensemble"}
TOTALSEG = REPO.parent / "shared" / "data" / "ct" / "totalsegmentator"
REGIONS = ("cervical", "thoracic", "lumbar")


def real_ct_cases(limit):
    image = load_volume(TOTALSEG / "example_ct.nii.gz")
    labels = load_volume(TOTALSEG / "totalseg_vertebrae_pp_refined.nii.gz").array
    yield "totalseg-example-ct", image, labels


def cases_of(suite: str, limit):
    if suite == "real":
        return detect_eval.real_cases(limit)
    if suite == "real_ct":
        return real_ct_cases(limit)
    return detect_eval.phantom_cases(suite, limit)


def region_identification(result: SpineResult, truth_codes: np.ndarray) -> dict:
    """Per region: ground-truth bodies and how many are identified (VerSe rule, as detect_eval)."""
    from SpineLabelLib.training import evaluation

    predicted = [v for v in result.vertebrae if v.instance]
    points = np.array([v.centroid_ras for v in predicted]) if predicted else np.zeros((0, 3))
    counts = {r: [0, 0] for r in REGIONS}
    for body in evaluation.truth_bodies(result.image, truth_codes):
        region = anatomy.region(body.level)
        counts[region][0] += 1
        if len(points):
            distance = np.linalg.norm(points - body.centroid_ras, axis=1)
            nearest = int(distance.argmin())
            counts[region][1] += bool(distance[nearest] < evaluation.IDENTIFICATION_MM
                                      and predicted[nearest].level == body.level)
    return counts


def run_family(family: str, suites: list[str], limit) -> dict:
    from SpineLabelLib.app.pipeline import Pipeline, find_bodies, naming_stages
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.stages.base import RunContext

    model = FAMILIES[family]
    options = RunOptions(model=model)
    out = {"family": family, "models": [], "suites": {}}
    for suite in suites:
        rows, regions = [], {r: [0, 0] for r in REGIONS}
        for case_id, image, truth in cases_of(suite, limit):
            result = SpineResult(case_id, image=image)
            wall, cpu = time.time(), time.process_time()
            find_bodies(result, options)
            argmax = {v.instance: v.level for v in result.vertebrae}
            if result.vertebrae:             # the naming stage, anchors included, as `spinelabel run` names
                Pipeline(naming_stages()).run(result, RunContext(options))   # disc map (MRI), then naming
            seconds, cpu_seconds = time.time() - wall, time.process_time() - cpu
            row = detect_eval.evaluate_case(result, truth, [argmax.get(v.instance, "") for v in result.vertebrae
                                                            if v.instance])
            for region, (total, hit) in region_identification(result, truth).items():
                regions[region][0] += total
                regions[region][1] += hit
            row.update(case=case_id, seconds=round(seconds, 2), cpu_seconds=round(cpu_seconds, 2),
                       peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                       levels=[v.level for v in result.vertebrae])
            rows.append(row)
            out["models"] = result.models
            print(f"{family} {suite} {case_id}: {row['matched']}/{row['truth']} found, {row['identified']} "
                  f"identified, {seconds:.1f} s", file=sys.stderr, flush=True)
        summary = detect_eval.summarise(rows, [])
        for key in ("ap75_body", "map75_levels"):          # Mask R-CNN slice metrics: not comparable here
            summary.pop(key, None)
        summary["id_rate_by_region"] = {r: (round(hit / total, 3) if total else None) for r, (total, hit)
                                        in regions.items()}
        summary["bodies_by_region"] = {r: total for r, (total, _) in regions.items()}
        out["suites"][suite] = summary
    return out


def _plain(value):
    """numpy scalars and arrays in the JSON report."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="mask-rcnn,dense,ensemble")
    parser.add_argument("--suites", default="real,real_ct,ct,mr,fractures")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--one", action="store_true", help="run the single family in this process (internal)")
    parser.add_argument("--reuse", action="store_true", help="reuse a family's result file from an earlier run")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "families.json"))
    args = parser.parse_args(argv)
    suites = args.suites.split(",")
    parts = Path(args.out).with_suffix("").parent / (Path(args.out).stem + "_parts")
    if args.one:
        # One file per family, written as soon as it is done: families can be re-run or reused
        # one by one (--reuse) and a late failure loses nothing.
        parts.mkdir(parents=True, exist_ok=True)
        text = json.dumps(run_family(args.families, suites, args.limit), default=_plain)
        (parts / f"{args.families}.json").write_text(text)
        return 0
    report = {"data": {"real": "../shared/data/mri-lumbar validation split (every 4th case by name)",
                       "real_ct": "TotalSegmentator example CT (S1-T11 field of view; T12-L5 labels of "
                                  "totalseg_vertebrae_pp_refined, a TotalSegmentator prediction)",
                       **{s: [f"{a} {m} fractures={f}" for a, m, f, _ in detect_eval.PHANTOM_SUITES[s]]
                          for s in ("ct", "mr", "fractures")}},
              "families": {}}
    for family in args.families.split(","):
        part = parts / f"{family}.json"
        if not (args.reuse and part.is_file()):
            part.unlink(missing_ok=True)
            command = [sys.executable, __file__, "--one", "--families", family, "--suites", args.suites,
                       "--out", args.out]
            if args.limit:
                command += ["--limit", str(args.limit)]
            done = subprocess.run(command, text=True)
            if done.returncode != 0 or not part.is_file():
                report["families"][family] = {"error": f"exit status {done.returncode}"}
                continue
        report["families"][family] = json.loads(part.read_text())
    report["table"] = {family: {suite: {k: data["suites"][suite].get(k) for k in
                                        ("id_rate", "loc_error_mm", "recall", "dice", "seconds_max", "peak_rss_gb",
                                         "id_rate_by_region")}
                                for suite in suites if suite in data.get("suites", {})}
                       for family, data in report["families"].items()}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
