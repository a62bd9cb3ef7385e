"""How sure the level naming is: the best naming against the same naming one level up and one level down.

The commonest naming error is not a scattered one but a shift of the whole column by one level (the
sacrum taken for L5, a T13 counted, a crop without the ends of the spine). So the confidence is the
weight of the best naming among itself and its two shifted versions, each scored with the assignment's
own cost (`labelling.labelling_cost`, a negative log-likelihood):

    confidence = exp(-c0 / T) / (exp(-c0 / T) + exp(-c_up / T) + exp(-c_down / T))

A naming is flagged uncertain when its confidence is below a threshold, and the threshold is stricter
when no anatomical anchor (sacrum named S1, C2, the last or first rib, a level a person set) supports it:
without an anchor the count rests on spacing and appearance only. The temperature and both thresholds
were chosen on the VID keypoint spines with `bench/labelling_vid.py --naming` (see README there and the
module constants): the aim is that at least 80 % of wrongly named spines are flagged and at most 20 % of
rightly named ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import anatomy
from .anchors import AnchorEvidence, anchors_in_view

NO_ANCHOR_MESSAGE = "levels uncertain: no sacrum, C2 or last rib in view — check one level and use Set level"
CLOSE_SHIFT_MESSAGE = ("levels uncertain: naming every vertebra one level {direction} is nearly as likely "
                       "— check one level and use Set level")


@dataclass(frozen=True)
class NamingPolicy:
    """Temperature of the shift softmax and the confidence below which a naming is flagged."""

    temperature: float = 1.0
    threshold: float = 0.9                  # with an anchor in view
    threshold_without_anchor: float = 0.97  # none in view: spacing and appearance only


DEFAULT_POLICY = NamingPolicy()


def shift_names(names: list[str], by: int) -> list[str] | None:
    """Every name moved `by` levels (+1 = one level caudal); None when a name would leave C1..S1.

    The levels counted are the usual ones plus any transitional level the naming itself uses, so a
    spine named with a T13 shifts through T13 rather than jumping over it."""
    used = set(names) & anatomy.TRANSITIONAL
    ladder = [n for n in anatomy.ORDER if n not in anatomy.TRANSITIONAL or n in used]
    shifted = []
    for name in names:
        if not name:
            shifted.append("")
            continue
        k = ladder.index(name) + by
        if not 0 <= k < len(ladder):
            return None
        shifted.append(ladder[k])
    return shifted


def shift_costs(names: list[str], **inputs) -> dict[int, float]:
    """{0: cost of the naming, -1: one level cranial, +1: one level caudal} (inf when impossible)."""
    from .labelling import labelling_cost

    costs = {}
    for by in (0, -1, 1):
        shifted = names if by == 0 else shift_names(names, by)
        costs[by] = np.inf if shifted is None else labelling_cost(names=shifted, **inputs)
    return costs


def confidence_from_costs(costs: dict[int, float], temperature: float = DEFAULT_POLICY.temperature) -> float:
    """Softmax weight of the unshifted naming among the three."""
    c0 = costs[0]
    if not np.isfinite(c0):
        return 0.0
    others = [c for by, c in costs.items() if by != 0 and np.isfinite(c)]
    return float(1.0 / (1.0 + sum(np.exp(-(c - c0) / temperature) for c in others)))


def assess(names: list[str], centroids_ras, level_scores=None, detection_scores=None, locked=None,
           evidence: AnchorEvidence | None = None, params=None,
           policy: NamingPolicy = DEFAULT_POLICY) -> dict:
    """`{"confidence", "uncertain", "reason", "anchors"}` for a naming of points (as `assign_levels` takes them)."""
    from .labelling import DEFAULT_PARAMS, order_along_spine

    params = params or DEFAULT_PARAMS
    if not any(names):
        return {"confidence": 0.0, "uncertain": True, "reason": "no vertebra named", "anchors": []}
    inputs = dict(centroids_ras=centroids_ras, level_scores=level_scores, detection_scores=detection_scores,
                  locked=locked, evidence=evidence, params=params)
    costs = shift_costs(names, **inputs)
    confidence = confidence_from_costs(costs, policy.temperature)
    points = np.asarray(centroids_ras, float).reshape(-1, 3)
    order = np.argsort(-points[:, 2]) if len(points) < 2 else _cranio_caudal(order_along_spine(points)[0], points)
    anchors = anchors_in_view(names, evidence, order)
    if locked:
        anchors.append("level set by a person")
    return _verdict(confidence, anchors, costs, policy)


def _cranio_caudal(order: np.ndarray, points: np.ndarray) -> np.ndarray:
    return order if points[order[0], 2] >= points[order[-1], 2] else order[::-1]


def _verdict(confidence: float, anchors: list[str], costs: dict[int, float], policy: NamingPolicy) -> dict:
    threshold = policy.threshold if anchors else policy.threshold_without_anchor
    uncertain = confidence < threshold
    if uncertain and not anchors:
        reason = NO_ANCHOR_MESSAGE
    elif uncertain:
        direction = "higher" if costs[-1] <= costs[1] else "lower"
        reason = CLOSE_SHIFT_MESSAGE.format(direction=direction)
    elif anchors:
        reason = "levels anchored by " + ", ".join(anchors)
    else:
        reason = "levels from spacing and appearance alone (no sacrum, C2 or last rib in view), clearly ahead of a one-level shift"
    return {"confidence": round(confidence, 4), "uncertain": bool(uncertain), "reason": reason, "anchors": anchors}


def assess_vertebrae(vertebrae, params=None, policy: NamingPolicy = DEFAULT_POLICY) -> dict:
    """The naming verdict for a result's vertebrae (locked ones anchor it)."""
    from .labelling import labelling_inputs

    chosen = [v for v in vertebrae if not (v.locked and not v.level)]
    if not chosen:
        return assess([], np.zeros((0, 3)))
    return assess([v.level for v in chosen], **labelling_inputs(chosen), params=params, policy=policy)
