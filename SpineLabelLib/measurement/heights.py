"""Vertebral body heights in the body's own mid-sagittal plane (paper 003, made 3-D and sub-voxel).

Method, per body mask:
1. Local frame. Principal axes of the mask voxels (RAS mm). The lateral axis is the principal axis
   closest to the local left-right direction (bodies are clearly wider than deep or high), which
   fixes the mid-sagittal plane through the centroid. In that plane the superior axis is the
   shortest principal axis when it is distinct and within 25 degrees of the local spine axis (the
   direction between the neighbours' centroids, or the image's S direction for a lone body), else
   the spine axis itself; anterior completes the frame, signed towards patient anterior. The
   superior axis is then refined from the end plates (step 3).
2. Sampling. The binary mask is interpolated trilinearly in its own voxel index space at the RAS
   positions of a fine local grid (0.25 mm in the mid-sagittal section, 0.1 mm along height lines).
   This is partial-volume interpolation: the 0.5 iso-level of the interpolated mask is the voxel
   face between an inside and an outside voxel, on any spacing and any direction matrix, without
   first resampling the volume (which would blur it twice). With anisotropic voxels the edge is only
   known to half a voxel of the coarse axis per end plate; averaging over a thin slab (+-1.5 mm
   laterally, +-0.5 mm along AP) averages the staircase of oblique edges out, but cannot recover
   detail the coarse axis never sampled.
3. End plates. In the slab-averaged section the end plates are fitted (trimmed least squares over
   the central 60 % of the depth) and the superior axis is tilted to be square to the reference end
   plate: the one square to the posterior wall when the plates differ by more than 3 degrees (the
   intact plate of a wedge), else their bisector.
4. Heights (paper 003: smallest bounding trapezoid, lines 10 % in from its corners, and the middle
   line): the quadrilateral's sides take the directions of the chords between the outline's
   diagonal extreme points and are pushed out to touch the outline; on its superior and inferior
   sides the points at 10 %, 50 % and 90 % of the side from the anterior corner are joined, and the
   height is the distance between the farthest mask crossings along that line (first and last 0.5
   crossings, linearly interpolated). For a body with walls square to its end plates these lines
   run along the superior axis at 10/50/90 % of the AP depth from the anterior edge; for a sheared
   or irregular body they follow its walls, as a reader's corner points would.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..core.volume import Volume

SECTION_STEP_MM = 0.25     # mid-sagittal section grid
LINE_STEP_MM = 0.1         # samples along a height line
SLAB_HALF_WIDTH_MM = 1.5   # lateral half-width of the averaged mid-sagittal slab
LINE_HALF_WINDOW_MM = 0.5  # AP half-window averaged around each height line
MAX_WALL_LEAN_DEG = 20.0
LINE_FRACTIONS = {"anterior": 0.1, "middle": 0.5, "posterior": 0.9}
PATIENT_ANTERIOR = np.array([0.0, 1.0, 0.0])
PATIENT_SUPERIOR = np.array([0.0, 0.0, 1.0])


@dataclass
class BodyFrame:
    """Local frame of one body: centre (RAS mm) and unit superior / anterior / lateral axes."""

    centre: np.ndarray
    superior: np.ndarray
    anterior: np.ndarray

    @property
    def lateral(self) -> np.ndarray:
        return np.cross(self.superior, self.anterior)

    def to_ras(self, s, t, w=0.0) -> np.ndarray:
        """Local (s superior, t posterior from centre, w lateral) mm -> RAS mm, broadcasting."""
        s, t, w = np.broadcast_arrays(np.asarray(s, float), np.asarray(t, float), np.asarray(w, float))
        return (self.centre + s[..., None] * self.superior - t[..., None] * self.anterior
                + w[..., None] * self.lateral)


@dataclass
class BodyHeights:
    """Heights (mm) and the measured lines; heights are None where the body could not be measured."""

    frame: BodyFrame
    heights: dict[str, float | None] = field(default_factory=dict)
    lines_ras: dict[str, list[list[float]]] = field(default_factory=dict)
    depth_mm: float | None = None
    flags: list[str] = field(default_factory=list)


class MaskSampler:
    """Trilinear partial-volume interpolation of one body mask at RAS points."""

    def __init__(self, mask: np.ndarray, grid: Volume, margin: int = 2):
        voxels = np.argwhere(mask)
        self.low = np.maximum(voxels.min(axis=0) - margin, 0)
        high = np.minimum(voxels.max(axis=0) + margin + 1, mask.shape)
        self.crop = mask[tuple(slice(a, b) for a, b in zip(self.low, high))].astype(np.float32)
        self.grid = grid

    def __call__(self, ras: np.ndarray, array: np.ndarray | None = None) -> np.ndarray:
        """Values at RAS points (..., 3); `array` (same crop) replaces the mask, e.g. the image."""
        shape = ras.shape[:-1]
        kji = self.grid.ras_to_kji(ras.reshape(-1, 3)) - self.low
        return self._sample(kji.T, array).reshape(shape)

    def local(self, frame: "BodyFrame", s, t, w=0.0) -> np.ndarray:
        """Values at local frame coordinates (broadcast arrays), without building RAS points."""
        inv = self.grid.ras_to_ijk[:3][::-1]                  # rows k, j, i of RAS -> index
        axes = (inv[:, :3] @ frame.superior, -(inv[:, :3] @ frame.anterior), inv[:, :3] @ frame.lateral)
        origin = inv[:, :3] @ frame.centre + inv[:, 3] - self.low
        s, t, w = np.broadcast_arrays(np.asarray(s, float), np.asarray(t, float), np.asarray(w, float))
        kji = np.stack([origin[a] + s * axes[0][a] + t * axes[1][a] + w * axes[2][a] for a in range(3)])
        return self._sample(kji.reshape(3, -1), None).reshape(s.shape)

    def _sample(self, kji: np.ndarray, array: np.ndarray | None) -> np.ndarray:
        return ndimage.map_coordinates(self.crop if array is None else array, kji, order=1,
                                       mode="constant", cval=0.0)


# --- frame ------------------------------------------------------------------------------------
def principal_frame(points_ras: np.ndarray, spine_axis: np.ndarray | None) -> BodyFrame:
    """Frame from the principal axes of the body's voxel centres, disambiguated by the spine axis.

    Width is a body's clearly largest dimension, so the lateral principal axis fixes the
    mid-sagittal plane reliably. Within that plane height and depth are often too alike (rounded
    manual masks: standard deviations 8.2 vs 8.7 mm) for the principal axes to mean anything; the
    shortest axis is then trusted only when it is distinct and close to the spine axis, otherwise
    the spine axis (neighbours' centroids, or the image's S direction) projected into the plane is
    used. `_refine_superior` then aligns it with the end plates either way.
    """
    centre = points_ras.mean(axis=0)
    reference = PATIENT_SUPERIOR if spine_axis is None else _unit(spine_axis)
    lateral_reference = np.cross(reference, PATIENT_ANTERIOR)
    if np.linalg.norm(lateral_reference) < 1e-6:                       # spine axis along A: odd, but defined
        lateral_reference = np.array([1.0, 0.0, 0.0])
    if len(points_ras) < 4:      # a fragment of a few voxels has no principal axes: the patient's frame
        lateral = _unit(lateral_reference)
        superior = _in_plane(reference, lateral)
        return BodyFrame(centre, superior, np.cross(lateral, superior))
    values, vectors = np.linalg.eigh(np.cov((points_ras - centre).T))   # ascending
    lateral_index = int(np.argmax(np.abs(vectors.T @ _unit(lateral_reference))))
    lateral = vectors[:, lateral_index]
    if values[lateral_index] < 1.15 * max(np.delete(values, lateral_index)):
        lateral = _unit(lateral_reference)                             # round cross-section: no help
    superior = _in_plane(reference, lateral)
    others = [n for n in range(3) if n != lateral_index]
    shortest = min(others, key=lambda n: values[n])
    longest = max(others, key=lambda n: values[n])
    candidate = _in_plane(vectors[:, shortest], lateral)
    distinct = values[longest] > 1.3 * values[shortest]
    if distinct and abs(candidate @ superior) > np.cos(np.radians(25)):
        superior = candidate * np.sign(candidate @ superior)
    anterior = np.cross(lateral, superior)
    anterior = anterior * np.sign(anterior @ PATIENT_ANTERIOR or 1.0)
    return BodyFrame(centre, superior, anterior)


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, float) / np.linalg.norm(v)


def _in_plane(v: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Unit projection of v onto the plane orthogonal to normal (fallback: any orthogonal vector)."""
    projected = v - (v @ normal) * normal
    if np.linalg.norm(projected) < 1e-6:
        projected = np.cross(normal, [1.0, 0.0, 0.0])
    return _unit(projected)


