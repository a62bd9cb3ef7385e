"""Detector benchmark: real lumbar MRI validation split and phantom suites; prints JSON.

    python bench/detect_eval.py [--model NAME_OR_DIR] [--suites real,ct,mr,fractures] [--limit N]
        [--segmenter auto|none|NAME_OR_DIR] [--input-mode slices|mip]

Metrics per suite (definitions in SpineLabelLib/training/evaluation.py, shared with training validation):
  recall        ground-truth bodies matched by a detected body (3-D Dice >= 0.5)
  precision     detected bodies matching a ground-truth body, counting only detections inside the
                annotated superior-inferior range (real MRI labels only L1-L5 or T11-L5; a correctly
                found T12 or sacrum is not a false positive); precision_all counts every detection
  id_rate       VerSe identification: a detection labelled L identifies ground-truth body L when that is
                the ground-truth body closest to it and lies < 20 mm away (after the order-respecting
                labelling; id_rate_argmax uses the detector's own most probable class)
  loc_error_mm  centroid distance for matched bodies
  dice          per matched body on the input grid (mean; dice_min the worst)
  ap75_body / map75_levels  2-D average precision at mask IoU 0.75 on sagittal slices through the
                spine (class-agnostic, and averaged over levels with the class required)
  seconds, cpu_seconds, peak_rss_gb per case (the machine is shared; cpu_seconds is load-independent)
Data: ../shared/data/mri-lumbar (MyoSegmenTUM vb3, Zukic et al. vb2), fixed split
SpineLabelLib.models.maskrcnn.data.split_real_cases (every 4th case in name order is validation).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from report import write_report  # bench/report.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.core.result import SpineResult  # noqa: E402
from SpineLabelLib.core.volume import Volume, load_volume, resample_to_canonical  # noqa: E402
from SpineLabelLib.training import evaluation  # noqa: E402

MRI = REPO.parent / "shared" / "data" / "mri-lumbar"


# --- cases ------------------------------------------------------------------------------------
def real_cases(limit: int | None):
    from SpineLabelLib.models.maskrcnn.data import split_real_cases

    names = sorted(p.name[: -len("_mri.nii.gz")] for p in MRI.glob("*_mri.nii.gz"))
    _, validation = split_real_cases(names)
    for name in validation[:limit]:
        yield name, load_volume(MRI / f"{name}_mri.nii.gz"), load_volume(MRI / f"{name}_seg.nii.gz").array


PHANTOM_SUITES = {
    # name: list of (levels, modality, fractures, lordosis) -- seeds below 1000 were never trained on
    "ct": [("C3-T5", "ct", {}, -10), ("T4-T12", "ct", {}, -30), ("T10-L5", "ct", {}, 35),
           ("C3-L5", "ct", {}, 20), ("T8-S1", "ct", {}, 25), ("C5-T9", "ct", {}, -20)],
    "mr": [("T10-S1", "t2", {}, 35), ("T11-S1", "t1", {}, 30), ("C2-T4", "t2", {}, -5), ("T5-L2", "t1", {}, -25)],
    "fractures": [("T9-L4", "ct", {"T12": ("wedge", 35), "L2": ("biconcave", 30)}, 10),
                  ("T10-L5", "t2", {"L1": ("crush", 40)}, 30)],
}


def phantom_cases(suite: str, limit: int | None):
    from SpineLabelLib.phantom import generate_phantom

    for seed, (span, modality, fractures, lordosis) in enumerate(PHANTOM_SUITES[suite][:limit], start=11):
        levels = anatomy.parse_level_range(span)
        phantom = generate_phantom(levels, modality, spacing=(0.9, 0.9, 2.0), seed=seed, fractures=fractures,
                                   lordosis_deg=lordosis, rotation_deg=(6.0, -4.0, 3.0), lateral_fov_mm=160)
        yield f"{suite}-{span}-{modality}", phantom.image, phantom.labels.array


# --- metrics ----------------------------------------------------------------------------------
def evaluate_case(result: SpineResult, truth_codes: np.ndarray, argmax_levels: list[str]) -> dict:
    """The case's row: the shared rules of SpineLabelLib.training.evaluation, plus identification
    with the detector's own most probable levels (``argmax_levels``, one per masked detection)."""
    case = evaluation.evaluate_case(result, truth_codes)
    truth = evaluation.truth_bodies(result.image, truth_codes)
    scored = [v for v in result.vertebrae if v.instance]
    argmax_hits = evaluation.identified(np.array([b.centroid_ras for b in truth]), [b.level for b in truth],
                                        np.array([v.centroid_ras for v in scored]), argmax_levels)
    return {
        "truth": case.bodies, "detected": case.detected, "inside_range": case.inside_range,
        "matched": case.found, "matched_inside": case.matched_inside, "matched_pred": case.matched_detections,
        "identified": case.identified, "identified_argmax": int(argmax_hits.sum()),
        "bodies": [{"level": m.level, "dice": m.dice, "loc_error_mm": m.loc_error_mm} for m in case.matches],
        "evaluation": case,
    }


