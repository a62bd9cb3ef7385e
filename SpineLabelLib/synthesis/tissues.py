"""A tissue map around a spine label map: what a CT or MRI shows besides the vertebrae.

Label maps of real spines (VerSe, TotalSegmentator) hold only the vertebrae. An image synthesised
from them alone would be bone on black; the detector would learn that. Here the spine is dressed
with what surrounds it, in the canonical grid (axis 0 left->right, axis 1 superior->inferior,
axis 2 anterior->posterior), plane by axial plane, following the spine's course:
  body outline (an ellipse whose back lies 85-140 mm behind the vertebral bodies) with a fat layer,
  random organ / bowel / visceral-fat blobs in front of the spine, the aorta left-anterior of the
  bodies, lungs beside the thoracic spine (down to a random level T10..L1, i.e. the posterior
  costophrenic recess), ribs at every thoracic level (or the label map's own ribs), the sacrum
  below S1 (or the map's own), discs between the bodies, the spinal canal with the cord.
Vertebrae, ribs and sacrum are split into a cortical shell and cancellous bone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core import anatomy
from .bodies import fill_between, vertebral_bodies
from .contrasts import Tissue


@dataclass
class SpineCourse:
    """Per axial plane (row): where the spine is, interpolated through discs and beyond its ends."""

    x: np.ndarray              # left-right centre of the bodies (voxels)
    front: np.ndarray          # anterior wall of the body (a-p voxels)
    back: np.ndarray           # posterior wall of the body
    half_width: np.ndarray     # half the body's left-right width
    level: np.ndarray          # position in anatomy.ORDER units (fractional; extrapolated)


def _fill(rows: np.ndarray, values: np.ndarray, n: int, smooth: float = 8.0) -> np.ndarray:
    """Values known at ``rows`` -> all n rows: linear in between, constant beyond the ends, then
    smoothed along the spine (end plates and partial rows would make the body outline jagged)."""
    return ndimage.gaussian_filter1d(np.interp(np.arange(n), rows, values), smooth, mode="nearest")


def spine_course(bodies: np.ndarray) -> SpineCourse:
    n = bodies.shape[1]
    known = np.flatnonzero(bodies.any(axis=(0, 2)))
    xs, fronts, backs, widths = [], [], [], []
    for row in known:
        x_idx, a_idx = np.nonzero(bodies[:, row, :])
        xs.append(x_idx.mean())
        fronts.append(a_idx.min())
        backs.append(a_idx.max())
        widths.append((x_idx.max() - x_idx.min() + 1) / 2)
    codes = [int(c) for c in np.unique(bodies) if c]
    centres = np.array([np.argwhere((bodies == c).any(axis=(0, 2)))[:, 0].mean() for c in codes])
    order = np.array([anatomy.order_index(anatomy.name_of(c)) for c in codes], float)
    sort = np.argsort(centres)
    centres, order = centres[sort], order[sort]
    if len(codes) >= 2:
        slope, intercept = np.polyfit(centres, order, 1)
    else:
        slope, intercept = 1.0 / 30.0, order[0] - centres[0] / 30.0
    level = slope * np.arange(n) + intercept
    inside = (np.arange(n) >= centres[0]) & (np.arange(n) <= centres[-1])
    level[inside] = np.interp(np.arange(n)[inside], centres, order)
    return SpineCourse(_fill(known, np.array(xs), n), _fill(known, np.array(fronts), n),
                       _fill(known, np.array(backs), n), _fill(known, np.array(widths), n), level)


def _ellipses(shape, centre_x, centre_a, radius_x, radius_a) -> np.ndarray:
    """Per row an ellipse in the (x, a) plane; arguments are per-row arrays (or scalars)."""
    x = np.arange(shape[0])[:, None, None]
    a = np.arange(shape[2])[None, None, :]
    cx, ca = np.broadcast_to(centre_x, shape[1])[None, :, None], np.broadcast_to(centre_a, shape[1])[None, :, None]
    rx, ra = np.broadcast_to(radius_x, shape[1])[None, :, None], np.broadcast_to(radius_a, shape[1])[None, :, None]
    return ((x - cx) / rx) ** 2 + ((a - ca) / ra) ** 2 <= 1.0


def smooth_noise(shape, sigma_vox: float, rng) -> np.ndarray:
    small = tuple(max(2, s // 4) for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small), sigma_vox / 4.0)
    field /= field.std() + 1e-9
    zoom = [s / t for s, t in zip(shape, small)]
    return ndimage.zoom(field, zoom, order=1)[: shape[0], : shape[1], : shape[2]]


def tube(shape, centre_x, centre_a, radius, rows: np.ndarray) -> np.ndarray:
    """A tube along the spine: per row in ``rows`` a disc of ``radius`` voxels around (x, a)."""
    mask = _ellipses(shape, centre_x, centre_a, radius, radius)
    mask[:, ~rows, :] = False
    return mask


def rib_centrelines(bodies: np.ndarray, course: SpineCourse, outline: dict, spacing: float, rng) -> np.ndarray:
    """Points (x, s, a voxels) along a pair of ribs at every thoracic body: head at the body's
    postero-lateral corner, neck and tubercle beside the transverse process, then the shaft
    following the inside of the chest wall and descending anteriorly."""
    points = []
    thoracic = [c for c in np.unique(bodies) if c and anatomy.name_of(int(c)).startswith("T")]
    for code in thoracic:
        rows = np.flatnonzero((bodies == code).any(axis=(0, 2)))
        row = rows.mean() - 0.25 * (rows.max() - rows.min())          # heads sit high, near the disc above
        r = int(np.clip(round(row), 0, bodies.shape[1] - 1))
        x0, back, hw = course.x[r], course.back[r], course.half_width[r]
        ca, rx, ra = outline["centre_a"][r], outline["inner_x"], outline["inner_a"]
        drop = rng.uniform(20, 45) / spacing                           # descent per radian of shaft
        for side in (-1.0, 1.0):
            head = np.array([x0 + side * (hw * 0.8), row, back - 4 / spacing])
            tubercle = np.array([x0 + side * (hw + 25 / spacing), row + 4 / spacing, back + 18 / spacing])
            theta0 = np.arcsin(np.clip((tubercle[0] - x0) * side / rx, 0, 0.95))
            thetas = np.linspace(theta0, 2.4, 80)
            shaft = np.stack([x0 + side * rx * np.sin(thetas),
                              tubercle[1] + drop * (thetas - theta0),
                              ca + ra * np.cos(thetas)], axis=1)
            shaft[:, 2] = np.minimum(shaft[:, 2], tubercle[2] + 0 * shaft[:, 2])   # never behind the tubercle
            for a, b in ((head, tubercle), (tubercle, shaft[0])):
                steps = int(np.linalg.norm(b - a)) + 2
                points.append(np.linspace(a, b, steps))
            points.append(shaft)
    return np.concatenate(points) if points else np.zeros((0, 3))


def render_points(shape, points: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` voxels of any point."""
    out = np.zeros(shape, bool)
    idx = np.round(points).astype(int)
    idx = idx[np.all((idx >= 0) & (idx < np.array(shape)), axis=1)]
    if not len(idx):
        return out
    pad = int(np.ceil(radius)) + 1
    low = np.maximum(idx.min(axis=0) - pad, 0)
    high = np.minimum(idx.max(axis=0) + pad + 1, shape)
    seeds = np.zeros(tuple(high - low), bool)
    seeds[tuple((idx - low).T)] = True
    box = tuple(slice(a, b) for a, b in zip(low, high))
    out[box] = ndimage.distance_transform_edt(~seeds) <= radius
    return out


