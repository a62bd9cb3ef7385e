"""Angles between endplates in the patient's sagittal and coronal planes: segmental (disc) angles,
regional lordosis / kyphosis, and the coronal Cobb angle with its end vertebrae and apex.

Patient planes. A `Volume`'s IJK->RAS matrix maps voxels into the patient's own RAS frame, whatever the
acquisition's obliquity (a tilted slice stack does not tilt the patient), so the patient's sagittal plane
is the world A-S plane and the coronal plane the world R-S plane. An endplate's orientation in a plane is
the angle of its normal's projection onto that plane from the superior axis (`tilt_deg`): sagittal tilt
positive when the normal leans anterior, coronal tilt positive when it leans right.

Angles between two endplates (Cobb's method applied to endplate planes, as on a radiograph: Cobb JR,
"Outline for the study of scoliosis", AAOS Instructional Course Lectures 1948;5:261-275):
- segmental angle of an adjacent pair = sagittal tilt of the lower body's superior endplate minus that of
  the upper body's inferior endplate; lordosis positive (the disc opens anteriorly), kyphosis negative;
- lumbar lordosis L1-S1: superior endplate of L1 to superior endplate of S1 (the convention of the
  spino-pelvic literature, e.g. Roussouly P et al. Spine 2005;30:346-353); without S1 in view L1-L5,
  superior endplate of L1 to inferior endplate of L5, named so. Lordosis positive;
- thoracic kyphosis T4-T12: superior endplate of T4 to inferior endplate of T12 (the Scoliosis Research
  Society / Spinal Deformity Study Group convention: O'Brien MF, Kuklo TR, Blanke KM, Lenke LG,
  Radiographic Measurement Manual, Medtronic Sofamor Danek 2008); reported positive for kyphosis (the sign
  is flipped relative to the segmental angle);
- cervical lordosis C2-C7: inferior endplate of C2 to inferior endplate of C7 (the C2-C7 Cobb angle,
  Ames CP et al. Spine 2013;38(22 Suppl 1):S149-S160); lordosis positive;
- coronal Cobb angle: the largest coronal angle between the superior endplate of an upper and the inferior
  endplate of a lower vertebra in view (the end vertebrae are the most tilted ones, Cobb 1948); the apex is
  the vertebra between them farthest, in the coronal plane, from the line joining the end vertebrae's
  centroids, and the curve is convex to that side (SRS terminology).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import anatomy
from .endplates import Endplate

RIGHT, ANTERIOR, SUPERIOR = np.eye(3)
#: (in-plane forward axis, superior axis) of each patient plane, RAS.
PLANES = {"sagittal": (ANTERIOR, SUPERIOR), "coronal": (RIGHT, SUPERIOR)}


@dataclass(frozen=True)
class Regional:
    """A regional angle: name, the two endplates, and the sign that makes the named curve positive."""

    name: str
    upper: tuple[str, str]        # (level, side)
    lower: tuple[str, str]
    sign: float


LORDOSIS_L1_S1 = Regional("lordosis:L1-S1", ("L1", "superior"), ("S1", "superior"), +1.0)
LORDOSIS_L1_L5 = Regional("lordosis:L1-L5", ("L1", "superior"), ("L5", "inferior"), +1.0)
KYPHOSIS_T4_T12 = Regional("kyphosis:T4-T12", ("T4", "superior"), ("T12", "inferior"), -1.0)
CERVICAL_LORDOSIS_C2_C7 = Regional("cervical_lordosis:C2-C7", ("C2", "inferior"), ("C7", "inferior"), +1.0)


def tilt_deg(normal: np.ndarray, plane: str) -> float:
    """Angle (degrees) of the normal's projection onto a patient plane, from superior."""
    forward, superior = PLANES[plane]
    return math.degrees(math.atan2(float(normal @ forward), float(normal @ superior)))


def angle_deg(upper: np.ndarray, lower: np.ndarray, plane: str) -> float:
    """Tilt of the lower normal minus tilt of the upper one, wrapped into (-180, 180]."""
    difference = tilt_deg(lower, plane) - tilt_deg(upper, plane)
    return (difference + 180.0) % 360.0 - 180.0 if difference != 180.0 else 180.0


def segmental_deg(upper_inferior: Endplate, lower_superior: Endplate) -> float:
    """Disc angle of an adjacent pair in the sagittal plane, lordosis positive."""
    return angle_deg(upper_inferior.normal, lower_superior.normal, "sagittal")


def regional_deg(definition: Regional, upper: Endplate, lower: Endplate) -> float:
    return definition.sign * angle_deg(upper.normal, lower.normal, "sagittal")


def regional_definitions(levels_in_view: set[str]) -> list[Regional]:
    """The regional angles whose two levels are in view (lumbar: L1-S1, else L1-L5)."""
    out = []
    if "L1" in levels_in_view and "S1" in levels_in_view:
        out.append(LORDOSIS_L1_S1)
    elif "L1" in levels_in_view and "L5" in levels_in_view:
        out.append(LORDOSIS_L1_L5)
    for definition in (KYPHOSIS_T4_T12, CERVICAL_LORDOSIS_C2_C7):
        if definition.upper[0] in levels_in_view and definition.lower[0] in levels_in_view:
            out.append(definition)
    return out


@dataclass
class Cobb:
    value_deg: float
    upper: Endplate              # superior endplate of the upper end vertebra
    lower: Endplate              # inferior endplate of the lower end vertebra
    apex: str
    convex: str                  # 'right' | 'left' | ''


def cobb(superior: dict[str, Endplate], inferior: dict[str, Endplate],
         centroids: dict[str, np.ndarray]) -> Cobb | None:
    """Largest coronal angle between a superior endplate and a lower vertebra's inferior endplate.

    `superior` / `inferior`: usable endplates by level; `centroids`: RAS body centroids by level."""
    order = sorted(set(superior) | set(inferior), key=anatomy.order_index)
    best = None
    for n, upper_level in enumerate(order):
        if upper_level not in superior:
            continue
        for lower_level in order[n + 1:]:
            if lower_level not in inferior:
                continue
            value = abs(angle_deg(superior[upper_level].normal, inferior[lower_level].normal, "coronal"))
            if best is None or value > best[0]:
                best = (value, upper_level, lower_level)
    if best is None:
        return None
    value, upper_level, lower_level = best
    apex, convex = _apex(order[order.index(upper_level): order.index(lower_level) + 1], centroids)
    return Cobb(value, superior[upper_level], inferior[lower_level], apex, convex)


def _apex(levels: list[str], centroids: dict[str, np.ndarray]) -> tuple[str, str]:
    """The level farthest (coronal plane) from the chord between the end vertebrae, and that side."""
    known = [lv for lv in levels if lv in centroids]
    if len(known) < 3:
        return "", ""
    coronal = {lv: np.array([centroids[lv] @ RIGHT, centroids[lv] @ SUPERIOR]) for lv in known}
    a, b = coronal[known[0]], coronal[known[-1]]
    chord = (a - b) / max(np.linalg.norm(a - b), 1e-9)
    offsets = {lv: float((p - b)[0] * chord[1] - (p - b)[1] * chord[0]) for lv, p in coronal.items()}
    apex = max(known[1:-1], key=lambda lv: abs(offsets[lv]))
    # offset > 0: the apex lies to the right of the chord (right = +R in the R-S plane)
    side = "right" if offsets[apex] > 0 else "left"
    return apex, side if abs(offsets[apex]) > 0.5 else ""
