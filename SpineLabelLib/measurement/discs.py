"""Intervertebral disc measurements: volume, heights, disc height index and the T2 disc/CSF ratio.

Heights follow the body heights (`measurement.heights`) in a frame of the disc's two bodies: the
superior axis is the mean of their principal superior axes (told the direction between their
centroids), the anterior axis the mean of their anterior axes made square to it; the disc's
mid-sagittal plane passes through the disc's centroid. In that plane the disc mask is sampled with
partial-volume interpolation (any spacing, any direction matrix), averaged over a +-1.5 mm lateral
slab; the disc's depth is the extent of its section along the anterior axis, and the anterior,
middle and posterior heights are the mask's extent along the superior axis on lines at 10, 50 and
90 % of that depth from the anterior edge (averaged over +-0.5 mm across each line).

DHI (Farfan's disc height index): mean of the three heights over the depth of the body above.

Disc/CSF ratio (MRI only): mean image value in the disc over the mean value of the cerebrospinal
fluid behind it. The CSF is looked for in the mid-sagittal strip from 1 to 20 mm posterior to the
disc's posterior edge, as high as the disc's middle height and +-3 mm wide: its brightest fifth is
taken as CSF when it is brighter than the disc (a T2-bright canal is in view; on T1 it is not), else
the ratio is left empty.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..core.disc_layer import DiscInfo, result_discs
from ..core.result import DISCS, SpineResult
from ..core.volume import Volume
from .heights import BodyFrame, MaskSampler, extent, principal_frame, _slab_offsets, _unit

STEP_MM = 0.25
SLAB_HALF_WIDTH_MM = 3.0
LINE_HALF_WINDOW_MM = 2.0
LINE_FRACTIONS = {"anterior": 0.1, "middle": 0.5, "posterior": 0.9}
CSF_STRIP_MM = (1.0, 20.0)
CSF_HALF_WIDTH_MM = 3.0
CSF_BRIGHTEST_SHARE = 0.2


def disc_frame(centre: np.ndarray, upper: np.ndarray | None, lower: np.ndarray | None, grid: Volume,
               body_frames: list[dict] | None = None) -> BodyFrame:
    """Mean frame of the two bodies (their measured end-plate frames when given, else the principal
    frames of their masks on ``grid``), centred on ``centre`` (RAS, the disc's centroid)."""
    if body_frames and all(body_frames):
        frames = [BodyFrame(np.zeros(3), np.asarray(f["superior"]), np.asarray(f["anterior"])) for f in body_frames]
    else:
        up, low = grid.kji_to_ras(np.argwhere(upper)[::2]), grid.kji_to_ras(np.argwhere(lower)[::2])
        between = up.mean(axis=0) - low.mean(axis=0)
        frames = [principal_frame(points, between) for points in (up, low)]
    superior = _unit(frames[0].superior + frames[1].superior)
    anterior = frames[0].anterior + frames[1].anterior
    anterior = _unit(anterior - (anterior @ superior) * superior)
    return BodyFrame(np.asarray(centre, float), superior, anterior)


def disc_heights(disc: np.ndarray, frame: BodyFrame, grid: Volume) -> dict[str, Any]:
    """Depth (mm), heights per line (mm, None where the line misses) and the posterior edge t."""
    sampler = MaskSampler(disc, grid)
    points = grid.kji_to_ras(np.argwhere(disc))
    radius = float(np.linalg.norm(points - frame.centre, axis=1).max()) + 2.0 * float(grid.spacing.max())
    coords = np.arange(-radius, radius + STEP_MM / 2, STEP_MM)
    widths = _slab_offsets(SLAB_HALF_WIDTH_MM, 0.5)
    section = sampler.local(frame, coords[:, None, None], coords[None, :, None], widths[None, None, :]).mean(axis=-1)
    ends = extent(section.max(axis=0), coords)            # along t (posterior from the centre)
    out: dict[str, Any] = {"depth_mm": None, "heights": dict.fromkeys(LINE_FRACTIONS), "posterior_t": None,
                           "lines_ras": {}}
    if ends is None:
        return out
    front, back = ends
    out["depth_mm"], out["posterior_t"] = back - front, back
    window = _slab_offsets(LINE_HALF_WINDOW_MM, 0.25)
    for name, fraction in LINE_FRACTIONS.items():
        t = front + fraction * (back - front)
        profile = sampler.local(frame, coords[:, None, None], t + window[None, :, None],
                                widths[None, None, :]).mean(axis=(1, 2))
        span = extent(profile, coords)
        if span is not None:
            out["heights"][name] = span[1] - span[0]
            line = frame.to_ras([span[1], span[0]], [t, t])
            out["lines_ras"][name] = [line[0].round(3).tolist(), line[1].round(3).tolist()]
    return out


def csf_mean(image: Volume, frame: BodyFrame, posterior_t: float, height: float, disc_mean: float,
             values32: np.ndarray | None = None) -> float | None:
    """Mean of the CSF behind the disc (see module docstring), or None when no bright canal is found."""
    t = np.arange(posterior_t + CSF_STRIP_MM[0], posterior_t + CSF_STRIP_MM[1], 0.5)
    s = np.arange(-height / 2, height / 2 + 0.25, 0.5)
    w = np.arange(-CSF_HALF_WIDTH_MM, CSF_HALF_WIDTH_MM + 0.25, 0.5)
    ras = frame.to_ras(s[:, None, None], t[None, :, None], w[None, None, :]).reshape(-1, 3)
    kji = image.ras_to_kji(ras).T
    array = values32 if values32 is not None else image.array.astype(np.float32)
    values = ndimage.map_coordinates(array, kji, order=1, mode="constant", cval=np.nan)
    values = values[np.isfinite(values)]
    if values.size < 20:
        return None
    brightest = np.sort(values)[-max(1, int(CSF_BRIGHTEST_SHARE * values.size)):]
    if brightest.mean() <= disc_mean:
        return None
    return float(brightest.mean())


def _round(value, digits=2):
    return None if value is None else round(float(value), digits)


def crop_grid(grid: Volume, box: tuple[slice, ...], margin: int = 3) -> tuple[tuple[slice, ...], Volume]:
    """The box grown by ``margin`` voxels, and the sub-grid it spans (same directions and spacing)."""
    box = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, grid.array.shape))
    matrix = grid.ijk_to_ras.copy()
    matrix[:3, 3] = grid.kji_to_ras(np.array([[b.start for b in box]], float))[0]
    return box, Volume(np.zeros(tuple(b.stop - b.start for b in box), np.uint8), matrix)


