"""Intensity ranges per tissue and contrast: each synthetic image draws one mean per tissue from
these ranges (and a within-tissue spread), the SynthSeg recipe with anatomical priors.

CT is in Hounsfield units, because the detector windows CT at -250..1000 HU: a CT-like image on an
arbitrary scale would be normalised differently from real CT. T1-/T2-like images are on a 0..1
scale (MRI is normalised per volume by percentiles). Cancellous bone on real chest CT measured
73-222 HU (lidc-0001, lung-dx-a0001; older patients' marrow is close to muscle), so the marrow range
starts at 60 HU and the thin cortex, blurred by partial volume, at 250 HU. "random" draws every tissue uniformly, so
that the network cannot rely on any contrast at all (Billot et al. 2023).
"""
from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    AIR = 0           # outside the body, bowel gas
    FAT = 1           # subcutaneous and visceral fat
    MUSCLE = 2        # paraspinal muscles, body wall, generic soft tissue
    ORGAN = 3         # liver, spleen, kidneys, heart (random blobs when no organ map is given)
    BOWEL = 4         # bowel content, fluid
    LUNG = 5
    VESSEL = 6        # aorta (contrast-enhanced or not)
    CORTEX = 7        # cortical bone shell of vertebrae, ribs and sacrum
    MARROW = 8        # cancellous bone
    DISC = 9          # intervertebral disc
    CSF = 10          # spinal canal
    CORD = 11         # spinal cord


CONTRASTS = ("ct", "t1", "t2", "random")

#: (mean range, spread range) per tissue. CT in HU.
RANGES = {
    "ct": {
        Tissue.AIR: ((-1010, -950), (2, 15)), Tissue.FAT: ((-130, -70), (5, 25)),
        Tissue.MUSCLE: ((30, 65), (5, 25)), Tissue.ORGAN: ((35, 160), (5, 25)),
        Tissue.BOWEL: ((-20, 60), (5, 40)), Tissue.LUNG: ((-900, -750), (15, 60)),
        Tissue.VESSEL: ((35, 350), (5, 25)), Tissue.CORTEX: ((250, 1300), (30, 150)),
        Tissue.MARROW: ((60, 330), (20, 80)), Tissue.DISC: ((60, 120), (5, 25)),
        Tissue.CSF: ((0, 30), (3, 15)), Tissue.CORD: ((25, 45), (3, 15)),
    },
    "t1": {
        Tissue.AIR: ((0.0, 0.04), (0.0, 0.02)), Tissue.FAT: ((0.7, 1.0), (0.02, 0.08)),
        Tissue.MUSCLE: ((0.15, 0.35), (0.02, 0.06)), Tissue.ORGAN: ((0.25, 0.5), (0.02, 0.06)),
        Tissue.BOWEL: ((0.05, 0.5), (0.02, 0.1)), Tissue.LUNG: ((0.0, 0.06), (0.0, 0.03)),
        Tissue.VESSEL: ((0.0, 0.35), (0.01, 0.06)), Tissue.CORTEX: ((0.0, 0.1), (0.0, 0.03)),
        Tissue.MARROW: ((0.4, 0.85), (0.03, 0.1)), Tissue.DISC: ((0.15, 0.35), (0.02, 0.06)),
        Tissue.CSF: ((0.03, 0.2), (0.01, 0.04)), Tissue.CORD: ((0.25, 0.45), (0.01, 0.04)),
    },
    "t2": {
        Tissue.AIR: ((0.0, 0.04), (0.0, 0.02)), Tissue.FAT: ((0.55, 0.95), (0.02, 0.08)),
        Tissue.MUSCLE: ((0.08, 0.25), (0.02, 0.05)), Tissue.ORGAN: ((0.25, 0.6), (0.02, 0.08)),
        Tissue.BOWEL: ((0.2, 0.9), (0.02, 0.1)), Tissue.LUNG: ((0.0, 0.06), (0.0, 0.03)),
        Tissue.VESSEL: ((0.0, 0.25), (0.01, 0.06)), Tissue.CORTEX: ((0.0, 0.08), (0.0, 0.03)),
        Tissue.MARROW: ((0.25, 0.6), (0.03, 0.1)), Tissue.DISC: ((0.2, 0.95), (0.03, 0.1)),
        Tissue.CSF: ((0.75, 1.0), (0.01, 0.05)), Tissue.CORD: ((0.3, 0.55), (0.01, 0.05)),
    },
}
RANGES["random"] = {tissue: ((0.0, 1.0), (0.0, 0.06)) for tissue in Tissue}


def ranges(contrast: str) -> tuple[list, list]:
    """(means, spreads) as TorchIO's RandomLabelsToImage wants them: one range per label value 0..N-1."""
    if contrast not in RANGES:
        raise ValueError(f"unknown contrast {contrast!r}; one of {', '.join(CONTRASTS)}")
    table = RANGES[contrast]
    return [table[t][0] for t in Tissue], [table[t][1] for t in Tissue]
