"""Benchmark of the CT rib detector (SpineLabelLib.ribs) on real CT with level maps and on phantoms; one JSON line.

Real data (../shared/data/ct): lidc-0001 (chest CT, 0.7 x 0.7 x 2.5 mm, TotalSegmentator vertebra map C5-L3,
automatic), totalsegmentator example_ct (abdomen-pelvis, 3 mm, its TotalSegmentator v2 map, T11-S1, automatic),
verse012 (thoraco-lumbar VerSe crop T10-L3, manual masks; 105 mm wide field of view). Centroids are the centres of
the level maps' labels (whole vertebrae for lidc and verse012, bodies for totalsegmentator). Truth: T1-T12 bear
ribs (12 pairs; lidc's map has ribs 1-12 on both sides). Phantoms: CT phantoms C6-T3, T10-L2, L3-S1 and an
oblique anisotropic T11-L2 (seed 1).

Reported per case: the levels, the evidence per level, correct calls among the levels with evidence, levels
without evidence (field of view too narrow), seconds per vertebra.
Usage: python bench/ribs_ct.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from SpineLabelLib.core import anatomy
from SpineLabelLib.naming.anchors import RIB_BEARING
from SpineLabelLib.phantom import generate_phantom
from SpineLabelLib.naming.ribs import rib_evidence
from SpineLabelLib.core.volume import load_volume

CT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct"
REAL = {
    "lidc-0001": ("lidc-0001/lidc-0001_ct.nii.gz", "lidc-0001/lidc-0001_vert.nii.gz"),
    "totalsegmentator-example": ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/totalseg.nii.gz"),
    "verse012": ("verse012/sub-verse012_ct.nii.gz", "verse012/sub-verse012_seg-vert_msk.nii.gz"),
}
PHANTOMS = {"phantom C6-T3": (["C6", "C7", "T1", "T2", "T3"], {}),
            "phantom T10-L2": (["T10", "T11", "T12", "L1", "L2"], {}),
            "phantom L3-S1": (["L3", "L4", "L5", "S1"], {}),
            "phantom T11-L2 oblique": (["T11", "T12", "L1", "L2"], {"spacing": (0.8, 0.8, 2.5), "rotation_deg": (10, 15, 5)})}


#: TotalSegmentator v2 "total" ids of the vertebrae (26 S1, 27 L5 ... 50 C1) -> level names.
TOTALSEG_LEVELS = {26: "S1", **{27 + n: f"L{5 - n}" for n in range(5)},
                   **{32 + n: f"T{12 - n}" for n in range(12)}, **{44 + n: f"C{7 - n}" for n in range(7)}}


def centroids_of(labels, totalseg: bool) -> tuple[list[str], np.ndarray]:
    table = TOTALSEG_LEVELS if totalseg else anatomy.NAME_BY_CODE
    codes = [int(c) for c in np.unique(labels.array) if int(c) in table]
    centres = ndimage.center_of_mass(np.ones(labels.array.shape), labels.array, codes)
    names = [table[c] for c in codes]
    points = np.array([labels.kji_to_ras(np.array(c))[0] for c in centres])
    order = np.argsort(-points[:, 2])
    return [names[i] for i in order], points[order]


def judge(name: str, image, names: list[str], points: np.ndarray) -> dict:
    start = time.perf_counter()
    evidence = rib_evidence(image, points, "ct")
    seconds = time.perf_counter() - start
    known = np.isfinite(evidence)
    calls = evidence >= 0.5
    truth = np.array([n in RIB_BEARING for n in names])
    return {"case": name, "levels": names, "evidence": [None if not np.isfinite(e) else float(e) for e in evidence],
            "correct": int((calls == truth)[known].sum()), "with_evidence": int(known.sum()),
            "without_evidence": int((~known).sum()),
            "last_rib_right": bool(known.any() and all(calls[i] == truth[i] for i in np.flatnonzero(known))
                                   and any(n == "T12" for n in np.array(names)[known])),
            "seconds_per_vertebra": round(seconds / max(1, len(names)), 3)}


def body_centroid_cases() -> list[dict]:
    """As the pipeline sees them: body centroids (lidc-0001's whole vertebrae cut to bodies by the
    synthesis rule) and the 5 mm chest CT lung-dx-a0001 with the levels read on it
    (bench/annotations/lung-dx-a0001_levels.json: one reader, the detector's centroids)."""
    from SpineLabelLib.synthesis.bodies import body_masks

    rows = []
    if (CT / REAL["lidc-0001"][0]).exists():
        labels = body_masks(load_volume(CT / REAL["lidc-0001"][1]))
        names, points = centroids_of(labels, False)
        rows.append(judge("lidc-0001 body centroids", load_volume(CT / REAL["lidc-0001"][0]), names, points))
    annotation = Path(__file__).resolve().parent / "annotations" / "lung-dx-a0001_levels.json"
    image = CT / "lung-dx-a0001" / "lung-dx-a0001_ct.nii.gz"
    if image.exists():
        vertebrae = json.loads(annotation.read_text())["vertebrae"]
        rows.append(judge("lung-dx-a0001 (5 mm, levels read)", load_volume(image), [v["level"] for v in vertebrae],
                          np.array([v["centroid_ras"] for v in vertebrae])))
    return rows


def main() -> int:
    rows = []
    for name, (image_path, label_path) in REAL.items():
        if not (CT / image_path).exists():
            continue
        image = load_volume(CT / image_path)
        labels = load_volume(CT / label_path)
        names, points = centroids_of(labels, name.startswith("totalsegmentator"))
        rows.append(judge(name, image, names, points))
    rows.extend(body_centroid_cases())
    for name, (levels, kwargs) in PHANTOMS.items():
        phantom = generate_phantom(levels, "ct", seed=1, **kwargs)
        names = [v["level"] for v in phantom.truth["vertebrae"]]
        points = np.array([v["centroid_ras"] for v in phantom.truth["vertebrae"]])
        rows.append(judge(name, phantom.image, names, points))
    called = sum(r["with_evidence"] for r in rows)
    print(json.dumps({"data": "real CT in ../shared/data/ct with level maps (lidc-0001, totalsegmentator example, "
                              "verse012; lidc-0001 also at body centroids), lung-dx-a0001 with levels read "
                              "(bench/annotations) and CT phantoms; truth: T1-T12 bear ribs",
                      "accuracy_where_called": round(sum(r["correct"] for r in rows) / max(1, called), 4),
                      "vertebrae_called": called, "vertebrae_without_evidence": sum(r["without_evidence"] for r in rows),
                      "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
