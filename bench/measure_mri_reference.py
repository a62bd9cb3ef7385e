"""Reference vertebral body heights from the manual masks of the lumbar MRI data.

Data: ../shared/data/mri-lumbar: vb3-* (MyoSegmenTUM spine, 3T water-fat T1 FFE, L1-L5 manual masks)
and vb2-* (Zukic et al. 2014, 1.5T T2 TSE, T11-L5 masks, levels by top-to-bottom order), 1 mm
isotropic. Geometry caveat (data README): the source stored no orientation; axis 0 of the source
runs superior->inferior and axis 1 anterior->posterior, left/right is assumed. Heights, depths and
distances do not depend on the left/right guess; the anterior/posterior naming relies on axis 1.

Prints one JSON line per case (heights per level) and a summary per dataset and level: median and
range (min-max) of the anterior, middle and posterior heights and of the disc-space distances.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from SpineLabelLib.core import anatomy
from SpineLabelLib.measurement.bodies import measure_result
from SpineLabelLib.core.result import SpineResult
from SpineLabelLib.core.volume import case_id, load_volume

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mri-lumbar"
HEIGHTS = ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")
DISTANCES = ("anterior_distance_mm", "middle_distance_mm", "posterior_distance_mm")


def stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"n": len(values), "median": round(float(np.median(values)), 1),
            "min": round(float(np.min(values)), 1), "max": round(float(np.max(values)), 1)}


def main() -> int:
    heights = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))   # dataset -> level -> key -> values
    distances = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    flagged = defaultdict(int)
    for seg_path in sorted(DATA.glob("vb*_seg.nii.gz")):
        case = case_id(seg_path).removesuffix("_seg")
        dataset = case.split("-")[0]
        image = load_volume(DATA / f"{case}_mri.nii.gz")
        labels = load_volume(seg_path, check_values=False)
        result = measure_result(SpineResult.from_level_map(case, image, labels.array, modality="mr"))
        rows = {}
        for row in result.measurements:
            rows[row["level"]] = [row[k] for k in HEIGHTS] + [row["flags"]]
            if row["flags"]:
                flagged[row["flags"]] += 1
            for key in HEIGHTS + ("genant_grade",):
                heights[dataset][row["level"]][key].append(row[key])
        for d in result.distances:
            for key in DISTANCES:
                distances[dataset][f"{d['upper']}-{d['lower']}"][key].append(d[key])
        print(json.dumps({"case": case, "heights_mm_a_m_p_flags": rows}))
    for dataset in sorted(heights):
        levels = sorted(heights[dataset], key=anatomy.order_index)
        table = {level: {key.replace("height_", "").replace("_mm", ""): stats(heights[dataset][level][key])
                         for key in HEIGHTS} for level in levels}
        grades = {level: dict(zip(*np.unique([g for g in heights[dataset][level]["genant_grade"] if g is not None],
                                             return_counts=True))) for level in levels}
        grades = {level: {int(k): int(v) for k, v in g.items()} for level, g in grades.items()}
        gaps = {pair: {key.replace("_distance_mm", ""): stats(v[key]) for key in DISTANCES}
                for pair, v in sorted(distances[dataset].items(),
                                      key=lambda item: anatomy.order_index(item[0].split("-")[0]))}
        print(json.dumps({"dataset": dataset, "heights_mm": table, "genant_grades": grades,
                          "distances_mm": gaps}))
    print(json.dumps({"flags": dict(flagged)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
