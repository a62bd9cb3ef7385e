"""Discs from the U-Net: per pair of neighbouring named bodies, a crop of sagittal slices centred on
the midpoint of their centroids; the disc is the crop's largest connected foreground piece.

Works on the canonical 1 mm grid around the bodies (`CanonicalView.around`, the MRI window of the
whole volume, as in training) and returns the disc layer on the input grid (value = the instance of
the vertebra above, `core.disc_layer`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from ...core.disc_layer import adjacent_pairs
from ...core.result import SpineResult
from ...core.volume import resample
from .data import crop

Cancel = Callable[[], bool]


@dataclass(frozen=True)
class DiscSite:
    """Where to look for one disc: the crop's centre (RAS mm), the layer value to draw it with (the
    instance of the body above) and the bodies whose lateral extent sets the sagittal slices."""

    value: int
    centre_ras: np.ndarray
    bodies: tuple[int, ...]


def pair_sites(pairs) -> list[DiscSite]:
    """One site per pair of neighbouring bodies: the midpoint of their centroids."""
    return [DiscSite(upper.instance, (upper.centroid_ras + lower.centroid_ras) / 2.0, (upper.instance, lower.instance))
            for upper, lower in pairs]


def largest_piece(mask: np.ndarray) -> np.ndarray:
    pieces, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum(mask, pieces, range(1, count + 1))
    return pieces == 1 + int(np.argmax(sizes))


#: the U-Net sees every third sagittal slice (interpolated between): on held-out ivd-11 the same Dice as
#: every second within 0.01 (median 0.8916 vs 0.8922), 35 % less time (5.4 -> 3.5 s on the loaded bench machine)
def segment_discs(view, result: SpineResult, model, cancel: Cancel | None = None, slice_step: int = 3,
                  sites: list[DiscSite] | None = None) -> np.ndarray:
    """The disc layer on the input grid: one disc per site (default: per pair of neighbouring named
    bodies, `core.disc_layer.adjacent_pairs`), valued by the site's value."""
    from ..body_unet.infer import predict_probability
    from ..maskrcnn.infer import _check, to_input_grid, torch_threads

    config = model.config
    volume = view.volume
    layer = np.zeros(volume.array.shape, np.uint16)
    sites = pair_sites(adjacent_pairs(result)) if sites is None else sites
    if not sites:
        return layer
    present = np.argwhere(np.isin(result.instances, [n for site in sites for n in site.bodies]))
    if present.size == 0:
        return layer
    grid, image = view.around(present, config.spacing_mm, (config.lateral_margin_mm, 10.0, 10.0))
    bodies = resample(volume.with_array(result.instances.astype(np.uint16)), None, reference=grid, label=True).array
    rows, cols = config.crop_rows, config.crop_cols
    discs = np.zeros(grid.array.shape, np.uint16)
    probability = np.zeros(grid.array.shape, np.float32)
    with torch_threads(int(os.environ.get("SPINELABEL_THREADS", "1"))):
        for site in sites:
            _check(cancel)
            centre = grid.ras_to_kji(np.asarray(site.centre_ras, float)[None])[0]
            lateral = np.flatnonzero(np.isin(bodies, list(site.bodies)).any(axis=(1, 2)))
            if lateral.size == 0:
                continue
            margin = int(round(config.lateral_margin_mm / config.spacing_mm))
            xs_all = np.arange(max(0, lateral.min() - margin), min(grid.array.shape[0], lateral.max() + margin + 1))
            xs = np.unique(np.r_[xs_all[::slice_step], xs_all[-1]])
            stack = np.stack([crop(image, int(x), centre[1:], rows, cols, config.slice_offset) for x in xs])
            computed = predict_probability(model, stack, batch=32)
            crop_probability = between_slices(computed, xs, xs_all)
            _place(discs, probability, crop_probability, xs_all, centre, rows, cols, site.value)
    discs = np.where(discs > 0, discs, 0)
    return to_input_grid(discs, probability, grid, volume)


def between_slices(computed: np.ndarray, xs: np.ndarray, xs_all: np.ndarray) -> np.ndarray:
    """Linear interpolation of per-slice maps computed at ``xs`` onto every slice ``xs_all``."""
    after = np.clip(np.searchsorted(xs, xs_all), 1, len(xs) - 1) if len(xs) > 1 else np.zeros(len(xs_all), int)
    before = np.maximum(after - 1, 0)
    span = np.where(xs[after] > xs[before], xs[after] - xs[before], 1)
    weight = np.clip((xs_all - xs[before]) / span, 0, 1)[:, None, None]
    return ((1 - weight) * computed[before] + weight * computed[after]).astype(np.float32)


def _place(discs, probability, crop_probability, xs, centre, rows, cols, value) -> None:
    """The crop's largest piece into the grid (where no earlier disc is more probable)."""
    mask = largest_piece(crop_probability >= 0.5)
    r0, c0 = int(round(centre[1])) - rows // 2, int(round(centre[2])) - cols // 2
    shape = discs.shape
    rs = slice(max(r0, 0), min(r0 + rows, shape[1]))
    cs = slice(max(c0, 0), min(c0 + cols, shape[2]))
    if rs.stop <= rs.start or cs.stop <= cs.start:
        return        # the site lies beyond the grid (a probe below a body at the image's lower edge)
    sub = (slice(None), slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
    target = (xs[:, None, None], np.arange(rs.start, rs.stop)[None, :, None], np.arange(cs.start, cs.stop)[None, None, :])
    p, m = crop_probability[sub], mask[sub]
    better = m & (p > probability[target])
    discs[target] = np.where(better, value, discs[target])
    probability[target] = np.where(better, p, probability[target])
