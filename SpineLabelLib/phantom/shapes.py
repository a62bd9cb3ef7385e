"""Painting the spine: vertebral bodies, C1 and the dens, posterior elements, sacrum, ribs, canal and discs,
in an order where later structures win (`_paint_all`)."""
from __future__ import annotations

import math

import numpy as np

from ..core import anatomy, discs
from .canvas import CORTEX_MM, _Canvas
from .level import DENS_LENGTH, DENS_RADIUS, DENS_Y, _Level, _posterior_params
from .outline import _paint_outline
from .tissues import ANNULUS, CANCELLOUS, CORD, CORTICAL, CSF, FAT, NUCLEUS

END_PLATE_MM = 1.0       # cortical end plate thickness
WAIST = 0.06             # relative concavity of the body's side wall at mid-height
CORD_LAST_LEVEL = "L1"   # conus medullaris


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
    view = tuple(slice(a, b) for a, b in ranges)
    canvas.discs[view][disc] = discs.label_of(discs.disc_name(upper.name, lower.name))
    nucleus = (((x / (0.55 * half_x)) ** 2 + ((y + 0.1 * half_y) / (0.5 * half_y)) ** 2 <= 1.0)
               & (below_upper >= 1.0) & (above_lower >= 1.0))
    canvas.paint(ranges, nucleus, NUCLEUS)


def _paint_all(canvas: _Canvas, levels: list[_Level], ribs: bool = True) -> dict[str, tuple[int, int]]:
    """Paint in an order where later structures win: outline, discs, ribs, processes, canal, bodies.
    ribs=False leaves the thoracic vertebrae without ribs (to test what tells them apart)."""
    _paint_outline(canvas, levels)
    for upper, lower in zip(levels, levels[1:]):
        if upper.has_body and upper.disc > 0:
            _paint_disc(canvas, upper, lower)
    for level in levels:
        region = anatomy.region(level.name)
        if region == "thoracic" and ribs:
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
    canvas.discs[(canvas.tissues != ANNULUS) & (canvas.tissues != NUCLEUS)] = 0   # what later structures took
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
