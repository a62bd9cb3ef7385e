"""Level agreement with TotalSegmentator on its own CT test case (agreement, not accuracy).

    python bench/totalseg_agreement.py [--model NAME_OR_DIR]

Data: ../shared/data/ct/totalsegmentator/example_ct.nii.gz and TotalSegmentator's prediction
totalseg.nii.gz (their values: 26 S1, 27 L5 ... 31 L1, 32 T12, 33 T11; whole vertebrae, so their
centroids sit ~10-15 mm posterior to body centroids). For each of their levels: whether SpineLabel
found a body with the same name, and the distance between the two centroids. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SpineLabelLib.app import pipeline  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402
from SpineLabelLib.core.volume import load_volume  # noqa: E402

CASE = REPO.parent / "shared" / "data" / "ct" / "totalsegmentator"
THEIR_LEVELS = {26: "S1", 27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12", 33: "T11"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = pipeline.load_case(CASE / "example_ct.nii.gz")
    pipeline.detect(result, RunOptions(model=args.model, modality="ct"))
    seconds = time.perf_counter() - start
    ours = {v.level: v.centroid_ras for v in result.vertebrae}
    theirs = load_volume(CASE / "totalseg.nii.gz")
    rows = []
    for code, level in THEIR_LEVELS.items():
        voxels = np.argwhere(theirs.array == code)
        if not len(voxels):
            continue
        centre = theirs.kji_to_ras(voxels.mean(axis=0))[0]
        found = level in ours
        rows.append({"level": level, "their_voxels": int(len(voxels)), "found": found,
                     "centroid_distance_mm": round(float(np.linalg.norm(ours[level] - centre)), 1) if found else None})
    agreeing = [r for r in rows if r["found"]]
    print(json.dumps({"data": "TotalSegmentator example_ct (3 mm CT)", "ours": [v.level for v in result.vertebrae],
                      "levels": rows, "their_levels": len(rows), "same_name_found": len(agreeing),
                      "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
