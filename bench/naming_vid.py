"""Benchmark of anchors and naming confidence on the VID keypoint spines; prints one JSON line.

Extends bench/labelling_vid.py (same data, same held-out split: the 183 spines with sha1(id) % 10 == 0 of
the VID Training folder, CC BY-SA 4.0) with what the images would add: anatomical anchor evidence.
VID has body keypoints and realistic detector outputs (missing and superfluous bodies, C/T/L
probabilities) but no images, no sacrum ("NoSacrum") and no ribs, so the anchors are SIMULATED from the
ground-truth levels, with error rates given on the command line (defaults below, stated in the output):
  ribs    each detected body matched (< 20 mm) to a ground-truth T1-T12 body is called rib-bearing
          (P = 0.9) unless missed (--rib-miss, T12 whose ribs are short: --t12-miss); other levels are
          called rib-bearing by mistake at --rib-false; superfluous detections get P = 0.3.
  sacrum  a spine whose ground truth ends at L5 (or L6) is taken to show the sacrum (VID's sources are
          abdominal and spine CT): a first-sacral point is added one L4-L5 step below L5 with
          lumbar-looking C/T/L probabilities (what a detector without a sacrum class says) and, with
          probability --sacrum-hit, sacrum evidence P = 0.9 (else none: the sacrum is missed).
  C2      a detected C2 gets C2 evidence P = 0.9 with probability --c2-hit.
Scenarios (all on the prediction files, i.e. realistic detections):
  full            the whole prediction file with simulated anchors;
  full_no_anchor  the same without any anchor evidence (the labeller before anchors);
  full_no_ribs    anchors without ribs (MRI: sacrum and C2 only);
  crop            a random run of 4-10 consecutive ground-truth bodies (and predictions in its S range),
                  anchors as they fall;
  crop_no_anchor  a random run placed so that no anchor is in view (no C2, no T12/L1 or C7/T1 pair, no L5).
Per spine: every_body_named_right (each ground-truth body with a detection within 20 mm is identified, VerSe
rule) and no_wrong_name (no detected body carries another level's name; a body left unnamed is a detection
miss, not a misnaming). The naming verdict (`naming_confidence`) is judged against no_wrong_name: reported
per scenario and pooled (all but full_no_anchor) are the share of wrongly named spines flagged uncertain
(wrong_flagged), of rightly named ones flagged (right_flagged), and how often confident spines are right. The chosen policy is the one in
`SpineLabelLib.naming_confidence.DEFAULT_POLICY`; --grid adds the sweep used to choose it.

Usage: python bench/naming_vid.py [--limit N] [--seed S] [--grid] [--params key=value,...] [--policy key=value,...]
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labelling_vid  # noqa: E402
from labelling_vid import DATA, is_validation, load_case  # noqa: E402

from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.naming.anchors import AnchorEvidence  # noqa: E402
from SpineLabelLib.naming.labelling import assign_levels, region_scores_to_level_scores  # noqa: E402
from SpineLabelLib.naming.labelling import order_along_spine  # noqa: E402
from SpineLabelLib.naming.confidence import DEFAULT_POLICY, NamingPolicy, alternative_costs, assess  # noqa: E402
from SpineLabelLib.naming.confidence import confidence_from_costs  # noqa: E402

POLICY = DEFAULT_POLICY            # --policy
THORACIC = {f"T{n}" for n in range(1, 13)}
ANCHOR_LEVELS = {"C2", "L5", "L6"}


def nearest_gt(gt_xyz: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Index of the closest ground-truth body per point, -1 when none is within 20 mm."""
    if len(gt_xyz) == 0 or len(xyz) == 0:
        return np.full(len(xyz), -1)
    d = np.linalg.norm(xyz[:, None] - gt_xyz[None], axis=2)
    return np.where(d.min(axis=1) < 20, d.argmin(axis=1), -1)


def with_sacrum(c: dict, rng, args) -> dict:
    """Add a first-sacral ground truth and detection below L5 when the spine ends there (see module doc)."""
    c = dict(c, gt_levels=list(c["gt_levels"]), sacrum_evidence=None)
    last = c["gt_levels"][-1] if c["gt_levels"] else ""
    if last not in ("L5", "L6") or len(c["gt_levels"]) < 2:
        return c
    step = c["gt_xyz"][-1] - c["gt_xyz"][-2]
    s1 = c["gt_xyz"][-1] + step
    c["gt_xyz"] = np.vstack([c["gt_xyz"], s1])
    c["gt_levels"].append("S1")
    c["pred_xyz"] = np.vstack([c["pred_xyz"], s1 + rng.normal(0, 2.0, 3)])
    c["pred_ctl"] = np.vstack([c["pred_ctl"], [0.02, 0.03, 0.95]])
    c["sacrum_evidence"] = 0.9 if rng.random() < args.sacrum_hit else None   # missed: no sacrum score
    return c


