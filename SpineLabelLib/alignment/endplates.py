"""Superior and inferior endplates of every vertebral body, as planes fitted to the ends of its mask.

Method, per body (in the body's own frame, the frame `heights.principal_frame` gives the height
measurement: principal axes of the mask, the lateral axis fixing the mid-sagittal plane, the superior
axis signed along the local spine axis):
1. Columns. A grid of columns (1 mm apart) parallel to the superior axis covers the central part of the
   body's axial section (an ellipse over the central 90 % of its depth and width, percentiles 1-99 of
   the mask: the rims' last millimetres and spikes stay out; 50-100 % were compared on the real MRI,
   README). Along each column the mask is interpolated
   trilinearly (`heights.MaskSampler`: the 0.5 iso-level is the voxel face, on any direction matrix and
   spacing) and its first and last 0.5 crossings are the inferior and superior surface points.
2. Plane. s = c + a t + b w (s superior, t posterior, w lateral, mm) by trimmed least squares: points
   more than max(1 mm, 1.5 voxel bands, 2.5 robust SD) off the fit are dropped, up to three times, so a
   Schmorl node or a segmentation spike does not tilt the plane. Its unit normal, pointing superior, is
   the endplate's orientation.
3. Frame refinement. The superior axis is set to the bisector of the two endplate normals (the one normal
   for C2 and S1) and the fit is repeated once, so the columns run square to the plates.
4. Quantisation. When the residuals are no larger than the mask's voxel band along the columns allows
   (clean masks; on 2 mm slices a plate a few degrees off the slices is one or two terraces and least
   squares reads the step as a tilt), the plane is re-chosen among all planes inside the band
   (`quantised_plane`): the middle of the feasible tilts when they span under 2 degrees, else the one
   closest to the body's long axis (`body_axis`).
5. The endplate line. In the mid-sagittal plane the plane's trace is followed from anterior to posterior
   1.5 mm inside the body (`heights.line_extent`, slab-averaged); its two ends, moved back onto the plane,
   are the anterior and posterior corners (drawn on the QC image and in Slicer, and used by listhesis);
   their distance is the endplate's depth.
Quality (flags; a flagged plane is kept for display but no measure uses it):
  cut_by_field_of_view  more than 5 % of the surface points lie on the image's outermost voxel layer
                        (the mask runs into the border: the surface there is the cut, not the plate);
  irregular             fewer than 50 % of the columns are inliers or the inliers' RMS exceeds 1.5 mm;
  not_fitted            fewer than 12 columns found both surfaces (a fragment, or a body seen edge-on);
  partial_mask          the body's mask is less than PARTIAL_DEPTH of its adjacent bodies' (median)
                        deep (`flag_partial_masks`): it covers part of the body, so its ends are not
                        the plates (a segmenter that saw half a body; real MRI vb3-32's L5, README).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..measurement.heights import BodyFrame, MaskSampler, edges, line_extent, principal_frame
from ..core.volume import Volume
from . import image_edges

COLUMN_STEP_MM = 1.0            # final fit; the first (frame-finding) fit uses twice this
PROFILE_STEP_MM = 0.5           # along a column; the crossing is interpolated between samples
CENTRAL_FRACTION = 0.9          # of the depth and of the width (README: 0.5-1.0 compared)
RESOLVED_SPREAD_DEG = 2.0       # feasible tilts narrower than this: the mask alone decides
CORNER_INSET_MM = 1.5           # the endplate line is followed this far inside the body
MIN_COLUMNS = 12
PARTIAL_DEPTH = 0.7             # adjacent bodies' depths differ by ~5-15 %; a fracture loses height, not depth
CUT_FRACTION = 0.05
IRREGULAR_INLIERS = 0.5
IRREGULAR_RMS_MM = 1.5
SIDES = ("superior", "inferior")
#: Endplates that are not a vertebral body's: C1 has no body, C2's top is the dens, S1's bottom is fused.
NO_ENDPLATE = {("C1", "superior"), ("C1", "inferior"), ("C2", "superior"), ("S1", "inferior")}


@dataclass
class Endplate:
    """One fitted endplate. Points and normal in RAS mm; `normal` is a unit vector pointing superior."""

    level: str
    side: str                              # 'superior' | 'inferior'
    normal: np.ndarray
    centre: np.ndarray                     # plane point on the body's superior axis
    anterior_corner: np.ndarray | None     # ends of the mid-sagittal endplate line
    posterior_corner: np.ndarray | None
    depth_mm: float | None
    rms_mm: float
    inlier_fraction: float
    columns: int
    flags: list[str] = field(default_factory=list)
    span: tuple[float, float] = (0.0, 0.0)    # t range searched for the corners (frame coordinates)

    @property
    def usable(self) -> bool:
        return not self.flags

    def record(self) -> dict:
        """Plain record for `result.alignment['endplates']` (JSON-safe)."""
        def point(p):
            return None if p is None else [round(float(c), 3) for c in p]
        return {"level": self.level, "side": self.side, "normal_ras": [round(float(c), 6) for c in self.normal],
                "centre_ras": point(self.centre), "anterior_corner_ras": point(self.anterior_corner),
                "posterior_corner_ras": point(self.posterior_corner),
                "depth_mm": None if self.depth_mm is None else round(self.depth_mm, 2),
                "rms_mm": round(self.rms_mm, 3), "inlier_fraction": round(self.inlier_fraction, 3),
                "columns": self.columns, "flags": ";".join(self.flags)}


@dataclass
class BodyEndplates:
    level: str
    frame: BodyFrame
    superior: Endplate | None
    inferior: Endplate | None
    depth_mm: float = 0.0              # the mask's anterior-posterior extent (percentiles 1-99)

    def flag(self, reason: str) -> None:
        for plate in (self.superior, self.inferior):
            if plate is not None and reason not in plate.flags:
                plate.flags.append(reason)


# --- robust plane ------------------------------------------------------------------------------
def robust_plane(t: np.ndarray, w: np.ndarray, s: np.ndarray, floor_mm: float = 1.0):
    """Trimmed least squares s = c + a t + b w: ((c, a, b), inlier mask, inlier RMS). Points farther
    than max(floor_mm, 2.5 robust SD) are dropped; the floor must exceed the mask's own staircase (the
    terraces of a tilted plate on 2 mm slices lie up to 1 mm off it and are not outliers)."""
    design = np.column_stack([np.ones_like(t), t, w])
    keep = np.ones(t.size, bool)
    coefficients = np.linalg.lstsq(design, s, rcond=None)[0]
    for _ in range(3):
        residual = np.abs(s - design @ coefficients)
        inliers = residual <= max(floor_mm, 2.5 * 1.4826 * float(np.median(residual[keep])))
        if inliers.sum() < 4 or np.array_equal(inliers, keep):
            break
        keep = inliers
        coefficients = np.linalg.lstsq(design[keep], s[keep], rcond=None)[0]
    residual = s - design @ coefficients
    rms = float(np.sqrt(np.mean(residual[keep] ** 2)))
    return coefficients, keep, rms


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def plane_normal(frame: BodyFrame, slope_t: float, slope_w: float) -> np.ndarray:
    """Unit normal (towards superior) of s = c + a t + b w, in RAS (t runs towards posterior)."""
    # gradient of s - a t - b w in (s, t, w); t = -anterior, w = lateral
    return _unit(frame.superior + slope_t * frame.anterior - slope_w * frame.lateral)


# --- per body ----------------------------------------------------------------------------------
def _local(points: np.ndarray, frame: BodyFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = points - frame.centre
    return d @ frame.superior, -(d @ frame.anterior), d @ frame.lateral


def _columns(points: np.ndarray, frame: BodyFrame, step: float = COLUMN_STEP_MM):
    """Column positions (t, w) over the central ellipse, and the s coordinates to sample."""
    s, t, w = _local(points, frame)
    (t0, t1), (w0, w1) = np.percentile(t, [1, 99]), np.percentile(w, [1, 99])
    tc, wc = (t0 + t1) / 2, (w0 + w1) / 2
    half_t, half_w = CENTRAL_FRACTION * (t1 - t0) / 2, CENTRAL_FRACTION * (w1 - w0) / 2
    tt, ww = np.meshgrid(np.arange(tc - half_t, tc + half_t + 1e-9, step),
                         np.arange(wc - half_w, wc + half_w + 1e-9, step), indexing="ij")
    inside = ((tt - tc) / max(half_t, 1e-6)) ** 2 + ((ww - wc) / max(half_w, 1e-6)) ** 2 <= 1.0
    margin = 4.0
    s_coords = np.arange(s.min() - margin, s.max() + margin + PROFILE_STEP_MM / 2, PROFILE_STEP_MM)
    return tt[inside], ww[inside], s_coords


def on_image_border(grid: Volume, ras: np.ndarray) -> np.ndarray:
    """True where a point lies on or beyond the outermost voxel layer of the grid (index space)."""
    kji = grid.ras_to_kji(ras)
    size = np.array(grid.array.shape) - 1
    return np.any((kji <= 0.0) | (kji >= size), axis=1)


def _surfaces(sampler: MaskSampler, frame: BodyFrame, t, w, s_coords, image: Volume | None = None):
    """(inferior, superior) surface positions along each column: the mask's, moved onto the image's
    edge when the image is given and resolves the plate finer than its slices (`image_edges`); across
    thick slices the image's edge is as terraced as the mask's and the quantised fit handles it."""
    occupancy = sampler.local(frame, s_coords[None, :], t[:, None], w[:, None])
    low, high = edges(occupancy, s_coords)
    if image is not None and quantisation_mm(image, frame.superior) <= image_edges.MAX_QUANTISATION_MM:
        profile = image_edges.profiles(image, frame, t, w, s_coords)
        scale = image_edges.image_range(image)
        low = image_edges.refine_surface(profile, s_coords, low, "inferior", scale)
        high = image_edges.refine_surface(profile, s_coords, high, "superior", scale)
    return low, high


def _endplate_line(sampler, frame, side, c, a, span) -> tuple:
    """(anterior corner, posterior corner) RAS of the mid-sagittal endplate trace, or (None, None)."""
    inward = -1.0 if side == "superior" else 1.0
    normal_st = np.array([1.0, -a]) / np.hypot(1.0, a)        # plane normal in the (s, t) section
    t0, t1 = span
    start = np.array([c + a * t0, t0]) + inward * CORNER_INSET_MM * normal_st
    end = np.array([c + a * t1, t1]) + inward * CORNER_INSET_MM * normal_st
    ends = line_extent(sampler, frame, start, end, margin=6.0)
    if ends is None:
        return None, None
    corners = [p - inward * CORNER_INSET_MM * normal_st for p in ends]
    anterior, posterior = sorted(corners, key=lambda p: p[1])    # t grows towards posterior
    ras = frame.to_ras([anterior[0], posterior[0]], [anterior[1], posterior[1]])
    return ras[0], ras[1]


def _fit_side(level, side, frame, sampler, on_border, t, w, surface, span):
    """(Endplate by trimmed least squares, (t, w, s, coefficients, inliers) for the refit)."""
    found = np.isfinite(surface)
    flags = []
    if found.sum() < MIN_COLUMNS:
        return Endplate(level, side, frame.superior.copy(), frame.centre.copy(), None, None, None, 0.0, 0.0,
                        int(found.sum()), ["not_fitted"]), None
    points = frame.to_ras(surface[found], t[found], w[found])
    if on_border(points).mean() > CUT_FRACTION:
        flags.append("cut_by_field_of_view")
    floor = max(1.0, 1.5 * quantisation_mm(sampler.grid, frame.superior))
    (c, a, b), inliers, rms = robust_plane(t[found], w[found], surface[found], floor)
    fraction = float(inliers.mean())
    if fraction < IRREGULAR_INLIERS or rms > IRREGULAR_RMS_MM:
        flags.append("irregular")
    normal = plane_normal(frame, a, b)
    plate = Endplate(level, side, normal, frame.to_ras(c, 0.0), None, None, None, rms, fraction,
                     int(found.sum()), flags)
    plate.span = span
    return plate, (t[found], w[found], surface[found], np.array([c, a, b]), inliers)


def _refined(frame: BodyFrame, plates: list[Endplate]) -> BodyFrame:
    """Superior axis = bisector of the endplate normals (the one normal when a body has one true
    endplate, C2 and S1); anterior re-squared to it."""
    axis = _unit(sum(p.normal for p in plates))
    anterior = frame.anterior - (frame.anterior @ axis) * axis
    return BodyFrame(frame.centre, axis, _unit(anterior))


def quantisation_mm(grid: Volume, direction: np.ndarray) -> float:
    """Half the extent of one voxel along a direction: how far a binary mask's surface can lie from the
    interpolated 0.5 level when the surface runs along the voxel rows (2 mm slices: 1 mm)."""
    columns = grid.ijk_to_ras[:3, :3]
    return 0.5 * float(np.max(np.abs(direction @ columns)))


def body_axis(sampler: MaskSampler, frame: BodyFrame, points: np.ndarray, low: float, high: float) -> np.ndarray | None:
    """The body's long axis from the centroids of its cross-sections (square to the frame's superior
    axis, over the central half of its height between s = low and s = high): a cylinder's cross-section
    centroids lie on its axis. Area integrals are not quantised by the slice thickness the way an
    endplate's height is, so this axis is well defined even on 2 mm slices. Local (1, dt/ds, dw/ds)."""
    _, t, w = _local(points, frame)
    height = high - low
    levels = np.arange(low + 0.25 * height, high - 0.25 * height + 1e-9, 1.0)
    if levels.size < 3:
        return None
    tt, ww = np.meshgrid(np.arange(t.min() - 3, t.max() + 3, 1.0), np.arange(w.min() - 3, w.max() + 3, 1.0),
                         indexing="ij")
    occupancy = sampler.local(frame, levels[:, None, None], tt[None], ww[None])
    area = occupancy.sum(axis=(1, 2))
    keep = area > 0.5 * area.max()
    if keep.sum() < 3:
        return None
    centre_t = (occupancy * tt).sum(axis=(1, 2))[keep] / area[keep]
    centre_w = (occupancy * ww).sum(axis=(1, 2))[keep] / area[keep]
    return np.array([1.0, np.polyfit(levels[keep], centre_t, 1)[0], np.polyfit(levels[keep], centre_w, 1)[0]])


