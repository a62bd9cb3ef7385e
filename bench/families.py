"""Detector families side by side: Mask R-CNN, dense (paper 002) and the ensemble; prints JSON.

    python bench/families.py [--families mask-rcnn,dense,ensemble] [--suites real,real_ct,ct,mr,fractures]
        [--limit N] [--threads 1] [--out bench/out/families.json]
    python bench/families.py --suites robustness      # every suite of bench/robustness.py

Each family runs in its own process on the same cases (so peak memory is that family's own);
per suite the metrics of bench/detect_eval.py (recall, precision, id_rate, loc_error_mm, Dice,
seconds, cpu_seconds, peak_rss_gb) plus identification per region (cervical / thoracic / lumbar)
as in paper 002's Table 1. Suites: real = real lumbar MRI validation split (never trained on),
real_ct = the TotalSegmentator example CT (T12-L5 labels, never trained on), ct / mr / fractures =
the phantom suites of detect_eval.py (seeds never trained on). Any suite of bench/robustness.py
(mri_val, verse012, lidc, discs, synth_heldout, phantoms; `robustness` = all of them) runs from
that script's own case definitions, with its S1 check.

Seconds: per case `seconds` (wall) and `cpu_seconds` (this process's CPU time: all threads, so
with --threads 2 it can exceed the wall time), and per suite their maxima; the models are loaded
before the first case so no case pays for it. The machine's load average is recorded beside them:
wall seconds on a shared machine depend on the other jobs, CPU seconds with one thread much less.
peak_rss_gb: on Linux the case's own peak (VmHWM reset before it; the loaded models, the input
image and its truth are resident and count), elsewhere the process's peak so far.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detect_eval  # noqa: E402  (bench/detect_eval.py: cases and metrics)
import robustness  # noqa: E402  (bench/robustness.py: its suites, one definition)
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
    if suite in robustness.CASES:
        return robustness.CASES[suite](limit)
    return detect_eval.phantom_cases(suite, limit)


def suite_names(text: str) -> list[str]:
    """The comma-separated suites, `robustness` standing for every suite of bench/robustness.py."""
    names = []
    for name in text.split(","):
        names += list(robustness.SUITES) if name == "robustness" else [name]
    known = ("real", "real_ct", *detect_eval.PHANTOM_SUITES, *robustness.CASES)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(known)}, robustness")
    return list(dict.fromkeys(names))


def describe_suite(suite: str):
    if suite in robustness.TRUTH and suite not in detect_eval.PHANTOM_SUITES:
        return f"bench/robustness.py suite {suite} (truth: {robustness.TRUTH[suite]})"
    return [f"{a} {m} fractures={f}" for a, m, f, _ in detect_eval.PHANTOM_SUITES[suite]]


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


def reset_peak_rss() -> bool:
    """Linux: reset this process's peak resident set (VmHWM), so a case's peak is its own and not
    that of an earlier case or of the bench's truth preparation (the lidc truth alone is ~2 GB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gb(reset: bool) -> float:
    """The peak resident set since `reset_peak_rss` (VmHWM), else the process's peak so far."""
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def load_models_first(family: str) -> None:
    """Load (and hash-check) the family's models before the first case: no case pays for it."""
    from SpineLabelLib.models.registry import load_model, segmenter_for
    from SpineLabelLib.stages.fuse import DENSE_MODEL

    load_model(FAMILIES["mask-rcnn"] if family == "ensemble" else FAMILIES[family])
    if family == "ensemble":
        load_model(DENSE_MODEL)
    segmenter_for("auto")


