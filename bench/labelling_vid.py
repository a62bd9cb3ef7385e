"""Benchmark of level assignment (SpineLabelLib.naming.labelling) on the VID keypoint spines; prints one JSON line.

Data: ../shared/data/keypoints/vid (Bürgin et al., MICCAI 2023; CC BY-SA 4.0): ground-truth body keypoints
with levels and realistic detector outputs (missing + superfluous bodies, C/T/L probabilities, no levels),
world LPS mm. Only the Training folder is present here, so a fixed validation split is taken from it:
the spines whose id hashes (SHA-1) to 0 mod 10 (about 10 %); priors are fitted on the other 90 %.

Scenarios (identification rate, VerSe rule: a ground-truth body counts as identified when a point carries
its level, lies < 20 mm from it, and that ground-truth body is the closest one to the point):
  a  ground-truth points, one random locked anchor, no scores
  b  ground-truth points, no anchor, C/T/L probabilities of the nearest prediction (< 20 mm, else uniform)
  c  prediction files as they are (missing + superfluous) with their C/T/L probabilities
  d  random partial fields of view: 4-10 consecutive ground-truth bodies, probabilities as in b
  d_pred  the same crops applied to the prediction files (points within the crop's S range)
  geometry_only  ground-truth points, no scores, no anchor (the documented default)

Anchors (sacrum, ribs, C2) and the naming confidence are measured on the same spines by bench/naming_vid.py.

Usage: python bench/labelling_vid.py [--limit N] [--fit-priors] [--params key=value,...]   (--fit-priors writes
SpineLabelLib/resources/labelling_priors.json from the training part and exits).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from SpineLabelLib.core import anatomy
from SpineLabelLib.core.paths import atomic_write_text
from SpineLabelLib.naming import labelling
from SpineLabelLib.naming.labelling import region_scores_to_level_scores
from SpineLabelLib.training import evaluation

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "keypoints" / "vid"
PRIORS = Path(__file__).resolve().parents[1] / "SpineLabelLib" / "resources" / "labelling_priors.json"
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


#: `LabellingParams` of the run (--params: fields replaced, bench/naming_replay.py's key=value syntax)
PARAMS = labelling.DEFAULT_PARAMS


def assign_levels(*args, **kwargs) -> list[str]:
    return labelling.assign_levels(*args, params=PARAMS, **kwargs)


def is_validation(case: str) -> bool:
    return int(hashlib.sha1(case.encode()).hexdigest(), 16) % 10 == 0


def load_case(case: str) -> dict:
    def bodies(folder):
        items = json.loads((DATA / folder / "Training" / f"{case}.json").read_text())
        return [k for k in items if k["type"]["keypoint_type"] == "body"]
    gt = bodies("KeypointGroundTruthNoSacrum")
    gt.sort(key=lambda k: anatomy.order_index(k["type"]["spine_level"]))
    pred = bodies("KeypointPredictionsNoSacrum")
    return {
        "gt_xyz": np.array([k["coordinates"]["world_space"] for k in gt]).reshape(-1, 3) * LPS_TO_RAS,
        "gt_levels": [k["type"]["spine_level"] for k in gt],
        "pred_xyz": np.array([k["coordinates"]["world_space"] for k in pred]).reshape(-1, 3) * LPS_TO_RAS,
        "pred_ctl": np.array([k["type"]["spine_segment_probabilities"] for k in pred]).reshape(-1, 3),
    }


def identification(gt_xyz, gt_levels, xyz, names) -> tuple[int, int]:
    """(identified, total) by the VerSe rule (SpineLabelLib.training.evaluation.identified)."""
    return int(evaluation.identified(gt_xyz, gt_levels, xyz, list(names)).sum()), len(gt_levels)


def matched_scores(c: dict, xyz: np.ndarray) -> np.ndarray:
    ctl = np.full((len(xyz), 3), 1 / 3)
    if len(c["pred_xyz"]):
        for i, p in enumerate(xyz):
            d = np.linalg.norm(c["pred_xyz"] - p, axis=1)
            if d.min() < 20:
                ctl[i] = c["pred_ctl"][int(np.argmin(d))]
    return region_scores_to_level_scores(ctl)


def crop(c: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a random run of 4-10 consecutive GT bodies, and prediction indices in its S range."""
    n = len(c["gt_levels"])
    size = min(n, int(rng.integers(4, 11)))
    start = int(rng.integers(0, n - size + 1))
    gi = np.arange(start, start + size)
    s = c["gt_xyz"][gi, 2]
    lo, hi = s.min() - 10, s.max() + 10
    pi = np.flatnonzero((c["pred_xyz"][:, 2] >= lo) & (c["pred_xyz"][:, 2] <= hi)) if len(c["pred_xyz"]) else gi[:0]
    return gi, pi


