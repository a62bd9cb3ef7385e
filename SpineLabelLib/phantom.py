"""Synthetic spine phantoms (CT- or MRI-like) with exact ground truth.

API: `generate_phantom(levels, modality, spacing, seed, ...) -> Phantom` (image, body label map,
tissue-class map, truth dict; `Phantom.to_result()` gives a SpineResult), `write_phantom(phantom,
out_dir, case_id)`, `make_phantom('T12-L3', ...) -> SpineResult`, `render(tissues, modality, ...)`
(re-render a tissue map with another contrast), `genant_grade(height_loss_percent)`.

Construction. Levels are stacked along a centre line whose sagittal and coronal tilt vary linearly
along the arc length (lordosis/kyphosis, scoliosis; optional physiological regional curves). Each
vertebra has its own frame (x = right, y = anterior, z = superior, origin at the body centre), rotated
axially towards a scoliotic convexity. Every structure is evaluated with vectorised numpy over its
own bounding box only, voxel centres mapped through the grid's IJK->RAS matrix into the local frame:
  body       elliptic cylinder (depth D, width W) with a 6 % concave waist, 1.2 mm cortical shell,
             1 mm cortical end plates; end plates are explicit functions z(x, y);
  disc       fills exactly the space between the neighbouring end plates (annulus + nucleus);
  posterior  pedicles, articular processes, laminae, spinous and transverse processes (bone rods);
  canal      epidural fat, dural sac (CSF), cord down to L1; ribs on T1-T12/T13; S1 with alae and a
             fused lower sacrum; C1 a ring (anterior arch and lateral masses carry the C1 label);
             C2 body with a dens (part of the C2 label);
  outline    skin, subcutaneous fat, muscle, organs, lungs (thorax) and airway (neck), in world axial
             cross-sections; air outside.
Heights (truth, analytic): at 10 %, 50 %, 90 % of the depth from the anterior edge, i.e. y = +0.4 D,
0, -0.4 D in the mid-sagittal plane x = 0, along the vertebra's z axis:
  normal     all = expected height H;
  wedge      superior end plate tilted: anterior = (1 - p) H, posterior = H; the spine above tilts
             forward by the wedge angle (local kyphosis), so the disc above stays even;
  biconcave  both end plates dished centrally: middle = (1 - p) H, anterior = posterior = H;
  crush      the whole body is (1 - p) H.
Intensities: a mean per tissue class and modality (INTENSITY; CT in HU: cortical 750-950, cancellous
160-240, disc 75-90, muscle 45, fat -100, lung -850, air -1000; T1: fat 900 > marrow 600 > disc
230-270; T2: CSF 950, nucleus 850 > marrow 380 > annulus 170; "random": any contrast per tissue),
varied slightly per seed; optional smooth texture and Gaussian PSF; a smooth multiplicative bias
field (MR-like only) and Gaussian noise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import anatomy
from .errors import InputError
from .paths import atomic_write_text
from .volume import Volume, make_affine, save_volume

MODALITIES = ("ct", "t1", "t2", "random")
FRACTURE_TYPES = ("wedge", "biconcave", "crush")
MAX_FRACTURE_PERCENT = 60.0
LPS_DIRECTIONS = np.diag([-1.0, -1.0, 1.0])   # default storage: i -> left, j -> posterior, k -> superior

# Tissue classes of the `tissues` map.
AIR, FAT, MUSCLE, ORGAN, LUNG, CORTICAL, CANCELLOUS, ANNULUS, NUCLEUS, CSF, CORD = range(11)
TISSUE_NAMES = ("air", "fat", "muscle", "organ", "lung", "cortical_bone", "cancellous_bone",
                "disc_annulus", "disc_nucleus", "csf", "spinal_cord")

# Mean intensity per tissue class (order as TISSUE_NAMES). CT in Hounsfield units; T1/T2 in arbitrary
# units 0..1000 (T1: fat bright, marrow medium-bright, disc dark; T2: nucleus and CSF bright, bone dark).
INTENSITY = {
    "ct": (-1000, -100, 45, 35, -850, 850, 200, 90, 75, 10, 35),
    "t1": (0, 900, 320, 380, 10, 40, 600, 230, 270, 120, 420),
    "t2": (0, 700, 220, 400, 10, 40, 380, 170, 850, 950, 430),
}
DEFAULT_NOISE = {"ct": 15.0, "t1": 15.0, "t2": 15.0, "random": 15.0}

CORTEX_MM = 1.2          # cortical shell of bodies and processes
END_PLATE_MM = 1.0       # cortical end plate thickness
WAIST = 0.06             # relative concavity of the body's side wall at mid-height
CORD_LAST_LEVEL = "L1"   # conus medullaris


def genant_grade(height_loss_percent: float | None) -> int:
    """Genant semi-quantitative grade from a height loss: <20 % 0, 20-25 % 1, 25-40 % 2, >40 % 3."""
    if height_loss_percent is None or height_loss_percent < 20.0:
        return 0
    if height_loss_percent < 25.0:
        return 1
    if height_loss_percent <= 40.0:
        return 2
    return 3


# --- one level's construction ---------------------------------------------------------------
@dataclass
class _Level:
    """Shape parameters of one level and, once placed, its frame (columns right, anterior, superior)."""

    name: str
    height: float                      # expected (posterior) body height, mm
    depth: float
    width: float
    disc: float                        # disc below, mm
    scale: float = 1.0                 # size factor applied to posterior elements
    fracture: tuple[str, float] | None = None
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def body_height(self) -> float:
        """Height of the body proper (C2: without the dens)."""
        return self.height - 8.0 if self.name == "C2" else self.height

    @property
    def has_body(self) -> bool:
        return self.name != "C1"

    def _fraction(self) -> float:
        return self.fracture[1] / 100.0 if self.fracture else 0.0

    def _half(self) -> float:
        h = self.body_height
        if self.fracture and self.fracture[0] == "crush":
            h *= 1.0 - self._fraction()
        return h / 2.0

    def _dish(self, x, y):
        """Central end-plate depression of a biconcave fracture (per end plate), 0 at y = +-0.4 D."""
        if not (self.fracture and self.fracture[0] == "biconcave"):
            return 0.0
        shape = 1.0 - (y / (0.4 * self.depth)) ** 2 - (x / (0.4 * self.width)) ** 2
        return self._fraction() * self.body_height / 2.0 * np.maximum(shape, 0.0)

    def top(self, x, y):
        """Superior end plate z(x, y) in the local frame."""
        z = self._half() - self._dish(x, y)
        if self.fracture and self.fracture[0] == "wedge":
            slope = self._fraction() * self.body_height / (0.8 * self.depth)
            z = z - slope * np.maximum(y + 0.4 * self.depth, 0.0)
        return z

    def bottom(self, x, y):
        return -self._half() + self._dish(x, y)

    def wedge_angle(self) -> float:
        if not (self.fracture and self.fracture[0] == "wedge"):
            return 0.0
        return math.atan(self._fraction() * self.body_height / (0.8 * self.depth))

    def stack_top(self) -> float:
        return float(self.top(0.0, 0.0)) if self.has_body else self.height / 2.0

    def stack_bottom(self) -> float:
        return float(self.bottom(0.0, 0.0)) if self.has_body else -self.height / 2.0

    def to_world(self, local) -> np.ndarray:
        return self.origin + self.axes @ np.asarray(local, dtype=float)

    def analytic_heights(self) -> tuple[float | None, float | None, float | None]:
        """Body heights at 10 %, 50 %, 90 % of the depth from the anterior edge (mid-sagittal)."""
        if not self.has_body:
            return None, None, None
        heights = [float(self.top(0.0, y) - self.bottom(0.0, y)) for y in (0.4 * self.depth, 0.0, -0.4 * self.depth)]
        if self.name == "C2":       # the middle column runs on through the dens to its tip
            dy = DENS_Y * self.depth
            heights[1] = float(self.top(0.0, 0.0) + DENS_LENGTH + math.sqrt(DENS_RADIUS ** 2 - dy ** 2)
                               - self.bottom(0.0, 0.0))
        return tuple(heights)


DENS_Y, DENS_LENGTH, DENS_RADIUS = -0.05, 10.0, 4.5   # dens axis at y = DENS_Y * depth


def _posterior_params(level: _Level) -> dict[str, float]:
    """Rough sizes of canal and posterior elements per region (mm)."""
    region = anatomy.region(level.name)
    if region == "cervical":
        p = dict(canal_depth=14, canal_width=24, pedicle=2.8, lamina=2.5, spine_length=18, spine_drop=4,
                 spine_radius=3.5, transverse=12)
        if level.name in ("C2", "C7"):
            p["spine_length"] = 25 if level.name == "C2" else 35
    elif region == "thoracic":
        p = dict(canal_depth=15, canal_width=17, pedicle=3.8, lamina=3.5, spine_length=32, spine_drop=22,
                 spine_radius=3.5, transverse=26)
    elif region == "lumbar":
        p = dict(canal_depth=17, canal_width=22, pedicle=5.0, lamina=4.0, spine_length=30, spine_drop=6,
                 spine_radius=5.0, transverse=30)
    else:
        p = dict(canal_depth=10, canal_width=20, pedicle=5.0, lamina=4.0, spine_length=12, spine_drop=8,
                 spine_radius=4.0, transverse=0)
    return {k: v * level.scale for k, v in p.items()}


# Body outline per region: width, AP diameter, distance body centre -> posterior skin, fat layer (mm),
# lung and airway presence (0..1).
def _outline_params(name: str) -> tuple[float, ...]:
    region = anatomy.region(name)
    airway = 1.0 if name in ("C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4") else 0.0
    if region == "cervical":
        return 120.0, 120.0, 75.0, 6.0, 0.0, airway
    if region == "thoracic":
        index = anatomy.order_index(name) - anatomy.order_index("T1")
        lung = 0.6 if index in (0, 11, 12) else 1.0
        return 320.0, 220.0, 70.0, 12.0, lung, airway
    if region == "lumbar":
        return 320.0, 230.0, 80.0, 18.0, 0.0, 0.0
    return 340.0, 220.0, 75.0, 18.0, 0.0, 0.0


# --- the canvas: painting shapes in local frames ---------------------------------------------
class _Canvas:
    def __init__(self, shape_kji: tuple[int, int, int], ijk_to_ras: np.ndarray):
        self.shape = tuple(int(s) for s in shape_kji)
        self.affine = np.asarray(ijk_to_ras, dtype=float)
        self.tissues = np.zeros(self.shape, dtype=np.uint8)
        self.labels = np.zeros(self.shape, dtype=np.uint8)

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


def _paint_body(canvas: _Canvas, level: _Level) -> tuple[int, int]:
    """Paint one vertebral body with its label; return (voxels inside grid, voxels of the whole body)."""
    half_x, half_y = level.width / 2.0, level.depth / 2.0
    z_low, z_high = level.bottom(0.0, 0.0) - 0.5, level.stack_top() + 0.5
    z_low = min(z_low, -level._half() - 0.5)
    z_high = max(z_high, level._half() + 0.5)
    block = canvas.block(level.origin, level.axes, (-half_x, -half_y, z_low), (half_x, half_y, z_high), clip=False)
    if block is None:
        return 0, 0
    ranges, inner, x, y, z = block
    half = level._half()
    waist = 1.0 - WAIST * (1.0 - np.minimum((z / half) ** 2, 1.0))
    top, bottom = level.top(x, y), level.bottom(x, y)
    body = (((x / (half_x * waist)) ** 2 + (y / (half_y * waist)) ** 2 <= 1.0) & (z <= top) & (z >= bottom))
    core = (((x / (half_x * waist - CORTEX_MM)) ** 2 + (y / (half_y * waist - CORTEX_MM)) ** 2 <= 1.0)
            & (z <= top - END_PLATE_MM) & (z >= bottom + END_PLATE_MM))
    total = int(body.sum())
    body, core = body[inner], core[inner]
    ranges = tuple((a + s.start, a + s.stop) for (a, _), s in zip(ranges, inner))
    code = anatomy.code_of(level.name)
    canvas.paint(ranges, body, CORTICAL, code)
    canvas.paint(ranges, core & body, CANCELLOUS)
    return int(body.sum()), total


def _paint_dens(canvas: _Canvas, level: _Level) -> None:
    y = DENS_Y * level.depth
    top = level.stack_top()
    canvas.capsule(level, (0, y, top - 2.0), (0, y, top + DENS_LENGTH), DENS_RADIUS, anatomy.code_of("C2"))


def _ring_points(centre_y: float, half_x: float, half_y: float, angles, z: float = 0.0) -> list:
    """Points of an axial ellipse; angle 0 = anterior, pi/2 = right."""
    return [(half_x * math.sin(a), centre_y + half_y * math.cos(a), z) for a in angles]


def _paint_atlas(canvas: _Canvas, level: _Level, label: int | None) -> None:
    """C1: a ring without a true body. The anterior arch and lateral masses carry the C1 label."""
    s = level.scale
    front = _ring_points(-10 * s, 21 * s, 18 * s, np.linspace(-0.6, 0.6, 5))
    canvas.chain(level, front, 3.5 * s, label)
    for side in (-1, 1):
        canvas.capsule(level, (side * 17 * s, -6 * s, -3 * s), (side * 17 * s, -6 * s, 3 * s), 6.5 * s, label)


def _paint_atlas_posterior(canvas: _Canvas, level: _Level) -> None:
    s = level.scale
    back = _ring_points(-10 * s, 21 * s, 18 * s, np.linspace(math.pi - 1.5, math.pi + 1.5, 7))
    canvas.chain(level, back, 3.0 * s)
    for side in (-1, 1):
        canvas.capsule(level, (side * 20 * s, -6 * s, 0), (side * 36 * s, -8 * s, 0), 4.0 * s)
    z_low, z_high = -level.height / 2 - level.disc - 2, level.height / 2 + 2
    canvas.elliptic_tube(level, -16 * s, 13 * s, 10 * s, z_low, z_high, FAT)
    canvas.elliptic_tube(level, -16 * s, 11 * s, 8.5 * s, z_low, z_high, CSF)
    canvas.elliptic_tube(level, -16 * s, 7 * s, 5 * s, z_low, z_high, CORD)


def _paint_posterior(canvas: _Canvas, level: _Level) -> None:
    """Pedicles, articular processes, laminae, spinous and transverse processes (rods)."""
    p = _posterior_params(level)
    h = level.body_height
    back = -level.depth / 2.0
    top, bottom = level.stack_top(), level.stack_bottom()
    z = 0.15 * h
    px = p["canal_width"] / 2.0 + 0.9 * p["pedicle"]
    junction_y = back - 0.75 * p["canal_depth"] - 1.0
    middle = (0.0, back - 1.0 - p["canal_depth"] - p["lamina"], z - 0.1 * h)
    for side in (-1, 1):
        joint = (side * px, junction_y, z)
        canvas.capsule(level, (side * px, back + 4.0, z), joint, p["pedicle"])
        canvas.capsule(level, joint, (side * (px + 2), junction_y, top + 0.3 * level.disc), 0.8 * p["pedicle"])
        canvas.capsule(level, joint, (side * (px - 1), junction_y - 6, bottom - 0.5 * level.disc), 0.8 * p["pedicle"])
        for dz in (0.0, -0.3 * h):
            canvas.capsule(level, (joint[0], joint[1], z + dz), (middle[0], middle[1], middle[2] + dz), p["lamina"])
        if p["transverse"] > 0:
            backward = -8.0 if anatomy.region(level.name) == "thoracic" else -3.0
            canvas.capsule(level, joint, (side * (px + p["transverse"]), junction_y + backward, z), 0.8 * p["lamina"] + 0.5)
    tip = (0.0, middle[1] - p["spine_length"], middle[2] - p["spine_drop"])
    canvas.capsule(level, middle, tip, p["spine_radius"])
    if anatomy.region(level.name) == "lumbar":   # hatchet-shaped lumbar spinous process
        canvas.capsule(level, (0, middle[1], middle[2] - 1.2 * p["spine_radius"]),
                       (0, tip[1], tip[2] - 1.2 * p["spine_radius"]), p["spine_radius"])


def _paint_sacrum(canvas: _Canvas, level: _Level) -> None:
    """Alae and the fused lower sacrum below S1 (bone, unlabelled)."""
    s, h = level.scale, level.body_height
    half_x, bottom = level.width / 2.0, level.stack_bottom()
    for side in (-1, 1):
        canvas.capsule(level, (side * (half_x - 6), -4 * s, 0.1 * h), (side * (half_x + 28 * s), -12 * s, -0.1 * h), 11 * s)
        canvas.capsule(level, (side * (half_x + 24 * s), -12 * s, -0.1 * h), (side * (half_x + 18 * s), -22 * s, -0.6 * h), 9 * s)
    points = [(0, -2 * s, bottom), (0, -8 * s, bottom - 25 * s), (0, -20 * s, bottom - 50 * s), (0, -32 * s, bottom - 68 * s)]
    canvas.chain(level, points, np.array([15, 11, 8, 5]) * s)
    crest = (0, -level.depth / 2 - 16 * s, 0)
    canvas.capsule(level, crest, (0, crest[1] - 6 * s, bottom - 30 * s), 4 * s)


def _paint_ribs(canvas: _Canvas, level: _Level) -> None:
    """A pair of ribs on a thoracic level: head at the body, round the thorax, descending anteriorly."""
    index = anatomy.order_index(level.name) - anatomy.order_index("T1")     # T1 = 0 ... T13 = 12
    p = _posterior_params(level)
    s = level.scale
    reach = {10: 1.4, 11: 0.9, 12: 0.6}.get(index, 2.2 if index >= 7 else 2.5)
    size = min(1.0, 0.55 + 0.1 * index) * s
    half_x, half_y = 125.0 * size, 85.0 * s
    back = -level.depth / 2.0
    centre_y = back - 40.0 * s + half_y
    z = 0.15 * level.body_height
    tubercle_x = p["canal_width"] / 2 + p["transverse"] * 0.85
    start = math.asin(min(0.95, tubercle_x / half_x))
    angles = math.pi - np.linspace(start, reach + start * 0.5, 8)     # _ring_points: 0 = anterior
    radius = 3.5 * s if index == 0 else 4.0 * s
    for side in (-1, 1):
        head = (side * (level.width / 2 + 1.0), back + 4.0, z + 2.0)
        path = [(side * x, y, z - 35.0 * s * n / len(angles)) for n, (x, y, _) in
                enumerate(_ring_points(centre_y, half_x, half_y, angles))]
        canvas.chain(level, [head, *path], radius)


def _paint_canal(canvas: _Canvas, level: _Level) -> None:
    """Epidural fat, dural sac (CSF) and cord, covering the level and the disc below."""
    p = _posterior_params(level)
    centre_y = -level.depth / 2.0 - 1.0 - p["canal_depth"] / 2.0
    z_low, z_high = level.stack_bottom() - level.disc - 2.0, level.stack_top() + 2.0
    half_x, half_y = p["canal_width"] / 2.0, p["canal_depth"] / 2.0
    canvas.elliptic_tube(level, centre_y, half_x, half_y, z_low, z_high, FAT)
    canvas.elliptic_tube(level, centre_y, 0.85 * half_x, 0.85 * half_y, z_low, z_high, CSF)
    if anatomy.order_index(level.name) <= anatomy.order_index(CORD_LAST_LEVEL):
        region = anatomy.region(level.name)
        cord = (6.5, 4.0) if region == "cervical" else (4.5, 4.0)
        if level.name == CORD_LAST_LEVEL:
            cord = (3.0, 3.0)
        canvas.elliptic_tube(level, centre_y, cord[0], cord[1], z_low, z_high, CORD)


def _average_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nearest rotation to the mean of two rotations (polar decomposition)."""
    u, _, vt = np.linalg.svd(a + b)
    return u @ vt


