"""Anatomical anchors in the level assignment, on synthetic point sets: the sacrum, the last rib, C2, T13/L6 gates."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.naming import anchors
from SpineLabelLib.naming.anchors import AnchorEvidence, c2_evidence, transitional_allowed
from SpineLabelLib.naming.labelling import assign_levels, relabel_result
from SpineLabelLib.naming.confidence import NO_ANCHOR_MESSAGE, assess
from SpineLabelLib.core.result import SpineResult, Vertebra
from test_labelling import levels_between, rotation, spine_points


def oblique(points: np.ndarray, degrees: float = 25.0) -> np.ndarray:
    """The same spine seen on a tilted grid (about an oblique axis, not a coordinate axis)."""
    return points @ rotation([1.0, 0.4, 0.2], degrees).T


def rib_evidence_for(names: list[str], rib_bearing: int | None = None) -> AnchorEvidence:
    """Rib evidence as a CT rib detector gives it: high on the first `rib_bearing` points (default: the
    thoracic ones), low on the rest."""
    evidence = AnchorEvidence.empty(len(names))
    count = sum(n[0] == "T" for n in names) if rib_bearing is None else rib_bearing
    evidence.rib[:] = 0.1
    evidence.rib[:count] = 0.95
    return evidence


# --- the sacrum --------------------------------------------------------------------------------
def test_sacrum_is_named_s1_and_forces_l5_directly_above():
    names = levels_between("T11", "L5") + ["S1"]
    points = oblique(spine_points(names, curve_mm=12))
    # Geometry alone takes the lowest body for L5 (the commonest end of a scan) and shifts everything up.
    assert assign_levels(points)[-2:] != ["L5", "S1"]
    evidence = AnchorEvidence.empty(len(names))
    evidence.sacrum[-1] = 0.9
    got = assign_levels(points, evidence=evidence)
    assert got == names
    assert got[-2:] == ["L5", "S1"]


def test_sacrum_seen_on_a_point_the_detector_scored_low_is_not_dropped():
    names = levels_between("L1", "L5") + ["S1"]
    points = spine_points(names)
    detection = np.array([0.95] * 5 + [0.1])          # the sacrum barely detected as a body
    evidence = AnchorEvidence.empty(len(names))
    evidence.sacrum[-1] = 0.9
    assert assign_levels(points, detection_scores=detection, evidence=evidence) == names


# --- ribs ---------------------------------------------------------------------------------------
def test_last_rib_fixes_t12():
    names = levels_between("T7", "L3")
    points = oblique(spine_points(names, curve_mm=15))
    assert assign_levels(points) != names                 # spacing alone is one level off here
    assert assign_levels(points, evidence=rib_evidence_for(names)) == names


def test_the_rib_evidence_not_the_spacing_decides_where_t12_is():
    names = levels_between("T7", "L3")
    points = spine_points(names, curve_mm=15)
    for count in (3, 4, 6):
        got = assign_levels(points, evidence=rib_evidence_for(names, rib_bearing=count))
        assert got[count - 1] == "T12" and got[count] == "L1"


def test_t13_only_with_thirteen_rib_bearing_vertebrae():
    names = levels_between("T1", "L3", t13=True)
    points = spine_points(names)
    assert "T13" in assign_levels(points, evidence=rib_evidence_for(names, rib_bearing=13))
    twelve = assign_levels(points, evidence=rib_evidence_for(names, rib_bearing=12))
    assert "T13" not in twelve and twelve[11] == "T12"
    # MRI: no rib evidence at all, so never a T13 however the spacing looks
    assert "T13" not in assign_levels(points, evidence=AnchorEvidence.empty(len(names)))


def test_l6_only_with_six_free_lumbar_vertebrae_above_a_visible_sacrum():
    names = levels_between("T10", "S1", l6=True)
    points = spine_points(names)
    evidence = rib_evidence_for(names)                    # T10-T12 rib-bearing, L1-L6 free
    evidence.sacrum[-1] = 0.9
    assert assign_levels(points, evidence=evidence) == names
    no_sacrum = rib_evidence_for(names)
    assert "L6" not in assign_levels(points, evidence=no_sacrum)


def test_transitional_gates_count_in_cranio_caudal_order():
    names = levels_between("T10", "S1", l6=True)
    evidence = rib_evidence_for(names)
    evidence.sacrum[-1] = 0.9
    order = np.arange(len(names))
    assert transitional_allowed(evidence, order) == {"T13": False, "L6": True}
    evidence.rib[3] = 0.95                                # a rib on the first "lumbar": five free ones left
    assert transitional_allowed(evidence, order)["L6"] is False


# --- C2 ----------------------------------------------------------------------------------------
def test_c2_evidence_from_the_tallest_cervical_body_on_top():
    names = levels_between("C2", "C7")
    points = spine_points(names)
    heights = np.array([24.0, 14.0, 14.5, 14.0, 15.0, 15.5])
    assert c2_evidence(points, heights)[0] == pytest.approx(0.9)
    assert np.isnan(c2_evidence(points, heights)[1:]).all()
    with_atlas = np.concatenate([[8.0], heights])        # C1 (a flat ring) above: C2 is the second
    points_c1 = spine_points(["C1", *names])
    assert np.flatnonzero(c2_evidence(points_c1, with_atlas) > 0.5).tolist() == [1]
    assert np.isnan(c2_evidence(points, np.full(6, 14.0))).all()     # all alike: no C2 sighting
    lumbar = spine_points(levels_between("L1", "L5"))
    assert np.isnan(c2_evidence(lumbar, np.array([40.0, 26, 26, 26, 26]))).all()  # not cervical-sized


def test_c2_anchor_names_the_top_of_the_cervical_spine():
    names = levels_between("C2", "T2")
    points = oblique(spine_points(names))
    evidence = AnchorEvidence.empty(len(names))
    evidence.c2[0] = 0.9
    got = assign_levels(points, evidence=evidence)
    assert got == names
    assert assess(got, points, evidence=evidence)["anchors"] == ["C2"]


# --- anchors and the naming verdict ---------------------------------------------------------------
def test_no_anchor_in_view_raises_the_warning():
    names = levels_between("T4", "T9")                    # ribs on all: no first or last rib in view
    points = spine_points(names)
    evidence = rib_evidence_for(names)
    got = assign_levels(points, evidence=evidence)
    verdict = assess(got, points, evidence=evidence)
    assert verdict["anchors"] == []
    assert verdict["uncertain"] is True and verdict["reason"] == NO_ANCHOR_MESSAGE


def test_anchors_in_view_need_the_names_to_agree():
    names = levels_between("T11", "L5") + ["S1"]
    evidence = rib_evidence_for(names)
    evidence.sacrum[-1] = 0.9
    order = np.arange(len(names))
    assert anchors.anchors_in_view(names, evidence, order) == ["sacrum", "last rib"]
    shifted = levels_between("T10", "L5")                 # the sacrum named L5: no anchor supports that
    assert anchors.anchors_in_view(shifted, evidence, order) == []


def test_relabel_result_uses_the_evidence_stored_on_vertebrae():
    names = levels_between("T11", "L5") + ["S1"]
    points = spine_points(names, curve_mm=8)
    vertebrae = [Vertebra("", p, instance=n + 1, score=0.9,
                          evidence={"rib": 0.95 if name[0] == "T" else 0.1, "sacrum": 0.9 if name == "S1" else None})
                 for n, (name, p) in enumerate(zip(names, points))]
    result = relabel_result(SpineResult("case", vertebrae=vertebrae))
    assert result.levels == names
    assert result.naming["uncertain"] is False
    assert result.naming["anchors"] == ["sacrum", "last rib"]


def test_evidence_gathered_from_a_ct_phantom_names_an_unlabelled_neck():
    """The pipeline's anchor step on a CT phantom C1-T2 whose names were wiped: C2 by its height (dens),
    T1 by its first rib."""
    from SpineLabelLib.phantom import make_phantom

    result = make_phantom(["C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2"], spacing=(0.9, 0.9, 1.6),
                          rotation_deg=(6, 9, 0))
    truth = result.levels
    result.modality = "ct"
    for v in result.vertebrae:
        v.level, v.source = "", "detector"
    anchors.gather_evidence(result)
    c2 = [n for n, v in zip(truth, result.vertebrae) if (v.evidence["c2"] or 0) >= 0.5]
    ribbed = [n for n, v in zip(truth, result.vertebrae) if (v.evidence["rib"] or 0) >= 0.5]
    assert c2 == ["C2"] and ribbed == ["T1", "T2"]
    relabel_result(result)
    assert result.levels == truth
    assert {"C2", "first rib"} <= set(result.naming["anchors"]) and result.naming["uncertain"] is False