# --- 1-D edge finding -------------------------------------------------------------------------
def extent(profile: np.ndarray, coords: np.ndarray, level: float = 0.5) -> tuple[float, float] | None:
    """First and last `level` crossings of a sampled profile, linearly interpolated (None if empty)."""
    inside = np.flatnonzero(profile >= level)
    if inside.size == 0:
        return None
    first, last = inside[0], inside[-1]
    low = coords[first] if first == 0 else _crossing(coords, profile, first - 1, first, level)
    high = coords[last] if last == len(profile) - 1 else _crossing(coords, profile, last, last + 1, level)
    return float(low), float(high)


def _crossing(coords, profile, a, b, level) -> float:
    fraction = (level - profile[a]) / (profile[b] - profile[a])
    return coords[a] + fraction * (coords[b] - coords[a])


# --- section and its outline -------------------------------------------------------------------
def _slab_offsets(half: float, step: float) -> np.ndarray:
    n = max(1, int(round(half / step)))
    return np.linspace(-half, half, 2 * n + 1)


def section(sampler: MaskSampler, frame: BodyFrame, radius: float, slab: float = SLAB_HALF_WIDTH_MM,
            step: float = SECTION_STEP_MM):
    """Slab-averaged occupancy of the mid-sagittal section: (P[s, t], s coords, t coords)."""
    coords = np.arange(-radius, radius + step / 2, step)
    widths = _slab_offsets(slab, 0.5)
    occupancy = sampler.local(frame, coords[:, None, None], coords[None, :, None],
                              widths[None, None, :]).mean(axis=-1)
    return occupancy, coords, coords