def _paint_disc(canvas: _Canvas, upper: _Level, lower: _Level) -> None:
    """Disc filling exactly the space between the upper body's inferior and the lower's superior end plate."""
    p_upper = upper.to_world((0, 0, upper.stack_bottom()))
    p_lower = lower.to_world((0, 0, lower.stack_top()))
    origin, axes = (p_upper + p_lower) / 2.0, _average_frame(upper.axes, lower.axes)
    gap = float(np.linalg.norm(p_upper - p_lower))
    half_x = 0.51 * (upper.width + lower.width) / 2.0
    half_y = 0.51 * (upper.depth + lower.depth) / 2.0
    reach = gap / 2.0 + 0.3 * half_y + 0.5 * max(upper.body_height, lower.body_height) * 0.3 + 2.0
    block = canvas.block(origin, axes, (-half_x, -half_y, -reach), (half_x, half_y, reach))
    if block is None:
        return
    ranges, _, x, y, z = block
    coords = []
    for level in (upper, lower):       # the same voxels in each body's own frame
        m = (level.axes.T @ axes).astype(np.float32)
        o = (level.axes.T @ (origin - level.origin)).astype(np.float32)
        coords.append([m[n, 0] * x + m[n, 1] * y + m[n, 2] * z + o[n] for n in range(3)])
    (xu, yu, zu), (xl, yl, zl) = coords
    below_upper, above_lower = upper.bottom(xu, yu) - zu, zl - lower.top(xl, yl)
    disc = ((x / half_x) ** 2 + (y / half_y) ** 2 <= 1.0) & (below_upper >= 0) & (above_lower >= 0)
    canvas.paint(ranges, disc, ANNULUS)
    nucleus = (((x / (0.55 * half_x)) ** 2 + ((y + 0.1 * half_y) / (0.5 * half_y)) ** 2 <= 1.0)
               & (below_upper >= 1.0) & (above_lower >= 1.0))
    canvas.paint(ranges, nucleus, NUCLEUS)