def quantised_plane(t, w, s, tolerance: float, prior: np.ndarray | None):
    """Plane s = c + a t + b w for a surface the mask resolves only to its quantisation band, or None
    when the points are farther apart than quantisation explains (an irregular surface: least squares).

    A binary mask fixes a surface only to half a voxel along the voxel rows: on 2 mm slices a plate a few
    degrees off the slices shows as one or two terraces, and least squares reads the step as a tilt of
    several degrees. Every plane within `tolerance` of all surface points explains the mask equally well;
    among them this takes the one whose slopes are closest (L1) to `prior`, the body's own long axis
    (`body_axis`: walls square to the plates). Where the mask does resolve the plate (1 mm voxels,
    oblique grids, tilts with several terraces) the feasible tilts span at most RESOLVED_SPREAD_DEG and
    the middle of the extreme slopes is taken (no prior); a wedge-shaped body on 2 mm slices is pulled
    towards square by at most
    the band (README, "Spine alignment": limits). Linear programmes (HiGHS), a few ms per plate.
    The band is widened to 1.05x the minimax residual when no plane fits inside it; a minimax residual
    above 1.5x the band means the surface is irregular, not quantised."""
    from scipy.optimize import linprog
    from scipy.spatial import ConvexHull, QhullError

    # The constraints are linear in the points, so only the convex hull's vertices can bind: the same
    # feasible set from ~100 instead of ~1000 points.
    try:
        keep = ConvexHull(np.column_stack([t, w, s])).vertices
        t, w, s = t[keep], w[keep], s[keep]
    except (QhullError, ValueError):            # flat or too few points: use them all
        pass
    design = np.column_stack([np.ones_like(t), t, w])
    ones = np.ones_like(t)
    a_ub = np.vstack([np.column_stack([design, -ones]), np.column_stack([-design, -ones])])
    minimax = linprog([0, 0, 0, 1], A_ub=a_ub, b_ub=np.r_[s, -s], bounds=[(None, None)] * 3 + [(0, None)],
                      method="highs")
    if not minimax.success or minimax.x[3] > 1.5 * tolerance:
        return None
    band = max(tolerance, 1.05 * minimax.x[3] + 1e-6)
    a_band, b_band = np.vstack([design, -design]), np.r_[s + band, -s + band]
    ends = []
    for k in (1, 2):
        for sign in (1.0, -1.0):
            objective = np.zeros(3)
            objective[k] = sign
            found = linprog(objective, A_ub=a_band, b_ub=b_band, bounds=[(None, None)] * 3, method="highs")
            ends.append(found.x if found.success else minimax.x[:3])
    ends = np.array(ends)
    spread = np.degrees(np.arctan([ends[0, 1] - ends[1, 1], ends[2, 2] - ends[3, 2]]))
    if prior is None or np.max(np.abs(spread)) <= RESOLVED_SPREAD_DEG:
        return ends.mean(axis=0)          # the mask resolves the tilt: the middle of what it allows
    # variables c, a, b, u, v: minimise u + v with |a - a0| <= u, |b - b0| <= v, |D p - s| <= band
    zeros = np.zeros((t.size, 2))
    rows = [np.hstack([design, zeros]), np.hstack([-design, zeros]),
            [[0, 1, 0, -1, 0]], [[0, -1, 0, -1, 0]], [[0, 0, 1, 0, -1]], [[0, 0, -1, 0, -1]]]
    limits = np.r_[s + band, -s + band, prior[0], -prior[0], prior[1], -prior[1]]
    found = linprog([0, 0, 0, 1, 1], A_ub=np.vstack(rows), b_ub=limits,
                    bounds=[(None, None)] * 3 + [(0, None)] * 2, method="highs")
    return found.x[:3] if found.success else minimax.x[:3]