def measure_disc(result: SpineResult, disc: DiscInfo, body_depth: float | None,
                 body_frames: list[dict] | None = None, box: tuple[slice, ...] | None = None,
                 values32: np.ndarray | None = None) -> dict[str, Any]:
    """One disc's row; ``box`` (its voxels' bounding box) keeps the work on a small sub-grid."""
    full = result.layers[DISCS]
    box, grid = crop_grid(result.image, box or tuple(slice(0, n) for n in full.shape))
    mask = full[box] == disc.value
    voxels = int(mask.sum())
    row: dict[str, Any] = {"name": disc.name, "label": disc.label, "upper": disc.upper.level,
                           "lower": disc.lower.level, "volume_mm3": _round(voxels * float(np.prod(grid.spacing)), 1)}
    centre = grid.kji_to_ras(np.argwhere(mask).mean(axis=0)[None])[0]
    known = bool(body_frames and all(body_frames))        # the bodies' own frames: no need to look at their voxels
    frame = disc_frame(centre, None if known else result.mask(disc.upper), None if known else result.mask(disc.lower),
                       result.image, body_frames)
    measured = disc_heights(mask, frame, grid)
    heights = measured["heights"]
    for name in LINE_FRACTIONS:
        row[f"height_{name}_mm"] = _round(heights[name])
    row["depth_mm"] = _round(measured["depth_mm"])
    known = [h for h in heights.values() if h is not None]
    row["dhi"] = _round(np.mean(known) / body_depth, 4) if known and body_depth else None
    row["disc_csf_ratio"] = None
    if result.modality == "mr" and measured["posterior_t"] is not None and heights["middle"]:
        disc_mean = float(result.image.array[box][mask].mean())
        csf = csf_mean(result.image, frame, measured["posterior_t"], heights["middle"], disc_mean, values32)
        if csf:
            row["disc_csf_ratio"] = _round(disc_mean / csf, 3)
    row["centre_ras"] = frame.centre.round(3).tolist()
    row["lines_ras"] = measured["lines_ras"]
    return row


def measure_discs(result: SpineResult) -> list[dict[str, Any]]:
    """One row per disc in the disc layer (`SpineResult.disc_measurements`)."""
    by_level = {m.get("level"): m for m in result.measurements}
    boxes = ndimage.find_objects(result.layers[DISCS]) if DISCS in result.layers else []
    values32 = result.image.array.astype(np.float32) if result.modality == "mr" else None
    rows = []
    for disc in result_discs(result):
        box = boxes[disc.value - 1] if disc.value <= len(boxes) else None
        if box is None:
            continue
        frames = [by_level.get(v.level, {}).get("frame_ras") for v in (disc.upper, disc.lower)]
        rows.append(measure_disc(result, disc, by_level.get(disc.upper.level, {}).get("depth_mm"), frames, box,
                                 values32))
    result.disc_measurements = rows
    return rows
