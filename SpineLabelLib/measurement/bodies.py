"""Measurements of every labelled vertebral body: centroid, volume, heights, ratios, Genant grade,
radiomics, and the distances between neighbouring bodies.

`measure_result(result)` fills `result.measurements` (one dict per vertebra with a level and a mask,
cranio-caudal) and `result.distances` (one dict per adjacent pair present). Heights come from
`heights.measure_heights` (own mid-sagittal plane, own superior axis, 10/50/90 % lines; paper 003);
radiomics from `radiomics.first_order` (paper 004).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core import anatomy
from .heights import BodyFrame, BodyHeights, MaskSampler, measure_heights, principal_frame
from .radiomics import FEATURES, first_order
from ..core.result import SpineResult, Vertebra
from ..core.volume import Volume

HEIGHT_NAMES = ("anterior", "middle", "posterior")
MIN_VOXELS = 27
MIN_VOLUME_FRACTION = 0.1   # of the level's typical body volume: less is a fragment, not a body

# Genant semi-quantitative thresholds on height loss, in %: Genant HK, Wu CY, van Kuijk C, Nevitt MC.
# "Vertebral fracture assessment using a semiquantitative technique", J Bone Miner Res 1993;8:1137-48
# (as summarised in peers.md section 8): grade 0 < 20 %, 1 = 20-25 %, 2 = 25-40 %, 3 > 40 %.
GENANT_GRADE_1, GENANT_GRADE_2, GENANT_GRADE_3 = 20.0, 25.0, 40.0
#: Levels without a comparable vertebral body (atlas, axis with dens, sacrum): heights are reported,
#: but they get no Genant grade and do not serve as a neighbour's crush reference.
NOT_GRADED = frozenset({"C1", "C2", "S1"})


# --- Genant ----------------------------------------------------------------------------------
def genant_grade(height_loss_pct: float) -> int:
    """Grade 0-3 from the height loss in % (20 % -> 1, 25 % -> 2, 40 % -> 2, above 40 % -> 3)."""
    loss = round(float(height_loss_pct), 6)   # a loss computed as exactly 25 % must not read 24.999
    if loss < GENANT_GRADE_1:
        return 0
    if loss < GENANT_GRADE_2:
        return 1
    return 2 if loss <= GENANT_GRADE_3 else 3


def genant(height_anterior: float, height_middle: float, height_posterior: float,
           crush_reference: float | None) -> tuple[float, int, str]:
    """(height loss %, grade, type) after Genant 1993: 1 - min height / its reference.

    Wedge compares Ha and biconcave Hm with the body's own Hp; crush compares Hp with
    `crush_reference` (neighbours' Hp, or the body's expected Hp). The type is the deformity with
    the largest relative loss; it is '' for grade 0.
    """
    losses = {"wedge": 1.0 - height_anterior / height_posterior,
              "biconcave": 1.0 - height_middle / height_posterior}
    if crush_reference:
        losses["crush"] = 1.0 - height_posterior / crush_reference
    kind = max(losses, key=losses.get)
    loss_pct = max(0.0, 100.0 * losses[kind])
    grade = genant_grade(loss_pct)
    return loss_pct, grade, kind if grade > 0 else ""


def expected_posterior_height(level: str, depth_mm: float | None) -> float | None:
    """A lone body's expected Hp: the typical height/depth ratio of its level times its own depth
    (AP depth does not shrink in a crush fracture, so it is a fair yardstick)."""
    if not depth_mm or level not in anatomy.CODE_BY_NAME:
        return None
    size = anatomy.body_size(level)
    return size.height * depth_mm / size.depth


# --- neighbours ------------------------------------------------------------------------------
def adjacent(upper: str, lower: str) -> bool:
    """True when no level lies between `upper` and `lower` (a missing T13/L6 does not count)."""
    a, b = anatomy.order_index(upper), anatomy.order_index(lower)
    between = anatomy.ORDER[a + 1: b]
    return b > a and all(name in anatomy.TRANSITIONAL for name in between)


def _spine_axis(bodies: list[dict], n: int) -> np.ndarray | None:
    """Local spine axis (towards superior) from the adjacent bodies' centroids."""
    here = bodies[n]
    up = bodies[n - 1] if n > 0 and adjacent(bodies[n - 1]["level"], here["level"]) else None
    down = bodies[n + 1] if n + 1 < len(bodies) and adjacent(here["level"], bodies[n + 1]["level"]) else None
    top = up["centroid"] if up else here["centroid"]
    bottom = down["centroid"] if down else here["centroid"]
    axis = top - bottom
    return axis if np.linalg.norm(axis) > 1e-6 else None


