"""Stage 2, refine bodies: the segmenter family redraws each body's mask (paper 003's second stage);
the detector decides which bodies exist, the segmenter only where their boundaries lie.

needs: image, layers.bodies. gives: layers.bodies, vertebrae (centroids of the redrawn masks), models.
Skipped when no segmenter is installed or ``segmenter="none"``.
"""
from __future__ import annotations

import numpy as np

from ..core.result import SpineResult
from ..core.volume import label_centres  # noqa: F401  (re-exported: its tests import it from here)
from .base import RunContext
from .locate import record_models

#: a redrawn mask this much smaller than the detector's means the segmenter did not see the body
KEEP_DETECTOR_MASK_BELOW = 0.3


def chosen_segmenter(context: RunContext):
    """The segmenter the run uses: one handed in, else the options' choice via the registry."""
    from ..models.registry import segmenter_for

    if context.segmenter != "options":
        return context.segmenter
    return segmenter_for(context.options.segmenter)


class RefineBodies:
    name = "refine"
    needs = ("image", "layers.bodies")
    gives = ("layers.bodies", "vertebrae", "models")
    share = 0.1

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..models.families import family_of_card

        segmenter = chosen_segmenter(context)
        numbers = [v.instance for v in result.vertebrae if v.instance]
        if segmenter is None or not numbers:
            return
        context.report(0.0, "redrawing body masks at 1 mm")
        family = family_of_card(segmenter.card)
        refined = family.run(result.canonical_view(), result.instances, segmenter.network, context.cancel)
        keep_detector_masks(result, refined, numbers)
        result.instances = refined
        move_centroids(result, numbers)
        record_models(result, segmenter)
        context.report(1.0, f"{len(numbers)} vertebral bodies segmented")


def keep_detector_masks(result: SpineResult, refined: np.ndarray, numbers: list[int]) -> None:
    """Where the segmenter does not see a body (an unusual contrast, say), a mask that is too
    coarse beats a vertebra without one: the detector's mask stays.

    Counted on the box holding either map's labels: bincounts over a whole CT grid (tens of
    millions of voxels, widened to int64) cost more than the rest of this stage's bookkeeping."""
    box = labels_box(result.instances, refined)
    if box is None:
        return
    old_part, new_part = result.instances[box], refined[box]
    size = max(numbers) + 1
    before = np.bincount(old_part.ravel(), minlength=size)
    after = np.bincount(new_part.ravel(), minlength=size)
    for number, old, new in zip(numbers, before[numbers], after[numbers]):
        if new < KEEP_DETECTOR_MASK_BELOW * old:
            result.warnings.append(f"segmenter: body {number} kept the detector's mask")
            new_part[(old_part == number) & (new_part == 0)] = number


def labels_box(*maps: np.ndarray):
    """Slices of the smallest box holding every nonzero voxel of the (same-shaped) maps, or None."""
    box = []
    for axis in range(maps[0].ndim):
        others = tuple(a for a in range(maps[0].ndim) if a != axis)
        present = np.flatnonzero(np.logical_or.reduce([m.any(axis=others) for m in maps]))
        if not present.size:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def move_centroids(result: SpineResult, numbers: list[int]) -> None:
    """Each body's centroid moves to its redrawn mask's centre."""
    centres = label_centres(result.instances, numbers)
    by_instance = {v.instance: v for v in result.vertebrae}
    for number, centre in zip(numbers, centres):
        if not np.any(np.isnan(centre)):
            by_instance[number].centroid_ras = result.image.kji_to_ras(np.array(centre))[0]
