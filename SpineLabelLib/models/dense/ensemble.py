"""`--model ensemble`: both detector families on one case, their level evidence fused (the stage
`stages.fuse.FuseDenseEvidence` runs the dense family after Mask R-CNN's locate and refine stages).

Mask R-CNN (with the body segmenter) gives the bodies, masks and centroids: its masks are the
better ones (the dense family's tube is a disc model of the column, not a body outline). The dense
detector adds its level distribution: each Mask R-CNN body takes the nearest dense body within
half the distance to its own neighbours and the two distributions are pooled log-linearly with
equal weights (the normalised geometric mean): agreement sharpens, a disagreement leaves both
levels possible for the order-respecting labeller. Equal weights of 1/2 rather than a plain
product keep the pooled log-probabilities on the scale of one family's, which is the scale the
labeller's score weight was set for. A body the dense detector did not see keeps Mask R-CNN's evidence.
Both models are recorded in ``result.models``.
"""
from __future__ import annotations

import numpy as np

#: A Mask R-CNN body and a dense body further apart than this are never the same vertebra.
MAX_MATCH_MM = 15.0


def fuse_level_evidence(vertebrae, dense_bodies, max_match_mm: float = MAX_MATCH_MM) -> int:
    """Pool each vertebra's level scores with its matched dense body's (normalised geometric
    mean); returns how many matched."""
    if not vertebrae or not dense_bodies:
        return 0
    centres = np.array([v.centroid_ras for v in vertebrae], float)
    dense_centres = np.array([b["centroid_ras"] for b in dense_bodies], float)
    gaps = _neighbour_gaps(centres)
    distance = np.linalg.norm(centres[:, None] - dense_centres[None], axis=2)
    matched = 0
    for n, vertebra in enumerate(vertebrae):
        nearest = int(distance[n].argmin())
        if distance[n, nearest] > min(max_match_mm, 0.5 * gaps[n]) or not vertebra.level_scores:
            continue
        theirs = dense_bodies[nearest]["level_probs"]
        fused = {name: float(np.sqrt(float(p) * float(theirs.get(name, 0.0))))
                 for name, p in vertebra.level_scores.items()}
        total = sum(fused.values())
        if total <= 0:
            continue
        vertebra.level_scores = {name: p / total for name, p in fused.items()}
        vertebra.level = max(vertebra.level_scores, key=vertebra.level_scores.get)
        matched += 1
    return matched


def _neighbour_gaps(centres: np.ndarray) -> np.ndarray:
    """Per body, the distance to its nearest other body (inf when alone)."""
    if len(centres) < 2:
        return np.full(len(centres), np.inf)
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    return distance.min(axis=1)