def _refit_quantised(plate: Endplate, frame, grid, data, prior) -> Endplate:
    """Replace the least-squares plane when the mask's staircase, not the anatomy, dominates the
    residuals (see `quantised_plane`)."""
    t, w, s, _, inliers = data
    found = quantised_plane(t[inliers], w[inliers], s[inliers], quantisation_mm(grid, frame.superior), prior)
    if found is not None:
        c, a, b = found
        plate.normal = plane_normal(frame, a, b)
        plate.centre = frame.to_ras(c, 0.0)
    return plate


def _add_corners(plate: Endplate, frame: BodyFrame, sampler: MaskSampler) -> None:
    """The mid-sagittal endplate line's corners and depth, from the plate's final plane."""
    d = plate.centre - frame.centre
    c = float(d @ frame.superior)                         # the plane's height on the axis
    n_s, n_t = float(plate.normal @ frame.superior), -float(plate.normal @ frame.anterior)
    if abs(n_s) < 1e-6:
        return
    a = -n_t / n_s                                        # in-section slope ds/dt
    plate.anterior_corner, plate.posterior_corner = _endplate_line(sampler, frame, plate.side, c, a, plate.span)
    if plate.anterior_corner is not None:
        plate.depth_mm = float(np.linalg.norm(plate.posterior_corner - plate.anterior_corner))


