"""Vertebral bodies from whole-vertebra masks (VerSe, TotalSegmentator) and from disc masks.

The detector's targets are vertebral BODIES, but VerSe and TotalSegmentator label whole vertebrae
(body + pedicles + laminae + processes). The rule used here (the VerSe sub-region convention: the
body is the part of the vertebra anterior to the pedicles, i.e. anterior to the spinal canal):

1. In each axial plane of the vertebra, the vertebral foramen is the hole the vertebral arch closes
   (2-D hole filling minus the mask). Their union is the canal segment of this vertebra.
2. The vertebra's own antero-posterior axis ``u`` is perpendicular to the column there (the line
   through the centroids of the levels above and below), in the sagittal plane and pointing
   anteriorly; a level alone in its map takes the direction from the canal's centroid to the whole
   vertebra's centroid (the body is the heaviest part and lies in front of the canal). Either way a
   tilted vertebra (lordosis, kyphosis) is cut along its own axis, not the scanner's.
3. The cut plane is perpendicular to ``u`` through the canal's most anterior voxel (the posterior
   wall of the body). The body is the vertebra's part anterior to that plane; its largest
   connected component is kept (stray bits of transverse processes dropped).
4. When no foramen is found (an arch open in every plane, a crop through the arch), the cut falls
   back to ``FALLBACK_BODY_DEPTH`` of the vertebra's antero-posterior extent from its anterior end
   (a lumbar body is ~35 mm of a vertebra's ~85 mm).

Everything is done on the canonical grid (array axes: left->right, superior->inferior,
anterior->posterior; see SpineLabelLib.volume.CANONICAL_AXES_RAS) so "axial" and "anterior" mean
what a radiologist means whatever the file's orientation; `body_masks` maps back to the input grid.

Discs fix the bodies between them (the disc MRI): `bodies_between_discs` fills, in every sagittal
slice, the convex hull of two consecutive discs minus the discs -- the body between them.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core import anatomy
from ..core.volume import Volume, resample, resample_to_canonical

#: Share of a vertebra's antero-posterior extent taken as body when no vertebral foramen is found.
FALLBACK_BODY_DEPTH = 0.45


def foramen(mask: np.ndarray) -> np.ndarray:
    """The vertebral foramen of one vertebra (canonical (x, s-i, a-p) boolean array): per axial
    plane, the holes of the mask."""
    holes = np.zeros_like(mask)
    for row in np.flatnonzero(mask.any(axis=(0, 2))):
        plane = mask[:, row, :]
        holes[:, row, :] = ndimage.binary_fill_holes(plane) & ~plane
    return holes


def body_of_vertebra(mask: np.ndarray, min_foramen_voxels: int = 10, axis: np.ndarray | None = None) -> np.ndarray:
    """Body part of one whole-vertebra mask on the canonical grid (rule in the module docstring).
    ``axis``: the vertebra's antero-posterior direction when known from the column (see
    `column_axes`); otherwise it is taken from the canal to the vertebra's centroid."""
    mask = mask.astype(bool)
    points = np.argwhere(mask).astype(float)
    if points.size == 0:
        return mask.copy()
    canal = np.argwhere(canal_of(foramen(mask), points, axis, min_foramen_voxels)).astype(float)
    if len(canal) >= min_foramen_voxels:
        canal_centre = canal.mean(axis=0)
        if axis is None:
            axis = points.mean(axis=0) - canal_centre
        axis = np.array(axis, float)
        axis[0] = 0.0                                    # sagittal plane only (left-right symmetry)
        if np.linalg.norm(axis) < 1e-6 or axis[2] > 0:  # must point anteriorly (towards lower a-p index)
            axis = np.array([0.0, 0.0, -1.0])
        axis /= np.linalg.norm(axis)
        wall = ((canal - canal_centre) @ axis).max()
        anterior = ((points - canal_centre) @ axis) > wall
    else:                                                # along the column's axis when known
        depth = points @ (np.array([0.0, 0.0, -1.0]) if axis is None else np.asarray(axis, float))
        anterior = depth >= depth.max() - FALLBACK_BODY_DEPTH * (depth.max() - depth.min())
    body = np.zeros_like(mask)
    body[tuple(points[anterior].astype(int).T)] = True
    return largest_component(body)