def slice_detections(network, image: Volume, truth_codes: np.ndarray, modality: str, every: int = 3):
    """2-D detections and truth on canonical sagittal slices through the labelled bodies."""
    from SpineLabelLib.models.maskrcnn.data import normalise_intensity
    from SpineLabelLib.models.maskrcnn.infer import predict_slices, slice_stack, torch_threads

    config = network.config
    canonical = resample_to_canonical(image, config.spacing_mm)
    labels = resample_to_canonical(image.with_array(truth_codes.astype(np.uint8)), config.spacing_mm, label=True).array
    intensity = normalise_intensity(canonical.array, modality)
    present = np.flatnonzero(labels.reshape(labels.shape[0], -1).max(axis=1))
    records = []
    for x in present[::every]:
        with torch_threads(1):
            detections = predict_slices(network, slice_stack(intensity, int(x), config.slice_offset)[None])[0]
        truth = {int(c): labels[x] == c for c in np.unique(labels[x])
                 if c and anatomy.name_of(int(c)) not in evaluation.NOT_SCORED}
        rows = np.flatnonzero(np.isin(labels[x], list(truth)).any(axis=1)) if truth else np.array([0])
        records.append((detections, truth, rows.min() - 6, rows.max() + 6, labels.shape[1:]))
    return records


def average_precision(records, iou_needed: float = 0.75, level: str | None = None) -> float | None:
    scored, total = [], 0
    for detections, truth, top, bottom, shape in records:
        wanted = {c: m for c, m in truth.items() if level is None or anatomy.name_of(c) == level}
        total += len(wanted)
        used = set()
        for d in sorted(detections, key=lambda d: -d.score):
            centre_row = (d.box[1] + d.box[3]) / 2
            if not top <= centre_row <= bottom:
                continue                                      # outside the annotated range
            if level is not None and anatomy.ORDER[int(np.argmax(d.level_probs))] != level:
                continue
            mask = np.zeros(shape, bool)
            col0, row0, col1, row1 = d.box
            mask[row0:row1, col0:col1] = d.mask > 0.5
            best, best_iou = None, 0.0
            for code, t in wanted.items():
                if code in used:
                    continue
                iou = np.logical_and(mask, t).sum() / max(1, np.logical_or(mask, t).sum())
                if iou > best_iou:
                    best, best_iou = code, iou
            hit = best is not None and best_iou >= iou_needed
            if hit:
                used.add(best)
            scored.append((d.score, hit))
    if total == 0:
        return None
    scored.sort(key=lambda s: -s[0])
    hits = np.cumsum([h for _, h in scored]) if scored else np.array([0])
    precision = hits / np.arange(1, len(hits) + 1)
    recall = hits / total
    grid = np.linspace(0, 1, 101)
    return float(np.mean([precision[recall >= r].max() if np.any(recall >= r) else 0.0 for r in grid]))


