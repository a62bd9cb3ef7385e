"""Level assignment by anatomical order: points along the spine -> C1 ... L5 (T13/L6 when evidenced), S1.

How it works (see `assign_levels`):
1. **Order along the spine, not along S.** The candidate points are chained by the longest path of their
   minimum spanning tree (robust to strong curvature and to horizontal acquisitions); points off that
   path are projected onto it. Points far from the local spine line (`outlier_mm`) or with a very low
   detection score are judged spurious ('') before labelling.
2. **Global assignment (Viterbi-like dynamic programme).** Over the ordered points, each point gets a
   level or is skipped (''); label indices in `anatomy.ORDER` strictly increase cranio-caudally, so
   there are never duplicates. A step between two labelled points costs the misfit of their distance
   against the expected distance (typical inter-centroid spacing per level pair, times one patient
   scale searched on a grid), plus a cost per vertebra missing in between; skipping a point costs more
   the more confident its detection. A gap needs room: two consecutive named points whose levels skip
   vertebrae but that stand closer than `gap_room` x the skipped pair's expected distance pay
   `gap_room_cost` more (one normal step cannot hide a vertebra; without this the robust misfit made
   "L4, gap, S1" over 33 mm cheaper than renaming the column, disc MRI ivd-25). Level scores add
   -log(probability), **pooled**: on a site the detector has not seen its scores are one correlated
   guess of the count repeated on every point, not independent evidence, so each point's score cost is
   weighted so that N points weigh like `score_pool_points * N ** score_pool_exponent` (sqrt(N) by
   default, `pooled_score_weight`); then a sacrum anchor outweighs five points sure of a name one level
   off, while the scores still decide the count when no anchor is in view. Only points sure of one level
   (best score >= `score_pool_confident`) are pooled: C/T/L region scores spread over a region's levels
   inform only where the region changes, and pooling them too cost 3 points of identification on the
   VID spines (bench/results/naming_replay/). And only with an anchor in view (`anchors.any_seen`):
   without one, the count rests on the scores against the spacing, and the spacing is no better a
   counter on an unfamiliar site (pooled, verse012 CT lost its whole naming to it). T13 and L6 carry a prior
   penalty (-log of their frequency), so they appear only when evidence needs them.
3. **Anchors.** Locked points keep their labels and are hard constraints; the rest must fit around them.
   Both directions along the chain are tried; the one whose cranial end has the lower S coordinate pays
   a penalty proportional to how vertical the chain is, so a vertical spine is never flipped while a
   horizontal one is oriented by scores/anchors.
   Anatomical anchors (`anchors`: the sacrum, C2, rib-bearing vertebrae on CT) add unary costs per point
   and per level, make judging an anchored point spurious costly, and gate T13/L6: with evidence, T13
   needs 13 rib-bearing vertebrae and L6 six free lumbar vertebrae above a visible sacrum.
   `labelling_cost` gives the same model's cost for any naming (used by `naming_confidence`).
4. **Default without scores and anchors:** geometry only (spacing vs level) plus a weak prior that the
   caudal-most point is L5 (most spine scans end in the lumbar spine); spacing overrides it when the
   points are clearly cervical/thoracic-sized.

Spacing priors come from `resources/labelling_priors.json` (fitted on VID training spines, CC BY-SA 4.0),
falling back to `anatomy.body_size` (half heights + disc) for pairs it does not list.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
from scipy.spatial.distance import cdist

from ..core import anatomy
from ..core.errors import InputError
from ..core.result import SpineResult, Vertebra
from . import anchors
from .anchors import DEFAULT_WEIGHTS, AnchorEvidence, AnchorWeights

LEVELS = anatomy.ORDER
N_LEVELS = len(LEVELS)
_PRIORS_PATH = Path(__file__).resolve().parents[1] / "resources" / "labelling_priors.json"


@dataclass(frozen=True)
class LabellingParams:
    """Tuning of the assignment (costs are negative log-likelihoods, unit-free)."""

    step_log_sigma: float = 0.08      # spread of log(observed / expected) distance of one step
    misfit_dof: float = 3.0           # Student-t tail: odd single steps are tolerated, halvings/doublings not
    scale_log_sigma: float = 0.15     # spread of the patient scale around the typical adult
    missing_cost: float = 3.0         # per vertebra missing inside a gap
    skip_base_cost: float = 2.0       # skipping a point of detection score 0 ...
    skip_score_cost: float = 4.0      # ... plus this times its score
    score_floor: float = 2e-3         # probabilities below this count as this (overconfident detectors)
    score_weight: float = 1.0         # < 1 tempers overconfident level scores
    # The level scores of one case are one correlated guess of the count, not N independent ones: each
    # point's score cost is weighted min(1, score_pool_points * N ** (score_pool_exponent - 1)) for N
    # points, so N points agreeing on a shift weigh like score_pool_points * N ** exponent points
    # (exponent 1: independent sum; 0.5: sqrt(N); 0: a fixed number, a mean). Applied only with an anchor
    # in view (anchors.any_seen): it is the anchor the scores must no longer outvote.
    score_pool_exponent: float = 0.5
    score_pool_points: float = 1.0
    # Only points sure of one level (best score >= this) claim the count and are pooled: region scores
    # (C/T/L spread over their levels) inform only where the region changes and stay summed.
    score_pool_confident: float = 0.3
    # A gap (vertebrae skipped between two consecutive named points) needs room: closer than gap_room x
    # the expected distance of the pair, it costs gap_room_cost more (one normal step is not a gap).
    gap_room: float = 0.7
    gap_room_cost: float = 25.0
    anchor_weights: AnchorWeights = DEFAULT_WEIGHTS
    outlier_mm: float = 30.0          # off the spine's local course by more -> spurious
    # A point between two neighbours that stand only one step apart (at most squeeze_step x the
    # chain's median step) cannot be a vertebra of its own: off their joining segment by more than
    # squeezed_off_mm it is spurious (a rib head or transverse process seen as a body; one on the
    # segment may be a split body, which the assignment may skip).
    squeeze_step: float = 1.3
    squeezed_off_mm: float = 8.0
    min_detection_score: float = 0.05
    orientation_cost: float = 30.0    # flipping a perfectly vertical chain upside down
    caudal_l5_cost: float = 1.5       # default prior (no scores, no anchors): bottom point not L5
    max_skip_run: int = 8             # at most this many consecutive skipped points


DEFAULT_PARAMS = LabellingParams()
_SCALES = np.exp(np.linspace(-0.45, 0.45, 19))
_FORBIDDEN = 1e6                      # cost of skipping a locked point: never the better choice


# --- priors -----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def priors() -> dict:
    """Spacing table and transitional frequencies (bundled JSON, else anatomy.body_size only)."""
    if _PRIORS_PATH.exists():
        return json.loads(_PRIORS_PATH.read_text(encoding="utf-8"))
    return {"spacing_mm": {}, "transitional_frequency": {"T13": 0.05, "L6": 0.05}}


def _step_mm(upper: str, lower: str) -> float:
    """Typical centroid distance between two consecutive bodies."""
    table = priors().get("spacing_mm", {})
    if f"{upper}-{lower}" in table:
        return float(table[f"{upper}-{lower}"])
    a, b = anatomy.body_size(upper), anatomy.body_size(lower)
    return a.height / 2 + a.disc + b.height / 2


@lru_cache(maxsize=1)
def _pair_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every label pair a < b: log expected distance, steps, vertebrae missing in between."""
    log_expected = np.full((N_LEVELS, N_LEVELS), np.nan)
    steps = np.zeros((N_LEVELS, N_LEVELS))
    missing = np.zeros((N_LEVELS, N_LEVELS))
    for a in range(N_LEVELS):
        for b in range(a + 1, N_LEVELS):
            between = [n for n in LEVELS[a + 1:b] if n not in anatomy.TRANSITIONAL]
            chain = [LEVELS[a], *between, LEVELS[b]]
            log_expected[a, b] = np.log(sum(_step_mm(u, v) for u, v in zip(chain, chain[1:])))
            steps[a, b] = len(chain) - 1
            missing[a, b] = len(between)
    return log_expected, steps, missing


