"""Naming confidence: the best naming against the namings one level away; the verdict in every output."""
from __future__ import annotations

import json

import numpy as np

from SpineLabelLib.core import anatomy
from SpineLabelLib.naming.anchors import AnchorEvidence
from SpineLabelLib.naming.labelling import assign_levels, labelling_cost, labelling_costs
from SpineLabelLib.naming.confidence import (NO_ANCHOR_MESSAGE, NamingPolicy, alternatives, assess, confidence_from_costs,
                                            naming_line, shift_names)
from test_anchors import oblique, rib_evidence_for
from test_labelling import levels_between, level_scores, region_scores, spine_points


def test_shift_names_moves_every_level_and_stops_at_the_ends():
    assert shift_names(["T11", "T12", "L1"], 1) == ["T12", "L1", "L2"]       # no T13 unless used
    assert shift_names(["T12", "T13", "L1"], -1) == ["T11", "T12", "T13"]    # through T13 when used
    assert shift_names(["L4", "L5", "S1"], 1) is None
    assert shift_names(["C1", "C2"], -1) is None
    assert shift_names(["", "L2", ""], -1) == ["", "L1", ""]


def test_alternatives_include_whole_and_partial_shifts_through_transitional_levels():
    names = levels_between("T12", "L5") + ["S1"]
    found = alternatives(names, np.arange(len(names)))
    assert found["all one level higher"] == levels_between("T11", "L4") + ["L5"]
    # a sixth lumbar vertebra missed: everything above the sacrum one level lower, through L6
    assert levels_between("L1", "L5") + ["L6", "S1"] in found.values()
    assert names not in found.values()


def test_the_assignment_is_cheapest_among_its_alternatives():
    names = levels_between("T9", "L4")
    points = oblique(spine_points(names, curve_mm=10))
    scores = level_scores(names, seed=3)
    got = assign_levels(points, scores)
    best = labelling_cost(points, got, scores)
    others = labelling_costs(points, list(alternatives(got, np.arange(len(got))).values()), scores)
    assert np.isfinite(best) and all(best <= c + 1e-9 for c in others)
    assert labelling_cost(points, list(reversed(got)), scores) > best + 20      # upside down: the flip costs
    swapped = list(got)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    assert labelling_cost(points, swapped, scores) == np.inf                     # anatomical order broken


def test_confidence_is_a_softmax_over_costs():
    assert confidence_from_costs({"best": 10.0, "a": np.inf}) == 1.0
    assert abs(confidence_from_costs({"best": 10.0, "a": 10.0}) - 0.5) < 1e-9
    assert confidence_from_costs({"best": 10.0, "a": 12.0}) > confidence_from_costs({"best": 10.0, "a": 11.0})
    assert confidence_from_costs({"best": np.inf, "a": 1.0}) == 0.0


def test_clear_case_with_anchors_is_confident():
    names = levels_between("T9", "L5") + ["S1"]
    points = oblique(spine_points(names, curve_mm=12))
    evidence = rib_evidence_for(names)
    evidence.sacrum[-1] = 0.9
    scores = region_scores(names[:-1] + ["L5"])            # the sacrum looks lumbar to a C/T/L head
    got = assign_levels(points, scores, evidence=evidence)
    verdict = assess(got, points, scores, evidence=evidence)
    assert got == names
    assert verdict["confidence"] >= 0.9 and verdict["uncertain"] is False
    assert set(verdict["anchors"]) == {"sacrum", "last rib"}


def test_ambiguous_evenly_spaced_crop_is_uncertain():
    points = np.stack([np.zeros(6), np.zeros(6), -25.0 * np.arange(6)], axis=1)    # 25 mm apart, no scores
    got = assign_levels(points)
    verdict = assess(got, points)
    assert verdict["uncertain"] is True
    assert verdict["confidence"] < 0.8
    assert verdict["reason"] == NO_ANCHOR_MESSAGE


def test_confident_scores_without_anchor_still_carry_the_warning():
    """A detector sure of its levels is no anchor: a shifted count looks just as sure."""
    names = levels_between("C3", "T3")
    points = spine_points(names)
    scores = level_scores(names)                          # a per-level head that is sure of itself
    got = assign_levels(points, scores)
    verdict = assess(got, points, scores, evidence=AnchorEvidence.empty(len(names)))
    assert got == names and verdict["anchors"] == []
    assert verdict["confidence"] > 0.97
    assert verdict["uncertain"] is True and verdict["reason"] == NO_ANCHOR_MESSAGE
    softer = NamingPolicy(require_anchor=False)           # the threshold rule the VID grid explores
    assert assess(got, points, scores, evidence=AnchorEvidence.empty(len(names)), policy=softer)["uncertain"] is False


def test_a_level_set_by_a_person_anchors_the_naming():
    points = np.stack([np.zeros(6), np.zeros(6), -25.0 * np.arange(6)], axis=1)
    got = assign_levels(points, locked={2: "T8"})
    verdict = assess(got, points, locked={2: "T8"})
    assert got[2] == "T8"
    assert "level set by a person" in verdict["anchors"] and verdict["uncertain"] is False


def test_naming_in_summary_json_cli_line_and_qc(spine_result, tmp_path):
    from SpineLabelLib.app import cli
    from SpineLabelLib.io import qc, summary
    from SpineLabelLib.naming.labelling import relabel_result

    relabel_result(spine_result)
    assert set(spine_result.naming) >= {"confidence", "uncertain", "reason"}
    path = summary.write_summary_json(spine_result, tmp_path / "case.json")
    naming = json.loads(path.read_text())["naming"]
    assert naming["confidence"] == spine_result.naming["confidence"]
    assert isinstance(naming["uncertain"], bool) and naming["reason"]
    line = cli.case_line(spine_result)
    assert line.startswith("synthetic case: 3 vertebrae") and f"{naming['confidence']:.2f}" in line
    texts = [t.get_text() for t in qc._draw(spine_result, *_qc_inputs(spine_result)).axes[0].texts]
    assert any(naming_line(spine_result.naming).split(" — ")[0] in t.replace("\n", " ") for t in texts)


def _qc_inputs(result):
    from SpineLabelLib.io import qc
    from SpineLabelLib.core.volume import resample_to_canonical

    canonical = resample_to_canonical(result.image, 1.0)
    labels = resample_to_canonical(result.level_volume(), 1.0, label=True).array
    return canonical, labels, qc._slice_index(result, canonical, labels)


def test_naming_survives_the_background_snapshot(spine_result, tmp_path):
    from SpineLabelLib.naming.labelling import relabel_result
    from SpineLabelLib.core.result import load_snapshot, save_snapshot

    spine_result.vertebrae[0].evidence = {"rib": 0.1, "sacrum": None, "c2": None}
    relabel_result(spine_result)
    save_snapshot(spine_result, tmp_path / "snap.npz")
    back = load_snapshot(tmp_path / "snap.npz")
    assert back.naming == spine_result.naming
    assert back.vertebrae[0].evidence == {"rib": 0.1, "sacrum": None, "c2": None}


def test_every_level_name_is_known_to_the_shifts():
    for name in anatomy.ORDER:
        assert shift_names([name], 0) in ([name], None) or name in anatomy.TRANSITIONAL
