"""The body around the spine: skin, subcutaneous fat, muscle, organs, lungs and airway, painted in world
axial cross-sections in one chunked pass over the grid."""
from __future__ import annotations

import numpy as np

from .canvas import _Canvas
from .level import _Level, _outline_params
from .tissues import AIR, FAT, LUNG, MUSCLE, ORGAN


def _outline_table(levels: list[_Level]) -> tuple[np.ndarray, np.ndarray]:
    """Per level (sorted by S ascending): S, centre R, centre A, depth, and the _outline_params columns."""
    rows = [(lv.origin[2], lv.origin[0], lv.origin[1], lv.depth, *_outline_params(lv.name)) for lv in levels]
    rows.sort(key=lambda r: r[0])
    table = np.array(rows, dtype=float)
    return table[:, 0], table[:, 1:]


_BLOCK = 4   # outline parameters are evaluated once per 4 x 4 voxels in (j, i): they vary slowly


def _outline_columns(level_s: np.ndarray, table: np.ndarray, s_values: np.ndarray) -> np.ndarray:
    """Derived outline quantities at given S (rows), so that each voxel needs only a few operations."""
    cr, ca, depth, width, ap, back, fat, lung, airway = (np.interp(s_values, level_s, table[:, c]) for c in range(9))
    big = 1e12                                   # inverse square of a vanishing radius: nothing inside
    lung_on, airway_on = lung > 0.05, airway > 0.05
    return np.stack([
        cr, ca - back + ap / 2, (width / 2) ** -2, (ap / 2) ** -2, (width / 2 - fat) ** -2, (ap / 2 - fat) ** -2,
        ca + depth / 2,                                                  # organs lie anterior to this
        0.22 * width, np.where(lung_on, np.maximum(0.16 * width * lung, 1e-3) ** -2.0, big), ca + 0.12 * ap,
        np.where(lung_on, np.maximum(0.3 * ap * lung, 1e-3) ** -2.0, big),
        ca + depth / 2 + 22.0, np.where(airway_on, np.maximum(8.0 * airway, 1e-3) ** -2.0, big),
    ], axis=-1).astype(np.float32)


def _linear(coefficients, axes, offset) -> np.ndarray:
    """sum(c * axis) + offset over broadcastable axes, skipping zero terms so that an axis-aligned grid
    keeps small broadcast shapes (an R coordinate that depends on i only stays a row)."""
    total = np.asarray(offset).reshape((1,) * axes[0].ndim)
    for c, axis in zip(coefficients, axes):
        if abs(float(c)) > 1e-12:
            total = total + c * axis
    return total


def _paint_outline(canvas: _Canvas, levels: list[_Level], chunk_voxels: int = 4_000_000) -> None:
    """Axial cross-sections (perpendicular to world S, as a standing torso): skin, fat, muscle, organs,
    lungs and airway. Works on (k, j/4, 4, i/4, 4) views so per-voxel work is a few float operations."""
    level_s, table = _outline_table(levels)
    nk, nj, ni = canvas.shape
    bj, bi = -(-nj // _BLOCK), -(-ni // _BLOCK)
    per_chunk = max(1, chunk_voxels // (bj * bi * _BLOCK * _BLOCK))
    a, t = canvas.affine[:3, :3], canvas.affine[:3, 3]
    i = np.arange(bi * _BLOCK, dtype=np.float32).reshape(1, 1, 1, bi, _BLOCK)
    j = np.arange(bj * _BLOCK, dtype=np.float32).reshape(1, bj, _BLOCK, 1, 1)
    i_centre = (np.arange(bi) * _BLOCK + (_BLOCK - 1) / 2).reshape(1, 1, 1, bi, 1)
    j_centre = (np.arange(bj) * _BLOCK + (_BLOCK - 1) / 2).reshape(1, bj, 1, 1, 1)
    for k0 in range(0, nk, per_chunk):
        k = np.arange(k0, min(nk, k0 + per_chunk), dtype=np.float32).reshape(-1, 1, 1, 1, 1)
        sup = _linear(a[2], (i_centre, j_centre, k.astype(float)), t[2])
        c = np.moveaxis(_outline_columns(level_s, table, sup), -1, 0)
        r, ant = (_linear(a[n].astype(np.float32), (i, j, k), np.float32(t[n])) for n in range(2))
        dx, da = r - c[0], ant - c[1]
        dx2, da2 = dx * dx, da * da
        # np.copyto(where=...) broadcasts masks that lack an axis (axis-aligned grids keep them small)
        out = np.zeros((len(k), bj, _BLOCK, bi, _BLOCK), dtype=np.uint8)
        np.copyto(out, np.uint8(FAT), where=dx2 * c[2] + da2 * c[3] <= 1.0)
        inner = dx2 * c[4] + da2 * c[5] <= 1.0
        np.copyto(out, np.uint8(MUSCLE), where=inner)
        np.copyto(out, np.uint8(ORGAN), where=inner & (ant > c[6]))
        if np.any(c[8] < 1e11):
            lung_da2 = (ant - c[9]) ** 2 * c[10]
            for side in (-1.0, 1.0):
                np.copyto(out, np.uint8(LUNG), where=inner & ((dx - side * c[7]) ** 2 * c[8] + lung_da2 <= 1.0))
        if np.any(c[12] < 1e11):
            np.copyto(out, np.uint8(AIR), where=(dx2 + (ant - c[11]) ** 2) * c[12] <= 1.0)
        out = out.reshape(len(k), bj * _BLOCK, bi * _BLOCK)
        canvas.tissues[k0:k0 + len(k)] = out[:, :nj, :ni]
