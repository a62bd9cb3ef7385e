"""Dense labels from sparse centroids (paper 002, section 2.3) and the continuous level axis.

Paper 002's algorithm: midpoints between neighbouring centroids; one line segment per vertebra
from the midpoint above it to the midpoint below it (the first and last vertebra get a segment of
the same length reaching past their centroid); discs of a level-specific radius (Busscher et al.)
around every point of each segment. The union is a tube along the column; every voxel in it
carries the level of its segment. Our discs are perpendicular to their own segment (the paper
draws them in the axial plane): on a lordotic or scoliotic column an axial disc is an ellipse
that reaches into the neighbour's territory. At a joint between two segments the tube is
rounded (distance to the clipped segment), so a bent column has no wedge-shaped gap.

The level axis (what stage 2 regresses): C1..L5 = 1..24 (the VerSe codes, and the paper's
numbering); S1 = 25 (as in the paper: one step below L5). The transitional vertebrae sit half a
step between their neighbours: T13 = 19.5 (between T12 and L1), L6 = 24.5 (between L5 and S1).
Why: a T13 or L6 is an extra vertebra in a column whose other vertebrae keep their names, so T12,
L1 and L5 keep their usual places on the axis and the usual 24-vertebra spine (nearly all
training cases) is not shifted; a count-based axis (T13 = 20, L1 = 21 ...) would move every
lumbar target of the rare transitional spines by one and teach the network that the same-looking
L1 is sometimes 20 and sometimes 21. Rounding to the nearest axis value gives T13 and L6 bins of
half width, which is about how rare they are. S1 is on the axis so the L5 bin ends half-way to it,
but it is not a target of this family (the Mask R-CNN detector finds the sacrum); an S1
centroid, when known, only ends L5's segment.
"""
from __future__ import annotations

import numpy as np

from ...core import anatomy

AXIS: dict[str, float] = {**{name: float(anatomy.code_of(name)) for name in anatomy.STANDARD_ORDER if name != "S1"},
                          "T13": 19.5, "L6": 24.5, "S1": 25.0}
#: Levels the dense detector reports (every level but S1), in anatomical order.
OUTPUT_LEVELS: tuple[str, ...] = tuple(n for n in anatomy.ORDER if n != "S1")
#: Bin centres for rounding a predicted index: every level of anatomy.ORDER, S1 included.
BIN_NAMES: tuple[str, ...] = anatomy.ORDER
BIN_VALUES = np.array([AXIS[n] for n in BIN_NAMES])


def disc_radius_mm(name: str) -> float:
    """Tube radius of a level: the mean of half the body's width and half its depth (the
    Busscher et al. 2010 dimensions behind `anatomy.body_size`, as paper 002 uses them)."""
    size = anatomy.body_size(name)
    return (size.width + size.depth) / 4.0


def nearest_bin(values: np.ndarray) -> np.ndarray:
    """Index into BIN_NAMES of the axis value nearest to each predicted value."""
    values = np.asarray(values, float)
    edges = (BIN_VALUES[1:] + BIN_VALUES[:-1]) / 2          # BIN_VALUES increase along ORDER
    return np.searchsorted(edges, values)


def segments(centroids: list[tuple[str, np.ndarray]], default_direction=(0.0, 1.0, 0.0)):
    """Per vertebra (name, start, end) of its line segment, from centroids sorted cranial first.

    Points are in millimetres on any orthonormal grid. A single centroid gets a segment one body
    plus one disc long along ``default_direction`` (canonical: the superior-inferior row axis)."""
    names = [n for n, _ in centroids]
    points = np.array([np.asarray(p, float) for _, p in centroids])
    if len(points) == 1:
        size = anatomy.body_size(names[0])
        half = (size.height + size.disc) / 2 * np.asarray(default_direction, float)
        return [(names[0], points[0] - half, points[0] + half)]
    mids = (points[1:] + points[:-1]) / 2
    starts = np.vstack([2 * points[0] - mids[0], mids])
    ends = np.vstack([mids, 2 * points[-1] - mids[-1]])
    return list(zip(names, starts, ends))


def dense_labels(shape: tuple[int, int, int], spacing_mm: float,
                 centroids: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Level-axis value per voxel (0 = background) on a grid of ``shape`` with isotropic
    ``spacing_mm``; centroids are (name, voxel index point) sorted cranial first. S1 ends the
    segment of the vertebra above it but labels nothing."""
    out = np.zeros(shape, np.float32)
    if not centroids:
        return out
    parts = segments([(n, np.asarray(p, float) * spacing_mm) for n, p in centroids])
    reach = max(disc_radius_mm(n) for n, _ in centroids) + spacing_mm
    every = np.array([p for _, a, b in parts for p in (a, b)]) / spacing_mm
    low = np.maximum(np.floor(every.min(axis=0) - reach / spacing_mm).astype(int), 0)
    high = np.minimum(np.ceil(every.max(axis=0) + reach / spacing_mm).astype(int) + 1, shape)
    if np.any(high <= low):
        return out
    grids = np.meshgrid(*[np.arange(a, b) * spacing_mm for a, b in zip(low, high)], indexing="ij")
    voxels = np.stack(grids, -1).reshape(-1, 3)
    best = np.full(len(voxels), np.inf)
    value = np.zeros(len(voxels), np.float32)
    for n, (name, start, end) in enumerate(parts):
        direction = end - start
        t = (voxels - start) @ direction / max(float(direction @ direction), 1e-9)
        eligible = ((t >= 0) | (n > 0)) & ((t <= 1) | (n < len(parts) - 1))    # no caps at the free ends
        closest = start + np.clip(t, 0, 1)[:, None] * direction
        distance = np.linalg.norm(voxels - closest, axis=1)
        # Among the segments whose disc covers a voxel, the nearest one owns it: on a straight
        # column the boundary is the plane through the midpoint, where a wide lumbar tube meets a
        # narrow thoracic one the wider tube only fills the ring the narrower one leaves empty.
        covered = np.where(eligible & (distance <= disc_radius_mm(name)), distance, np.inf)
        closer = covered < best
        best[closer] = covered[closer]
        value[closer] = AXIS[name]
    value[np.isinf(best) | (value == AXIS["S1"])] = 0.0
    out[tuple(slice(a, b) for a, b in zip(low, high))] = value.reshape(tuple(high - low))
    return out


def unlabelled_above(shape: tuple[int, int, int], spacing_mm: float,
                     centroids: list[tuple[str, np.ndarray]], margin_mm: float = 2.0,
                     below: bool = False) -> np.ndarray:
    """True on rows above the first vertebra's segment (less a margin), and with ``below`` also
    on rows below the last one's: real masks that start at L1 or T11 (or a CT labelled T10-L3)
    leave the vertebrae beyond visible but unlabelled, so they are not background."""
    ignore = np.zeros(shape, bool)
    if not centroids:
        return ignore
    parts = segments([(n, np.asarray(p, float) * spacing_mm) for n, p in centroids])
    margin = margin_mm / spacing_mm
    top_row = min(parts[0][1][1], parts[0][2][1]) / spacing_mm - margin
    ignore[:, : max(0, int(np.floor(top_row)))] = True
    if below:
        bottom_row = max(parts[-1][1][1], parts[-1][2][1]) / spacing_mm + margin
        ignore[:, max(0, int(np.ceil(bottom_row))) + 1:] = True
    return ignore
