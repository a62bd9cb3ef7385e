"""Naming against overconfident level scores (issue 12, disc MRI ivd-25): the detector's scores pooled as one
guess of the count, so the sacrum anchor outweighs a consistent one-level shift; a gap needs room."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from SpineLabelLib.core import anatomy
from SpineLabelLib.naming.anchors import AnchorEvidence
from SpineLabelLib.naming.labelling import DEFAULT_PARAMS, assign_levels, pooled_score_weight
from test_labelling import levels_between, spine_points

#: the labeller before pooling and gap room: scores summed as independent, gaps priced by the misfit alone
SUMMED = replace(DEFAULT_PARAMS, score_pool_exponent=1.0, score_pool_points=1.0, gap_room=0.0)


def sure_of(names: list[str], p: float = 0.8) -> np.ndarray:
    """Level scores sure of `names` (p on each), the rest spread evenly over the other levels."""
    scores = np.full((len(names), len(anatomy.ORDER)), (1 - p) / (len(anatomy.ORDER) - 1))
    for row, name in enumerate(names):
        scores[row, anatomy.order_index(name)] = p
    return scores


def sacrum_on_last(n: int, p: float = 0.97) -> AnchorEvidence:
    evidence = AnchorEvidence.empty(n)
    evidence.sacrum[:] = 0.08                      # a clear disc below every free vertebra
    evidence.sacrum[-1] = p
    return evidence


def is_gapless(names: list[str]) -> bool:
    usual = [n for n in anatomy.ORDER if n not in anatomy.TRANSITIONAL]
    named = [usual.index(n) for n in names if n]
    return all(b - a == 1 for a, b in zip(named, named[1:]))


def test_sacrum_outweighs_five_points_sure_of_one_level_too_high():
    truth = levels_between("L1", "L5") + ["S1"]
    points = spine_points(truth, curve_mm=10)
    # ivd-25: the five free bodies scored one level too high, the sacrum scored lumbar by the detector
    scores = sure_of(["T12", "L1", "L2", "L3", "L4", "L5"])
    evidence = sacrum_on_last(len(truth))
    summed = assign_levels(points, scores, evidence=evidence, params=SUMMED)
    assert summed != truth                         # summed, the five scores outvote the sacrum
    got = assign_levels(points, scores, evidence=evidence)
    assert got == truth
    assert got[-2:] == ["L5", "S1"]


def test_without_an_anchor_the_scores_still_decide_the_count():
    truth = levels_between("T3", "T9")
    points = spine_points(truth, curve_mm=15)
    assert assign_levels(points, sure_of(truth)) == truth
    shifted = levels_between("T4", "T10")          # the same points, scores sure of one level lower
    assert assign_levels(points, sure_of(shifted)) == shifted


def test_pooled_weight_counts_agreeing_points_as_a_few():
    weight = [pooled_score_weight(n, DEFAULT_PARAMS) for n in (1, 4, 9, 16)]
    assert weight[0] == DEFAULT_PARAMS.score_weight
    assert all(a > b for a, b in zip(weight[1:], weight[2:]))          # more points, less each
    assert pooled_score_weight(16, SUMMED) == SUMMED.score_weight


def test_a_gap_is_refused_when_the_points_are_one_normal_step_apart():
    truth = levels_between("L1", "L5")             # the lowest point stands where L5 is
    points = spine_points(truth)
    scores = sure_of(["L1", "L2", "L3", "L4", "S1"], p=0.95)
    evidence = sacrum_on_last(len(truth))
    assert assign_levels(points, scores, evidence=evidence, params=SUMMED)[-2:] == ["L4", "S1"]   # gap, no room
    got = assign_levels(points, scores, evidence=evidence)
    assert is_gapless(got)
    assert got[-2:] == ["L5", "S1"]


def test_a_gap_is_allowed_when_the_points_are_two_steps_apart():
    full = levels_between("L1", "L5") + ["S1"]
    points = spine_points(full)
    keep = [0, 1, 2, 3, 5]                         # L5 not detected: L4 and S1 two steps apart
    scores = sure_of(["L1", "L2", "L3", "L4", "S1"], p=0.95)
    got = assign_levels(points[keep], scores, evidence=sacrum_on_last(len(keep)))
    assert got == ["L1", "L2", "L3", "L4", "S1"]


def test_scores_are_pooled_only_with_an_anchor_that_can_fix_the_count():
    from SpineLabelLib.naming.anchors import any_seen

    evidence = AnchorEvidence.empty(4)
    assert not any_seen(None) and not any_seen(evidence)
    evidence.rib[:] = 0.95                         # ribs on every point: T12 is not in view
    assert not any_seen(evidence)
    evidence.rib[-1] = 0.05                        # the last rib: the count is fixed there
    assert any_seen(evidence)
    assert not any_seen(evidence, np.array([0, 1, 2]))
    assert any_seen(sacrum_on_last(4))