# --- per body --------------------------------------------------------------------------------
def _touches_border(mask: np.ndarray) -> bool:
    return any(np.take(mask, [0, -1], axis=a).any() for a in range(3))


def _too_small(level: str, voxels: int, volume_mm3: float) -> bool:
    size = anatomy.body_size(level)
    typical = np.pi / 4 * size.width * size.depth * size.height
    return voxels < MIN_VOXELS or volume_mm3 < MIN_VOLUME_FRACTION * typical


def _midsagittal_values(image: Volume, mask: np.ndarray, frame: BodyFrame) -> np.ndarray:
    """Image intensities on the body's central sagittal plane inside the mask (linear sampling
    on a grid at the image's finest spacing; inside = interpolated mask >= 0.5)."""
    sampler = MaskSampler(mask, image)
    points = image.kji_to_ras(np.argwhere(mask))
    radius = float(np.linalg.norm(points - frame.centre, axis=1).max()) + image.spacing.max()
    step = float(image.spacing.min())
    coords = np.arange(-radius, radius + step / 2, step)
    s, t = np.meshgrid(coords, coords, indexing="ij")
    ras = frame.to_ras(s, t)
    inside = sampler(ras) >= 0.5
    crop = image.array[tuple(slice(a, a + n) for a, n in zip(sampler.low, sampler.crop.shape))]
    return sampler(ras[inside], crop.astype(np.float32))


def _body_record(result: SpineResult, vertebra: Vertebra) -> dict[str, Any] | None:
    mask = result.mask(vertebra)
    voxels = int(mask.sum())
    if voxels == 0:
        return None
    grid = result.image
    centroid = grid.kji_to_ras(np.argwhere(mask).mean(axis=0))[0]
    return {"level": vertebra.level, "vertebra": vertebra, "mask": mask, "voxels": voxels,
            "centroid": centroid, "volume_mm3": voxels * grid.voxel_volume_mm3}


def _measure_body(result: SpineResult, body: dict, spine_axis: np.ndarray | None) -> None:
    """Heights and radiomics into `body` (in place)."""
    grid, mask = result.image, body["mask"]
    flags = []
    if _touches_border(mask):
        flags.append("touches_border")
    if _too_small(body["level"], body["voxels"], body["volume_mm3"]):
        flags.append("too_small")
    heights: BodyHeights | None = None
    if not flags:
        heights = measure_heights(mask, grid, spine_axis)
        flags += heights.flags
    frame = heights.frame if heights else principal_frame(grid.kji_to_ras(np.argwhere(mask)), spine_axis)
    body["heights"] = heights.heights if heights else dict.fromkeys(HEIGHT_NAMES)
    body["lines_ras"] = heights.lines_ras if heights else {}
    body["depth_mm"] = heights.depth_mm if heights else None
    body["frame"] = frame
    body["flags"] = sorted(set(flags), key=flags.index)
    values = np.asarray(grid.array)[mask]
    body["radiomics"] = first_order(values)
    body["radiomics_midsagittal"] = first_order(_midsagittal_values(grid, mask, frame))