#: The canal's centre is never in the front quarter of a vertebra's antero-posterior extent (it
#: lies at ~35-60 % of it, from cervical to lumbar); holes further forward are inside the body.
CANAL_MIN_DEPTH = 0.25


def canal_of(holes: np.ndarray, points: np.ndarray, axis: np.ndarray | None, min_voxels: int) -> np.ndarray:
    """The spinal canal among a vertebra's holes: the largest piece whose centre lies behind the
    front `CANAL_MIN_DEPTH` of the vertebra (``points``) along its antero-posterior ``axis``.
    An automatic mask can also have holes inside the body (the basivertebral veins, a missed
    low-density patch); taken for the canal, they move the cut into the body."""
    pieces, count = ndimage.label(holes)
    if count == 0:
        return holes
    sizes = np.bincount(pieces.ravel())[1:]
    anterior = np.array([0.0, 0.0, -1.0]) if axis is None else np.asarray(axis, float)
    depth = points @ anterior                           # larger = more anterior
    front, extent = depth.max(), depth.max() - depth.min()
    numbers = list(range(1, count + 1))
    centres = ndimage.center_of_mass(np.ones(holes.shape, np.uint8), pieces, numbers)
    behind = [n for n, c in zip(numbers, centres)
              if sizes[n - 1] >= min_voxels and front - np.dot(c, anterior) > CANAL_MIN_DEPTH * extent]
    if not behind:                                      # no closed arch behind the body: no canal
        return np.zeros_like(holes)
    return pieces == max(behind, key=lambda n: sizes[n - 1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(sizes.argmax())


def column_axes(codes: np.ndarray) -> dict[int, np.ndarray]:
    """Per level with a neighbour in the map, its antero-posterior direction from the column: the
    perpendicular, in the sagittal plane and pointing anteriorly, to the line through the centroids
    of the levels above and below it (one-sided at the ends of the map).

    Why not from the canal alone: the canal-to-centroid direction is only the vertebra's own axis
    when the arch is closed over the vertebra's whole height. On thick axial slices (2.5 mm and up)
    and in automatic masks (TotalSegmentator) the arch closes in a few planes only, often at one
    end of the vertebra; that direction then points largely up or down and the cut keeps a sliver
    of the body (lidc-0001's T7: 584 of ~6000 voxels)."""
    present = sorted((int(c) for c in np.unique(codes) if c and _known(int(c))),
                     key=lambda c: anatomy.order_index(anatomy.name_of(c)))
    if len(present) < 2:
        return {}
    centres = dict(zip(present, ndimage.center_of_mass(np.ones(codes.shape, np.uint8), codes, present)))
    axes = {}
    for n, code in enumerate(present):
        above = centres[present[max(0, n - 1)]]
        below = centres[present[min(len(present) - 1, n + 1)]]
        tangent = np.asarray(below, float) - np.asarray(above, float)
        tangent[0] = 0.0
        if np.linalg.norm(tangent) < 1e-6:
            continue
        tangent /= np.linalg.norm(tangent)
        axis = np.array([0.0, -tangent[2], tangent[1]])  # perpendicular to the column in the sagittal plane
        axes[code] = axis if axis[2] < 0 else -axis       # anterior: towards lower a-p index
    return axes


def _known(code: int) -> bool:
    """A VerSe level code (other values in a map are cut without a column direction)."""
    try:
        anatomy.name_of(code)
    except ValueError:
        return False
    return True


def vertebral_bodies(codes: np.ndarray, keep_whole: tuple[int, ...] = ()) -> np.ndarray:
    """Canonical whole-vertebra label map (VerSe codes) -> body label map (same codes). Levels in
    ``keep_whole`` are kept as they are. S1 (TotalSegmentator's first sacral segment, with its
    posterior part) is cut like the others: the sacral canal is closed at S1. Each level is cut
    along the column's antero-posterior direction there (`column_axes`) when it has neighbours."""
    out = np.zeros_like(codes)
    axes = column_axes(codes)
    for code in (int(c) for c in np.unique(codes) if c):
        region = ndimage.find_objects((codes == code).astype(np.uint8))[0]
        region = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in region)
        mask = codes[region] == code
        part = mask if code in keep_whole else body_of_vertebra(mask, axis=axes.get(code))
        out[region][part] = code
    return out


def body_masks(vertebrae: Volume, spacing_mm: float | None = None) -> Volume:
    """Whole-vertebra label map on any grid -> body label map on the same grid. The rule runs on
    a canonical grid at ``spacing_mm`` (default: the input's finest spacing, at least 0.5 mm)."""
    spacing = spacing_mm or max(0.5, float(vertebrae.spacing.min()))
    canonical = resample_to_canonical(vertebrae.with_array(vertebrae.array.astype(np.uint8)), spacing, label=True)
    bodies = canonical.with_array(vertebral_bodies(canonical.array))
    back = resample(bodies, None, reference=vertebrae, label=True)
    # Never outside the original vertebra (resampling twice can shift a boundary voxel).
    return vertebrae.with_array(np.where(back.array == vertebrae.array, back.array, 0).astype(np.uint8))


def fill_between(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Per sagittal slice (axis 0), the convex hull of two structures minus the structures: the
    body between two discs, or the disc between two bodies."""
    from skimage.morphology import convex_hull_image

    out = np.zeros_like(upper, dtype=bool)
    both3 = upper | lower
    if not (upper.any() and lower.any()):
        return out
    box = ndimage.find_objects(both3.astype(np.uint8))[0]
    up, low = upper[box], lower[box]
    part = np.zeros_like(up, dtype=bool)
    for x in np.flatnonzero(up.any(axis=(1, 2)) & low.any(axis=(1, 2))):
        both = up[x] | low[x]
        rows, cols = np.nonzero(both)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        hull = convex_hull_image(both[r0:r1, c0:c1])
        part[x, r0:r1, c0:c1] = hull & ~both[r0:r1, c0:c1]
    out[box] = largest_component(part) if part.any() else part
    return out


def shifted(mask: np.ndarray, rows: int) -> np.ndarray:
    """The mask moved ``rows`` voxels along the superior-inferior axis (positive = inferior)."""
    out = np.zeros_like(mask)
    if rows >= 0:
        out[:, rows:] = mask[:, : mask.shape[1] - rows]
    else:
        out[:, :rows] = mask[:, -rows:]
    return out


def thickness(mask: np.ndarray) -> float:
    """Mean superior-inferior thickness (voxels) of a flat structure such as a disc."""
    footprint = mask.any(axis=1).sum()
    return float(mask.sum() / footprint) if footprint else 0.0


def bodies_between_discs(discs: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Canonical disc label map (100 + code of the vertebra above) -> body label map (VerSe codes).

    Between consecutive discs lies the body of the vertebra below the upper disc. The body above
    the top disc and the S1 body below the L5-S1 disc have no second disc: the disc itself, moved
    by the mean height of the bodies found between discs (or 25 mm), closes the hull. For S1 only
    the upper ~60 % of that height is kept: the first sacral segment is shorter than a lumbar body
    and its lower end (the S1-S2 fusion) is not visible as a boundary."""
    disc_codes = sorted(int(c) for c in np.unique(discs) if c >= 100)
    ordered = sorted(disc_codes, key=lambda c: anatomy.order_index(anatomy.name_of(c - 100)))
    out = np.zeros(discs.shape, np.uint8)
    heights = []
    for above, below in zip(ordered[:-1], ordered[1:]):
        level = anatomy.STANDARD_ORDER[anatomy.STANDARD_ORDER.index(anatomy.name_of(above - 100)) + 1]
        if anatomy.code_of(level) != below - 100:
            continue                                     # a disc missing in between: no known body
        body = fill_between(discs == above, discs == below) & (discs == 0)
        out[body & (out == 0)] = anatomy.code_of(level)
        if body.any():
            rows = np.flatnonzero(body.any(axis=(0, 2)))
            heights.append(rows.max() - rows.min() + 1)
    height = int(round(np.mean(heights))) if heights else int(round(25.0 / spacing_mm))
    if ordered:
        last = ordered[-1]
        height += int(round(thickness(discs == last)))    # the moved disc starts a disc's thickness lower
        below_name = anatomy.STANDARD_ORDER[anatomy.STANDARD_ORDER.index(anatomy.name_of(last - 100)) + 1]
        depth = int(round(0.6 * height)) if below_name == "S1" else height
        body = fill_between(discs == last, shifted(discs == last, depth)) & (discs == 0)
        out[body & (out == 0)] = anatomy.code_of(below_name)
        first = ordered[0]
        body = fill_between(shifted(discs == first, -height), discs == first) & (discs == 0)
        out[body & (out == 0)] = anatomy.code_of(anatomy.name_of(first - 100))
    return out