def _transitional_cost() -> np.ndarray:
    freq = priors().get("transitional_frequency", {})
    cost = np.zeros(N_LEVELS)
    for name in anatomy.TRANSITIONAL:
        cost[LEVELS.index(name)] = -np.log(float(freq.get(name, 0.05)))
    return cost


def region_scores_to_level_scores(region_probs: np.ndarray, regions: str = "CTL",
                                  missing_region_prob: float = 0.05) -> np.ndarray:
    """Per-region probabilities (N, len(regions)), e.g. a detector's C/T/L head, -> (N, len(ORDER)).

    Each region's probability is spread evenly over its usual levels (T13 and L6 get the same share
    as a usual level; their rarity is handled by the assignment's prior). A region the detector does
    not know (the sacrum for a C/T/L head) gets `missing_region_prob`: detectors without a sacrum class
    still fire on S1 and call it lumbar, and that point must be free to become S1 rather than push
    every lumbar label up by one.
    """
    probs = np.asarray(region_probs, dtype=float).reshape(len(region_probs), len(regions))
    probs = np.clip(probs, 0, None) / np.clip(probs.sum(axis=1, keepdims=True), 1e-9, None)
    out = np.zeros((len(probs), N_LEVELS))
    for letter in "CTLS":
        columns = [k for k, n in enumerate(LEVELS) if n[0] == letter]
        usual = sum(1 for k in columns if LEVELS[k] not in anatomy.TRANSITIONAL)
        share = probs[:, [regions.index(letter)]] if letter in regions else missing_region_prob
        out[:, columns] = share / usual
    return out / out.sum(axis=1, keepdims=True)


