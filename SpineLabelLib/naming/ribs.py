"""Rib evidence on CT: does a vertebra carry a rib? (T1 is the first that does, T12 the last.)

A rib is a thin bone rod that leaves the column beside the vertebra at the level of its body, on the
posterior half (the rib head at the body, the tubercle at the transverse process), and runs far out
laterally. Nothing else there does that: lumbar transverse processes end some 45 mm from the midline,
the sacral alae and the iliac wings reach further but are thick plates, not rods.

Per vertebra, in its own frame (z along the column from its neighbours, x to the patient's right,
y anterior), the CT is sampled on a 2 mm grid in a box beside and behind the body; bone is >= 150 HU.
On each side, bone in the lateral part of the box (beyond the body's edge) is split into connected
pieces; the side bears a rib when a piece that starts next to the vertebra at its own level
(`seed zone`) reaches `RIB_REACH_MM` from the body centre and is thin where it is far out (90th
percentile of the superior-inferior thickness of its lateral columns <= `RIB_THICKNESS_MM`; the iliac
crest beside L4-L5, measured on the TotalSegmentator example CT, is 18-38 mm there, ribs 6-16 mm). Fast: one small resample
and one labelling per side and vertebra (a few milliseconds each).

Such a piece is a rib *of the vertebra its head is nearest* (`owner_of`: the head's level, where the
piece meets the column, against each vertebra's expected head a quarter step above its centre), not
necessarily of the vertebra whose box found it: at 5 mm slices C7's box reaches T1's first rib
(lung-dx-a0001; lidc-0001 at body centroids). It goes to that neighbour only if the neighbour's own box
found a rib on that side (`credit_ribs`), and rib-bearing vertebrae are contiguous (`fill_between`).

Probabilities: a rib on both sides 0.95, on one side 0.85 (a rib can be missed on one side, e.g.
when the field of view is narrow), none 0.1; NaN when the box beside the body lies outside the image
on both sides, when no rib was found and the place of the vertebra's own rib head is out of view (a
body cut by the field of view's edge), or when the image is not CT.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.volume import Volume

BONE_HU = 150.0
STEP_MM = 2.0
RIB_REACH_MM = 60.0          # lateral distance from the body centre a rib reaches, transverse processes don't
RIB_THICKNESS_MM = 16.0      # thicker than this far out: an iliac wing or sacral ala, not a rib
BODY_HALF_WIDTH_MM = 18.0    # lateral edge of the body when no mask says otherwise
SEED_WIDTH_MM = 20.0         # the seed zone: this far beyond the body edge, at the body's own level
MEDIAL_END_MM = 10.0        # a rib's medial end: this far beyond the body edge
HEAD_ABOVE_CENTRE = 0.25    # rib heads meet the column in the upper half of their body (steps above its centre)
HEAD_Y_MM = (-40.0, 10.0)   # antero-posterior span of a rib's head, neck and tubercle beside the body
BOX_LATERAL_MM = 110.0
BOX_ANTERIOR_MM = (-80.0, 40.0)   # from behind the transverse processes to the front of the body
P_BOTH, P_ONE, P_NONE = 0.95, 0.85, 0.1


def vertebra_frame(centroids_ras: np.ndarray, index: int) -> np.ndarray:
    """3x3 columns x (right), y (anterior), z (cranial along the column) for one vertebra of a
    cranio-caudally ordered centroid list (a single vertebra: the RAS axes)."""
    points = np.asarray(centroids_ras, float)
    if len(points) < 2:
        return np.eye(3)
    above = points[max(index - 1, 0)]
    below = points[min(index + 1, len(points) - 1)]
    z = above - below
    z = z / max(np.linalg.norm(z), 1e-6)
    if z[2] < 0:
        z = -z
    x = np.array([1.0, 0.0, 0.0]) - z[0] * z
    x = x / max(np.linalg.norm(x), 1e-6)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _sample(image: Volume, centre: np.ndarray, frame: np.ndarray, x: np.ndarray, y: np.ndarray,
            z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CT values on the local grid (z, y, x order) and a mask of samples inside the image.

    local -> world -> voxel index is one affine map, applied by broadcasting per axis."""
    to_ijk = np.linalg.inv(image.ijk_to_ras)
    matrix = to_ijk[:3, :3] @ frame                   # local mm -> ijk
    offset = to_ijk[:3, :3] @ centre + to_ijk[:3, 3]
    axes = (x[None, None, :], y[None, :, None], z[:, None, None])
    ijk = [sum(matrix[n, m] * axes[m] for m in range(3)) + offset[n] for n in range(3)]
    shape = (len(z), len(y), len(x))
    kji = np.stack([np.broadcast_to(ijk[n], shape).ravel() for n in (2, 1, 0)]).astype(np.float32)
    limits = np.array(image.array.shape, np.float32)[:, None]
    inside = np.all((kji >= -0.5) & (kji <= limits - 0.5), axis=0).reshape(shape)
    values = ndimage.map_coordinates(image.array, kji, order=1, mode="nearest", prefilter=False)
    return values.reshape(shape), inside


