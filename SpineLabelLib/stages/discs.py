"""Stage, discs: the intervertebral disc between every two neighbouring named bodies (after naming,
before measurement), as the disc layer (`core.disc_layer`: valued by the vertebra above).

MRI with the disc model installed: the disc U-Net (`models/disc_unet/infer`). CT, or no model: the
geometric disc between the facing end plates (`models/disc_unet/geometric`), CT's disc being soft
tissue that a threshold cannot tell from the surroundings.

needs: image, vertebrae, layers.bodies. gives: layers.discs, models, notes["discs"].
"""
from __future__ import annotations

import numpy as np

from ..core.result import DISCS, SpineResult
from .base import RunContext

class SegmentDiscs:
    name = "discs"
    needs = ("image", "vertebrae", "layers.bodies")
    gives = ("layers.discs", "models", "notes")
    share = 0.03

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..core.disc_layer import adjacent_pairs
        from ..models.registry import disc_segmenter_for
        from .locate import record_models

        pairs = adjacent_pairs(result)
        choice = context.options.disc_segmenter if context.disc_segmenter == "options" else context.disc_segmenter
        model = disc_segmenter_for(choice) if result.modality == "mr" else None
        method = "geometric"
        layer = np.zeros(result.instances.shape, np.uint16)
        if pairs and model is not None:
            from ..models.families import family_of_card

            layer = family_of_card(model.card).run(result.canonical_view(), result, model.network, context.cancel)
            record_models(result, model)
            method = "model"
        fallbacks = fill_geometric(result, layer, pairs, everywhere=model is None)
        result.layers[DISCS] = layer
        result.notes[self.name] = {"method": method, "discs": len(pairs), "geometric": fallbacks}
        context.report(1.0, f"{len(pairs)} discs")


def fill_geometric(result: SpineResult, layer: np.ndarray, pairs, everywhere: bool) -> list[str]:
    """Geometric discs for every pair (``everywhere``) or for the pairs the model drew nothing for;
    each on the sub-grid around its two bodies (a whole CT is ~100 M voxels)."""
    from scipy import ndimage

    from ..measurement.discs import crop_grid
    from ..models.disc_unet.geometric import geometric_disc

    counts = np.bincount(layer.ravel(), minlength=result.next_instance())
    boxes = ndimage.find_objects(result.instances)
    used = []
    for upper, lower in pairs:
        if not everywhere and counts[upper.instance] > 0:
            continue
        a, b = boxes[upper.instance - 1], boxes[lower.instance - 1]
        if a is None or b is None:
            continue
        union = tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))
        box, grid = crop_grid(result.image, union)
        bodies = result.instances[box]
        disc = geometric_disc(bodies == upper.instance, bodies == lower.instance, grid) & (layer[box] == 0)
        layer[box][disc] = upper.instance
        used.append(f"{upper.level}-{lower.level}")
    return used