# --- placing the levels along a curved centre line -------------------------------------------
def _check_levels(levels: list[str]) -> list[str]:
    levels = [str(n).strip().upper() for n in levels]
    if not levels:
        raise InputError("phantom: at least one level is needed")
    unknown = [n for n in levels if n not in anatomy.CODE_BY_NAME]
    if unknown:
        raise InputError(f"phantom: unknown level(s) {unknown}")
    index = [anatomy.order_index(n) for n in levels]
    for a, b in zip(index, index[1:]):
        skipped = anatomy.ORDER[a + 1:b]
        if b <= a or any(n not in anatomy.TRANSITIONAL for n in skipped):
            raise InputError(f"phantom: levels must be contiguous and cranio-caudal, got {levels}")
    return levels


def _check_fractures(fractures, levels: list[str]) -> dict[str, tuple[str, float]]:
    checked = {}
    for name, spec in (fractures or {}).items():
        name = name.upper()
        kind, percent = spec[0].lower(), float(spec[1])
        if name not in levels or name == "C1":
            raise InputError(f"phantom: fracture level {name} is not a requested level with a body")
        if kind not in FRACTURE_TYPES:
            raise InputError(f"phantom: fracture type must be one of {FRACTURE_TYPES}, got {kind!r}")
        if not 0.0 <= percent <= MAX_FRACTURE_PERCENT:
            raise InputError(f"phantom: fracture height loss must be 0-{MAX_FRACTURE_PERCENT:g} %, got {percent}")
        checked[name] = (kind, percent)
    return checked


