"""Heights, Genant grade/type and disc-space distances on phantoms with analytic truth.

Suite: T11-L4 (6 levels) at 1 mm and 0.8 x 0.8 x 2 mm; per case a random grid rotation of 0-20
degrees about each axis, lordosis 0-40 degrees, scoliosis 0-20 degrees (with the phantom's axial
rotation of 0.4 x scoliosis at the apex), per-level tilt jitter 2 degrees, and two fractures
(wedge / biconcave / crush, 10-50 %, severities kept off the Genant boundaries 20/25/40 % so the
grade is decidable) on non-adjacent levels. Truth: phantom.truth (heights at 10/50/90 % of the depth
in each body's mid-sagittal plane; Genant grade from the fracture percentage); distance truth is
computed here from the analytic end plates. Prints one JSON line per case and one summary line per
spacing, then an overall line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from SpineLabelLib.measurement.bodies import measure_result
from SpineLabelLib.phantom import generate_phantom

LEVELS = ["T11", "T12", "L1", "L2", "L3", "L4"]
TYPES = ("wedge", "biconcave", "crush")
SEVERITIES = (10, 15, 22, 30, 35, 45, 50)
SPACINGS = {"1mm": (1.0, 1.0, 1.0), "0.8x0.8x2mm": (0.8, 0.8, 2.0)}
HEIGHTS = ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")
POSITIONS = {"anterior": 0.4, "middle": 0.0, "posterior": -0.4}   # y / depth in the body frame


def case_parameters(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    first = int(rng.integers(1, 3))                       # fractures on levels first and first + 2
    fractures = {LEVELS[first + 2 * n]: (TYPES[(seed + n) % 3], int(rng.choice(SEVERITIES))) for n in range(2)}
    rotation = rng.uniform(0, 20, 3) * rng.choice([-1, 1], 3)
    return {"fractures": fractures, "rotation_deg": [round(float(r), 1) for r in rotation],
            "lordosis_deg": round(float(rng.uniform(0, 40)), 1),
            "scoliosis_deg": round(float(rng.uniform(0, 20)), 1)}


def endplate_point(entry: dict, position: str, superior: bool) -> np.ndarray:
    """Analytic end-plate point of a body on one height line (RAS mm)."""
    axes = {k: np.asarray(v) for k, v in entry["axes_ras"].items()}
    y = POSITIONS[position] * entry["depth_mm"]
    height = entry[f"height_{position}_mm"]
    # Inferior plate: flat at -Hp/2 except biconcave, which dishes both plates symmetrically.
    bottom = -height / 2 if entry["fracture_type"] == "biconcave" else -entry["height_posterior_mm"] / 2
    z = bottom + height if superior else bottom
    return np.asarray(entry["center_ras"]) + y * axes["anterior"] + z * axes["superior"]


def distance_truth(upper: dict, lower: dict, position: str) -> float:
    axis = np.asarray(upper["axes_ras"]["superior"]) + np.asarray(lower["axes_ras"]["superior"])
    axis /= np.linalg.norm(axis)
    return float((endplate_point(upper, position, False) - endplate_point(lower, position, True)) @ axis)


def run_case(spacing, seed: int) -> dict:
    params = case_parameters(seed)
    phantom = generate_phantom(LEVELS, "ct", spacing, seed, crop_to_spine=True, angle_jitter_deg=2.0, **params)
    result = measure_result(phantom.to_result(f"phantom-{seed}"))
    bodies, distances = [], []
    for row in result.measurements:
        truth = phantom.vertebra(row["level"])
        measured = [row[k] for k in HEIGHTS]
        bodies.append({
            "level": row["level"], "fracture": [truth["fracture_type"], truth["fracture_percent"]],
            "errors_mm": None if None in measured else [round(m - truth[k], 3) for m, k in zip(measured, HEIGHTS)],
            "grade": row["genant_grade"], "grade_truth": truth["genant_grade"],
            "type": row["genant_type"], "flags": row["flags"]})
    for d in result.distances:
        upper, lower = phantom.vertebra(d["upper"]), phantom.vertebra(d["lower"])
        for position in POSITIONS:
            value = d[f"{position}_distance_mm"]
            if value is not None:
                distances.append(round(value - distance_truth(upper, lower, position), 3))
    return {"seed": seed, **params, "bodies": bodies, "distance_errors_mm": distances}


def summarise(name: str, cases: list[dict]) -> dict:
    errors = np.array([b["errors_mm"] for c in cases for b in c["bodies"] if b["errors_mm"] is not None])
    graded = [b for c in cases for b in c["bodies"] if b["grade"] is not None]
    fractured = [b for b in graded if b["grade_truth"] > 0]
    distances = np.abs([e for c in cases for e in c["distance_errors_mm"]])
    return {
        "spacing": name, "cases": len(cases), "bodies": sum(len(c["bodies"]) for c in cases),
        "bodies_measured": int(len(errors)),
        "height_mae_mm": round(float(np.abs(errors).mean()), 3),
        "height_mae_mm_by_line": dict(zip(("anterior", "middle", "posterior"),
                                          np.abs(errors).mean(axis=0).round(3).tolist())),
        "height_bias_mm": round(float(errors.mean()), 3),
        "height_max_abs_error_mm": round(float(np.abs(errors).max()), 3),
        "genant_grade_accuracy": round(np.mean([b["grade"] == b["grade_truth"] for b in graded]), 4),
        "genant_type_accuracy_fractured": round(np.mean([b["type"] == b["fracture"][0] for b in fractured]), 4)
        if fractured else None,
        "distance_mae_mm": round(float(distances.mean()), 3) if distances.size else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="cases per spacing")
    args = parser.parse_args(argv)
    overall = []
    for name, spacing in SPACINGS.items():
        start = time.perf_counter()
        cases = [run_case(spacing, seed) for seed in range(args.cases)]
        for case in cases:
            print(json.dumps({"spacing": name, **case}))
        summary = summarise(name, cases)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(summary))
        overall.append(summary)
    print(json.dumps({"summary": "all", **{s["spacing"]: {k: s[k] for k in ("height_mae_mm", "genant_grade_accuracy")}
                                            for s in overall}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