def rib_heads(bone: np.ndarray, x: np.ndarray, z: np.ndarray, half_width: float, level_half_height: float
              ) -> list[float]:
    """One side's bone (z, y, x>=0 order, x = distance from the body centre): for each thin piece from
    the seed zone out to RIB_REACH_MM, the level (z, mm along the column) of its medial end, where the
    rib head meets the column."""
    lateral = bone & (x[None, None, :] > half_width)
    pieces, count = ndimage.label(lateral)
    if count == 0:
        return []
    seed = (np.abs(z)[:, None, None] <= level_half_height) & (x[None, None, :] <= half_width + SEED_WIDTH_MM)
    medial = x[None, None, :] <= half_width + MEDIAL_END_MM
    heads = []
    for piece in np.unique(pieces[seed & lateral]):
        member = pieces == piece
        far = member & (x[None, None, :] >= 0.8 * RIB_REACH_MM)
        if not member[..., x >= RIB_REACH_MM].any():
            continue
        columns = far.any(axis=0)                       # (y, x) columns the piece occupies far out
        thickness = far.sum(axis=0)[columns] * STEP_MM
        if np.percentile(thickness, 90) <= RIB_THICKNESS_MM:   # a rod throughout, not a plate in places
            heads.append(float(z[np.nonzero(member & medial)[0]].mean()))
    return heads


def owner_of(head_z: float, own_frame: np.ndarray, points: np.ndarray, n: int, step: float | None = None
             ) -> int | None:
    """The vertebra (index) a rib head at ``head_z`` mm along vertebra n's column axis belongs to:
    the one whose expected rib head (`HEAD_ABOVE_CENTRE` steps above its centroid) is nearest, among
    n and its neighbours. None when that is the next vertebra beyond either end of the list (out of
    view or not found). ``step``: n's spacing to its neighbours, when the caller has it."""
    axis = own_frame[:, 2]
    step = _neighbour_spacing(points, n) if step is None else step
    levels = {m: float((points[m] - points[n]) @ axis) for m in (n - 1, n, n + 1) if 0 <= m < len(points)}
    if n == 0:
        levels[-1] = step                                # the vertebra above the first, if any
    if n == len(points) - 1:
        levels[len(points)] = -step                      # the vertebra below the last, if any
    owner = min(levels, key=lambda m: abs(levels[m] + HEAD_ABOVE_CENTRE * step - head_z))
    return owner if 0 <= owner < len(points) else None


def credit_ribs(found: dict, count: int) -> np.ndarray:
    """(count, 2) rib-bearing per vertebra and side from {(vertebra, side): [(head, owner), ...]}.
    A rib goes to the neighbour its head is nearest only if that neighbour's own box found a rib on
    that side too: the 12th rib's head can sit low beside T12 with L1 rib-less below."""
    ribbed = np.zeros((count, 2), bool)
    for (n, side), heads in found.items():
        for _head, owner in heads:
            ribbed[owner if owner is not None and found.get((owner, side)) else n, side] = True
    return ribbed


def fill_between(ribbed: np.ndarray) -> np.ndarray:
    """Rib-bearing vertebrae are contiguous (T1-T12): one found without its own rib between two with
    theirs lost it to the thresholds (a rib merged with the scapula, a thin rib at 5 mm slices)."""
    own = ribbed.any(axis=1)
    filled = ribbed.copy()
    for n in range(1, len(own) - 1):
        if not own[n] and own[n - 1] and own[n + 1]:
            filled[n, 0] = True         # counted as one side: P_ONE, not P_BOTH
    return filled