def simulate_evidence(c: dict, xyz: np.ndarray, rng, args, ribs: bool = True) -> AnchorEvidence:
    match = nearest_gt(c["gt_xyz"], xyz)
    ev = AnchorEvidence.empty(len(xyz))
    for i, g in enumerate(match):
        level = c["gt_levels"][g] if g >= 0 else ""
        if ribs:
            if not level:
                ev.rib[i] = 0.3
            elif level in THORACIC:
                miss = args.t12_miss if level == "T12" else args.rib_miss
                ev.rib[i] = 0.2 if rng.random() < miss else 0.9
            else:
                ev.rib[i] = 0.8 if rng.random() < args.rib_false else 0.1
        if level == "S1" and c.get("sacrum_evidence") is not None:
            ev.sacrum[i] = c["sacrum_evidence"]
        if level == "C2" and rng.random() < args.c2_hit:
            ev.c2[i] = 0.9
    return ev


def judged(c: dict, xyz: np.ndarray, names: list[str], gi: np.ndarray) -> tuple[int, int, bool, bool]:
    """(identified, detected ground-truth bodies, every detected one named right, no detected body named
    a wrong level) over the bodies gi. The last is what the naming verdict is about: a body left unnamed
    (judged a stray detection) is a detection miss, counted in the first two, not a misnaming."""
    gt_xyz = c["gt_xyz"][gi]
    levels = [c["gt_levels"][g] for g in gi]
    match = nearest_gt(gt_xyz, xyz)
    detected = sorted(set(int(m) for m in match if m >= 0))
    hits = 0
    for g in detected:
        if any(names[p] == levels[g] for p in np.flatnonzero(match == g)):
            hits += 1
    misnamed = any(names[p] and m >= 0 and names[p] != levels[m] for p, m in enumerate(match))
    return hits, len(detected), hits == len(detected) and len(detected) > 0, not misnamed and any(names)


def random_run(c: dict, rng, avoid_anchors: bool) -> np.ndarray | None:
    levels = c["gt_levels"]
    n = len(levels)
    for _ in range(50):
        size = min(n, int(rng.integers(4, 11)))
        start = int(rng.integers(0, n - size + 1))
        window = levels[start:start + size]
        if not avoid_anchors:
            return np.arange(start, start + size)
        if ANCHOR_LEVELS & set(window) or "S1" in window:
            continue
        if ("T12" in window and "L1" in window) or ("C7" in window and "T1" in window):
            continue
        return np.arange(start, start + size)
    return None


def in_range(c: dict, gi: np.ndarray) -> np.ndarray:
    s = c["gt_xyz"][gi, 2]
    lo, hi = s.min() - 10, s.max() + 10
    return np.flatnonzero((c["pred_xyz"][:, 2] >= lo) & (c["pred_xyz"][:, 2] <= hi))


def run_scenario(c: dict, pi: np.ndarray, gi: np.ndarray, evidence: AnchorEvidence | None) -> dict | None:
    xyz = c["pred_xyz"][pi]
    if len(xyz) < 2:
        return None
    scores = region_scores_to_level_scores(c["pred_ctl"][pi])
    params = labelling_vid.PARAMS
    names = assign_levels(xyz, scores, evidence=evidence, params=params)
    hit, total, all_named, right = judged(c, xyz, names, gi)
    if total == 0:
        return None
    verdict = assess(names, xyz, scores, evidence=evidence, params=params, policy=POLICY)
    order = order_along_spine(xyz)[0]
    order = order if xyz[order[0], 2] >= xyz[order[-1], 2] else order[::-1]
    costs = list(alternative_costs(names, order, centroids_ras=xyz, level_scores=scores, evidence=evidence,
                                   params=params).values())
    return {"hit": hit, "total": total, "right": right, "all_named_right": all_named, "confidence": verdict["confidence"],
            "anchored": bool(verdict["anchors"]), "uncertain": verdict["uncertain"],
            "costs": [costs[0], costs[-1], costs[1]], "t13_l6": sum(n in anatomy.TRANSITIONAL for n in names),
            "gt_t13_l6": sum(c["gt_levels"][g] in anatomy.TRANSITIONAL for g in gi),
            "names": names, "truth": [c["gt_levels"][g] if g >= 0 else "" for g in nearest_gt(c["gt_xyz"], xyz)]}


def run_case(c: dict, rng, args) -> dict[str, dict]:
    c = with_sacrum(c, rng, args)
    all_gt = np.arange(len(c["gt_levels"]))
    all_pred = np.arange(len(c["pred_xyz"]))
    out = {}
    evidence = simulate_evidence(c, c["pred_xyz"], rng, args)
    out["full"] = run_scenario(c, all_pred, all_gt, evidence)
    out["full_no_anchor"] = run_scenario(c, all_pred, all_gt, None)
    out["full_no_ribs"] = run_scenario(c, all_pred, all_gt, simulate_evidence(c, c["pred_xyz"], rng, args, ribs=False))
    for key, avoid in (("crop", False), ("crop_no_anchor", True)):
        gi = random_run(c, rng, avoid)
        if gi is None:
            continue
        pi = in_range(c, gi)
        out[key] = run_scenario(c, pi, gi, evidence.subset(pi) if len(pi) else None)
    return {k: v for k, v in out.items() if v is not None}


