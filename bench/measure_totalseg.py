"""Our heights on TotalSegmentator's own body labels beside their spine_report.json.

Data: ../shared/data/ct/totalsegmentator (example_ct.nii.gz, 3 mm CT;
totalseg_vertebrae_pp_refined.nii.gz: per-level vertebral bodies T12-L5, values 19-24 = VerSe codes,
the masks their spine report measured: its body volumes equal these masks' volumes to 0.01 ml).
Their definition differs (see the report): lines at 15/50/85 % of an eroded AP chord through the
centroid, on the sagittal voxel slice with the largest height spread, heights walked in half-voxel
steps. Prints one JSON line per level and a summary line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from SpineLabelLib.measurement.bodies import measure_result
from SpineLabelLib.core.result import SpineResult
from SpineLabelLib.core.volume import load_volume

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct" / "totalsegmentator"
NAMES = ("anterior", "middle", "posterior")


def main() -> int:
    image = load_volume(DATA / "example_ct.nii.gz")
    level_map = load_volume(DATA / "totalseg_vertebrae_pp_refined.nii.gz", check_values=False).array
    result = measure_result(SpineResult.from_level_map("example_ct", image, level_map, modality="ct"))
    report = json.loads((DATA / "spine_report.json").read_text())["results"]
    differences = {name: [] for name in NAMES}
    swapped = []
    for row in result.measurements:
        theirs = {name: report.get(f"vertebrae_{row['level']}_height_{name}_mm") for name in NAMES}
        ours = {name: row[f"height_{name}_mm"] for name in NAMES}
        line = {"level": row["level"], "ours_mm": ours, "totalseg_mm": theirs, "flags": row["flags"],
                "genant_grade": row["genant_grade"], "genant_type": row["genant_type"],
                "volume_ml_ours": None if row["volume_mm3"] is None else round(row["volume_mm3"] / 1000, 2),
                "volume_ml_totalseg": report.get(f"vertebrae_{row['level']}_volume_ml")}
        print(json.dumps(line))
        if None in ours.values() or None in theirs.values():
            continue
        for name in NAMES:
            differences[name].append(ours[name] - theirs[name])
        # Their 15 % line is named 'posterior'; on an image stored RAS it lies anteriorly.
        swapped.append([ours["anterior"] - theirs["posterior"], ours["posterior"] - theirs["anterior"]])
    summary = {"summary": "ours - totalseg (mm), same names", "n_levels": len(differences["middle"])}
    for name in NAMES:
        d = np.array(differences[name])
        summary[name] = {"mean": round(float(d.mean()), 2), "mean_abs": round(float(np.abs(d).mean()), 2)} if d.size else None
    if swapped:
        s = np.abs(np.array(swapped))
        summary["ours_anterior_vs_their_posterior_mean_abs"] = round(float(s[:, 0].mean()), 2)
        summary["ours_posterior_vs_their_anterior_mean_abs"] = round(float(s[:, 1].mean()), 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