def _crush_reference(bodies: list[dict], n: int) -> tuple[float | None, float | None]:
    """(neighbours' mean Hp, reference Hp for the crush loss).

    The reference scales each neighbour's Hp by the typical height ratio of the two levels (L1 is
    normally ~1.5 mm taller than T12), then averages; without a measured neighbour it falls back to
    `expected_posterior_height`.
    """
    here = bodies[n]
    raw, scaled = [], []
    for m in (n - 1, n + 1):
        if not 0 <= m < len(bodies):
            continue
        other = bodies[m]
        pair = (other["level"], here["level"]) if m < n else (here["level"], other["level"])
        hp = other["heights"].get("posterior")
        if hp is None or other["level"] in NOT_GRADED or not adjacent(*pair):
            continue
        raw.append(hp)
        scaled.append(hp * anatomy.body_size(here["level"]).height / anatomy.body_size(other["level"]).height)
    if raw:
        return float(np.mean(raw)), float(np.mean(scaled))
    return None, expected_posterior_height(here["level"], here["depth_mm"])


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _row(body: dict, neighbour_hp: float | None, crush_reference: float | None) -> dict[str, Any]:
    v: Vertebra = body["vertebra"]
    ha, hm, hp = (body["heights"].get(name) for name in HEIGHT_NAMES)
    measured = None not in (ha, hm, hp) and hp > 0
    graded = measured and v.level not in NOT_GRADED
    loss, grade, kind = genant(ha, hm, hp, crush_reference) if graded else (None, None, "")
    partial = "touches_border" in body["flags"]
    row: dict[str, Any] = {
        "level": v.level, "code": v.code,
        "r_mm": _round(body["centroid"][0], 2), "a_mm": _round(body["centroid"][1], 2),
        "s_mm": _round(body["centroid"][2], 2),
        "volume_mm3": None if partial else _round(body["volume_mm3"], 1),
        "height_anterior_mm": _round(ha, 2), "height_middle_mm": _round(hm, 2),
        "height_posterior_mm": _round(hp, 2),
        "wedge_ratio": _round(ha / hp, 4) if measured else None,
        "biconcave_ratio": _round(hm / hp, 4) if measured else None,
        "crush_ratio": _round(hp / neighbour_hp, 4) if measured and neighbour_hp else None,
        "height_loss_pct": _round(loss, 2), "genant_grade": grade, "genant_type": kind,
    }
    for suffix, features in (("", body["radiomics"]), ("_midsagittal", body["radiomics_midsagittal"])):
        for name in FEATURES:
            row[name + suffix] = _round(features[name], 5)
    row["confidence"] = _round(v.score, 4)
    row["flags"] = ";".join(body["flags"])
    row["lines_ras"] = body["lines_ras"]
    row["depth_mm"] = _round(body.get("depth_mm"), 2)
    frame = body.get("frame")     # the end-plate frame; the disc between two bodies uses their mean
    row["frame_ras"] = None if frame is None else {"superior": frame.superior.tolist(), "anterior": frame.anterior.tolist()}
    return row


# --- distances -------------------------------------------------------------------------------
def _distance_row(upper: dict, lower: dict) -> dict[str, Any]:
    """Disc-space distances between the upper body's inferior and the lower body's superior end
    plate at the same relative AP positions (paper 003's anchor points), along the local axis
    (mean of the two bodies' superior axes)."""
    axis = upper["frame"].superior + lower["frame"].superior
    axis = axis / np.linalg.norm(axis)
    row: dict[str, Any] = {"upper": upper["level"], "lower": lower["level"]}
    for name in HEIGHT_NAMES:
        a, b = upper["lines_ras"].get(name), lower["lines_ras"].get(name)
        value = None
        if a is not None and b is not None:
            value = float((np.asarray(a[1]) - np.asarray(b[0])) @ axis)
        row[f"{name}_distance_mm"] = _round(value, 2)
    return row


# --- entry point -----------------------------------------------------------------------------
def measure_result(result: SpineResult) -> SpineResult:
    """Fill `result.measurements` and `result.distances`; returns the result."""
    result.measurements, result.distances = [], []
    if result.image is None or result.instances is None:
        result.warnings.append("measure: no image or no body masks; nothing measured")
        return result
    candidates = [v for v in result.vertebrae if v.level and v.instance]
    candidates.sort(key=lambda v: anatomy.order_index(v.level))
    bodies = [b for b in (_body_record(result, v) for v in candidates) if b is not None]
    for n, body in enumerate(bodies):
        _measure_body(result, body, _spine_axis(bodies, n))
    for n, body in enumerate(bodies):
        result.measurements.append(_row(body, *_crush_reference(bodies, n)))
    for upper, lower in zip(bodies, bodies[1:]):
        if adjacent(upper["level"], lower["level"]):
            result.distances.append(_distance_row(upper, lower))
    return result
