"""`--model ensemble`: both detector families on one case, their level evidence fused (the stage
`stages.fuse.FuseDenseEvidence` runs the dense family after Mask R-CNN's locate and refine stages;
the naming stage weighs the two families, `weigh_families`).

Mask R-CNN (with the body segmenter) gives the bodies, masks and centroids: its masks are the
better ones (the dense family's tube is a disc model of the column, not a body outline). The dense
detector adds its level distribution: each Mask R-CNN body takes the nearest dense body within
half the distance to its own neighbours and the two distributions are pooled log-linearly
(a weighted geometric mean, weights summing to 1, so the pooled log-probabilities stay on the
scale of one family's, the scale the labeller's score weight was set for): agreement sharpens,
a disagreement leaves both levels possible for the order-respecting labeller. A body the dense
detector did not see keeps Mask R-CNN's evidence. Both models are recorded in ``result.models``.

The weights, per case. A family can be wrong as a whole on a case: on the disc MRI the dense
detector misses the sacrum and names every body one level too high, and an equal-weight pool
then pulls the correct Mask R-CNN levels off by one. So each family's evidence is first tried on
its own: the bodies are named with it alone by the labeller, with the anatomical anchors as that
evidence sees them (the sacrum's sighting takes the family's own S1 score, the discs' sign is
shared), and the labelling's negative log-likelihood at its optimum, C_f, says how well the
family's evidence fits anatomical order, spacing and anchors. The weight of Mask R-CNN is the
logistic of the mean difference per matched body, w = 1 / (1 + exp(-(C_dense - C_mask) / n)):
equal fits give the equal weights of 1/2; a family whose evidence contradicts the order or the
anchors loses weight smoothly (n matched bodies each 1 nat worse give w = 1/(1 + e^-1) = 0.73).
Dividing by n keeps a long column from turning small per-body differences into a hard switch to
one family (on the lumbar MRI validation split, where both families name correctly, w stays
0.49-0.61; on the disc MRI 0.54-0.65, enough to keep Mask R-CNN's anchored levels).
"""
from __future__ import annotations

import math

import numpy as np

#: A Mask R-CNN body and a dense body further apart than this are never the same vertebra.
MAX_MATCH_MM = 15.0
MASK_RCNN, DENSE = "mask-rcnn", "dense"


def match_dense_bodies(vertebrae, dense_bodies, max_match_mm: float = MAX_MATCH_MM) -> dict[int, dict]:
    """{vertebra index: the matched dense body's level distribution}: the nearest dense body within
    ``max_match_mm`` and half the distance to the vertebra's nearest neighbour."""
    if not vertebrae or not dense_bodies:
        return {}
    centres = np.array([v.centroid_ras for v in vertebrae], float)
    dense_centres = np.array([b["centroid_ras"] for b in dense_bodies], float)
    gaps = _neighbour_gaps(centres)
    distance = np.linalg.norm(centres[:, None] - dense_centres[None], axis=2)
    matched = {}
    for n, vertebra in enumerate(vertebrae):
        nearest = int(distance[n].argmin())
        if distance[n, nearest] <= min(max_match_mm, 0.5 * gaps[n]) and vertebra.level_scores:
            matched[n] = {name: float(p) for name, p in dense_bodies[nearest]["level_probs"].items()}
    return matched


#: Levels the dense family is silent on: S1 is not one of its training targets (S1 = 25 only ends
#: L5's bin of the level axis), so its near-zero S1 probability is no evidence against a sacrum that
#: Mask R-CNN sees. Pooled as zero it halved Mask R-CNN's S1 sighting on ivd-11 and shifted the case.
DENSE_SILENT_LEVELS = ("S1",)


def pool(ours: dict, theirs: dict, weight_ours: float = 0.5,
         silent: tuple[str, ...] = DENSE_SILENT_LEVELS) -> dict | None:
    """Weighted geometric mean of two level distributions over ``ours``'s levels, normalised
    (None when they share no level). Levels in ``silent`` keep ``ours``'s probability; the rest
    share what is left."""
    kept = {name: float(p) for name, p in ours.items() if name in silent}
    fused = {name: float(p) ** weight_ours * float(theirs.get(name, 0.0)) ** (1.0 - weight_ours)
             for name, p in ours.items() if name not in silent}
    total = sum(fused.values())
    if total <= 0:
        return None
    rest = 1.0 - sum(kept.values())
    return {**{name: p / total * rest for name, p in fused.items()}, **kept}