def rib_evidence(image: Volume, centroids_ras: np.ndarray, modality: str = "ct",
                 half_widths_mm: np.ndarray | None = None) -> np.ndarray:
    """(N,) P(vertebra bears a rib) for centroids in cranio-caudal order; NaN where unknown.

    Each rib is credited to the vertebra its head is nearest, whichever vertebra's box found it: a
    box reaches a rib of the vertebra below (at 5 mm slices the first rib touches C7's), which
    must not make that vertebra rib-bearing."""
    points = np.asarray(centroids_ras, float).reshape(-1, 3)
    out = np.full(len(points), np.nan)
    if modality != "ct" or len(points) == 0:
        return out
    seen = np.zeros((len(points), 2), bool)          # side in the field of view
    head_seen = np.zeros((len(points), 2), bool)     # ... with the place of its own rib head
    found: dict[tuple[int, int], list[tuple[float, int | None]]] = {}   # (vertebra, side) -> (head, owner)
    for n in range(len(points)):
        half_width = BODY_HALF_WIDTH_MM if half_widths_mm is None else float(half_widths_mm[n])
        for side, (in_view, head_in_view, heads) in enumerate(look_beside(image, points, n, half_width)):
            seen[n, side], head_seen[n, side] = in_view, head_in_view
            if in_view:
                found[n, side] = heads
    ribbed = fill_between(credit_ribs(found, len(points)) & seen)
    for n in np.flatnonzero(seen.any(axis=1)):
        sides = int(ribbed[n].sum())
        if sides or head_seen[n].any():
            out[n] = P_BOTH if sides >= 2 else P_ONE if sides == 1 else P_NONE
    return out


def look_beside(image: Volume, points: np.ndarray, n: int, half_width: float) -> list[tuple]:
    """Per side (right, left) of vertebra n: (side in view, its own rib head's place in view,
    [(rib head level, owner index or None), ...])."""
    x = np.arange(0.0, BOX_LATERAL_MM + STEP_MM, STEP_MM)
    y = np.arange(BOX_ANTERIOR_MM[0], BOX_ANTERIOR_MM[1] + STEP_MM, STEP_MM)
    spacing = _neighbour_spacing(points, n)
    z = np.arange(-1.5 * spacing, 0.6 * spacing + STEP_MM, STEP_MM)
    frame = vertebra_frame(points, n)
    centre = points[n]
    # A body cut by the field of view's edge has its upper half, where the rib head is, out of view.
    upper_body_seen = bool(_sample(image, centre, frame, np.zeros(1), np.zeros(1), np.array([0.4 * spacing]))[1].all())
    head_rows = (z >= 0) & (z <= 0.4 * spacing)
    head_columns = (y >= HEAD_Y_MM[0]) & (y <= HEAD_Y_MM[1])
    sides = []
    for sign in (1.0, -1.0):
        values, inside = _sample(image, centre, frame, sign * x, y, z)
        if inside[..., x >= RIB_REACH_MM].mean() < 0.5:
            sides.append((False, False, []))            # this side is out of the field of view
            continue
        # "No rib" needs the place of its own rib head in view (not so at the field of view's edge).
        head_place = inside[head_rows][:, head_columns][..., x <= half_width + SEED_WIDTH_MM]
        heads = rib_heads((values >= BONE_HU) & inside, x, z, half_width, 0.4 * spacing)
        sides.append((True, bool(head_place.mean() >= 0.75 and upper_body_seen),
                      [(head, owner_of(head, frame, points, n, spacing)) for head in heads]))
    return sides


def _neighbour_spacing(points: np.ndarray, n: int) -> float:
    """Median distance to the neighbouring centroids (25 mm, a mid-thoracic step, when alone)."""
    gaps = [np.linalg.norm(points[m] - points[n]) for m in (n - 1, n + 1) if 0 <= m < len(points)]
    return float(np.clip(np.median(gaps), 12.0, 45.0)) if gaps else 25.0
