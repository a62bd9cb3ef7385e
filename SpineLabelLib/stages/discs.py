"""Stage, discs: the intervertebral disc between every two neighbouring named bodies (after naming,
before measurement), as the disc layer (`core.disc_layer`: valued by the vertebra above).

MRI with the disc model installed: the disc U-Net (`models/disc_unet/infer`). The discs the disc map
drew before naming (`stages.disc_map`) are kept for the pairs naming kept (same bodies above and below),
so the model runs only for pairs that are new (a spurious body dropped between two others) and the
discs of pairs naming broke up are cleared. CT, or no model: the geometric disc between the facing end
plates (`models/disc_unet/geometric`), CT's disc being soft tissue that a threshold cannot tell from
the surroundings.

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
        from .disc_map import chosen_disc_segmenter
        from .locate import record_models

        pairs = adjacent_pairs(result)
        model = chosen_disc_segmenter(result, context)
        method = "geometric"
        layer, todo = reusable_discs(result, pairs, model)
        if todo and model is not None:
            from ..models.disc_unet.infer import pair_sites
            from ..models.families import family_of_card

            drawn = family_of_card(model.card).run(result.canonical_view(), result, model.network, context.cancel,
                                                   sites=pair_sites(todo))
            layer = np.where(layer > 0, layer, drawn)
            record_models(result, model)
        if pairs and model is not None:
            method = "model"
        fallbacks = fill_geometric(result, layer, pairs, everywhere=model is None)
        result.layers[DISCS] = layer
        result.notes[self.name] = {"method": method, "discs": len(pairs), "geometric": fallbacks,
                                   "reused": len(pairs) - len(todo) if model is not None else 0}
        context.report(1.0, f"{len(pairs)} discs")


def reusable_discs(result: SpineResult, pairs, model) -> tuple[np.ndarray, list]:
    """The disc map's layer cut to the named pairs it drew with this model, and the pairs still to draw."""
    layer = np.zeros(result.instances.shape, np.uint16)
    drawn = result.notes.get("disc_map") or {}
    if model is None or drawn.get("model") != model.name or DISCS not in result.layers:
        return layer, list(pairs)
    done = {tuple(pair) for pair in drawn.get("pairs", [])}
    kept = [(u, b) for u, b in pairs if (u.instance, b.instance) in done]
    keep = [u.instance for u, _ in kept]
    previous = result.layers[DISCS]
    layer[np.isin(previous, keep)] = previous[np.isin(previous, keep)]
    return layer, [(u, b) for u, b in pairs if (u.instance, b.instance) not in done]


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
