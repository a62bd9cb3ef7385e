"""The disc layer of a result: `SpineResult.layers["discs"]`, valued by the instance of the vertebra
ABOVE each disc, so a disc's name is always derived from its current neighbours.

Renaming a vertebra renames the discs next to it without touching voxels; deleting one gives its
disc (the one below it) to the vertebra above, which merges the two discs around a spurious body
(or leaves a disc without a lower neighbour, which is then dropped, see `drop_orphans`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import anatomy, discs
from .result import DISCS, SpineResult, Vertebra


@dataclass(frozen=True)
class DiscInfo:
    name: str
    upper: Vertebra
    lower: Vertebra
    value: int            # its value in the disc layer (= upper.instance)

    @property
    def label(self) -> int:
        return discs.label_of(self.name)


def named_in_order(result: SpineResult) -> list[Vertebra]:
    """Vertebrae with a level and a mask, cranial to caudal by level."""
    return sorted((v for v in result.vertebrae if v.level and v.instance), key=lambda v: anatomy.order_index(v.level))


def adjacent_pairs(result: SpineResult) -> list[tuple[Vertebra, Vertebra]]:
    """Neighbouring named vertebrae with a disc between them (C1 has none; a missed level breaks the chain)."""
    ordered = named_in_order(result)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if discs.is_adjacent(a.level, b.level)]


def lower_neighbour(result: SpineResult, upper: Vertebra) -> Vertebra | None:
    return next((b for a, b in adjacent_pairs(result) if a is upper), None)


def result_discs(result: SpineResult) -> list[DiscInfo]:
    """The discs in the layer with their current names, cranial to caudal."""
    layer = result.layers.get(DISCS)
    if layer is None:
        return []
    present = set(np.flatnonzero(np.bincount(layer.ravel())).tolist()) - {0}
    found = []
    for upper, lower in adjacent_pairs(result):
        if upper.instance in present:
            found.append(DiscInfo(discs.disc_name(upper.level, lower.level), upper, lower, upper.instance))
    return found


def drop_orphans(result: SpineResult) -> list[int]:
    """Clear disc voxels whose value is no vertebra with a body below it (head to feet by centroid);
    returns the values cleared. Levels are not asked: a relabelling may follow (a disc whose
    neighbours' names are not adjacent is kept, and written only once they are)."""
    layer = result.layers.get(DISCS)
    if layer is None:
        return []
    masked = sorted((v for v in result.vertebrae if v.instance), key=lambda v: -v.centroid_ras[2])
    valid = {v.instance for v in masked[:-1]}
    stale = [int(v) for v in np.unique(layer) if v and int(v) not in valid]
    if stale:
        layer[np.isin(layer, stale)] = 0
    return stale


def disc_label_map(result: SpineResult) -> np.ndarray | None:
    """(k, j, i) uint8 map of disc label values (100 + code of the vertebra above), or None."""
    layer = result.layers.get(DISCS)
    if layer is None:
        return None
    lookup = np.zeros(int(layer.max()) + 1, dtype=np.uint8)
    for disc in result_discs(result):
        lookup[disc.value] = disc.label
    return lookup[layer]


def layer_from_labels(result: SpineResult, labels: np.ndarray) -> None:
    """Set the disc layer from a map of disc label values (a file, a phantom's truth); values whose
    upper vertebra is not in the result are ignored."""
    layer = np.zeros(labels.shape, dtype=np.uint16)
    for value in np.unique(labels):
        if not value or not discs.is_disc_label(int(value)):
            continue
        upper = result.by_level(discs.upper_of_label(int(value)))
        if upper is not None and upper.instance:
            layer[labels == value] = upper.instance
    result.layers[DISCS] = layer
