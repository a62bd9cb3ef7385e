"""Listhesis of an adjacent pair and its Meyerding grade.

Translation of the upper body's posterior-inferior corner over the lower body's posterior-superior corner,
measured along the lower body's superior endplate (its mid-sagittal trace, from the posterior to the anterior
corner), in mm and in % of that endplate's depth; positive = anterior (anterolisthesis), negative =
posterior (retrolisthesis). Grade after Meyerding HW, "Spondylolisthesis", Surg Gynecol Obstet
1932;54:371-377: I up to 25 %, II 25-50 %, III 50-75 %, IV 75-100 %, V over 100 % (spondyloptosis);
the grade is given for either direction, on the size of the slip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .endplates import Endplate

MEYERDING = ((25.0, "I"), (50.0, "II"), (75.0, "III"), (100.0, "IV"))


def meyerding_grade(percent: float) -> str:
    """'I'..'V' from the slip in % of the lower endplate's depth (its size; boundaries go up a grade,
    100 % exactly is still IV)."""
    size = abs(float(percent))
    for limit, grade in MEYERDING[:-1]:
        if size < limit:
            return grade
    return "IV" if size <= MEYERDING[-1][0] else "V"


@dataclass
class Slip:
    mm: float
    percent: float
    grade: str
    direction: str          # 'anterior' | 'posterior'


def slip(upper_inferior: Endplate, lower_superior: Endplate) -> Slip | None:
    """Slip of the upper body over the lower one, or None when a corner was not found."""
    corner_upper = upper_inferior.posterior_corner
    posterior, anterior = lower_superior.posterior_corner, lower_superior.anterior_corner
    if corner_upper is None or posterior is None or anterior is None:
        return None
    along = anterior - posterior
    depth = float(np.linalg.norm(along))
    if depth < 1.0:
        return None
    mm = float((corner_upper - posterior) @ (along / depth))
    percent = 100.0 * mm / depth
    return Slip(mm, percent, meyerding_grade(percent), "anterior" if mm >= 0 else "posterior")
