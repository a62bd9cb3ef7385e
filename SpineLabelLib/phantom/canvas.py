"""The canvas: tissue-class and label maps being painted, with boxes, bone rods and tubes evaluated in a
level's local frame over their own bounding box only."""
from __future__ import annotations

import numpy as np

from .level import _Level
from .tissues import CANCELLOUS, CORTICAL

CORTEX_MM = 1.2          # cortical shell of bodies and processes


class _Canvas:
    def __init__(self, shape_kji: tuple[int, int, int], ijk_to_ras: np.ndarray):
        self.shape = tuple(int(s) for s in shape_kji)
        self.affine = np.asarray(ijk_to_ras, dtype=float)
        self.tissues = np.zeros(self.shape, dtype=np.uint8)
        self.labels = np.zeros(self.shape, dtype=np.uint8)
        self.discs = np.zeros(self.shape, dtype=np.uint8)     # disc label values (core.discs), before overpainting

    def block(self, origin, axes, low, high, clip: bool = True):
        """Index ranges covering a local box, and local (x, y, z) coordinates of their voxel centres.

        Returns (ranges, inner, x, y, z): ranges = ((k0, k1), (j0, j1), (i0, i1)) of the evaluated
        block; inner = slices of the block that lie inside the grid (the whole block when clip).
        None when the box misses the grid.
        """
        low, high = np.asarray(low, float), np.asarray(high, float)
        corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
        world = corners @ axes.T + origin
        inverse = np.linalg.inv(self.affine)
        ijk = world @ inverse[:3, :3].T + inverse[:3, 3]
        start = np.floor(ijk.min(axis=0)).astype(int)
        stop = np.ceil(ijk.max(axis=0)).astype(int) + 1
        size_ijk = np.array(self.shape[::-1])
        inside_start, inside_stop = np.maximum(start, 0), np.minimum(stop, size_ijk)
        if np.any(inside_stop <= inside_start):
            return None
        if clip:
            start, stop = inside_start, inside_stop
        # local = axes^T (A ijk + t - origin): one 3x3 map plus an offset, applied by broadcasting.
        matrix = axes.T @ self.affine[:3, :3]
        offset = axes.T @ (self.affine[:3, 3] - origin)
        i = np.arange(start[0], stop[0], dtype=np.float32)[None, None, :]
        j = np.arange(start[1], stop[1], dtype=np.float32)[None, :, None]
        k = np.arange(start[2], stop[2], dtype=np.float32)[:, None, None]
        x, y, z = (np.float32(matrix[n, 0]) * i + np.float32(matrix[n, 1]) * j + np.float32(matrix[n, 2]) * k
                   + np.float32(offset[n]) for n in range(3))
        ranges = tuple((int(start[n]), int(stop[n])) for n in (2, 1, 0))
        inner = tuple(slice(int(inside_start[n] - start[n]), int(inside_stop[n] - start[n])) for n in (2, 1, 0))
        return ranges, inner, x, y, z

    def paint(self, ranges, mask: np.ndarray, tissue: int, label: int | None = None) -> None:
        view = tuple(slice(a, b) for a, b in ranges)
        self.tissues[view][mask] = tissue
        if label is not None:
            self.labels[view][mask] = label

    def capsule(self, level: _Level, p0, p1, radius: float, label: int | None = None,
                cortex: float = CORTEX_MM) -> None:
        """A bone rod (segment p0-p1 swept by a sphere) in a level's frame: cortical shell, cancellous core."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        block = self.block(level.origin, level.axes, np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius)
        if block is None:
            return
        ranges, _, x, y, z = block
        v = p1 - p0
        t = ((x - p0[0]) * v[0] + (y - p0[1]) * v[1] + (z - p0[2]) * v[2]) / max(float(v @ v), 1e-9)
        t = np.clip(t, 0.0, 1.0)
        d2 = (x - p0[0] - t * v[0]) ** 2 + (y - p0[1] - t * v[1]) ** 2 + (z - p0[2] - t * v[2]) ** 2
        self.paint(ranges, d2 <= radius ** 2, CORTICAL, label)
        if radius - cortex > 0.5:
            self.paint(ranges, d2 <= (radius - cortex) ** 2, CANCELLOUS, label)

    def chain(self, level: _Level, points, radii, label: int | None = None) -> None:
        radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
        for n in range(len(points) - 1):
            self.capsule(level, points[n], points[n + 1], float(min(radii[n], radii[n + 1])), label)

    def elliptic_tube(self, level: _Level, centre_y: float, half_x: float, half_y: float,
                      z_low: float, z_high: float, tissue: int) -> None:
        """An elliptic cylinder along the level's superior axis (canal, dural sac, cord)."""
        block = self.block(level.origin, level.axes, (-half_x, centre_y - half_y, z_low),
                           (half_x, centre_y + half_y, z_high))
        if block is None:
            return
        ranges, _, x, y, z = block
        mask = (x / half_x) ** 2 + ((y - centre_y) / half_y) ** 2 <= 1.0
        self.paint(ranges, mask & (z >= z_low) & (z <= z_high), tissue)