def _frame(superior: np.ndarray, axial_deg: float) -> np.ndarray:
    """Columns right, anterior, superior; anterior as close to +A as the superior axis allows."""
    anterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
    anterior /= np.linalg.norm(anterior)
    right = np.cross(anterior, superior)
    g = math.radians(axial_deg)        # positive turns the anterior axis towards the right
    anterior = math.cos(g) * anterior + math.sin(g) * right
    return np.column_stack([np.cross(anterior, superior), anterior, superior])


def _tilt(axes: np.ndarray, about_right_deg: float, about_anterior_deg: float) -> np.ndarray:
    a, b = math.radians(about_right_deg), math.radians(about_anterior_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return axes @ rx @ ry


# Typical adult sagittal angles per region (degrees, + = lordosis), spread over the region's levels.
REGIONAL_CURVES = {"cervical": 25.0, "thoracic": -40.0, "lumbar": 50.0}


def _regional_profile(levels: list[_Level], tops: list[float], origins: list[float]) -> list[tuple]:
    """(start_s, stop_s, angle_rad, mean ramp over the spine) per region present, for physiological curves.

    A partial region gets the share of its angle its levels represent."""
    ends = [o - lv.stack_bottom() for lv, o in zip(levels, origins)]
    length = max(ends[-1], 1.0)
    samples = np.linspace(0.0, length, 200)
    profile = []
    for region, angle in REGIONAL_CURVES.items():
        members = [n for n, lv in enumerate(levels) if anatomy.region(lv.name) == region
                   or (region == "lumbar" and lv.name == "S1")]
        if not members:
            continue
        total = sum(1 for n in anatomy.STANDARD_ORDER if anatomy.region(n) == region) + (region == "lumbar")
        start, stop = tops[members[0]], max(ends[members[-1]], tops[members[0]] + 1.0)
        mean = float(np.mean(np.clip((samples - start) / (stop - start), 0.0, 1.0)))
        profile.append((start, stop, math.radians(angle) * min(1.0, len(members) / total), mean))
    return profile


def _place(levels: list[_Level], lordosis_deg: float, scoliosis_deg: float, axial_apex_deg: float,
           angle_jitter: np.ndarray, physiological: bool = False) -> np.ndarray:
    """Set each level's origin and axes; return the sampled centre line (N, 3) from head to feet.

    Arc length s runs caudally. The sagittal tilt grows linearly along s from -lordosis/2 to
    +lordosis/2 (a constant-curvature arc, concave posteriorly for positive lordosis); the coronal tilt
    likewise with the scoliosis angle (convex to the right). A wedge fracture adds its wedge angle to
    the tilt of everything above it.
    """
    tops, origins, s = [], [], 0.0
    for n, level in enumerate(levels):
        tops.append(s)
        origins.append(s + level.stack_top())
        s = origins[-1] - level.stack_bottom() + (level.disc if n + 1 < len(levels) else 0.0)
    length = max(s, 1.0)

    profile = _regional_profile(levels, tops, origins) if physiological else []

    def superior_at(s: np.ndarray) -> np.ndarray:
        fraction = np.clip(s / length, 0.0, 1.0) - 0.5
        alpha = math.radians(lordosis_deg) * fraction
        for start, stop, angle, mean in profile:
            alpha = alpha + angle * (np.clip((s - start) / (stop - start), 0.0, 1.0) - mean)
        for top, level in zip(tops, levels):
            alpha = alpha + level.wedge_angle() * (s < top)
        beta = math.radians(scoliosis_deg) * fraction
        return np.stack([np.cos(alpha) * np.sin(beta), np.sin(alpha), np.cos(alpha) * np.cos(beta)], axis=-1)

    samples = np.arange(-150.0, length + 150.0, 0.25)
    superior = superior_at(samples)
    steps = (superior[1:] + superior[:-1]) / 2.0 * 0.25
    line = np.vstack([np.zeros(3), -np.cumsum(steps, axis=0)])
    for n, (level, s_origin) in enumerate(zip(levels, origins)):
        level.origin = np.array([np.interp(s_origin, samples, line[:, c]) for c in range(3)])
        axial = axial_apex_deg * math.sin(math.pi * np.clip(s_origin / length, 0, 1)) + angle_jitter[n, 2]
        frame = _frame(superior_at(np.array([s_origin]))[0], axial)
        level.axes = _tilt(frame, angle_jitter[n, 0], angle_jitter[n, 1])
    centre = np.mean([lv.origin for lv in levels], axis=0)
    for level in levels:
        level.origin = level.origin - centre
    return line - centre


def _make_levels(names: list[str], fractures: dict, rng: np.random.Generator, size_jitter: float) -> list[_Level]:
    levels = []
    for name in names:
        size = anatomy.body_size(name)
        scale = float(np.clip(1.0 + size_jitter * rng.standard_normal(), 0.85, 1.15))
        levels.append(_Level(name, size.height * scale, size.depth * scale, size.width * scale, size.disc * scale,
                             scale, fractures.get(name)))
    return levels


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


# --- grid --------------------------------------------------------------------------------------
def _outline_table(levels: list[_Level]) -> tuple[np.ndarray, np.ndarray]:
    """Per level (sorted by S ascending): S, centre R, centre A, depth, and the _outline_params columns."""
    rows = [(lv.origin[2], lv.origin[0], lv.origin[1], lv.depth, *_outline_params(lv.name)) for lv in levels]
    rows.sort(key=lambda r: r[0])
    table = np.array(rows, dtype=float)
    return table[:, 0], table[:, 1:]


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


# --- body outline, lungs, airway: one chunked pass over the grid in world coordinates ---------------
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


# --- intensities -------------------------------------------------------------------------------
def tissue_intensities(modality: str, rng: np.random.Generator) -> np.ndarray:
    """Mean intensity per tissue class for one phantom (slightly varied per seed)."""
    if modality == "random":        # domain randomisation: any contrast, bodies distinct from discs
        for _ in range(100):
            values = rng.uniform(0.0, 1000.0, len(TISSUE_NAMES))
            values[AIR] = rng.uniform(0.0, 60.0)
            if abs(values[CANCELLOUS] - values[ANNULUS]) > 150 and abs(values[CANCELLOUS] - values[MUSCLE]) > 100:
                break
        return values.astype(np.float32)
    values = np.array(INTENSITY[modality], dtype=np.float32)
    if modality == "ct":
        values += rng.uniform(-5.0, 5.0, len(values)).astype(np.float32)
        values[CORTICAL] = rng.uniform(750.0, 950.0)
        values[CANCELLOUS] = rng.uniform(160.0, 240.0)
        values[AIR] = -1000.0
    else:
        values *= rng.uniform(0.9, 1.1, len(values)).astype(np.float32)
    return values


def _bias_field(shape, rng: np.random.Generator, strength: float = 0.15) -> tuple[np.ndarray, ...]:
    """Smooth multiplicative field as a product of one slow curve per axis (broadcastable factors)."""
    factors = []
    for axis, n in enumerate(shape):
        u = np.linspace(0.0, 1.0, n, dtype=np.float32)
        curve = sum(rng.uniform(-1, 1) * np.cos(np.pi * f * u + rng.uniform(0, np.pi)) for f in (0.5, 1.0, 1.5))
        curve = np.exp(strength * curve / 2.0).astype(np.float32)
        factors.append(curve.reshape([n if a == axis else 1 for a in range(3)]))
    return tuple(factors)


# Relative texture amplitude per tissue class (order as TISSUE_NAMES): organs and marrow are the most
# heterogeneous, fluid the least.
TEXTURE_WEIGHT = np.array([0.0, 0.5, 0.8, 1.5, 0.5, 0.3, 1.0, 0.5, 0.6, 0.15, 0.3], dtype=np.float32)
TEXTURE_SCALE_MM = 12.0


def _smooth_field(shape, spacing_kji, rng: np.random.Generator, scale_mm: float = TEXTURE_SCALE_MM) -> np.ndarray:
    """Smooth random field (about unit SD, features ~scale_mm): coarse Gaussian noise interpolated with
    per-axis Gaussian weight matrices, applied as three matrix products (BLAS, no 3-D resampling)."""
    matrices = []
    for n, s in zip(shape, spacing_kji):
        coarse = int(math.ceil(n * s / scale_mm)) + 4
        position = np.arange(n) * s / scale_mm + 2.0
        weights = np.exp(-0.5 * ((position[:, None] - np.arange(coarse)[None, :]) / 0.8) ** 2)
        weights /= np.sqrt((weights ** 2).sum(axis=1, keepdims=True))      # unit variance after mixing
        matrices.append(weights.astype(np.float32))
    wk, wj, wi = matrices
    field = rng.standard_normal((wk.shape[1], wj.shape[1], wi.shape[1]), dtype=np.float32)
    field = field @ wi.T                                         # (ck, cj, ni)
    field = np.einsum("kjn,Jj->kJn", field, wj)                  # (ck, nj, ni)
    return (wk @ field.reshape(field.shape[0], -1)).reshape(shape)


def render(tissues: np.ndarray, modality: str, seed: int = 0, noise: float | None = None,
           bias_field: bool = True, *, texture: float = 0.0, blur_mm: float = 0.0,
           spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Image (float32) from a tissue-class map: intensity table, texture, bias field, blur, then noise.

    texture: relative SD of a smooth (~12 mm) multiplicative variation of each tissue's contrast to
    air, weighted per tissue (TEXTURE_WEIGHT). blur_mm: Gaussian point-spread SD in mm. spacing (i, j, k)
    mm is needed for both. CT has no bias field (bias_field is ignored for "ct"); MR-like images are
    clipped at 0.
    """
    rng = np.random.default_rng([int(seed), 1])
    values = tissue_intensities(modality, rng)
    bias = _bias_field(tissues.shape, rng) if bias_field and modality != "ct" else ()
    spacing_kji = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))[::-1]
    field = None
    if texture > 0:
        field = _smooth_field(tissues.shape, spacing_kji, np.random.default_rng([int(seed), 2]))
        # CT contrast to air is ~1000 HU for every tissue: a tenth of the MR-like relative texture
        amplitude = np.float32(texture * (0.1 if modality == "ct" else 1.0)) * TEXTURE_WEIGHT
    air = np.float32(values[AIR])
    image = np.empty(tissues.shape, dtype=np.float32)
    step = max(1, 4_000_000 // max(1, tissues[0].size))      # in slabs: no second full-size float array
    for k0 in range(0, tissues.shape[0], step):
        slab = tissues[k0:k0 + step]
        clean = np.take(values - air, slab)
        if field is not None:
            clean *= 1.0 + np.take(amplitude, slab) * field[k0:k0 + step]
        clean += air
        for factor in bias:
            clean *= factor[k0:k0 + step] if factor.shape[0] > 1 else factor
        image[k0:k0 + step] = clean
    if blur_mm > 0:
        from scipy import ndimage

        image = ndimage.gaussian_filter(image, sigma=[blur_mm / s for s in spacing_kji], truncate=3.0)
    sigma = DEFAULT_NOISE[modality] if noise is None else float(noise)
    if sigma > 0:
        for k0 in range(0, tissues.shape[0], step):
            image[k0:k0 + step] += rng.standard_normal(image[k0:k0 + step].shape, dtype=np.float32) * np.float32(sigma)
    if modality != "ct":
        np.maximum(image, 0.0, out=image)
    return image


# --- the phantom ------------------------------------------------------------------------------
@dataclass
class Phantom:
    """A generated case: image, body label map (level codes), tissue classes and exact truth."""

    image: Volume          # float32, HU for CT, 0..~1000 for MR-like
    labels: Volume         # uint8 VerSe codes of the vertebral bodies (C1: anterior arch + lateral masses)
    truth: dict
    tissues: Volume | None = None   # uint8 tissue classes (TISSUE_NAMES), for re-rendering

    def vertebra(self, level: str) -> dict:
        for entry in self.truth["vertebrae"]:
            if entry["level"] == level:
                return entry
        raise KeyError(level)

    def to_result(self, case_id: str = "phantom"):
        from .result import SpineResult

        modality = {"ct": "ct", "t1": "mr", "t2": "mr"}.get(self.truth["modality"], "unknown")
        return SpineResult.from_level_map(case_id, self.image, self.labels.array, source="phantom",
                                          modality=modality, extras={"phantom_truth": self.truth})


def _truth_entry(level: _Level, inside: int, total: int, centroid) -> dict:
    anterior, middle, posterior = level.analytic_heights()
    kind, percent = level.fracture if level.fracture else (None, None)
    return {
        "level": level.name,
        "code": anatomy.code_of(level.name),
        "centroid_ras": None if centroid is None else [float(c) for c in centroid],
        "center_ras": [float(c) for c in level.origin],
        "axes_ras": {"right": level.axes[:, 0].tolist(), "anterior": level.axes[:, 1].tolist(),
                     "superior": level.axes[:, 2].tolist()},
        "height_anterior_mm": anterior,
        "height_middle_mm": middle,
        "height_posterior_mm": posterior,
        "height_expected_mm": level.body_height if level.has_body else None,
        "depth_mm": level.depth if level.has_body else None,
        "width_mm": level.width if level.has_body else None,
        "fracture_type": kind,
        "fracture_percent": percent,
        "genant_grade": genant_grade(percent),
        "partial": bool(inside < total),
        "voxel_count": int(inside),
    }


def _centroid(canvas: _Canvas, code: int, level: _Level) -> np.ndarray | None:
    """Centroid (RAS) of the final label mask of one code, searched in the level's neighbourhood."""
    reach = max(level.width / 2, level.depth / 2, level.height / 2 + DENS_LENGTH + DENS_RADIUS, 30.0 * level.scale) + 2.0
    block = canvas.block(level.origin, level.axes, (-reach,) * 3, (reach,) * 3)
    if block is None:
        return None
    ranges = block[0]
    view = canvas.labels[tuple(slice(a, b) for a, b in ranges)]
    mask = view == code
    count = int(mask.sum())
    if not count:
        return None
    # mean index per axis from the projections: far cheaper than listing every voxel
    kji = np.array([(mask.sum(axis=tuple(a for a in range(3) if a != n)) * np.arange(mask.shape[n])).sum() / count
                    for n in range(3)]) + np.array([a for a, _ in ranges])
    ijk = kji[::-1]
    return canvas.affine[:3, :3] @ ijk + canvas.affine[:3, 3]


def generate_phantom(levels: list[str], modality: str = "ct", spacing=(1.0, 1.0, 1.0), seed: int = 0, *,
                     fractures: dict[str, tuple[str, float]] | None = None, lordosis_deg: float = 0.0,
                     scoliosis_deg: float = 0.0, rotation_deg: tuple[float, float, float] = (0, 0, 0),
                     field_of_view: tuple[float, float] | None = None, noise: float | None = None,
                     bias_field: bool = True, direction=None, axial_rotation_deg: float | None = None,
                     size_jitter: float = 0.03, angle_jitter_deg: float = 0.0,
                     lateral_fov_mm: float | None = 200.0, crop_to_spine: bool = False,
                     physiological_curves: bool = False, texture: float = 0.0, blur_mm: float = 0.0) -> Phantom:
    """Build a spine phantom with exact truth (see the module docstring for the construction).

    levels: contiguous names from anatomy.ORDER, cranial first. spacing: (i, j, k) mm.
    fractures: {"L1": ("wedge", 30)}; types wedge | biconcave | crush, height loss 0-60 %.
    lordosis_deg: sagittal angle between the first and last level (negative = kyphosis).
    scoliosis_deg: coronal (Cobb-like) angle, convex to the right when positive; vertebrae rotate
    axially towards the convexity by axial_rotation_deg at the apex (default 0.4 * scoliosis_deg).
    rotation_deg: rotation (about R, A, S) of the acquisition grid, applied to `direction` (3x3,
    columns = RAS directions of i, j, k; default diag(-1, -1, 1) = LPS storage).
    field_of_view: (superior_cut_mm, inferior_cut_mm): the image starts that far below the superior
    end plate of the first level and ends that far above the inferior end plate of the last one;
    bodies losing voxels are marked partial. lateral_fov_mm: width of the image (None = whole
    torso); crop_to_spine: image only the vertebrae with a small margin (small, fast volumes).
    size_jitter: relative SD of per-level size; angle_jitter_deg: SD of per-level tilt and rotation.
    physiological_curves: add typical regional curves (cervical lordosis 25, thoracic kyphosis 40,
    lumbar lordosis 50 degrees, pro rata for partial regions) on top of lordosis_deg.
    texture (e.g. 0.1) and blur_mm (e.g. 0.6): smooth tissue heterogeneity and a Gaussian point-spread
    function, for more realistic training images (see `render`); both off by default (speed).
    """
    names, modality, spacing, fractures = _check_inputs(levels, modality, spacing, fractures)
    rng = np.random.default_rng([int(seed), 0])
    built = _make_levels(names, fractures, rng, size_jitter)
    jitter = angle_jitter_deg * rng.standard_normal((len(built), 3))
    axial_apex = 0.4 * scoliosis_deg if axial_rotation_deg is None else axial_rotation_deg
    _place(built, lordosis_deg, scoliosis_deg, axial_apex, jitter, physiological_curves)
    shape, affine = _grid(_content_box(built, lateral_fov_mm, crop_to_spine), spacing,
                          _directions(rotation_deg, direction))
    if field_of_view is not None:
        shape, affine = _crop_superior_inferior(shape, affine, built, field_of_view)
    canvas = _Canvas(shape, affine)
    counts = _paint_all(canvas, built)
    image = render(canvas.tissues, modality, seed, noise, bias_field, texture=texture, blur_mm=blur_mm, spacing=spacing)
    parameters = {"fractures": {k: list(v) for k, v in fractures.items()}, "lordosis_deg": lordosis_deg,
                  "scoliosis_deg": scoliosis_deg, "axial_rotation_apex_deg": axial_apex,
                  "rotation_deg": [float(r) for r in rotation_deg],
                  "field_of_view": None if field_of_view is None else [float(c) for c in field_of_view],
                  "noise": noise, "bias_field": bias_field, "size_jitter": size_jitter,
                  "angle_jitter_deg": angle_jitter_deg, "physiological_curves": physiological_curves,
                  "texture": texture, "blur_mm": blur_mm, "lateral_fov_mm": lateral_fov_mm,
                  "crop_to_spine": crop_to_spine}
    truth = {"modality": modality, "spacing": spacing.tolist(), "seed": int(seed), "levels": names,
             **_vertebra_truth(canvas, built, counts), "parameters": parameters,
             "height_definition": "mid-sagittal plane of the vertebra, along its superior axis, at 10/50/90 % "
                                  "of the body depth from the anterior edge",
             "tissues": list(TISSUE_NAMES)}
    meta = {"phantom": True, "modality": modality}
    return Phantom(Volume(image, affine, dict(meta)), Volume(canvas.labels, affine.copy(), dict(meta)), truth,
                   Volume(canvas.tissues, affine.copy(), dict(meta)))


def _check_inputs(levels, modality, spacing, fractures):
    names = _check_levels(levels)
    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise InputError(f"phantom: modality must be one of {MODALITIES}, got {modality!r}")
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if np.any(spacing < 0.1) or np.any(spacing > 10):
        raise InputError(f"phantom: spacing {spacing.tolist()} mm is outside 0.1-10 mm")
    return names, modality, spacing, _check_fractures(fractures, names)


def _vertebra_truth(canvas: _Canvas, levels: list[_Level], counts: dict) -> dict:
    """Per-level truth entries for levels with voxels in the image; the names of those without."""
    entries, outside = [], []
    for level in levels:
        inside, total = counts[level.name]
        centroid = _centroid(canvas, anatomy.code_of(level.name), level) if inside else None
        if centroid is None:
            outside.append(level.name)
        else:
            entries.append(_truth_entry(level, inside, total, centroid))
    return {"vertebrae": entries, "outside_field_of_view": outside}


def _paint_all(canvas: _Canvas, levels: list[_Level]) -> dict[str, tuple[int, int]]:
    """Paint in an order where later structures win: outline, discs, ribs, processes, canal, bodies."""
    _paint_outline(canvas, levels)
    for upper, lower in zip(levels, levels[1:]):
        if upper.has_body and upper.disc > 0:
            _paint_disc(canvas, upper, lower)
    for level in levels:
        region = anatomy.region(level.name)
        if region == "thoracic":
            _paint_ribs(canvas, level)
        if level.name == "C1":
            _paint_atlas_posterior(canvas, level)
            continue
        _paint_posterior(canvas, level)
        if level.name == "S1":
            _paint_sacrum(canvas, level)
    for level in levels:
        if level.name != "C1":
            _paint_canal(canvas, level)
    counts = {}
    for level in levels:
        if level.name == "C1":
            counts[level.name] = _paint_atlas_counted(canvas, level)
            continue
        counts[level.name] = _paint_body(canvas, level)
        if level.name == "C2":
            _paint_dens(canvas, level)
    return counts


def _paint_atlas_counted(canvas: _Canvas, level: _Level) -> tuple[int, int]:
    """Paint C1's labelled parts; count them also on an unclipped canvas of the same lattice (partial)."""
    code = anatomy.code_of("C1")
    _paint_atlas(canvas, level, code)
    reach = 40.0 * level.scale
    whole = canvas.block(level.origin, level.axes, (-reach, -reach, -level.height), (reach, reach, level.height),
                         clip=False)
    if whole is None:
        return 0, 1
    (k0, k1), (j0, j1), (i0, i1) = whole[0]
    affine = canvas.affine.copy()
    affine[:3, 3] = canvas.affine[:3, :3] @ np.array([i0, j0, k0]) + canvas.affine[:3, 3]
    private = _Canvas((k1 - k0, j1 - j0, i1 - i0), affine)
    _paint_atlas(private, level, code)
    view = canvas.labels[max(k0, 0):k1, max(j0, 0):j1, max(i0, 0):i1]
    return int((view == code).sum()), int((private.labels == code).sum())


# --- writing ----------------------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_phantom(phantom: Phantom, out_dir, case_id: str) -> dict[str, Path]:
    """Write <case>.nii.gz (image, int16: HU for CT), <case>_seg.nii.gz (body labels), <case>.seg.nrrd,
    <case>.mrk.json and <case>_truth.json."""
    from .markups import write_markups
    from .paths import safe_name
    from .segfile import write_seg_nrrd

    out_dir, case_id = Path(out_dir), safe_name(case_id)
    paths = {"image": out_dir / f"{case_id}.nii.gz", "labels": out_dir / f"{case_id}_seg.nii.gz",
             "segmentation": out_dir / f"{case_id}.seg.nrrd", "markups": out_dir / f"{case_id}.mrk.json",
             "truth": out_dir / f"{case_id}_truth.json"}
    # Whole numbers as scanners store them; float noise would make the file ~5x larger.
    stored = np.clip(np.rint(phantom.image.array), -32768, 32767).astype(np.int16)
    save_volume(phantom.image.with_array(stored), paths["image"])
    save_volume(phantom.labels, paths["labels"])
    result = phantom.to_result(case_id)
    write_seg_nrrd(result, paths["segmentation"])
    write_markups(result, paths["markups"])
    atomic_write_text(paths["truth"], json.dumps(_jsonable({"case_id": case_id, **phantom.truth}), indent=1))
    return paths


def make_phantom(levels: str | list[str] = "T12-L3", case_id: str = "phantom", **kwargs):
    """Convenience for demos and self-tests: a level range ('T12-L3') or list -> SpineResult of a phantom."""
    names = anatomy.parse_level_range(levels) if isinstance(levels, str) else list(levels)
    phantom = generate_phantom(names, **kwargs)
    return phantom.to_result(case_id)
