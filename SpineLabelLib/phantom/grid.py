"""The image grid: acquisition orientation, the world box the image must cover, and the superior/inferior
field-of-view cut."""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from ..core.volume import make_affine
from .level import _Level, _outline_params, _posterior_params

LPS_DIRECTIONS = np.diag([-1.0, -1.0, 1.0])   # default storage: i -> left, j -> posterior, k -> superior


def _rotation(rotation_deg) -> np.ndarray:
    """Rotation about R, then A, then S (degrees)."""
    a, b, c = (math.radians(float(v)) for v in rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _directions(rotation_deg, direction) -> np.ndarray:
    base = LPS_DIRECTIONS if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.allclose(base.T @ base, np.eye(3), atol=1e-4):
        raise InputError("phantom: direction must be an orthonormal 3x3 matrix (columns = RAS directions of i, j, k)")
    return _rotation(rotation_deg) @ base


def _content_box(levels: list[_Level], lateral_fov_mm: float | None, crop_to_spine: bool) -> np.ndarray:
    """World (RAS) box [[min], [max]] the image must cover."""
    first, last = levels[0], levels[-1]
    top = first.to_world((0, 0, first.stack_top() + (15.0 if first.name == "C1" else 20.0)))[2]
    bottom = last.to_world((0, 0, last.stack_bottom() - (80.0 if last.name == "S1" else 30.0)))[2]
    origins = np.array([lv.origin for lv in levels])
    if crop_to_spine:
        reach_back = max(lv.depth / 2 + 1 + sum(_posterior_params(lv)[k] for k in ("canal_depth", "lamina", "spine_length"))
                         + 10 for lv in levels)
        half_x = max(max(lv.width / 2, 24 * lv.scale if lv.name == "C1" else 0) for lv in levels) + 10
        front = max(lv.depth for lv in levels) / 2 + 10
        low = [origins[:, 0].min() - half_x, origins[:, 1].min() - reach_back, bottom]
        high = [origins[:, 0].max() + half_x, origins[:, 1].max() + front, top]
        return np.array([low, high])
    params = np.array([_outline_params(lv.name) for lv in levels])
    half_x = params[:, 0].max() / 2 + 10
    if lateral_fov_mm is not None:
        half_x = min(half_x, lateral_fov_mm / 2)
    back = origins[:, 1] - params[:, 2]
    low = [origins[:, 0].min() - half_x, back.min() - 10, bottom]
    high = [origins[:, 0].max() + half_x, (back + params[:, 1]).max() + 10, top]
    return np.array([low, high])


def _grid(box: np.ndarray, spacing: np.ndarray, directions: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Smallest grid with the given directions and spacing covering a world box."""
    corners = np.array([[box[a, 0], box[b, 1], box[c, 2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    along = corners @ directions          # coordinate of each corner along the i, j, k directions
    low, high = along.min(axis=0), along.max(axis=0)
    size_ijk = np.floor((high - low) / spacing + 1e-6).astype(int) + 1
    return tuple(int(n) for n in size_ijk[::-1]), make_affine(spacing, directions, directions @ low)


def _crop_superior_inferior(shape, affine, levels: list[_Level], cuts) -> tuple[tuple, np.ndarray]:
    """Keep only the grid planes (along the axis closest to S) between the two cut planes."""
    superior_cut, inferior_cut = (float(c) for c in cuts)
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(directions[2])))          # i, j or k
    s_high = levels[0].to_world((0, 0, levels[0].stack_top()))[2] - superior_cut
    s_low = levels[-1].to_world((0, 0, levels[-1].stack_bottom()))[2] + inferior_cut
    if s_low >= s_high:
        raise InputError("phantom: field_of_view cuts leave nothing of the spine")
    centre = np.mean([lv.origin for lv in levels], axis=0)
    inverse = np.linalg.inv(affine)
    index = [(inverse[:3, :3] @ np.array([centre[0], centre[1], s]) + inverse[:3, 3])[axis] for s in (s_low, s_high)]
    size_ijk = list(shape[::-1])
    first = max(0, int(math.ceil(min(index) - 1e-6)))
    last = min(size_ijk[axis] - 1, int(math.floor(max(index) + 1e-6)))
    size_ijk[axis] = last - first + 1
    affine = affine.copy()
    affine[:3, 3] += affine[:3, axis] * first
    return tuple(size_ijk[::-1]), affine
