"""What each detector finds on a CT without label maps (issue 12: lung-dx-a0001, never trained on); prints JSON.

    python bench/unlabelled_ct.py CT.nii.gz --models vertebra-detector,FOLDER [--levels ANNOTATION.json] [--out FILE]

Per model: how many vertebrae were found and named, the levels from top to bottom, the naming
confidence and warning, and seconds. With --levels (centroids with levels read on the image, e.g.
bench/annotations/lung-dx-a0001_levels.json) also: recall (an annotated body with a detection
within 20 mm), identification (that detection carries the annotated level, the VerSe rule),
detections matching no annotated body, and whether a wrong naming carries the warning. Without
it, whether the count and levels are right is for a reader of the QC picture to judge.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from SpineLabelLib.app.pipeline import detect, load_case  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402
from SpineLabelLib.models.registry import load_model  # noqa: E402

import numpy as np  # noqa: E402

from SpineLabelLib.training.evaluation import IDENTIFICATION_MM, identified  # noqa: E402


def against_levels(result, annotation: dict) -> dict:
    """Recall (an annotated body with a named detection within IDENTIFICATION_MM) and identification
    (`training.evaluation.identified`, the VerSe rule) against centroids with levels read."""
    truth_points = np.array([b["centroid_ras"] for b in annotation["vertebrae"]], float)
    truth_levels = [b["level"] for b in annotation["vertebrae"]]
    found = [v for v in result.vertebrae if v.level]
    points = np.array([v.centroid_ras for v in found], float).reshape(-1, 3)
    hits = identified(truth_points, truth_levels, points, [v.level for v in found])
    if len(points):
        distance = np.linalg.norm(truth_points[:, None] - points[None], axis=2)
        near, nearest = distance.min(axis=1) < IDENTIFICATION_MM, set(distance.argmin(axis=1).tolist())
    else:
        near, nearest = np.zeros(len(truth_levels), bool), set()
    return {"annotated": len(truth_levels), "recall": round(float(near.mean()), 3),
            "id_rate": round(float(hits.mean()), 3), "unmatched_detections": len(found) - len(nearest),
            "named_right": bool(hits.all()), "warned": bool(result.naming.get("uncertain"))}


def describe(path: str, model: str, annotation: dict | None = None) -> dict:
    loaded = load_model(model)
    result = load_case(path)
    start = time.perf_counter()
    result = detect(result, RunOptions(model=model, modality="ct"))
    levels = [v.level for v in result.vertebrae]
    row = {"model": {k: loaded.card.get(k) for k in ("name", "version", "sha256")},
           "found": len(levels), "named": sum(bool(level) for level in levels), "levels": levels,
           "naming": result.naming, "seconds": round(time.perf_counter() - start, 1)}
    if annotation is not None:
        row["against_levels_read"] = against_levels(result, annotation)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct")
    parser.add_argument("--models", default="vertebra-detector")
    parser.add_argument("--levels", help="JSON of centroids with levels read on this CT (bench/annotations)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    annotation = json.loads(Path(args.levels).read_text()) if args.levels else None
    truth = "none (judged on the QC picture)" if annotation is None else \
        f"{Path(args.levels).name}: {annotation['method']}"
    report = {"ct": Path(args.ct).name, "truth": truth,
              "models": [describe(args.ct, m, annotation) for m in args.models.split(",") if m]}
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
