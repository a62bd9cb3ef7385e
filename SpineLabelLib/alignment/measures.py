"""`measure_alignment`: endplates of every body, then the alignment measures as table rows."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core import anatomy
from ..measurement.bodies import adjacent          # no level between them (a missing T13/L6 does not count)
from ..core.result import SpineResult
from ..core.volume import Volume
from .angles import Regional, cobb, regional_definitions, regional_deg, segmental_deg
from . import image_edges
from .endplates import BodyEndplates, Endplate, fit_body, flag_partial_masks, on_image_border
from .listhesis import slip

CROP_MARGIN = 3          # voxels around a body's bounding box


def _crop(image: Volume, box: tuple[slice, ...], mask: np.ndarray) -> Volume:
    """The body's box as a small volume (its own IJK->RAS: the voxels keep their world positions)."""
    affine = image.ijk_to_ras.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start], float)
    return Volume(mask.astype(np.uint8), affine)


def _image_crop(image: Volume, box: tuple[slice, ...]) -> Volume:
    """The image around a body's box, wide enough for the endplate edge search (`image_edges`)."""
    extra = np.ceil(image_edges.MARGIN_MM / image.spacing[::-1]).astype(int)      # k, j, i voxels
    wide = tuple(slice(max(0, b.start - e), min(n, b.stop + e)) for b, e, n in zip(box, extra, image.array.shape))
    affine = image.ijk_to_ras.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([wide[2].start, wide[1].start, wide[0].start], float)
    return Volume(np.asarray(image.array[wide], np.float32), affine)


def _bodies(result: SpineResult) -> tuple[list[str], dict[str, tuple], dict[str, np.ndarray]]:
    """Labelled bodies with a mask, head to feet: (levels, {level: (mask crop, crop grid, image around
    it)}, centroids RAS);
    a repeated level keeps its first body (the others are left to the person correcting the labels).
    Work happens in each body's bounding box: whole-volume masks cost more than the fits."""
    from scipy import ndimage

    boxes = ndimage.find_objects(result.instances)
    levels, crops, centroids = [], {}, {}
    for v in sorted((v for v in result.vertebrae if v.level and v.instance),
                    key=lambda v: anatomy.order_index(v.level)):
        if v.level in crops or v.instance > len(boxes) or boxes[v.instance - 1] is None:
            continue
        box = tuple(slice(max(0, b.start - CROP_MARGIN), min(n, b.stop + CROP_MARGIN))
                    for b, n in zip(boxes[v.instance - 1], result.instances.shape))
        mask = result.instances[box] == v.instance
        if mask.sum() < 27:
            continue
        grid = _crop(result.image, box, mask)
        levels.append(v.level)
        crops[v.level] = (mask, grid, _image_crop(result.image, box))
        centroids[v.level] = grid.kji_to_ras(np.argwhere(mask).mean(axis=0))[0]
    return levels, crops, centroids