def sacrum_below(s1: np.ndarray, spacing: float, rng) -> np.ndarray:
    """Sacral segments S2..S5 under a first sacral segment: copies moved down and back (the
    sacrum's kyphotic curve), each smaller than the one above."""
    out = np.zeros_like(s1)
    rows = np.flatnonzero(s1.any(axis=(0, 2)))
    if rows.size == 0:
        return out
    height = rows.max() - rows.min() + 1
    centre = np.argwhere(s1).mean(axis=0)
    angle = np.deg2rad(rng.uniform(25, 45))
    segment = s1
    for n in range(1, 5):
        scale = 0.82 ** n
        shift = np.array([0.0, height * 0.9 * n * np.cos(angle), height * 0.9 * n * np.sin(angle)])
        matrix = np.diag([1 / scale, 1 / scale, 1 / scale])
        offset = centre - matrix @ (centre + shift)
        out |= ndimage.affine_transform(segment.astype(np.uint8), matrix, offset, order=0).astype(bool)
    return out & ~s1


def tissue_map(vertebrae: np.ndarray, spacing: float, rng, extra: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical whole-vertebra codes -> (tissue map, body codes), same grid. ``extra`` may hold
    boolean masks 'ribs', 'sacrum', 'lungs', 'organs' of a multi-structure map (used instead of
    the drawn ones). The grid must leave room in front of the spine for the body outline."""
    extra = extra or {}
    shape = vertebrae.shape
    mm = 1.0 / spacing
    bodies = vertebral_bodies(vertebrae)
    course = spine_course(bodies)
    out = np.full(shape, Tissue.AIR, np.uint8)

    # Body outline: the back skin 85-140 mm behind the bodies (20-60 mm behind the spinous
    # processes), an ellipse with random proportions.
    radius_a = rng.uniform(85, 150) * mm
    radius_x = radius_a * rng.uniform(1.15, 1.6)
    centre_a = course.back + rng.uniform(85, 140) * mm - radius_a
    centre_x = course.x + rng.uniform(-5, 5) * mm
    fat = rng.uniform(4, 30) * mm
    body = _ellipses(shape, centre_x, centre_a, radius_x, radius_a)
    inner = _ellipses(shape, centre_x, centre_a, radius_x - fat, radius_a - fat)
    out[body] = Tissue.FAT
    out[inner] = Tissue.MUSCLE
    outline = {"centre_a": centre_a, "inner_x": radius_x - fat - 8 * mm, "inner_a": radius_a - fat - 8 * mm}

    # Viscera in front of the spine: random blobs of organ, bowel, fat (and a little gas).
    a = np.arange(shape[2])[None, None, :]
    front = inner & (a < (course.front[None, :, None] - 8 * mm))
    noise = smooth_noise(shape, rng.uniform(10, 25) * mm, rng)
    kinds = np.digitize(noise, np.sort(rng.uniform(-1.2, 1.2, 3)))
    for k, tissue in enumerate((Tissue.FAT, Tissue.BOWEL, Tissue.ORGAN, Tissue.MUSCLE)):
        out[front & (kinds == k)] = tissue
    gas = front & (smooth_noise(shape, 6 * mm, rng) > rng.uniform(2.0, 3.5))
    out[gas] = Tissue.AIR
    if "organs" in extra:
        out[extra["organs"] & inner] = Tissue.ORGAN

    # Lungs beside the thoracic spine, from the apex (T1) to a random level T10..L1.
    bottom = anatomy.order_index(str(rng.choice(["T10", "T11", "T12", "L1"])))
    thorax = (course.level >= anatomy.order_index("T1") - 1.0) & (course.level <= bottom)
    if "lungs" in extra:
        out[extra["lungs"] & inner] = Tissue.LUNG
    elif thorax.any():
        gap = course.half_width + rng.uniform(3, 12) * mm
        r_x = rng.uniform(45, 75) * mm
        r_a = rng.uniform(0.45, 0.7) * radius_a
        centre_lung_a = (course.front + course.back) / 2 - rng.uniform(0, 25) * mm
        for side in (-1.0, 1.0):
            lung = _ellipses(shape, course.x + side * (gap + r_x), centre_lung_a, r_x, r_a)
            lung[:, ~thorax, :] = False
            out[lung & inner] = Tissue.LUNG

    # Aorta left-anterior of the bodies, down to its bifurcation at about L4.
    above_l4 = course.level <= anatomy.order_index("L4")
    radius = rng.uniform(9, 15) * mm
    aorta = tube(shape, course.x - rng.uniform(5, 22) * mm, course.front - radius - 2 * mm, radius, above_l4)
    out[aorta & inner] = Tissue.VESSEL

    # Paraspinal muscles behind the spine (no lung, no viscera there).
    x = np.arange(shape[0])[:, None, None]
    near = np.abs(x - course.x[None, :, None]) < (course.half_width[None, :, None] + 30 * mm)
    behind = inner & near & (a > course.back[None, :, None]) & (out != Tissue.FAT)
    out[behind] = Tissue.MUSCLE

    # Bone: vertebrae, ribs, sacrum; then discs and the canal where there is no bone.
    bone = vertebrae > 0
    if "ribs" in extra:
        bone |= extra["ribs"]
    elif course.level.min() < anatomy.order_index("L1"):
        ribs = render_points(shape, rib_centrelines(bodies, course, outline, spacing, rng), rng.uniform(3.5, 6) * mm)
        bone |= ribs & inner
    s1 = bodies == anatomy.code_of("S1")
    if "sacrum" in extra:
        bone |= extra["sacrum"]
    elif s1.any():
        bone |= sacrum_below(s1, spacing, rng)
    codes = sorted((int(c) for c in np.unique(bodies) if c), key=lambda c: anatomy.order_index(anatomy.name_of(c)))
    for upper, lower in zip(codes[:-1], codes[1:]):
        if anatomy.order_index(anatomy.name_of(lower)) - anatomy.order_index(anatomy.name_of(upper)) <= 2:
            out[fill_between(bodies == upper, bodies == lower) & ~bone] = Tissue.DISC
    canal_radius = rng.uniform(6, 9) * mm
    canal_a = course.back + canal_radius + 1 * mm
    column = np.ones(shape[1], bool)
    out[tube(shape, course.x, canal_a, canal_radius, column) & ~bone] = Tissue.CSF
    cord_rows = course.level <= anatomy.order_index("L1")
    out[tube(shape, course.x, canal_a, canal_radius * rng.uniform(0.45, 0.6), cord_rows) & ~bone] = Tissue.CORD
    shell = rng.uniform(1.5, 3.0) * mm                   # thinner would vanish in the blur at 1.25 mm
    cancellous = np.zeros_like(bone)
    box = ndimage.find_objects(bone.astype(np.uint8))[0]
    cancellous[box] = ndimage.distance_transform_edt(np.pad(bone[box], 1))[1:-1, 1:-1, 1:-1] > shell
    out[bone] = Tissue.CORTEX
    out[cancellous] = Tissue.MARROW
    return out, bodies