def fuse_level_evidence(vertebrae, dense_bodies, max_match_mm: float = MAX_MATCH_MM,
                        matches: dict[int, dict] | None = None) -> int:
    """Pool each vertebra's level scores with its matched dense body's at equal weights (the naming
    stage re-pools with the case's weights, `weigh_families`); returns how many matched.
    ``matches``: `match_dense_bodies`'s answer when the caller already has it."""
    if matches is None:
        matches = match_dense_bodies(vertebrae, dense_bodies, max_match_mm)
    return sum(_set_scores(vertebrae[n], pool(vertebrae[n].level_scores, theirs)) for n, theirs in matches.items())


def family_scores(vertebrae, matches: dict[int, dict]) -> list[dict]:
    """Per vertebra its instance and each family's own level evidence (plain floats, so the record
    survives a result snapshot): what `weigh_families` weighs. Call before fusing."""
    return [{"instance": int(v.instance), MASK_RCNN: {k: float(p) for k, p in (v.level_scores or {}).items()},
             DENSE: matches.get(n)} for n, v in enumerate(vertebrae)]


def weigh_families(result, params=None) -> dict | None:
    """Re-pool ``result.notes["fuse"]["family_scores"]`` with the case's weight for Mask R-CNN (see
    the module docstring); anchors must be gathered (`naming.anchors.gather_evidence`). Returns the
    weight and both fits, also kept in ``notes["fuse"]``; None when there is nothing to weigh."""
    from ...naming.labelling import DEFAULT_PARAMS

    record = (result.notes.get("fuse") or {}).get("family_scores")
    by_instance = {r["instance"]: r for r in record or [] if r["instance"]}
    rows = [by_instance.get(v.instance) for v in result.vertebrae]
    matched = {n for n, r in enumerate(rows) if r is not None and r[DENSE] and r[MASK_RCNN]}
    if not matched:
        return None
    params = params or DEFAULT_PARAMS
    own = {MASK_RCNN: [r[MASK_RCNN] if r else v.level_scores for r, v in zip(rows, result.vertebrae)]}
    own[DENSE] = [r[DENSE] if n in matched else s for n, (r, s) in enumerate(zip(rows, own[MASK_RCNN]))]
    fit = {family: labelling_fit(result.vertebrae, scores, params) for family, scores in own.items()}
    weight = 1.0 / (1.0 + math.exp(-(fit[DENSE] - fit[MASK_RCNN]) / len(matched)))
    for n in sorted(matched):
        _set_scores(result.vertebrae[n], pool(own[MASK_RCNN][n], own[DENSE][n], weight))
        _set_sacrum(result.vertebrae[n], result.vertebrae[n].level_scores)
    summary = {"mask_rcnn_weight": round(weight, 3), "fit_nll": {k: round(c, 3) for k, c in fit.items()}}
    result.notes["fuse"].update(summary)
    return summary


def labelling_fit(vertebrae, scores: list[dict], params) -> float:
    """The labeller's negative log-likelihood of its best naming of these bodies with ``scores`` as
    the level evidence (anchors as gathered, the sacrum's sighting from these scores' S1)."""
    from copy import copy

    from ...naming.labelling import assign_levels, labelling_cost, labelling_inputs

    trial = [copy(v) for v in vertebrae]
    for v, own in zip(trial, scores):
        v.level_scores = dict(own) if own else None
        _set_sacrum(v, own or {})
    inputs = labelling_inputs(trial)
    names = assign_levels(**inputs, params=params)
    return float(labelling_cost(names=names, **inputs, params=params))


def _set_sacrum(vertebra, scores: dict) -> None:
    """The sacrum anchor recombined from these scores' S1 and the discs' sign (`sacrum.combine`)."""
    from ...naming.sacrum import combine

    if vertebra.evidence is None:
        return
    evidence = dict(vertebra.evidence)
    sacrum = combine(float(scores.get("S1", 0.0)), evidence.get("sacrum_discs", float("nan")))
    evidence["sacrum"] = None if sacrum is None else float(sacrum)
    vertebra.evidence = evidence


def _set_scores(vertebra, scores: dict | None) -> int:
    if scores is None:
        return 0
    vertebra.level_scores = scores
    vertebra.level = max(scores, key=scores.get)
    return 1


def _neighbour_gaps(centres: np.ndarray) -> np.ndarray:
    """Per body, the distance to its nearest other body (inf when alone)."""
    if len(centres) < 2:
        return np.full(len(centres), np.inf)
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    return distance.min(axis=1)