# --- driver -----------------------------------------------------------------------------------
def run_suite(name: str, cases, loaded, segmenter="auto", input_mode: str = "slices") -> dict:
    from SpineLabelLib.naming import labelling
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.core.options import RunOptions

    rows, records = [], []
    for case_id, image, truth in cases:
        result = SpineResult(case_id, image=image)
        wall, cpu = time.time(), time.process_time()
        mode = input_mode if result_is_ct(image) else "slices"
        find_bodies(result, RunOptions(segmenter=segmenter, input_mode=mode), detector=loaded)
        argmax_by_instance = {v.instance: v.level for v in result.vertebrae}
        labelling.relabel_result(result)
        seconds, cpu_seconds = time.time() - wall, time.process_time() - cpu
        argmax_levels = [argmax_by_instance.get(v.instance, "") for v in result.vertebrae if v.instance]
        row = evaluate_case(result, truth, argmax_levels)
        row.update(case=case_id, seconds=round(seconds, 2), cpu_seconds=round(cpu_seconds, 2),
                   peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                   levels=[v.level for v in result.vertebrae])
        rows.append(row)
        records += slice_detections(loaded.network, image, truth, result.modality)
        print(f"{name} {case_id}: {row['matched']}/{row['truth']} found, {row['identified']} identified, "
              f"{seconds:.1f} s", file=sys.stderr, flush=True)
    return summarise(rows, records)


def result_is_ct(image: Volume) -> bool:
    from SpineLabelLib.stages.locate import guess_modality

    return guess_modality(image) == "ct"


def summarise(rows, records) -> dict:
    levels = sorted({anatomy.name_of(c) for _, t, *_ in records for c in t}, key=anatomy.ORDER.index)
    per_level = [average_precision(records, 0.75, level) for level in levels]
    shared = evaluation.summarise([r["evaluation"] for r in rows])
    argmax = {"id_rate_argmax": _ratio(sum(r["identified_argmax"] for r in rows), shared["bodies"])}
    at = list(shared).index("id_rate") + 1              # the report's key order: beside id_rate
    return {
        **dict(list(shared.items())[:at]), **argmax, **dict(list(shared.items())[at:]),
        "ap75_body": _round(average_precision(records, 0.75)),
        "map75_levels": _mean([p for p in per_level if p is not None]),
        "seconds_max": max(r["seconds"] for r in rows), "seconds_mean": _mean([r["seconds"] for r in rows]),
        "cpu_seconds_max": max(r["cpu_seconds"] for r in rows),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in rows),
        "per_case": [{k: v for k, v in r.items() if k not in ("bodies", "evaluation")} for r in rows],
    }


def _ratio(a, b):
    return round(a / b, 3) if b else None


def _mean(values):
    return round(float(np.mean(values)), 3) if len(values) else None


def _round(value):
    return None if value is None else round(value, 3)


def main(argv=None) -> int:
    from SpineLabelLib.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--suites", default="real,ct,mr,fractures")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--segmenter", default="auto", help="auto (bundled when installed), none, or a model")
    parser.add_argument("--input-mode", default="slices", choices=("slices", "mip"), help="mip applies to CT suites")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "detect_eval.json"))
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    segmenter = args.segmenter if args.segmenter in ("auto", "none") else load_model(args.segmenter)
    report = {"model": loaded.summary(), "segmenter": args.segmenter if isinstance(segmenter, str) else segmenter.summary(),
              "input_mode": args.input_mode, "data": {}, "suites": {}}
    for suite in args.suites.split(","):
        if suite == "real":
            cases = real_cases(args.limit)
            report["data"]["real"] = "../shared/data/mri-lumbar validation split (every 4th case by name)"
        else:
            cases = phantom_cases(suite, args.limit)
            report["data"][suite] = [f"{s} {m} fractures={f}" for s, m, f, _ in PHANTOM_SUITES[suite]]
        report["suites"][suite] = run_suite(suite, cases, loaded, segmenter, args.input_mode)
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