def _spine_axis(levels: list[str], centroids: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """Local spine axis (towards superior) through the adjacent bodies' centroids."""
    up = levels[n - 1] if n > 0 and adjacent(levels[n - 1], levels[n]) else levels[n]
    down = levels[n + 1] if n + 1 < len(levels) and adjacent(levels[n], levels[n + 1]) else levels[n]
    axis = centroids[up] - centroids[down]
    return axis if np.linalg.norm(axis) > 1e-6 else None


def _row(name: str, value, unit: str, levels: str, plane: str, used: list[Endplate | None],
         grade: str = "", direction: str = "", apex: str = "", extra_flags: list[str] | None = None) -> dict:
    flags = list(extra_flags or [])
    for plate in used:
        if plate is not None:
            flags += [f"{plate.level}_{plate.side}:{flag}" for flag in plate.flags]
    usable = all(p is not None and p.usable for p in used)
    return {"name": name, "value": None if value is None or not usable else round(float(value), 2),
            "unit": unit, "levels": levels, "plane": plane, "grade": grade if usable else "",
            "flags": ";".join(flags), "direction": direction if usable else "", "apex": apex,
            "endplates": " ".join(f"{p.level}:{p.side}" for p in used if p is not None)}


def _plate(plates: dict[str, BodyEndplates], level: str, side: str) -> Endplate | None:
    body = plates.get(level)
    return None if body is None else getattr(body, side)


def _facing_plates(levels, plates):
    """Each adjacent pair with both facing endplates: (upper, lower, upper's inferior, lower's superior)."""
    for upper, lower in zip(levels, levels[1:]):
        if not adjacent(upper, lower):
            continue
        a, b = _plate(plates, upper, "inferior"), _plate(plates, lower, "superior")
        if a is not None and b is not None:
            yield upper, lower, a, b


def _segmental_rows(levels, plates) -> list[dict]:
    rows = []
    for upper, lower, a, b in _facing_plates(levels, plates):
        value = segmental_deg(a, b) if a.usable and b.usable else None
        rows.append(_row(f"segmental:{upper}-{lower}", value, "deg", f"{upper}-{lower}", "sagittal", [a, b]))
    return rows


def _regional_row(definition: Regional, plates) -> dict | None:
    a, b = _plate(plates, *definition.upper), _plate(plates, *definition.lower)
    if a is None or b is None:
        return None
    value = regional_deg(definition, a, b) if a.usable and b.usable else None
    levels = f"{definition.upper[0]}-{definition.lower[0]}"
    return _row(definition.name, value, "deg", levels, "sagittal", [a, b])


def _cobb_row(levels, plates, centroids) -> dict | None:
    superior = {lv: p for lv in levels if (p := _plate(plates, lv, "superior")) is not None and p.usable}
    inferior = {lv: p for lv in levels if (p := _plate(plates, lv, "inferior")) is not None and p.usable}
    found = cobb(superior, inferior, centroids)
    if found is None:
        return None
    skipped = [f"{p.level}_{p.side}:{flag}" for lv in levels for side in ("superior", "inferior")
               if (p := _plate(plates, lv, side)) is not None for flag in p.flags]
    return _row("cobb", found.value_deg, "deg", f"{found.upper.level}-{found.lower.level}", "coronal",
                [found.upper, found.lower], direction=found.convex and f"convex_{found.convex}", apex=found.apex,
                extra_flags=[f"skipped:{s}" for s in skipped])


def _listhesis_rows(levels, plates) -> list[dict]:
    rows = []
    for upper, lower, a, b in _facing_plates(levels, plates):
        found = slip(a, b) if a.usable and b.usable else None
        extra = [] if found is not None or not (a.usable and b.usable) else ["corner_not_found"]
        name, pair = f"listhesis:{upper}-{lower}", f"{upper}-{lower}"
        grade, direction = (found.grade, found.direction) if found else ("", "")
        for unit, value in (("mm", found and found.mm), ("percent", found and found.percent)):
            row = _row(name, value, unit, pair, "sagittal", [a, b], grade, direction, extra_flags=extra)
            rows.append(row)
    return rows


def alignment_rows(levels, plates, centroids) -> list[dict[str, Any]]:
    """Every measure as a table row: segmental, regional, Cobb, listhesis (mm and %)."""
    rows = _segmental_rows(levels, plates)
    rows += [r for d in regional_definitions(set(levels)) if (r := _regional_row(d, plates)) is not None]
    if (row := _cobb_row(levels, plates, centroids)) is not None:
        rows.append(row)
    return rows + _listhesis_rows(levels, plates)


def measure_alignment(result: SpineResult) -> dict[str, list]:
    """Fit endplates and compute every alignment measure; stored in and returned as `result.alignment`."""
    result.alignment = {"endplates": [], "measures": []}
    if result.image is None or result.instances is None:
        return result.alignment
    levels, crops, centroids = _bodies(result)
    image = result.image
    plates = {level: fit_body(level, crops[level][0], crops[level][1], _spine_axis(levels, centroids, n),
                              on_border=lambda ras: on_image_border(image, ras), image=crops[level][2])
              for n, level in enumerate(levels)}
    flag_partial_masks(levels, plates, adjacent)
    result.alignment["endplates"] = [plate.record() for level in levels for plate in
                                     (plates[level].superior, plates[level].inferior) if plate is not None]
    result.alignment["measures"] = alignment_rows(levels, plates, centroids)
    return result.alignment