def edges(occupancy: np.ndarray, coords: np.ndarray, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per row: first and last `level` crossing along the row (linearly interpolated; NaN if empty)."""
    inside = occupancy >= level
    n = occupancy.shape[1]
    rows = np.arange(occupancy.shape[0])
    first = inside.argmax(axis=1)
    last = n - 1 - inside[:, ::-1].argmax(axis=1)

    def crossing(outside, inner):
        a, b = occupancy[rows, outside], occupancy[rows, inner]
        fraction = np.where(b != a, (level - a) / np.where(b != a, b - a, 1.0), 0.0)
        return coords[outside] + fraction * (coords[inner] - coords[outside])

    low = np.where(first > 0, crossing(np.maximum(first - 1, 0), first), coords[first])
    high = np.where(last < n - 1, crossing(np.minimum(last + 1, n - 1), last), coords[last])
    empty = ~inside.any(axis=1)
    low[empty] = high[empty] = np.nan
    return low, high


@dataclass
class Outline:
    """The body's mid-sagittal outline: row/column edges and the fitted side slopes.

    Section coordinates: s along the superior axis, t towards posterior. End plates are s = c + m t
    (m = slope ds/dt), walls t = a + b s (b = dt/ds), slopes fitted over the central 60 % of each side
    so rounded corners and rim spikes do not tilt them.
    """

    s: np.ndarray
    t: np.ndarray
    bottom: np.ndarray          # per column t: inferior edge s
    top: np.ndarray             # per column t: superior edge s
    front: np.ndarray           # per row s: anterior edge t
    back: np.ndarray            # per row s: posterior edge t
    slopes: dict[str, float]    # top, bottom (ds/dt); anterior, posterior (dt/ds)


def _fit(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float | None:
    """Slope of a trimmed least-squares line over x in [low, high]: points more than 1 mm (or 2.5
    robust SD) off the first fit are dropped, so notches, spikes and vessel foramina do not tilt it."""
    keep = (x >= low) & (x <= high) & np.isfinite(y)
    if keep.sum() < 4:
        return None
    x, y = x[keep], y[keep]
    for _ in range(2):
        coefficients = np.polyfit(x, y, 1)
        residual = np.abs(y - np.polyval(coefficients, x))
        inliers = residual <= max(1.0, 2.5 * 1.4826 * np.median(residual))
        if inliers.sum() < 4 or inliers.all():
            break
        x, y = x[inliers], y[inliers]
    return float(np.polyfit(x, y, 1)[0])


def _main_component(occupancy: np.ndarray) -> np.ndarray:
    """Occupancy of the largest connected piece of the section (and its partial-volume rim)."""
    labels, count = ndimage.label(occupancy >= 0.5)
    if count <= 1:
        return occupancy
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(labels), labels, range(1, count + 1))))
    return occupancy * ndimage.binary_dilation(labels == largest, iterations=2)


def outline(occupancy: np.ndarray, s_coords: np.ndarray, t_coords: np.ndarray) -> Outline | None:
    occupancy = _main_component(occupancy)
    bottom, top = edges(occupancy.T, s_coords)
    front, back = edges(occupancy, t_coords)
    if np.all(np.isnan(front)):
        return None
    t0, t1 = np.nanmin(front), np.nanmax(back)
    depth = t1 - t0
    slopes = {"top": _fit(t_coords, top, t0 + 0.2 * depth, t0 + 0.8 * depth),
              "bottom": _fit(t_coords, bottom, t0 + 0.2 * depth, t0 + 0.8 * depth)}
    # Each wall is fitted over the central 60 % of its own height (a wedge's anterior wall is short).
    for name, edge, (low, high) in (("anterior", front, (0.05, 0.15)), ("posterior", back, (0.85, 0.95))):
        near = (t_coords >= t0 + low * depth) & (t_coords <= t0 + high * depth)
        if not np.any(np.isfinite(bottom[near])):
            return None
        s0, s1 = np.nanmedian(bottom[near]), np.nanmedian(top[near])
        slopes[name] = _fit(s_coords, edge, s0 + 0.2 * (s1 - s0), s0 + 0.8 * (s1 - s0))
    # A wall leaning more than MAX_WALL_LEAN_DEG off the end-plate normal is a mask artefact, not a
    # sheared body: use the other wall's lean, or none.
    limit = np.tan(np.radians(MAX_WALL_LEAN_DEG))
    walls = [slopes[n] for n in ("anterior", "posterior") if slopes[n] is not None and abs(slopes[n]) <= limit]
    for name in ("anterior", "posterior"):
        if slopes[name] is None or abs(slopes[name]) > limit:
            slopes[name] = walls[0] if walls else 0.0
    if None in slopes.values():
        return None
    return Outline(s_coords, t_coords, bottom, top, front, back, slopes)


# --- the superior axis from the end plates ----------------------------------------------------------
def _reference_plate(shape: Outline) -> str:
    """Which end plate the heights are squared to: 'top', 'bottom' or 'both' (their bisector).

    Paper 003 measures perpendicular to the bounding trapezoid's shorter end-plate side, which for a
    wedge-shaped body is the intact end plate: the one square to the posterior wall. End plates within
    3 degrees of parallel (normal, biconcave, crush) use their bisector.
    """
    angles = np.arctan([shape.slopes["top"], shape.slopes["bottom"]])
    if abs(angles[0] - angles[1]) < np.radians(3):
        return "both"
    square = np.arctan(-shape.slopes["posterior"])          # plate tilt square to the posterior wall
    return ("top", "bottom")[int(np.argmin(np.abs(angles - square)))]


def _plate_tilt(shape: Outline, plate: str) -> float:
    if plate == "both":
        return float(np.mean(np.arctan([shape.slopes["top"], shape.slopes["bottom"]])))
    return float(np.arctan(shape.slopes[plate]))


def _rotate(frame: BodyFrame, angle: float) -> BodyFrame:
    """Rotate superior/anterior within the mid-sagittal plane by `angle` (radians)."""
    c, s = np.cos(angle), np.sin(angle)
    superior = c * frame.superior + s * frame.anterior
    anterior = -s * frame.superior + c * frame.anterior
    return BodyFrame(frame.centre, _unit(superior), _unit(anterior))


def _refine_superior(sampler, frame, radius, iterations: int = 3) -> BodyFrame:
    """Tilt the superior axis in the mid-sagittal plane to the reference end plate's normal.

    Principal axes of a wedge-shaped or irregular body lean (by half the wedge angle); the end plates
    are what a reader lines the heights up with. The reference plate is chosen once, in the first
    frame, so the iteration cannot flip between plates; the total tilt is bounded to 30 degrees.
    """
    start, plate = frame, None
    for _ in range(iterations):
        shape = outline(*section(sampler, frame, radius))
        if shape is None:
            return frame
        plate = plate or _reference_plate(shape)
        angle = _plate_tilt(shape, plate)
        candidate = _rotate(frame, angle)
        if candidate.superior @ start.superior < np.cos(np.radians(30)):
            return frame
        frame = candidate
        if abs(angle) < np.radians(0.05):
            break
    return frame


# --- bounding trapezoid and height lines ------------------------------------------------------------
def _boundary_points(shape: Outline) -> np.ndarray:
    """(N, 2) outline points (s, t): the row and column edges of the section."""
    rows = np.column_stack([np.r_[shape.s, shape.s], np.r_[shape.front, shape.back]])
    columns = np.column_stack([np.r_[shape.bottom, shape.top], np.r_[shape.t, shape.t]])
    points = np.vstack([rows, columns])
    return points[np.all(np.isfinite(points), axis=1)]


def trapezoid(shape: Outline) -> dict[str, np.ndarray]:
    """Corners (s, t) of the smallest bounding quadrilateral of the outline (paper 003).

    Raw corners are the outline's extreme points along the four diagonals of the frame (as a reader
    puts the six-point morphometry corners); each side takes the direction of the chord between its
    two raw corners and is moved out until it touches the outline (a supporting line); the corners
    are the intersections of neighbouring sides. Chords follow a body's real shape (a wedge's tilted
    end plate, a sheared body's leaning walls) without fitting lines to notches and rounded rims.
    """
    points = _boundary_points(shape)
    s, t = points[:, 0], points[:, 1]
    raw = {"top_anterior": points[np.argmax(s - t)], "top_posterior": points[np.argmax(s + t)],
           "bottom_anterior": points[np.argmin(s + t)], "bottom_posterior": points[np.argmin(s - t)]}
    sides = {"top": ("top_anterior", "top_posterior", +1), "bottom": ("bottom_anterior", "bottom_posterior", -1),
             "anterior": ("bottom_anterior", "top_anterior", -1), "posterior": ("bottom_posterior", "top_posterior", +1)}
    lines = {}
    for name, (a, b, outward) in sides.items():
        direction = _unit(raw[b] - raw[a])
        normal = np.array([-direction[1], direction[0]])
        if name in ("top", "bottom"):
            normal = normal * np.sign(normal[0] or 1.0)          # towards superior
        else:
            normal = normal * np.sign(normal[1] or 1.0)          # towards posterior
        offsets = points @ normal
        lines[name] = (normal, offsets.max() if outward > 0 else offsets.min())

    def corner(first, second):                                   # n1.p = d1 and n2.p = d2
        (n1, d1), (n2, d2) = lines[first], lines[second]
        return np.linalg.solve(np.array([n1, n2]), np.array([d1, d2]))

    return {"top_anterior": corner("top", "anterior"), "top_posterior": corner("top", "posterior"),
            "bottom_anterior": corner("bottom", "anterior"), "bottom_posterior": corner("bottom", "posterior")}


def line_extent(sampler: MaskSampler, frame: BodyFrame, start: np.ndarray, end: np.ndarray, margin: float):
    """Farthest mask crossings along the line start -> end (s, t), extended by `margin` mm at both
    ends, averaged over a thin slab (lateral) and a short window across the line (in plane).
    Returns the two crossing points (s, t) or None."""
    length = float(np.linalg.norm(end - start))
    direction = (end - start) / length
    normal = np.array([-direction[1], direction[0]])
    u = np.arange(-margin, length + margin + LINE_STEP_MM / 2, LINE_STEP_MM)
    v = _slab_offsets(LINE_HALF_WINDOW_MM, 0.25)
    w = _slab_offsets(SLAB_HALF_WIDTH_MM, 0.5)
    s = start[0] + u[:, None, None] * direction[0] + v[None, :, None] * normal[0]
    t = start[1] + u[:, None, None] * direction[1] + v[None, :, None] * normal[1]
    profile = sampler.local(frame, s, t, w[None, None, :]).mean(axis=(1, 2))
    ends = extent(profile, u)
    if ends is None:
        return None
    return start + ends[0] * direction, start + ends[1] * direction


def measure_heights(mask: np.ndarray, grid: Volume, spine_axis: np.ndarray | None = None,
                    refine: bool = True) -> BodyHeights:
    """Anterior, middle and posterior heights of one body mask (see module docstring)."""
    points = grid.kji_to_ras(np.argwhere(mask))
    frame = principal_frame(points, spine_axis)
    radius = float(np.linalg.norm(points - frame.centre, axis=1).max()) + 2.0 * grid.spacing.max()
    sampler = MaskSampler(mask, grid)
    if refine:
        frame = _refine_superior(sampler, frame, radius)
    result = BodyHeights(frame)
    shape = outline(*section(sampler, frame, radius))
    if shape is None:
        result.flags.append("partial")
        result.heights = dict.fromkeys(LINE_FRACTIONS)
        return result
    corners = trapezoid(shape)
    top_side = corners["top_posterior"] - corners["top_anterior"]
    bottom_side = corners["bottom_posterior"] - corners["bottom_anterior"]
    result.depth_mm = float(np.linalg.norm(top_side) + np.linalg.norm(bottom_side)) / 2.0
    margin = 0.3 * float(corners["top_anterior"][0] - corners["bottom_anterior"][0]) + 2.0
    for name, fraction in LINE_FRACTIONS.items():
        start = corners["bottom_anterior"] + fraction * bottom_side      # 10 % in from the corners
        end = corners["top_anterior"] + fraction * top_side
        ends = line_extent(sampler, frame, start, end, margin)
        if ends is None:
            result.heights[name] = None
            result.flags.append("partial")
            continue
        inferior, superior = ends
        result.heights[name] = float(np.linalg.norm(superior - inferior))
        points_ras = frame.to_ras([superior[0], inferior[0]], [superior[1], inferior[1]])
        result.lines_ras[name] = [points_ras[0].round(3).tolist(), points_ras[1].round(3).tolist()]
    return result