def run_family(family: str, suites: list[str], limit, threads: int = 1, save=None) -> dict:
    """The family on every suite; ``save(out)`` after each suite, so a run stopped late keeps the
    suites it finished."""
    import os

    import torch

    from SpineLabelLib.app.pipeline import Pipeline, find_bodies, naming_stages
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.stages.base import RunContext

    os.environ["SPINELABEL_THREADS"] = str(threads)      # the engine's torch threads (torch_threads)
    torch.set_num_threads(threads)
    load_models_first(family)
    model = FAMILIES[family]
    options = RunOptions(model=model)
    out = {"family": family, "models": [], "torch_threads": threads, "suites": {}}
    for suite in suites:
        rows, regions, s1 = [], {r: [0, 0] for r in REGIONS}, []
        for case_id, image, truth in cases_of(suite, limit):
            load = os.getloadavg()[0]
            result = SpineResult(case_id, image=image)
            reset = reset_peak_rss()
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
            named = robustness.s1_named(result, truth)
            if named is not None:
                s1.append(named)
            row.update(case=case_id, seconds=round(seconds, 2), cpu_seconds=round(cpu_seconds, 2),
                       loadavg_1min=round(load, 2),
                       peak_rss_gb=round(peak_rss_gb(reset), 2), peak_rss_of="case" if reset else "process",
                       levels=[v.level for v in result.vertebrae], s1_named=named)
            rows.append(row)
            out["models"] = result.models
            print(f"{family} {suite} {case_id}: {row['matched']}/{row['truth']} found, {row['identified']} "
                  f"identified, {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU, load {load:.1f}",
                  file=sys.stderr, flush=True)
        summary = detect_eval.summarise(rows, [])
        for key in ("ap75_body", "map75_levels"):          # Mask R-CNN slice metrics: not comparable here
            summary.pop(key, None)
        summary["id_rate_by_region"] = {r: (round(hit / total, 3) if total else None) for r, (total, hit)
                                        in regions.items()}
        summary["bodies_by_region"] = {r: total for r, (total, _) in regions.items()}
        summary["s1_named"] = f"{sum(s1)}/{len(s1)}" if s1 else None
        summary["loadavg_1min_max"] = max(r["loadavg_1min"] for r in rows)
        out["suites"][suite] = summary
        if save is not None:
            save(out)
    return out


def _plain(value):
    """numpy scalars and arrays in the JSON report."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="mask-rcnn,dense,ensemble")
    parser.add_argument("--suites", default="real,real_ct,ct,mr,fractures")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (SPINELABEL_THREADS)")
    parser.add_argument("--one", action="store_true", help="run the single family in this process (internal)")
    parser.add_argument("--reuse", action="store_true", help="reuse a family's result file from an earlier run")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "families.json"))
    args = parser.parse_args(argv)
    suites = suite_names(args.suites)
    parts = Path(args.out).with_suffix("").parent / (Path(args.out).stem + "_parts")
    if args.one:
        # One file per family, rewritten after each suite: families can be re-run or reused one
        # by one (--reuse) and a late failure loses only the suite it was in.
        parts.mkdir(parents=True, exist_ok=True)
        part = parts / f"{args.families}.json"

        def save(out):
            part.write_text(json.dumps(out, default=_plain))

        run_family(args.families, suites, args.limit, args.threads, save)
        return 0
    report = {"data": {"real": "../shared/data/mri-lumbar validation split (every 4th case by name)",
                       "real_ct": "TotalSegmentator example CT (S1-T11 field of view; T12-L5 labels of "
                                  "totalseg_vertebrae_pp_refined, a TotalSegmentator prediction)",
                       **{s: describe_suite(s) for s in suites if s not in ("real", "real_ct")}},
              "torch_threads": args.threads, "cpu_count": os.cpu_count(), "families": {}}
    for family in args.families.split(","):
        part = parts / f"{family}.json"
        if not (args.reuse and part.is_file()):
            part.unlink(missing_ok=True)
            command = [sys.executable, __file__, "--one", "--families", family, "--suites", ",".join(suites),
                       "--threads", str(args.threads), "--out", args.out]
            if args.limit:
                command += ["--limit", str(args.limit)]
            done = subprocess.run(command, text=True)
            if done.returncode != 0 or not part.is_file():
                report["families"][family] = {"error": f"exit status {done.returncode}"}
                continue
        report["families"][family] = json.loads(part.read_text())
    report["table"] = {family: {suite: {k: data["suites"][suite].get(k) for k in
                                        ("id_rate", "loc_error_mm", "recall", "dice", "seconds_max",
                                         "cpu_seconds_max", "loadavg_1min_max", "peak_rss_gb",
                                         "id_rate_by_region", "s1_named")}
                                for suite in suites if suite in data.get("suites", {})}
                       for family, data in report["families"].items()}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
