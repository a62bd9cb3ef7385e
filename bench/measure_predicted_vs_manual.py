"""Heights from the predicted body masks (detector + segmenter) against the manual masks (real MRI).

    python bench/measure_predicted_vs_manual.py [--model NAME_OR_DIR] [--limit N]

Data: ../shared/data/mri-lumbar, the detector's fixed validation split (every 4th case by name; never
trained on). For each case the pipeline runs detect (+ labelling) and measure on the image; the manual
label map is measured with the same code; bodies are paired by level. Prints one JSON line per case
and a summary line: mean absolute and mean signed difference (predicted - manual) per height, and the
Genant grade agreement. Bodies flagged (touching the border) on either side are left out and counted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SpineLabelLib.app import pipeline  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402
from SpineLabelLib.models.maskrcnn.data import split_real_cases  # noqa: E402
from SpineLabelLib.core.result import SpineResult  # noqa: E402
from SpineLabelLib.core.volume import load_volume  # noqa: E402

MRI = REPO.parent / "shared" / "data" / "mri-lumbar"
HEIGHTS = ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")


def by_level(result: SpineResult) -> dict[str, dict]:
    return {row["level"]: row for row in result.measurements if row.get("height_posterior_mm") is not None}


def compare_case(name: str, model) -> dict:
    image = load_volume(MRI / f"{name}_mri.nii.gz")
    manual = SpineResult.from_level_map(name, image, load_volume(MRI / f"{name}_seg.nii.gz").array)
    pipeline.measure(manual)
    predicted = pipeline.case_from_volume(image, name)
    pipeline.detect(predicted, RunOptions(model=model, modality="mr"))
    pipeline.measure(predicted)
    truth, found = by_level(manual), by_level(predicted)
    pairs = []
    for level in sorted(set(truth) & set(found)):
        pairs.append({"level": level, **{h: round(found[level][h] - truth[level][h], 3) for h in HEIGHTS},
                      "grade_manual": truth[level]["genant_grade"], "grade_predicted": found[level]["genant_grade"]})
    manual_levels = [r["level"] for r in manual.measurements]
    return {"case": name, "paired": pairs, "manual_measured": len(truth), "manual_bodies": len(manual_levels),
            "unpaired_manual": sorted(set(truth) - set(found))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    names = sorted(p.name[: -len("_mri.nii.gz")] for p in MRI.glob("*_mri.nii.gz"))
    _, validation = split_real_cases(names)
    rows = []
    for name in validation[: args.limit]:
        row = compare_case(name, args.model)
        rows.append(row)
        print(json.dumps(row))
    pairs = [p for row in rows for p in row["paired"]]
    summary = {"data": "mri-lumbar validation split", "cases": len(rows), "bodies_paired": len(pairs),
               "bodies_manual_measured": sum(r["manual_measured"] for r in rows)}
    for height in HEIGHTS:
        diffs = np.array([p[height] for p in pairs])
        summary[f"{height}_mae"] = round(float(np.mean(np.abs(diffs))), 2)
        summary[f"{height}_bias"] = round(float(np.mean(diffs)), 2)
        summary[f"{height}_p90_abs"] = round(float(np.percentile(np.abs(diffs), 90)), 2)
    graded = [p for p in pairs if p["grade_manual"] is not None and p["grade_predicted"] is not None]
    summary["genant_grade_agreement"] = round(float(np.mean([p["grade_manual"] == p["grade_predicted"] for p in graded])), 3)
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