def run_case(c: dict, rng) -> dict[str, tuple[int, int]]:
    gx, gl = c["gt_xyz"], c["gt_levels"]
    out = {}
    anchor = int(rng.integers(len(gl)))
    out["a"] = identification(gx, gl, gx, assign_levels(gx, locked={anchor: gl[anchor]}))
    out["b"] = identification(gx, gl, gx, assign_levels(gx, matched_scores(c, gx)))
    px = c["pred_xyz"]
    names = assign_levels(px, region_scores_to_level_scores(c["pred_ctl"])) if len(px) else []
    out["c"] = identification(gx, gl, px, names)
    gi, pi = crop(c, rng)
    sub = gx[gi]
    out["d"] = identification(sub, [gl[i] for i in gi], sub, assign_levels(sub, matched_scores(c, sub)))
    names = assign_levels(px[pi], region_scores_to_level_scores(c["pred_ctl"][pi])) if len(pi) else []
    out["d_pred"] = identification(sub, [gl[i] for i in gi], px[pi], names)
    out["geometry_only"] = identification(gx, gl, gx, assign_levels(gx))
    if "L6" in gl:
        out["L6_cases_b"] = out["b"]
    return out


def _adjacent(upper: str, lower: str) -> bool:
    """Consecutive bodies: nothing but transitional levels between them."""
    a, b = anatomy.order_index(upper), anatomy.order_index(lower)
    return b > a and all(n in anatomy.TRANSITIONAL for n in anatomy.ORDER[a + 1:b])


def fit_priors(cases: list[str]) -> dict:
    """Median centroid distance per adjacent level pair and the L6 frequency, from training spines."""
    pairs: dict[str, list[float]] = {}
    with_l5 = with_l6 = 0
    residuals = []
    for case in cases:
        c = load_case(case)
        idx = {n: i for i, n in enumerate(c["gt_levels"])}
        with_l5 += "L5" in idx
        with_l6 += "L6" in idx
        logs = []
        present = c["gt_levels"]
        for a, b in zip(present, present[1:]):
            if _adjacent(a, b):
                d = float(np.linalg.norm(c["gt_xyz"][idx[a]] - c["gt_xyz"][idx[b]]))
                pairs.setdefault(f"{a}-{b}", []).append(d)
                logs.append((f"{a}-{b}", np.log(d)))
        residuals.append(logs)
    ordered = sorted(pairs, key=lambda k: anatomy.order_index(k.split("-")[0]))
    spacing = {k: round(float(np.median(pairs[k])), 1) for k in ordered if len(pairs[k]) >= 20}
    within = [lg - np.log(spacing[k]) for logs in residuals for k, lg in logs if k in spacing]
    centred = []
    for logs in residuals:
        r = [lg - np.log(spacing[k]) for k, lg in logs if k in spacing]
        centred += list(np.array(r) - np.mean(r)) if len(r) >= 3 else []
    return {
        "source": "Fitted by bench/labelling_vid.py --fit-priors on the VID vertebra-identification dataset "
                  "(Buergin, Prevost, Stollenga, MICCAI 2023; github.com/ImFusionGmbH/VID-vertebra-identification-dataset, "
                  "CC BY-SA 4.0), ground-truth body keypoints of the training spines outside the bench's validation split "
                  "(sha1(id) % 10 != 0). Aggregate statistics only, no patient data. T13 is not labelled in VID: its "
                  "frequency is a literature-based default.",
        "n_spines": len(cases),
        "spacing_mm": spacing,
        "pair_counts": {k: len(v) for k, v in pairs.items() if k in spacing},
        "step_log_sd_total": round(float(np.std(within)), 3),
        "step_log_sd_within_spine": round(float(np.std(centred)), 3),
        "transitional_frequency": {"L6": round(with_l6 / max(with_l5, 1), 4), "T13": 0.05},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N validation spines")
    parser.add_argument("--fit-priors", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="", help="LabellingParams fields to change, key=value,...")
    parser.add_argument("--split", choices=("validation", "training"), default="validation",
                        help="training: tune on (a sample of) the spines the priors came from")
    args = parser.parse_args()
    global PARAMS
    from naming_replay import parse_pairs

    PARAMS = parse_pairs(args.params, labelling.LabellingParams)
    cases = sorted(Path(f).stem for f in glob.glob(str(DATA / "KeypointGroundTruthNoSacrum" / "Training" / "*.json")))
    if not cases:
        print(json.dumps({"error": f"no VID data under {DATA}"}))
        return 1
    if args.fit_priors:
        priors = fit_priors([c for c in cases if not is_validation(c)])
        atomic_write_text(PRIORS, json.dumps(priors, indent=1) + "\n")
        print(json.dumps({"wrote": str(PRIORS)}))
        return 0
    validation = [c for c in cases if is_validation(c) == (args.split == "validation")]
    if args.limit:
        validation = validation[:args.limit]
    rng = np.random.default_rng(args.seed)
    totals: dict[str, list[int]] = {}
    start = time.perf_counter()
    for case in validation:
        for key, (hit, n) in run_case(load_case(case), rng).items():
            t = totals.setdefault(key, [0, 0, 0, 0])
            t[0] += hit; t[1] += n; t[2] += hit == n; t[3] += 1
    seconds = time.perf_counter() - start
    report = {
        "data": f"VID keypoints (CC BY-SA 4.0), Training folder, {args.split} split (validation = sha1(id)%10==0)",
        "spines": len(validation), "params": args.params or "defaults",
        "identification_rate": {k: round(t[0] / max(t[1], 1), 4) for k, t in totals.items()},
        "spines_fully_correct": {k: round(t[2] / max(t[3], 1), 4) for k, t in totals.items()},
        "vertebrae": {k: t[1] for k, t in totals.items()},
        "seconds_per_assignment": round(seconds / max(1, len(validation) * 6), 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
