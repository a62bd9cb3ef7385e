"""Alignment truth of a phantom, from the analytic shapes (not from the painted voxels): endplate normals,
segmental and regional sagittal angles, the coronal Cobb angle and the listhesis of every adjacent pair,
with the definitions of `SpineLabelLib.alignment` (README, "Spine alignment").

Also the slips themselves: `apply_listhesis` moves a level and everything above it along the lower
level's anterior axis (its superior endplate's AP direction), as the spine above a slipped segment moves.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from .level import _Level

MAX_LISTHESIS_MM = 30.0
NO_ENDPLATE = {("C1", "superior"), ("C1", "inferior"), ("C2", "superior"), ("S1", "inferior")}
REGIONAL = (("lordosis:L1-S1", ("L1", "superior"), ("S1", "superior"), 1.0),
            ("lordosis:L1-L5", ("L1", "superior"), ("L5", "inferior"), 1.0),
            ("kyphosis:T4-T12", ("T4", "superior"), ("T12", "inferior"), -1.0),
            ("cervical_lordosis:C2-C7", ("C2", "inferior"), ("C7", "inferior"), 1.0))


def check_listhesis(listhesis: dict | None, names: list[str]) -> dict[str, float]:
    checked = {}
    for name, mm in (listhesis or {}).items():
        name = str(name).upper()
        if name not in names[:-1] or name == "C1":
            raise InputError(f"phantom: listhesis level {name} needs a requested level with a body below it")
        if not abs(float(mm)) <= MAX_LISTHESIS_MM:
            raise InputError(f"phantom: listhesis must be within +-{MAX_LISTHESIS_MM:g} mm, got {mm}")
        checked[name] = float(mm)
    return checked


def apply_listhesis(levels: list[_Level], listhesis: dict[str, float]) -> None:
    """Slip level n (positive = anterior) over level n+1: level n and all above move along n+1's anterior axis."""
    for n, level in enumerate(levels[:-1]):
        mm = listhesis.get(level.name)
        if mm:
            shift = mm * levels[n + 1].axes[:, 1]
            for above in levels[: n + 1]:
                above.origin = above.origin + shift


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def endplate_normal(level: _Level, side: str) -> np.ndarray | None:
    """Superior-pointing unit normal (RAS) of an endplate's plane (a wedge's tilted part; a biconcave
    fracture's rim plane, which its dish does not tilt)."""
    if (level.name, side) in NO_ENDPLATE or not level.has_body:
        return None
    local = np.array([0.0, 0.0, 1.0])
    if side == "superior" and level.fracture and level.fracture[0] == "wedge":
        local = np.array([0.0, math.tan(level.wedge_angle()), 1.0])     # z = top falls anteriorly
    return _unit(level.axes @ local)


def _tilt(normal: np.ndarray, forward: int) -> float:
    """Degrees of the normal's projection onto the plane of `forward` (0 = R, 1 = A) and S, from S."""
    return math.degrees(math.atan2(normal[forward], normal[2]))


def _angle(upper: np.ndarray, lower: np.ndarray, forward: int) -> float:
    return _tilt(lower, forward) - _tilt(upper, forward)


def _corners(upper: _Level, lower: _Level) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper posterior-inferior, lower posterior-superior and lower anterior-superior corners (mid-sagittal)."""
    back_u, back_l, front_l = -upper.depth / 2, -lower.depth / 2, lower.depth / 2
    return (upper.to_world((0.0, back_u, float(upper.bottom(0.0, back_u)))),
            lower.to_world((0.0, back_l, float(lower.top(0.0, back_l)))),
            lower.to_world((0.0, front_l, float(lower.top(0.0, front_l)))))


def meyerding(percent: float) -> str:
    size = abs(percent)
    return "I" if size < 25 else "II" if size < 50 else "III" if size < 75 else "IV" if size <= 100 else "V"


def alignment_truth(levels: list[_Level], in_view: list[str], listhesis: dict[str, float]) -> dict:
    """Truth for the levels in view (names), head to feet."""
    shown = [lv for lv in levels if lv.name in in_view]
    normals = {(lv.name, side): endplate_normal(lv, side) for lv in shown for side in ("superior", "inferior")}
    endplates = {f"{name}:{side}": {"normal_ras": n.tolist(), "sagittal_deg": _tilt(n, 1), "coronal_deg": _tilt(n, 0)}
                 for (name, side), n in normals.items() if n is not None}
    segmental, slips = {}, {}
    for upper, lower in zip(shown, shown[1:]):
        pair = f"{upper.name}-{lower.name}"
        a, b = normals[(upper.name, "inferior")], normals[(lower.name, "superior")]
        if a is None or b is None:
            continue
        segmental[pair] = _angle(a, b, 1)
        corner_upper, back, front = _corners(upper, lower)
        depth = float(np.linalg.norm(front - back))
        mm = float((corner_upper - back) @ ((front - back) / depth))
        slips[pair] = {"mm": mm, "percent": 100 * mm / depth, "grade": meyerding(100 * mm / depth),
                       "direction": "anterior" if mm >= 0 else "posterior", "depth_mm": depth,
                       "applied_mm": listhesis.get(upper.name, 0.0)}
    names = {lv.name for lv in shown}
    regional = {}
    for name, (l1, s1), (l2, s2), sign in REGIONAL:
        if name == "lordosis:L1-L5" and "S1" in names:
            continue
        a, b = normals.get((l1, s1)), normals.get((l2, s2))
        if a is not None and b is not None:
            regional[name] = sign * _angle(a, b, 1)
    return {"endplates": endplates, "segmental_deg": segmental, "regional_deg": regional,
            "cobb": _cobb(shown, normals), "listhesis": slips,
            "definitions": "see SpineLabelLib.alignment.angles / .listhesis; angles in degrees, slips in mm "
                           "(+ anterior) and % of the lower superior endplate's depth"}


def _cobb(shown: list[_Level], normals: dict) -> dict | None:
    best = None
    for n, upper in enumerate(shown):
        a = normals[(upper.name, "superior")]
        for lower in shown[n + 1:]:
            b = normals[(lower.name, "inferior")]
            if a is None or b is None:
                continue
            value = abs(_angle(a, b, 0))
            if best is None or value > best["deg"]:
                best = {"deg": value, "upper": upper.name, "lower": lower.name}
    return best

