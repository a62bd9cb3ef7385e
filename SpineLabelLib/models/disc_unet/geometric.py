"""The geometric disc: the space between the facing end plates of two body masks, inside both bodies'
footprint, along the mean axis of the two bodies (CT, where disc and soft tissue look alike; and the
fallback without a disc model).

The two masks are sampled with partial-volume interpolation (`measurement.heights.MaskSampler`) on
columns 1 mm apart parallel to the mean axis; in each column the lower body's top edge and the upper
body's bottom edge are the 0.5 crossings. An input voxel is disc when its centre lies in a column
where both bodies are and between those two edges. It is only as good as the body masks: a body
mask that overshoots its end plate makes the disc thinner by as much.
"""
from __future__ import annotations

import numpy as np

from ...core.volume import Volume
from ...measurement.heights import BodyFrame, MaskSampler, principal_frame, _unit

COLUMN_MM = 1.0
STEP_MM = 0.5
SEARCH_SHARE = 0.55  # end plates are searched within this share of the centroid distance from the midpoint
MAX_GAP_SHARE = 0.8   # a column whose gap exceeds this share of the centroid distance is a rim, not disc


def mean_axis(upper_points: np.ndarray, lower_points: np.ndarray) -> np.ndarray:
    """Mean superior axis of the two bodies (principal frames, told the direction between them)."""
    between = upper_points.mean(axis=0) - lower_points.mean(axis=0)
    axes = [principal_frame(points, between).superior for points in (upper_points, lower_points)]
    return _unit(axes[0] + axes[1])


def disc_frame(upper: np.ndarray, lower: np.ndarray, grid: Volume) -> tuple[BodyFrame, float, float]:
    """Frame at the midpoint of the centroids (superior = mean axis), lateral radius and half length."""
    up, low = grid.kji_to_ras(np.argwhere(upper)[::2]), grid.kji_to_ras(np.argwhere(lower)[::2])  # every 2nd voxel: the same axes
    superior = mean_axis(up, low)
    centre = (up.mean(axis=0) + low.mean(axis=0)) / 2.0
    anterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
    if np.linalg.norm(anterior) < 1e-6:
        anterior = np.cross(superior, [1.0, 0.0, 0.0])
    frame = BodyFrame(centre, superior, _unit(anterior))
    radius = float(max(np.linalg.norm(np.cross(p - centre, superior), axis=1).max() for p in (up, low))) + 2.0
    half = float(np.linalg.norm(up.mean(axis=0) - low.mean(axis=0)))
    return frame, radius, half


def column_edges(upper, lower, grid, frame, radius, half):
    """Per column (t, w): the lower body's top edge and the upper body's bottom edge (s, mm; NaN if absent)."""
    s = np.arange(-SEARCH_SHARE * half, SEARCH_SHARE * half + STEP_MM / 2, STEP_MM)
    tw = np.arange(-radius, radius + COLUMN_MM / 2, COLUMN_MM)
    edges = []
    for mask, which in ((lower, "top"), (upper, "bottom")):
        values = MaskSampler(mask, grid).local(frame, s[None, None, :], tw[:, None, None], tw[None, :, None])
        inside = values >= 0.5
        present = inside.any(axis=-1)
        if which == "top":
            index = s.size - 1 - inside[..., ::-1].argmax(axis=-1)        # last inside sample
            nxt = np.minimum(index + 1, s.size - 1)
        else:
            index = inside.argmax(axis=-1)                                # first inside sample
            nxt = np.maximum(index - 1, 0)
        a = np.take_along_axis(values, index[..., None], -1)[..., 0]
        b = np.take_along_axis(values, nxt[..., None], -1)[..., 0]
        fraction = np.where(a != b, (a - 0.5) / np.where(a != b, a - b, 1.0), 0.0)
        edge = s[index] + fraction * (s[nxt] - s[index])
        edges.append(np.where(present, edge, np.nan))
    top_of_lower, bottom_of_upper = edges
    gap = bottom_of_upper - top_of_lower
    valid = np.isfinite(gap) & (gap > 0) & (gap < MAX_GAP_SHARE * 2 * half)
    return np.where(valid, top_of_lower, np.nan), np.where(valid, bottom_of_upper, np.nan), tw


def _box(mask: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    (box,) = ndimage.find_objects(mask.astype(np.uint8))
    lo = np.maximum(np.array([b.start for b in box]) - margin, 0)
    return lo, np.minimum(np.array([b.stop for b in box]) + margin, mask.shape)


def _affine_axis(grid: Volume, lo, hi, centre: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(RAS(k, j, i) - centre) . axis over the box lo..hi, by broadcasting."""
    matrix = grid.ijk_to_ras[:3, :3][:, ::-1]            # columns: RAS per k, j, i step
    steps = axis @ matrix
    offset = axis @ (grid.ijk_to_ras[:3, 3] - centre)
    k, j, i = (np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi))
    return (np.float32(steps[0]) * k[:, None, None] + np.float32(steps[1]) * j[None, :, None]
            + np.float32(steps[2]) * i[None, None, :] + np.float32(offset))


def geometric_disc(upper: np.ndarray, lower: np.ndarray, grid: Volume) -> np.ndarray:
    """Boolean disc mask on ``grid`` between two boolean body masks (empty when they do not face)."""
    out = np.zeros(upper.shape, bool)
    if not upper.any() or not lower.any():
        return out
    frame, radius, half = disc_frame(upper, lower, grid)
    low_edge, high_edge, tw = column_edges(upper, lower, grid, frame, radius, half)
    if not np.isfinite(low_edge).any():
        return out
    both = upper | lower
    lo, hi = _box(both)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # local coordinates are affine in (k, j, i): evaluated by broadcasting, no list of voxels
    s, t, w = (_affine_axis(grid, lo, hi, frame.centre, axis) for axis in
               (frame.superior, -frame.anterior, frame.lateral))
    ti = np.rint((t + radius) / COLUMN_MM).astype(int)
    wi = np.rint((w + radius) / COLUMN_MM).astype(int)
    inside = (ti >= 0) & (ti < tw.size) & (wi >= 0) & (wi < tw.size)
    ti, wi = np.clip(ti, 0, tw.size - 1), np.clip(wi, 0, tw.size - 1)
    low, high = low_edge[ti, wi], high_edge[ti, wi]
    with np.errstate(invalid="ignore"):
        disc = inside & (s > low) & (s < high)
    out[box] = disc & ~both[box]
    return out
