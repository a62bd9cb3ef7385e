"""Analytic truth of the phantom's intervertebral discs: the space between the upper body's inferior
and the lower body's superior end plate (`shapes._paint_disc`), measured along the mean axis of the
two bodies in the disc's mid-sagittal plane at 10/50/90 % of the disc's depth from its anterior edge."""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from ..core import discs
from .level import _Level
from .shapes import _average_frame

LINE_OFFSETS = {"anterior": 0.8, "middle": 0.0, "posterior": -0.8}   # x half-depth; +y is anterior


def disc_frame(upper: _Level, lower: _Level) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Centre, axes (columns right, anterior, superior), half width and half depth of the painted disc."""
    p_upper = upper.to_world((0, 0, upper.stack_bottom()))
    p_lower = lower.to_world((0, 0, lower.stack_top()))
    half_x = 0.51 * (upper.width + lower.width) / 2.0
    half_y = 0.51 * (upper.depth + lower.depth) / 2.0
    return (p_upper + p_lower) / 2.0, _average_frame(upper.axes, lower.axes), half_x, half_y


def _surface_z(level: _Level, origin, axes, y: float, which: str, reach: float) -> float:
    """z (disc frame) where the line x = 0, y = y meets the level's end plate ('bottom' or 'top')."""
    def gap(z):
        local = level.axes.T @ (origin + axes @ np.array([0.0, y, z]) - level.origin)
        plate = level.bottom(local[0], local[1]) if which == "bottom" else level.top(local[0], local[1])
        return float(local[2] - plate)
    return brentq(gap, -reach, reach, xtol=1e-6)


def disc_truth(upper: _Level, lower: _Level) -> dict:
    origin, axes, _, half_y = disc_frame(upper, lower)
    reach = upper.body_height + lower.body_height + upper.disc + 20.0
    heights = {}
    for line, fraction in LINE_OFFSETS.items():
        y = fraction * half_y
        heights[f"height_{line}_mm"] = (_surface_z(upper, origin, axes, y, "bottom", reach)
                                        - _surface_z(lower, origin, axes, y, "top", reach))
    name = discs.disc_name(upper.name, lower.name)
    mean = float(np.mean(list(heights.values())))
    return {"name": name, "upper": upper.name, "lower": lower.name, "label": discs.label_of(name),
            **{k: float(v) for k, v in heights.items()}, "depth_mm": 2.0 * half_y,
            "dhi": mean / upper.depth, "centre_ras": origin.tolist(), "superior_ras": axes[:, 2].tolist()}


def discs_truth(levels: list[_Level], present: set[str]) -> list[dict]:
    """One entry per painted disc whose two bodies are in the image."""
    return [disc_truth(a, b) for a, b in zip(levels, levels[1:])
            if a.has_body and a.disc > 0 and a.name in present and b.name in present]
