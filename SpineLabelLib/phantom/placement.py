"""Checking the requested levels and fractures, sizing the levels, and placing them along a curved
centre line (lordosis, scoliosis, physiological curves, axial rotation, wedge kyphosis)."""
from __future__ import annotations

import math

import numpy as np

from ..core import anatomy
from ..core.errors import InputError
from .level import _Level

FRACTURE_TYPES = ("wedge", "biconcave", "crush")
MAX_FRACTURE_PERCENT = 60.0


def _check_levels(levels: list[str]) -> list[str]:
    levels = [str(n).strip().upper() for n in levels]
    if not levels:
        raise InputError("phantom: at least one level is needed")
    unknown = [n for n in levels if n not in anatomy.CODE_BY_NAME]
    if unknown:
        raise InputError(f"phantom: unknown level(s) {unknown}")
    index = [anatomy.order_index(n) for n in levels]
    for a, b in zip(index, index[1:]):
        skipped = anatomy.ORDER[a + 1:b]
        if b <= a or any(n not in anatomy.TRANSITIONAL for n in skipped):
            raise InputError(f"phantom: levels must be contiguous and cranio-caudal, got {levels}")
    return levels


def _check_fractures(fractures, levels: list[str]) -> dict[str, tuple[str, float]]:
    checked = {}
    for name, spec in (fractures or {}).items():
        name = name.upper()
        kind, percent = spec[0].lower(), float(spec[1])
        if name not in levels or name == "C1":
            raise InputError(f"phantom: fracture level {name} is not a requested level with a body")
        if kind not in FRACTURE_TYPES:
            raise InputError(f"phantom: fracture type must be one of {FRACTURE_TYPES}, got {kind!r}")
        if not 0.0 <= percent <= MAX_FRACTURE_PERCENT:
            raise InputError(f"phantom: fracture height loss must be 0-{MAX_FRACTURE_PERCENT:g} %, got {percent}")
        checked[name] = (kind, percent)
    return checked


def _frame(superior: np.ndarray, axial_deg: float) -> np.ndarray:
    """Columns right, anterior, superior; anterior as close to +A as the superior axis allows."""
    anterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
    anterior /= np.linalg.norm(anterior)
    right = np.cross(anterior, superior)
    g = math.radians(axial_deg)        # positive turns the anterior axis towards the right
    anterior = math.cos(g) * anterior + math.sin(g) * right
    return np.column_stack([np.cross(anterior, superior), anterior, superior])


def _tilt(axes: np.ndarray, about_right_deg: float, about_anterior_deg: float) -> np.ndarray:
    a, b = math.radians(about_right_deg), math.radians(about_anterior_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return axes @ rx @ ry


# Typical adult sagittal angles per region (degrees, + = lordosis), spread over the region's levels.
REGIONAL_CURVES = {"cervical": 25.0, "thoracic": -40.0, "lumbar": 50.0}


def _regional_profile(levels: list[_Level], tops: list[float], origins: list[float]) -> list[tuple]:
    """(start_s, stop_s, angle_rad, mean ramp over the spine) per region present, for physiological curves.

    A partial region gets the share of its angle its levels represent."""
    ends = [o - lv.stack_bottom() for lv, o in zip(levels, origins)]
    length = max(ends[-1], 1.0)
    samples = np.linspace(0.0, length, 200)
    profile = []
    for region, angle in REGIONAL_CURVES.items():
        members = [n for n, lv in enumerate(levels) if anatomy.region(lv.name) == region
                   or (region == "lumbar" and lv.name == "S1")]
        if not members:
            continue
        total = sum(1 for n in anatomy.STANDARD_ORDER if anatomy.region(n) == region) + (region == "lumbar")
        start, stop = tops[members[0]], max(ends[members[-1]], tops[members[0]] + 1.0)
        mean = float(np.mean(np.clip((samples - start) / (stop - start), 0.0, 1.0)))
        profile.append((start, stop, math.radians(angle) * min(1.0, len(members) / total), mean))
    return profile


def _place(levels: list[_Level], lordosis_deg: float, scoliosis_deg: float, axial_apex_deg: float,
           angle_jitter: np.ndarray, physiological: bool = False) -> np.ndarray:
    """Set each level's origin and axes; return the sampled centre line (N, 3) from head to feet.

    Arc length s runs caudally. The sagittal tilt grows linearly along s from -lordosis/2 to
    +lordosis/2 (a constant-curvature arc, concave posteriorly for positive lordosis); the coronal tilt
    likewise with the scoliosis angle (convex to the right). A wedge fracture adds its wedge angle to
    the tilt of everything above it.
    """
    tops, origins, s = [], [], 0.0
    for n, level in enumerate(levels):
        tops.append(s)
        origins.append(s + level.stack_top())
        s = origins[-1] - level.stack_bottom() + (level.disc if n + 1 < len(levels) else 0.0)
    length = max(s, 1.0)

    profile = _regional_profile(levels, tops, origins) if physiological else []

    def superior_at(s: np.ndarray) -> np.ndarray:
        fraction = np.clip(s / length, 0.0, 1.0) - 0.5
        alpha = math.radians(lordosis_deg) * fraction
        for start, stop, angle, mean in profile:
            alpha = alpha + angle * (np.clip((s - start) / (stop - start), 0.0, 1.0) - mean)
        for top, level in zip(tops, levels):
            alpha = alpha + level.wedge_angle() * (s < top)
        beta = math.radians(scoliosis_deg) * fraction
        return np.stack([np.cos(alpha) * np.sin(beta), np.sin(alpha), np.cos(alpha) * np.cos(beta)], axis=-1)

    samples = np.arange(-150.0, length + 150.0, 0.25)
    superior = superior_at(samples)
    steps = (superior[1:] + superior[:-1]) / 2.0 * 0.25
    line = np.vstack([np.zeros(3), -np.cumsum(steps, axis=0)])
    for n, (level, s_origin) in enumerate(zip(levels, origins)):
        level.origin = np.array([np.interp(s_origin, samples, line[:, c]) for c in range(3)])
        axial = axial_apex_deg * math.sin(math.pi * np.clip(s_origin / length, 0, 1)) + angle_jitter[n, 2]
        frame = _frame(superior_at(np.array([s_origin]))[0], axial)
        level.axes = _tilt(frame, angle_jitter[n, 0], angle_jitter[n, 1])
    centre = np.mean([lv.origin for lv in levels], axis=0)
    for level in levels:
        level.origin = level.origin - centre
    return line - centre


def _make_levels(names: list[str], fractures: dict, rng: np.random.Generator, size_jitter: float) -> list[_Level]:
    levels = []
    for name in names:
        size = anatomy.body_size(name)
        scale = float(np.clip(1.0 + size_jitter * rng.standard_normal(), 0.85, 1.15))
        levels.append(_Level(name, size.height * scale, size.depth * scale, size.width * scale, size.disc * scale,
                             scale, fractures.get(name)))
    return levels