def fit_body(level: str, mask: np.ndarray, grid: Volume, spine_axis: np.ndarray | None = None,
             on_border=None, image: Volume | None = None) -> BodyEndplates:
    """Both endplates of one body mask (see the module docstring).

    `mask` and `grid` may be a crop of the image around the body; `on_border(ras) -> bool array` then
    tells which points lie on the whole image's outermost voxel layer (default: the grid's own).
    `image` (intensities around the body, any grid) moves the surface points onto its edges."""
    on_border = on_border or (lambda ras: on_image_border(grid, ras))
    points = grid.kji_to_ras(np.argwhere(mask))
    frame = principal_frame(points, spine_axis)
    sampler = MaskSampler(mask, grid)
    plates: dict[str, Endplate] = {}
    true_sides = [side for side in SIDES if (level, side) not in NO_ENDPLATE]
    for attempt in range(2):
        step = 2.0 * COLUMN_STEP_MM if attempt == 0 else COLUMN_STEP_MM
        plates, data = _fit_both(level, frame, sampler, points, on_border, step, image)
        fitted = [plates[side] for side in true_sides if "not_fitted" not in plates[side].flags]
        if attempt == 0 and fitted and len(fitted) == len(true_sides):
            frame = _refined(frame, fitted)
        else:
            break
    prior = None          # the body axis needs both true endplates to bound its central half
    if len(true_sides) == 2 and all(p.usable for p in plates.values()):
        low, high = (float((plates[side].centre - frame.centre) @ frame.superior) for side in ("inferior", "superior"))
        axis = body_axis(sampler, frame, points, low, high)
        prior = None if axis is None else np.array([-axis[1], -axis[2]])
    for side in SIDES:
        if data[side] is not None and plates[side].usable:
            plates[side] = _refit_quantised(plates[side], frame, grid, data[side], prior)
    for side in SIDES:
        if (level, side) in NO_ENDPLATE:
            plates[side] = None
        elif "not_fitted" not in plates[side].flags:
            _add_corners(plates[side], frame, sampler)
    _, t, _ = _local(points, frame)
    depth = float(np.subtract(*np.percentile(t, [99, 1])))
    return BodyEndplates(level, frame, plates["superior"], plates["inferior"], depth)


