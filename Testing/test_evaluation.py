"""Evaluation rules shared by training validation and bench/: known answers on synthetic points and masks."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import box_result

from SpineLabelLib.core import anatomy
from SpineLabelLib.core.result import Vertebra
from SpineLabelLib.training import evaluation

TRUTH = np.array([[0.0, 0.0, 60.0], [0.0, 0.0, 30.0], [0.0, 0.0, 0.0]])
TRUTH_LEVELS = ["L1", "L2", "L3"]


# --- identification (VerSe rule) on point sets ------------------------------------------------
def test_points_near_their_own_body_identify_it():
    points = TRUTH + [[3.0, -2.0, 4.0], [0.0, 5.0, -6.0], [-9.0, 0.0, 9.0]]        # 5, 7.8, 12.7 mm off
    assert evaluation.identified(TRUTH, TRUTH_LEVELS, points, TRUTH_LEVELS).tolist() == [True, True, True]


def test_a_label_farther_than_20_mm_does_not_count():
    points = TRUTH + [[0.0, 20.0, 0.0], [0.0, 19.9, 0.0], [0.0, 0.0, 0.0]]
    assert evaluation.identified(TRUTH, TRUTH_LEVELS, points, TRUTH_LEVELS).tolist() == [False, True, True]


def test_a_label_counts_only_at_its_closest_truth_body():
    # 18 mm from L2, but L1 is closer (12 mm): the point does not identify L2.
    points = np.array([[0.0, 0.0, 48.0], TRUTH[2]])
    hits = evaluation.identified(TRUTH, TRUTH_LEVELS, points, ["L2", "L3"])
    assert hits.tolist() == [False, False, True]


def test_any_point_carrying_the_level_may_identify_it_and_unlabelled_points_never_do():
    points = np.array([[0.0, 0.0, -40.0], TRUTH[0] + 1.0, TRUTH[1]])
    hits = evaluation.identified(TRUTH, TRUTH_LEVELS, points, ["L1", "L1", ""])
    assert hits.tolist() == [True, False, False]


def test_identification_without_points_or_truth():
    assert evaluation.identified(TRUTH, TRUTH_LEVELS, np.zeros((0, 3)), []).tolist() == [False] * 3
    assert evaluation.identified(np.zeros((0, 3)), [], TRUTH, TRUTH_LEVELS).tolist() == []


# --- masks ------------------------------------------------------------------------------------
def test_dice_of_half_overlapping_boxes():
    truth = np.zeros((4, 4, 4), np.uint8)
    instances = np.zeros((4, 4, 4), np.uint16)
    truth[0:2, 0:2, 0:2] = 20                     # 8 voxels
    instances[1:3, 0:2, 0:2] = 5                  # 8 voxels, 4 shared
    instances[3, 3, 3] = 7                        # elsewhere
    dice = evaluation.dice_matrix(truth, [20], instances, [5, 7])
    assert dice.tolist() == [[0.5, 0.0]]


def measured_case():
    """box_result's three bodies as truth, and detections made from them with known faults."""
    result = box_result()
    truth = result.level_map()
    truth[22:24, 5:13, 4:11] = anatomy.code_of("S1")          # the sacrum is not scored
    return result, truth


def test_a_perfect_detection_scores_perfectly():
    result, truth = measured_case()
    case = evaluation.evaluate_case(result, truth)
    assert case.truth_levels == ("L1", "L2", "L3")
    assert (case.found, case.identified, case.detected) == (3, 3, 3)
    assert [m.dice for m in case.matches] == [1.0, 1.0, 1.0]
    assert [m.loc_error_mm for m in case.matches] == pytest.approx([0.0] * 3, abs=1e-9)
    assert (case.inside_range, case.matched_inside, case.matched_detections) == (3, 3, 3)


def test_faults_show_in_the_case_evaluation():
    result, truth = measured_case()
    l2 = result.by_level("L2")
    result.instances[result.instances == l2.instance] = 0          # L2's mask shrinks to a sliver
    result.instances[9, 6:14, 5:12] = l2.instance
    result.by_level("L3").level = "L4"                               # found but misnamed
    far = result.image.kji_to_ras(np.array([[0.0, 0.0, 0.0]]))[0] - [0.0, 0.0, 40.0]
    result.instances[0, 0, 0] = 9
    result.vertebrae.append(Vertebra("L5", far, instance=9))         # a detection below the labels
    result.vertebrae.append(Vertebra("T12", [0.0, 0.0, 0.0]))        # no mask: not scored
    case = evaluation.evaluate_case(result, truth)
    assert case.detected == 4
    assert [m.level for m in case.matches] == ["L1", "L3"]
    assert case.identified == 2                                      # L1, and L2 by its (kept) centroid
    assert (case.inside_range, case.matched_inside, case.matched_detections) == (3, 2, 2)


def test_summary_over_cases():
    perfect = evaluation.evaluate_case(*measured_case())
    empty = evaluation.CaseEvaluation(("L4", "L5"), 0, (), 0, 0, 0, 0)
    summary = evaluation.summarise([perfect, empty])
    assert summary["bodies"] == 5 and summary["cases"] == 2
    assert summary["recall"] == 0.6 and summary["id_rate"] == 0.6
    assert summary["precision"] == 1.0 and summary["precision_all"] == 1.0
    assert summary["dice"] == 1.0 and summary["dice_min"] == 1.0 and summary["loc_error_mm"] == 0.0
    assert evaluation.summarise([empty])["precision"] is None
    assert evaluation.summarise([empty])["dice"] is None