def flag_rates(rows: list[dict], policy: NamingPolicy) -> dict:
    """Share of wrong spines flagged uncertain, of right ones flagged, and accuracy of confident ones."""
    flagged = []
    for r in rows:
        conf = confidence_from_costs({"best": r["costs"][0], **dict(enumerate(r["costs"][1:]))}, policy.temperature)
        flagged.append(policy.flags(conf, r["anchored"]))
    flagged = np.array(flagged, bool)
    right = np.array([r["right"] for r in rows], bool)
    return {"wrong_flagged": round(float(flagged[~right].mean()), 4) if (~right).any() else None,
            "right_flagged": round(float(flagged[right].mean()), 4) if right.any() else None,
            "confident_right": round(float(right[~flagged].mean()), 4) if (~flagged).any() else None,
            "confident_share": round(float((~flagged).mean()), 4),
            "wrong": int((~right).sum()), "right": int(right.sum())}


def summarise(rows: list[dict], policy: NamingPolicy) -> dict:
    return {"spines": len(rows),
            "identification_rate": round(sum(r["hit"] for r in rows) / max(1, sum(r["total"] for r in rows)), 4),
            "every_body_named_right": round(float(np.mean([r["all_named_right"] for r in rows])), 4),
            "no_wrong_name": round(float(np.mean([r["right"] for r in rows])), 4),
            "anchored": round(float(np.mean([r["anchored"] for r in rows])), 4),
            "transitional_named": int(sum(r["t13_l6"] for r in rows)),
            "transitional_in_truth": int(sum(r["gt_t13_l6"] for r in rows)),
            **flag_rates(rows, policy)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rib-miss", type=float, default=0.05)
    parser.add_argument("--t12-miss", type=float, default=0.15)
    parser.add_argument("--rib-false", type=float, default=0.05)
    parser.add_argument("--sacrum-hit", type=float, default=0.85)
    parser.add_argument("--c2-hit", type=float, default=0.85)
    parser.add_argument("--grid", action="store_true", help="sweep temperature and thresholds")
    parser.add_argument("--params", default="", help="LabellingParams fields to change, key=value,...")
    parser.add_argument("--policy", default="", help="NamingPolicy fields to change, key=value,...")
    parser.add_argument("--rows", help="also write every spine's result (names, truth, costs) to this JSON file")
    args = parser.parse_args()
    global POLICY
    from naming_replay import parse_pairs

    from SpineLabelLib.naming.labelling import LabellingParams

    labelling_vid.PARAMS = parse_pairs(args.params, LabellingParams)
    POLICY = parse_pairs(args.policy, NamingPolicy)
    cases = sorted(Path(f).stem for f in glob.glob(str(DATA / "KeypointGroundTruthNoSacrum" / "Training" / "*.json")))
    held_out = [c for c in cases if is_validation(c)]
    if args.limit:
        held_out = held_out[:args.limit]
    if not held_out:
        print(json.dumps({"error": f"no VID data under {DATA}"}))
        return 1
    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[dict]] = {}
    start = time.perf_counter()
    names_of: dict[str, list[str]] = {}
    for case in held_out:
        for key, row in run_case(load_case(case), rng, args).items():
            rows.setdefault(key, []).append(row)
            names_of.setdefault(key, []).append(case)
    seconds = time.perf_counter() - start
    policy = POLICY
    report = {
        "data": "VID keypoints (CC BY-SA 4.0), Training folder, held-out split sha1(id)%10==0; anchors simulated",
        "simulation": {k: getattr(args, k) for k in ("rib_miss", "t12_miss", "rib_false", "sacrum_hit", "c2_hit", "seed")},
        "policy": policy.__dict__, "params": args.params or "defaults",
        "scenarios": {k: summarise(v, policy) for k, v in rows.items()},
        "pooled": summarise([r for v in rows.values() for r in v if v is not rows.get("full_no_anchor")], policy),
        "seconds_per_spine": round(seconds / len(held_out), 3),
    }
    if args.grid:
        pooled = [r for k, v in rows.items() if k != "full_no_anchor" for r in v]
        report["grid"] = [{"temperature": t, "threshold": a, "threshold_without_anchor": b,
                           **flag_rates(pooled, NamingPolicy(t, a, b))}
                          for t in (0.5, 1.0, 2.0) for a in (0.5, 0.7, 0.8, 0.9, 0.95)
                          for b in (0.8, 0.9, 0.95, 0.98, 0.99, 1.01)]
    if args.rows:
        Path(args.rows).write_text(json.dumps({k: [dict(r, case=c) for r, c in zip(v, names_of[k])]
                                               for k, v in rows.items()}))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