def _fit_both(level, frame, sampler, points, on_border, step=COLUMN_STEP_MM, image=None):
    t, w, s_coords = _columns(points, frame, step)
    _, tl, _ = _local(points, frame)
    span = tuple(np.percentile(tl, [0, 100]) + np.array([-3.0, 3.0]))
    inferior, superior = _surfaces(sampler, frame, t, w, s_coords, image)
    plates, data = {}, {}
    for side, surface in (("superior", superior), ("inferior", inferior)):
        plates[side], data[side] = _fit_side(level, side, frame, sampler, on_border, t, w, surface, span)
    return plates, data


def flag_partial_masks(levels: list[str], bodies: dict[str, BodyEndplates], adjacent) -> list[str]:
    """Flag both endplates of a body whose mask is far shallower (anterior-posterior) than its adjacent
    bodies': the mask covers only part of the body, and its ends are not the endplates. Adjacent bodies
    differ in depth by 5-15 %, and a fracture takes height, not depth; a mask that lost a third of its
    depth has lost the body's front or back. Returns the levels flagged."""
    flagged = []
    for n, level in enumerate(levels):
        neighbours = [bodies[levels[n - 1]].depth_mm] if n and adjacent(levels[n - 1], level) else []
        if n + 1 < len(levels) and adjacent(level, levels[n + 1]):
            neighbours.append(bodies[levels[n + 1]].depth_mm)
        if neighbours and bodies[level].depth_mm < PARTIAL_DEPTH * float(np.median(neighbours)):
            flagged.append(level)
    for level in flagged:
        bodies[level].flag("partial_mask")
    return flagged
