"""How sure the level naming is: the best naming against the namings one level away from it.

The commonest naming error is not a scattered one but a miscount by one level: the whole column shifted
(the sacrum taken for L5, a crop without the ends of the spine), or the part above or below some point
shifted (a missed sixth lumbar or thirteenth thoracic vertebra, a body missed in a gap). So the
alternatives (`alternatives`) are the whole naming shifted one level up and down, and the part above or
below each gap between named vertebrae shifted alone, also through T13/L6. (Solving the assignment again
with an end vertebra forced one level off was tried as a further alternative: on the bench it flagged
more right namings and no more wrong ones, at 3.5 times the time.) Each is scored with the
assignment's own cost (`labelling.labelling_costs`, a negative log-likelihood), and

    confidence = exp(-c_best / T) / sum over {best, alternatives} of exp(-c / T)

A naming is flagged uncertain when its confidence is below a threshold, or when no anatomical anchor
(sacrum named S1, C2, the last or first rib, a level a person set) supports it at all: without an
anchor the count rests on spacing and appearance only, and on images the detector's level scores make
a count shifted by one look sure (bench/robustness.py, disc MRI ivd-11: the sacrum called L5 and every
name one level off at confidence 0.9999). `NamingPolicy.require_anchor=False` restores the softer
rule (a stricter threshold without an anchor) that the VID grid below explores. Temperature and thresholds were chosen on the
VID keypoint spines with `bench/naming_vid.py --grid` (held-out split, realistic detections, simulated
anchors; see `DEFAULT_POLICY` and bench/results/naming_vid.json): the aim is that at least 80 % of
wrongly named spines are flagged and at most 20 % of rightly named ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import anatomy
from .anchors import AnchorEvidence, anchors_in_view

NO_ANCHOR_MESSAGE = "levels uncertain: no sacrum, C2 or last rib in view — check one level and use Set level"
CLOSE_NAMING_MESSAGE = ("levels uncertain: the naming with vertebrae {alternative} is nearly as likely "
                        "— check one level and use Set level")


@dataclass(frozen=True)
class NamingPolicy:
    """Temperature of the shift softmax and the confidence below which a naming is flagged."""

    temperature: float = 1.0
    threshold: float = 0.9                  # with an anchor in view
    threshold_without_anchor: float = 0.97  # none in view, when require_anchor is off
    require_anchor: bool = True             # no anchor in view: always uncertain

    def flags(self, confidence: float, anchored: bool) -> bool:
        """Whether a naming of this confidence, with or without an anchor, carries the warning."""
        if anchored:
            return confidence < self.threshold
        return self.require_anchor or confidence < self.threshold_without_anchor


DEFAULT_POLICY = NamingPolicy()

#: A vertebra whose detection confidence (`Vertebra.score`, the detector's 0..1 score of the body) is below
#: this is marked for a look: a warning icon in the panel's vertebra list, "check=low confidence" in its
#: point description. The detectors keep bodies from 0.5 (Mask R-CNN's `min_score`), so 0.5..0.7 is the
#: band of kept-but-doubtful bodies; the value is a chosen review point, not calibrated on a bench.
#: Vertebrae a person placed score 1 and are never marked.
LOW_VERTEBRA_CONFIDENCE = 0.7


def vertebra_confidence(vertebra) -> float:
    """How sure the detector was of this body (0..1)."""
    return float(vertebra.score)


def is_low_confidence(vertebra, threshold: float = LOW_VERTEBRA_CONFIDENCE) -> bool:
    return vertebra_confidence(vertebra) < threshold


def shift_names(names: list[str], by: int, ladder: list[str] | None = None) -> list[str] | None:
    """Every name moved `by` levels (+1 = one level caudal); None when a name would leave C1..S1.

    By default the levels counted are the usual ones plus any transitional level the naming itself
    uses, so a spine named with a T13 shifts through T13 rather than jumping over it."""
    if ladder is None:
        used = set(names) & anatomy.TRANSITIONAL
        ladder = [n for n in anatomy.ORDER if n not in anatomy.TRANSITIONAL or n in used]
    shifted = []
    for name in names:
        if not name:
            shifted.append("")
            continue
        k = ladder.index(name) + by if name in ladder else -1
        if not 0 <= k < len(ladder):
            return None
        shifted.append(ladder[k])
    return shifted


def alternatives(names: list[str], order: np.ndarray) -> dict[str, list[str]]:
    """The namings one level away from `names`: the whole column shifted one level up or down, and the
    part above (or below) each gap between named vertebrae shifted alone, through T13/L6 too, so that
    a miscounted transitional vertebra or one missed body is a neighbour as well. `order`: point
    indices cranio-caudally."""
    found: dict[str, list[str]] = {}
    for by, word in ((-1, "higher"), (1, "lower")):
        shifted = shift_names(names, by)
        if shifted is not None:
            found[f"all one level {word}"] = shifted
    named = [int(i) for i in order if names[int(i)]]
    seen = {tuple(names), *(tuple(c) for c in found.values())}
    for cut in range(1, len(named)):
        for part, members in (("above", named[:cut]), ("below", named[cut:])):
            for by, word in ((-1, "higher"), (1, "lower")):
                for ladder in _LADDERS:
                    moved = shift_names([names[i] for i in members], by, ladder)
                    if moved is None:
                        continue
                    candidate = list(names)
                    for i, name in zip(members, moved):
                        candidate[i] = name
                    if tuple(candidate) not in seen:
                        seen.add(tuple(candidate))
                        found[f"{part} {names[named[cut - 1]]}-{names[named[cut]]} one level {word}"
                              + ("" if ladder is _LADDERS[0] else f" (through {_ladder_extra(ladder)})")] = candidate
    return found


#: Level ladders a partial shift may move along: the usual spine, with T13, with L6 (both at once is
#: two miscounts, not one).
_LADDERS = tuple([n for n in anatomy.ORDER if n not in anatomy.TRANSITIONAL or n == extra]
                 for extra in ("", "T13", "L6"))


def _ladder_extra(ladder: list[str]) -> str:
    return next(n for n in ladder if n in anatomy.TRANSITIONAL)


def alternative_costs(names: list[str], order: np.ndarray, **inputs) -> dict[str, float]:
    """{"best": cost of the naming, description: cost of each neighbouring naming} (inf when impossible)."""
    from .labelling import labelling_costs

    others = alternatives(names, order)
    costs = labelling_costs(namings=[names, *others.values()], **inputs)
    return {"best": costs[0], **dict(zip(others, costs[1:]))}


def confidence_from_costs(costs: dict, temperature: float = DEFAULT_POLICY.temperature) -> float:
    """Softmax weight of the naming ("best", or key 0) among itself and its neighbours."""
    key = "best" if "best" in costs else 0
    c0 = costs[key]
    if c0 is None or not np.isfinite(c0):
        return 0.0
    others = [c for k, c in costs.items() if k != key and c is not None and np.isfinite(c)]
    return float(1.0 / (1.0 + sum(np.exp(-(c - c0) / temperature) for c in others)))


def assess(names: list[str], centroids_ras, level_scores=None, detection_scores=None, locked=None,
           evidence: AnchorEvidence | None = None, params=None,
           policy: NamingPolicy = DEFAULT_POLICY) -> dict:
    """`{"confidence", "uncertain", "reason", "anchors"}` for a naming of points (as `assign_levels` takes them)."""
    from .labelling import DEFAULT_PARAMS, order_along_spine

    params = params or DEFAULT_PARAMS
    if not any(names):
        return {"confidence": 0.0, "uncertain": True, "reason": "no vertebra named", "anchors": []}
    points = np.asarray(centroids_ras, float).reshape(-1, 3)
    order = _cranio_caudal(order_along_spine(points, params)[0], points)
    costs = alternative_costs(names, order, centroids_ras=points, level_scores=level_scores,
                              detection_scores=detection_scores, locked=locked, evidence=evidence, params=params)
    confidence = confidence_from_costs(costs, policy.temperature)
    anchors = anchors_in_view(names, evidence, order)
    if locked:
        anchors.append("level set by a person")
    return _verdict(confidence, anchors, costs, policy)


def _cranio_caudal(order: np.ndarray, points: np.ndarray) -> np.ndarray:
    return order if len(order) < 2 or points[order[0], 2] >= points[order[-1], 2] else order[::-1]


def _verdict(confidence: float, anchors: list[str], costs: dict[str, float], policy: NamingPolicy) -> dict:
    uncertain = policy.flags(confidence, bool(anchors))
    if uncertain and not anchors:
        reason = NO_ANCHOR_MESSAGE
    elif uncertain:
        runner_up = min((k for k in costs if k != "best"), key=lambda k: costs[k])
        reason = CLOSE_NAMING_MESSAGE.format(alternative=runner_up)
    elif anchors:
        reason = "levels anchored by " + ", ".join(anchors)
    else:
        reason = ("levels from spacing and appearance alone (no sacrum, C2 or last rib in view), "
                  "clearly ahead of the namings one level away")
    return {"confidence": round(confidence, 4), "uncertain": bool(uncertain), "reason": reason, "anchors": anchors}


def assess_vertebrae(vertebrae, params=None, policy: NamingPolicy = DEFAULT_POLICY) -> dict:
    """The naming verdict for a result's vertebrae (locked ones anchor it)."""
    from .labelling import labelling_inputs

    chosen = [v for v in vertebrae if not (v.locked and not v.level)]
    if not chosen:
        return assess([], np.zeros((0, 3)))
    return assess([v.level for v in chosen], **labelling_inputs(chosen), params=params, policy=policy)


def naming_line(naming: dict | None) -> str:
    """The verdict in one line, for the command line, the QC picture and the Slicer panel."""
    if not naming:
        return "naming not assessed"
    head = f"naming confidence {naming.get('confidence', 0.0):.2f}"
    return f"{head} — {naming['reason']}" if naming.get("reason") else head