# --- ordering along the spine -----------------------------------------------------------------
def _longest_tree_path(points: np.ndarray) -> list[int]:
    """Node sequence of the longest path (by length) in the Euclidean minimum spanning tree."""
    if len(points) == 1:
        return [0]
    tree = minimum_spanning_tree(cdist(points, points) + 1e-9)
    tree = tree + tree.T
    first = int(np.argmax(shortest_path(tree, directed=False, indices=0)))
    dist, pred = shortest_path(tree, directed=False, indices=first, return_predecessors=True)
    node, path = int(np.argmax(dist)), []
    while node >= 0:
        path.append(node)
        node = int(pred[node])
    return path


def _project_on_polyline(point: np.ndarray, line: np.ndarray) -> float:
    """Arc-length position of the point's nearest projection onto the polyline."""
    if len(line) == 1:
        return 0.0
    seg = np.diff(line, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    t = np.clip(np.einsum("ij,ij->i", point - line[:-1], seg) / np.maximum(lengths ** 2, 1e-12), 0, 1)
    foot = line[:-1] + t[:, None] * seg
    k = int(np.argmin(np.linalg.norm(foot - point, axis=1)))
    return float(np.concatenate([[0], np.cumsum(lengths)])[k] + t[k] * lengths[k])


def _off_chain_mm(points: np.ndarray) -> np.ndarray:
    """Distance of each point (in chain order) from its neighbours' course: from the segment joining the
    previous and next points for inner points, from the line through the two nearest for end points."""
    off = np.zeros(len(points))
    if len(points) < 4:
        return off
    for i in range(len(points)):
        if 0 < i < len(points) - 1:
            a, b = points[i - 1], points[i + 1]
            t = np.clip(np.dot(points[i] - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0, 1)
            off[i] = np.linalg.norm(points[i] - (a + t * (b - a)))
        else:
            a, b = (points[1], points[2]) if i == 0 else (points[-2], points[-3])
            direction = (a - b) / max(np.linalg.norm(a - b), 1e-12)
            rel = points[i] - a
            off[i] = np.linalg.norm(rel - rel.dot(direction) * direction)
    return off


def _squeezed(points: np.ndarray, squeeze_step: float) -> np.ndarray:
    """Inner points (chain order) whose two neighbours stand at most ``squeeze_step`` median steps apart."""
    squeezed = np.zeros(len(points), dtype=bool)
    if len(points) < 4:
        return squeezed
    median_step = float(np.median(np.linalg.norm(np.diff(points, axis=0), axis=1)))
    across = np.linalg.norm(points[2:] - points[:-2], axis=1)
    squeezed[1:-1] = across <= squeeze_step * median_step
    return squeezed


def order_along_spine(points: np.ndarray, params: LabellingParams = DEFAULT_PARAMS
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(order, is_outlier): point indices sorted along the spine chain (either direction), and a mask
    of points far off the spine's course (`LabellingParams.outlier_mm`), or off it and squeezed
    between two neighbours one step apart (`squeezed_off_mm`). The worst outlier is removed and the
    chain rebuilt, one at a time, so an outlier cannot bend the chain or make its true neighbours
    look like outliers."""
    points = np.asarray(points, dtype=float)
    outlier = np.zeros(len(points), dtype=bool)
    while True:
        keep = np.flatnonzero(~outlier)
        path = keep[_longest_tree_path(points[keep])]
        position = np.array([_project_on_polyline(p, points[path]) for p in points])
        chain = keep[np.argsort(position[keep], kind="stable")]
        off = _off_chain_mm(points[chain])
        limit = np.where(_squeezed(points[chain], params.squeeze_step), params.squeezed_off_mm, params.outlier_mm)
        if len(chain) < 4 or (off <= limit).all():
            break
        outlier[chain[int(np.argmax(off - limit))]] = True
    return np.argsort(position, kind="stable"), outlier


# --- dynamic programme ------------------------------------------------------------------------
def _robust_misfit(z: np.ndarray, dof: float) -> np.ndarray:
    """Student-t negative log-likelihood of a standardised misfit: quadratic near 0, logarithmic in the
    tails, so one unusual step (a tilted L5, a sloppy centroid) costs less than dropping a true vertebra,
    while a duplicate (distance ~0) or a missed vertebra (distance x2) still costs more than the
    alternatives."""
    return 0.5 * (dof + 1) * np.log1p(z ** 2 / dof)


def _cramped_gap_cost(log_distance, log_expected, missing, params: LabellingParams):
    """Extra cost of a gap without room: the robust misfit alone makes a gap over one normal step (L4
    to S1 with L5 skipped, 33 mm where 70 are expected) cheaper than renaming five points against
    overconfident scores, yet the missing vertebra would have to fit in no space at all."""
    cramped = (missing > 0) & (log_distance < log_expected + np.log(max(params.gap_room, 1e-9)))
    return np.where(cramped, params.gap_room_cost, 0.0)


def _viterbi(points: np.ndarray, unary: np.ndarray, skip: np.ndarray, scale: float,
             params: LabellingParams) -> tuple[float, list[int]]:
    """Best cost and labels (index in ORDER or -1 = skipped) for points already in cranio-caudal order."""
    log_expected, steps, missing = _pair_tables()
    sigma = np.maximum(params.step_log_sigma / np.sqrt(np.maximum(steps, 1)), 0.05)
    base = np.where(np.isnan(log_expected), np.inf, missing * params.missing_cost)
    log_expected = np.nan_to_num(log_expected, nan=0.0) + np.log(scale)
    n = len(points)
    skip_prefix = np.concatenate([[0.0], np.cumsum(skip)])    # cost of skipping points [i, j)
    best = np.full((n, N_LEVELS), np.inf)
    back: list[list[tuple[int, int]]] = [[(-1, -1)] * N_LEVELS for _ in range(n)]
    for i in range(n):
        best[i] = unary[i] + skip_prefix[i]
        for j in range(max(0, i - params.max_skip_run - 1), i):
            d = np.log(max(np.linalg.norm(points[i] - points[j]), 1e-3))
            trans = (base + _robust_misfit((d - log_expected) / sigma, params.misfit_dof)
                     + _cramped_gap_cost(d, log_expected, missing, params))
            total = best[j][:, None] + trans + (skip_prefix[i] - skip_prefix[j + 1])
            from_label = np.argmin(total, axis=0)
            candidate = total[from_label, np.arange(N_LEVELS)] + unary[i]
            better = candidate < best[i]
            best[i][better] = candidate[better]
            for b in np.flatnonzero(better):
                back[i][b] = (j, int(from_label[b]))
    ends = best + (skip_prefix[-1] - skip_prefix[1:])[:, None]
    if n == 0 or not np.isfinite(ends.min()):
        return float(skip_prefix[-1]) if np.isfinite(skip_prefix[-1]) else np.inf, [-1] * n
    i, b = np.unravel_index(int(np.argmin(ends)), ends.shape)
    cost, labels = float(ends[i, b]), [-1] * n
    if skip_prefix[-1] < cost:
        return float(skip_prefix[-1]), labels
    while i >= 0:
        labels[i] = int(b)
        i, b = back[i][b]
    return cost, labels


def pooled_score_weight(n_points: int, params: LabellingParams) -> float:
    """Weight of each point's level-score cost when `n_points` points carry scores.

    On an unfamiliar site the detector's scores are one guess of the count repeated on every point
    (ivd-25: five points each sure of a name one level too high, ~12 nats summed), so summing them as
    independent evidence outvotes any anatomical anchor (the sacrum, weight 3). Pooled, N points that
    agree weigh like `score_pool_points * N ** score_pool_exponent` points."""
    pooled = params.score_pool_points * max(n_points, 1) ** (params.score_pool_exponent - 1.0)
    return params.score_weight * min(1.0, pooled)


def _score_weights(scores: np.ndarray, chain: np.ndarray | None, params: LabellingParams,
                   evidence: AnchorEvidence | None) -> np.ndarray:
    """(n,) weight of each point's score cost: pooled over the chain's points sure of one level when an
    anchor that can fix the count is in view, else every point its own `score_weight`."""
    if not anchors.any_seen(evidence, chain):
        return np.full(len(scores), params.score_weight)
    sure = scores.max(axis=1) >= params.score_pool_confident
    in_chain = np.zeros(len(scores), bool)
    in_chain[np.arange(len(scores)) if chain is None else chain] = True
    weights = np.full(len(scores), params.score_weight)
    weights[sure] = pooled_score_weight(int((sure & in_chain).sum()), params)
    return weights


def _unary_costs(n: int, level_scores: np.ndarray | None, locked_idx: dict[int, int],
                 allow_transitional: bool, params: LabellingParams,
                 evidence: AnchorEvidence | None = None, cranio_caudal: np.ndarray | None = None) -> np.ndarray:
    """(n, N_LEVELS) costs for points in their input order (the caudal default is applied per direction).

    With anchor evidence (sacrum, C2, ribs; see `anchors`), its costs are added and T13/L6 are allowed
    only where the evidence shows them (13 rib-bearing vertebrae; six free lumbar above a sacrum)."""
    if level_scores is None:
        unary = np.zeros((n, N_LEVELS))
    else:
        scores = np.clip(np.asarray(level_scores, dtype=float), 0, None)
        scores = scores / np.clip(scores.sum(axis=1, keepdims=True), 1e-12, None)
        weights = _score_weights(scores, cranio_caudal, params, evidence)
        unary = -weights[:, None] * np.log(np.clip(scores, params.score_floor, None))
        if evidence is not None:
            unary = _sacral_scores_freed(unary, evidence)
    unary = unary + _transitional_cost()[None, :]
    if evidence is not None:
        unary = unary + anchors.anchor_costs(evidence, params.anchor_weights)
        unary = anchors.gate_transitional(unary, anchors.transitional_allowed(evidence, cranio_caudal))
    if not allow_transitional:
        unary[:, [LEVELS.index(t) for t in anatomy.TRANSITIONAL]] = np.inf
    for i, k in locked_idx.items():
        unary[i] = np.inf
        unary[i, k] = 0.0
    return unary


def _sacral_scores_freed(unary: np.ndarray, evidence: AnchorEvidence) -> np.ndarray:
    """Where the anatomy shows the sacrum (`anchors.PRESENT`), the detector's score for S1 costs no more
    than its best lumbar score: a detector that never learnt the sacrum fires on it, calls it lumbar and
    scores S1 zero, and that zero would outvote the anatomy (the anchor then decides between L5 and S1)."""
    seen = evidence.sacrum_seen()
    if not seen.any():
        return unary
    unary = unary.copy()
    lumbar = [k for k, name in enumerate(LEVELS) if name[0] == "L" and name not in anatomy.TRANSITIONAL]
    s1 = LEVELS.index("S1")
    unary[seen, s1] = np.minimum(unary[seen, s1], unary[np.ix_(seen, lumbar)].min(axis=1))
    return unary


def _solve(points: np.ndarray, unary: np.ndarray, skip: np.ndarray, s_extent: float,
           default_caudal: bool, params: LabellingParams) -> tuple[float, list[int]]:
    """Try both chain directions and all patient scales; `points` are in chain order (first = one end)."""
    best_cost, best_labels = np.inf, [-1] * len(points)
    for direction in (1, -1):
        idx = np.arange(len(points))[::direction]
        u = unary[idx].copy()
        if default_caudal and len(idx):
            u[-1] += params.caudal_l5_cost
            u[-1, LEVELS.index("L5")] -= params.caudal_l5_cost
        flip = params.orientation_cost * max(0.0, -direction * s_extent)
        for scale in _SCALES:
            prior = 0.5 * (np.log(scale) / params.scale_log_sigma) ** 2 + flip
            cost, labels = _viterbi(points[idx], u, skip[idx], scale, params)
            if cost + prior < best_cost:
                best_cost = cost + prior
                best_labels = list(np.array(labels)[np.argsort(idx)])
    return best_cost, best_labels


def assign_levels(centroids_ras: np.ndarray, level_scores: np.ndarray | None = None,
                  detection_scores: np.ndarray | None = None, locked: dict[int, str] | None = None,
                  allow_transitional: bool = True, params: LabellingParams = DEFAULT_PARAMS,
                  evidence: AnchorEvidence | None = None) -> list[str]:
    """One level name per input point ('' = judged spurious), consistent with anatomical order.

    centroids_ras (N, 3) RAS mm; level_scores (N, len(anatomy.ORDER)) probabilities in ORDER order;
    detection_scores (N,) 0..1; locked {point index: level name} are kept and anchor the rest;
    evidence: anatomical anchors per point (`anchors.AnchorEvidence`), or None for none at all (then
    T13/L6 rest on their prior alone).
    """
    problem = _problem(centroids_ras, level_scores, detection_scores, locked, allow_transitional, params, evidence)
    if problem is None:
        return []
    points, chain, unary, skip, default_caudal, locked_idx = problem
    labels = _assign_chain(points, chain, unary, skip, default_caudal, params)
    if labels is None:                          # anchors out of order with geometry: keep them, fit the rest
        labels = _assign_around_inconsistent_anchors(points, chain, unary, skip, locked_idx, params)
    names = [""] * len(points)
    for i, k in zip(chain, labels):
        names[i] = LEVELS[k] if k >= 0 else ""
    for i, name in (locked or {}).items():
        names[int(i)] = name
    return names


def _problem(centroids_ras, level_scores, detection_scores, locked, allow_transitional, params, evidence):
    """Everything the assignment and `labelling_cost` share: points, usable chain, unary and skip costs."""
    points = np.asarray(centroids_ras, dtype=float).reshape(-1, 3)
    n = len(points)
    locked = dict(locked or {})
    if level_scores is not None and np.shape(level_scores) != (n, N_LEVELS):
        raise InputError(f"level_scores must have shape ({n}, {N_LEVELS}), got {np.shape(level_scores)}")
    if evidence is not None and len(evidence) != n:
        raise InputError(f"anchor evidence is for {len(evidence)} points, not {n}")
    locked_idx = {int(i): anatomy.order_index(name) for i, name in locked.items() if name}
    if n == 0:
        return None
    det = np.ones(n) if detection_scores is None else np.clip(np.asarray(detection_scores, float), 0, 1)
    order, outlier = order_along_spine(points, params)
    usable = ~outlier & (det >= params.min_detection_score)
    usable[list(locked_idx)] = True            # a person's point is never spurious
    chain = np.array([i for i in order if usable[i]], dtype=int)
    cranio_caudal = chain if len(chain) < 2 or points[chain[0], 2] >= points[chain[-1], 2] else chain[::-1]
    default_caudal = level_scores is None and not locked_idx
    unary = _unary_costs(n, level_scores, locked_idx, allow_transitional, params, evidence, cranio_caudal)
    skip = params.skip_base_cost + params.skip_score_cost * det
    if evidence is not None:                    # a point seen as the sacrum or C2 is a vertebra, not a stray detection
        skip = skip + anchors.skip_costs(evidence, params.anchor_weights)
    skip[list(locked_idx)] = _FORBIDDEN              # finite: keeps prefix sums free of inf - inf
    return points, chain, unary, skip, default_caudal, locked_idx


def labelling_cost(centroids_ras: np.ndarray, names: list[str], level_scores: np.ndarray | None = None,
                   detection_scores: np.ndarray | None = None, locked: dict[int, str] | None = None,
                   allow_transitional: bool = True, params: LabellingParams = DEFAULT_PARAMS,
                   evidence: AnchorEvidence | None = None) -> float:
    """The assignment's cost (negative log-likelihood) of a given naming, under the same model as
    `assign_levels` (best patient scale; inf when the names break anatomical order or a lock).

    For the naming `assign_levels` returns this equals the optimum it found, so the costs of other
    namings (the same one shifted by a level, say) say how close the runner-up is."""
    return labelling_costs(centroids_ras, [names], level_scores, detection_scores, locked, allow_transitional,
                           params, evidence)[0]


def labelling_costs(centroids_ras: np.ndarray, namings: list[list[str]], level_scores: np.ndarray | None = None,
                    detection_scores: np.ndarray | None = None, locked: dict[int, str] | None = None,
                    allow_transitional: bool = True, params: LabellingParams = DEFAULT_PARAMS,
                    evidence: AnchorEvidence | None = None) -> list[float]:
    """`labelling_cost` of several namings of the same points (the chain and costs are built once)."""
    problem = _problem(centroids_ras, level_scores, detection_scores, locked, allow_transitional, params, evidence)
    if problem is None:
        return [0.0] * len(namings)
    points, chain, unary, skip, default_caudal, _ = problem
    outside = set(range(len(points))) - set(chain.tolist())
    costs = []
    for names in namings:
        if any(names[i] for i in outside):
            costs.append(np.inf)                # a name on a point the assignment must leave out
            continue
        labels = np.array([anatomy.order_index(names[i]) if names[i] else -1 for i in chain])
        named = labels[labels >= 0]
        if len(named) >= 2 and not (np.all(np.diff(named) > 0) or np.all(np.diff(named) < 0)):
            costs.append(np.inf)
            continue
        directions = [-1 if named[0] > named[-1] else 1] if len(named) >= 2 else [1, -1]
        costs.append(min(_directed_cost(points[chain], unary[chain], skip[chain], labels, direction,
                                        default_caudal, params) for direction in directions))
    return costs


def _directed_cost(points, unary, skip, labels, direction, default_caudal, params) -> float:
    """`labelling_cost` along one direction of the chain (as `_solve` tries both), best patient scale."""
    idx = np.arange(len(points))[::direction]
    u = unary[idx].copy()
    if default_caudal and len(idx):
        u[-1] += params.caudal_l5_cost
        u[-1, LEVELS.index("L5")] -= params.caudal_l5_cost
    length = np.linalg.norm(np.diff(points, axis=0), axis=1).sum()
    s_extent = (points[0, 2] - points[-1, 2]) / max(length, 1e-6) if len(points) > 1 else 0.0
    flip = params.orientation_cost * max(0.0, -direction * s_extent)
    prior = 0.5 * (np.log(_SCALES) / params.scale_log_sigma) ** 2 + flip
    return float(np.min(_sequence_cost(points[idx], u, skip[idx], labels[idx], _SCALES, params) + prior))


def _sequence_cost(points: np.ndarray, unary: np.ndarray, skip: np.ndarray, labels: np.ndarray,
                   scales: np.ndarray, params: LabellingParams) -> np.ndarray:
    """Cost of one fixed labelling (points in cranio-caudal order) at each patient scale, term by term
    as in `_viterbi`."""
    log_expected, steps, missing = _pair_tables()
    named = np.flatnonzero(labels >= 0)
    cost = np.full(len(scales), float(skip[labels < 0].sum()))
    if len(named) == 0:
        return cost
    cost += float(unary[named, labels[named]].sum())
    if len(named) < 2:
        return cost
    j, i = named[:-1], named[1:]
    a, b = labels[j], labels[i]
    if np.any(a >= b) or np.any(np.isnan(log_expected[a, b])) or np.any(i - j - 1 > params.max_skip_run):
        return np.full(len(scales), np.inf)
    sigma = np.maximum(params.step_log_sigma / np.sqrt(np.maximum(steps[a, b], 1)), 0.05)
    d = np.log(np.maximum(np.linalg.norm(points[i] - points[j], axis=1), 1e-3))
    expected = log_expected[a, b][None, :] + np.log(scales)[:, None]
    z = (d[None, :] - expected) / sigma[None, :]
    cramped = _cramped_gap_cost(d[None, :], expected, missing[a, b][None, :], params).sum(axis=1)
    return (cost + float((missing[a, b] * params.missing_cost).sum()) + _robust_misfit(z, params.misfit_dof).sum(axis=1)
            + cramped)


def _assign_chain(points, chain, unary, skip, default_caudal, params) -> list[int] | None:
    if len(chain) == 0:
        return []
    length = np.linalg.norm(np.diff(points[chain], axis=0), axis=1).sum()
    s_extent = (points[chain[0], 2] - points[chain[-1], 2]) / max(length, 1e-6)   # +1: first end is superior
    cost, labels = _solve(points[chain], unary[chain], skip[chain], s_extent, default_caudal, params)
    return labels if cost < _FORBIDDEN / 2 else None


def _assign_around_inconsistent_anchors(points, chain, unary, skip, locked_idx, params) -> list[int]:
    """Locked labels are kept as given; the others are assigned without them, never reusing a locked label."""
    free = np.array([i for i in chain if i not in locked_idx], dtype=int)
    u = unary.copy()
    u[:, list(set(locked_idx.values()))] = np.inf
    sub = _assign_chain(points, free, u, skip, False, params) or [-1] * len(free)
    by_point = dict(zip(free.tolist(), sub))
    return [locked_idx.get(int(i), by_point.get(int(i), -1)) for i in chain]


# --- SpineResult / markups adapters -----------------------------------------------------------
def _scores_matrix(vertebrae: list[Vertebra]) -> np.ndarray | None:
    """Level-score dicts -> matrix; vertebrae without scores get a uniform row."""
    if not any(v.level_scores for v in vertebrae):
        return None
    matrix = np.full((len(vertebrae), N_LEVELS), 1.0 / N_LEVELS)
    for row, v in enumerate(vertebrae):
        if v.level_scores:
            matrix[row] = [float(v.level_scores.get(name, 0.0)) for name in LEVELS]
    return matrix


def labelling_inputs(vertebrae: list[Vertebra]) -> dict:
    """The assignment's keyword arguments for these vertebrae (centroids, level and detection scores,
    locked levels, anchor evidence; evidence None when no vertebra carries any, as a point list read
    from a file)."""
    evidence = None
    if any(v.evidence for v in vertebrae):
        evidence = AnchorEvidence.from_dicts([v.evidence for v in vertebrae])
    return {"centroids_ras": np.array([v.centroid_ras for v in vertebrae]).reshape(-1, 3),
            "level_scores": _scores_matrix(vertebrae), "detection_scores": np.array([v.score for v in vertebrae]),
            "locked": {k: v.level for k, v in enumerate(vertebrae) if v.locked and v.level}, "evidence": evidence}


def relabel_vertebrae(vertebrae: list[Vertebra], params: LabellingParams = DEFAULT_PARAMS) -> list[str]:
    """New level per vertebra (locked ones unchanged; a locked point without a level stays '')."""
    if not vertebrae:
        return []
    free = [i for i, v in enumerate(vertebrae) if not (v.locked and not v.level)]
    chosen = [vertebrae[i] for i in free]
    names = assign_levels(**labelling_inputs(chosen), params=params)
    out = [v.level for v in vertebrae]
    for i, name in zip(free, names):
        out[i] = name
    return out


def relabel_result(result: SpineResult, params: LabellingParams = DEFAULT_PARAMS, policy=None) -> SpineResult:
    """Relabel `result.vertebrae` in place by anatomical order; changes go to the correction record.
    ``policy``: the `confidence.NamingPolicy` of the verdict (None: its default)."""
    names = relabel_vertebrae(result.vertebrae, params)
    changes = []
    for v, name in zip(result.vertebrae, names):
        if not v.locked and v.level != name:
            changes.append({"instance": v.instance, "from": v.level, "to": name,
                            "centroid_ras": [round(float(c), 2) for c in v.centroid_ras]})
            v.level = name
    if changes:      # one entry per relabelling: these follow from the order, they are not a person's edits
        result.record("relabel", by="anatomical order", changes=changes,
                      anchors=[v.level for v in result.vertebrae if v.locked and v.level])
    from .confidence import DEFAULT_POLICY, assess_vertebrae

    result.naming = assess_vertebrae(result.vertebrae, params, policy or DEFAULT_POLICY)
    return result


def set_level(result: SpineResult, vertebra: Vertebra, level: str,
              params: LabellingParams = DEFAULT_PARAMS) -> SpineResult:
    """A person names one vertebra: it gets `level`, is locked, and the unlocked others follow in order."""
    if level not in anatomy.CODE_BY_NAME:
        raise InputError(f"unknown vertebral level {level!r}")
    if not any(v is vertebra for v in result.vertebrae):
        raise InputError("that vertebra is not part of this result")
    clash = [v for v in result.vertebrae if v is not vertebra and v.locked and v.level == level]
    if clash:
        raise InputError(f"{level} is already fixed on another vertebra; unlock it first")
    result.record("set_level", instance=vertebra.instance, previous=vertebra.level, level=level)
    vertebra.level, vertebra.locked = level, True
    return relabel_result(result, params)


def relabel_markups_file(in_path: str | Path, out_path: str | Path,
                         params: LabellingParams = DEFAULT_PARAMS) -> list[str]:
    """`spinelabel relabel IN.mrk.json --out OUT.mrk.json`: returns the labels written, in file order."""
    from ..io.markups import read_markups, write_markups

    vertebrae = read_markups(in_path)
    names = relabel_vertebrae(vertebrae, params)
    for v, name in zip(vertebrae, names):
        v.level = name
    write_markups(vertebrae, out_path)
    return names
