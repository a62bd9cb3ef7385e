"""Level assignment by anatomical order on synthetic point sets (gaps, extras, anchors, T13/L6, fields of view)."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.naming.labelling import assign_levels, region_scores_to_level_scores, relabel_markups_file, relabel_result, set_level
from SpineLabelLib.core.result import SpineResult, Vertebra


def levels_between(first: str, last: str, t13: bool = False, l6: bool = False) -> list[str]:
    return anatomy.parse_level_range(f"{first}-{last}", t13=t13, l6=l6)


def spine_points(names: list[str], curve_mm: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Body centroids (RAS mm), head at the top, consecutive bodies `scale` x (half heights + disc) apart
    along the column; `curve_mm` bends it in the sagittal plane (lordosis and kyphosis alternate)."""
    steps = [scale * (anatomy.body_size(a).height / 2 + anatomy.body_size(a).disc + anatomy.body_size(b).height / 2)
             for a, b in zip(names, names[1:])]
    target = np.concatenate([[0.0], np.cumsum(steps)])
    fine_s = np.linspace(0, target[-1] + 1, 20000)
    fine = np.stack([np.full_like(fine_s, 2.0), curve_mm * np.sin(fine_s / 110.0), 100.0 - fine_s], axis=1)
    fine_arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(fine, axis=0), axis=1))])
    return fine[np.minimum(np.searchsorted(fine_arc, target), len(fine) - 1)]


def region_scores(names: list[str], regions: str = "CTL") -> np.ndarray:
    """What a C/T/L(/S) region head says about correctly classified bodies (T13 counts as thoracic, L6 as lumbar)."""
    probs = np.full((len(names), len(regions)), 0.02)
    for row, name in enumerate(names):
        probs[row, regions.index(name[0])] = 0.95
    return region_scores_to_level_scores(probs, regions)


def level_scores(names: list[str], seed: int = 0) -> np.ndarray:
    """Noisy per-level scores that peak at the true level and leak to its neighbours."""
    rng = np.random.default_rng(seed)
    scores = np.full((len(names), len(anatomy.ORDER)), 0.005)
    for row, name in enumerate(names):
        k = anatomy.order_index(name)
        scores[row, k] = 0.6
        for near in (k - 1, k + 1):
            if 0 <= near < len(anatomy.ORDER):
                scores[row, near] = 0.15
    scores += rng.uniform(0, 0.01, scores.shape)
    return scores / scores.sum(axis=1, keepdims=True)


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


# --- whole spines, scores ------------------------------------------------------------------------
def test_straight_full_spine_with_level_scores():
    names = levels_between("C1", "L5")
    assert assign_levels(spine_points(names), level_scores(names)) == names


def test_input_order_does_not_matter():
    names = levels_between("T6", "L5")
    permutation = np.random.default_rng(3).permutation(len(names))
    got = assign_levels(spine_points(names)[permutation], region_scores(names)[permutation])
    assert got == [names[i] for i in permutation]


def test_region_scores_only_name_a_thoracolumbar_spine():
    names = levels_between("T4", "L5")
    assert assign_levels(spine_points(names), region_scores(names)) == names


# --- gaps and extras ------------------------------------------------------------------------------
def test_missing_vertebra_is_skipped_not_shifted():
    names = levels_between("T9", "L5")
    keep = [i for i, n in enumerate(names) if n != "L2"]
    points = spine_points(names)[keep]
    expected = [names[i] for i in keep]
    assert assign_levels(points, region_scores(expected)) == expected
    # geometry only, anchored at the top: the gap is still found from the spacing
    assert assign_levels(points, locked={0: "T9"}) == expected


def test_duplicate_and_outlier_get_empty_labels():
    names = levels_between("T8", "L5")
    points = spine_points(names)
    l3 = names.index("L3")
    duplicate = points[l3] + np.array([3.0, 0.0, 0.0])
    outlier = points[names.index("L1")] + np.array([0.0, 60.0, 0.0])      # 60 mm anterior of the column
    all_points = np.vstack([points, duplicate, outlier])
    scores = np.vstack([region_scores(names), region_scores(["L3", "L1"])])
    got = assign_levels(all_points, scores, detection_scores=np.r_[np.ones(len(names)), 0.6, 0.9])
    assert got[-1] == ""
    pair = [got[l3], got[len(names)]]
    assert sorted(pair) == ["", "L3"]
    assert [g for i, g in enumerate(got[:len(names)]) if i != l3] == [n for n in names if n != "L3"]


def test_a_point_squeezed_between_neighbours_one_step_apart_is_spurious():
    """Chest CT at 5 mm (lung-dx-a0001): a rib head beside T1, 17 mm lateral, half-way between C7
    and T1, was named as a vertebra of its own and shifted every level below it."""
    from SpineLabelLib.naming.labelling import order_along_spine

    names = levels_between("C6", "T8")
    points = spine_points(names)
    c7, t1 = names.index("C7"), names.index("T1")
    rib_head = (points[c7] + points[t1]) / 2 + np.array([17.0, 0.0, 0.0])
    got = assign_levels(np.vstack([points, rib_head]), detection_scores=np.r_[np.ones(len(names)), 0.6],
                        locked={0: "C6"})
    assert got[-1] == "" and got[:-1] == names
    # The same lateral offset on a vertebra whose neighbours stand two steps apart is a real (scoliotic)
    # body, not a squeezed one.
    bent = points.copy()
    bent[t1] += np.array([17.0, 0.0, 0.0])
    assert not order_along_spine(bent)[1].any()


def test_low_detection_score_is_spurious():
    names = levels_between("L1", "L5")
    got = assign_levels(spine_points(names), region_scores(names), detection_scores=[1, 1, 0.01, 1, 1])
    assert got[2] == ""
    assert got[:2] + got[3:] == ["L1", "L2", "L4", "L5"]


# --- anchors ----------------------------------------------------------------------------------------
def test_one_locked_level_names_the_rest_without_scores():
    names = levels_between("T8", "L5")
    got = assign_levels(spine_points(names), locked={names.index("L3"): "L3"})
    assert got == names
    # the same geometry anchored one level higher moves everything with it
    shifted = assign_levels(spine_points(names), locked={names.index("L3"): "L2"})
    assert shifted[names.index("L3") + 1] == "L3" and shifted[-1] == "L4"


def test_locked_label_beats_conflicting_scores():
    names = levels_between("T10", "L5")
    wrong = levels_between("T11", "L5") + ["S1"]          # scores say every body is one level lower
    l3 = names.index("L3")
    got = assign_levels(spine_points(names), level_scores(wrong), locked={l3: "L3"})
    assert got[l3] == "L3"
    labelled = [anatomy.order_index(g) for g in got if g]
    assert labelled == sorted(set(labelled))               # strictly cranio-caudal, no duplicates
    assert got[l3 - 1] in ("L2", "") and got[l3 + 1] in ("L4", "")


def test_anchors_out_of_order_are_still_kept():
    names = levels_between("L1", "L5")
    got = assign_levels(spine_points(names), locked={0: "L4", 4: "L2"})
    assert got[0] == "L4" and got[4] == "L2"
    assert len([g for g in got if g]) == len(set(g for g in got if g))


# --- transitional vertebrae ---------------------------------------------------------------------------
def test_t13_only_when_thirteen_thoracic_bodies():
    with_t13 = levels_between("C6", "L3", t13=True)
    assert with_t13.count("T13") == 1
    assert assign_levels(spine_points(with_t13), region_scores(with_t13)) == with_t13
    usual = levels_between("C6", "L3")
    assert assign_levels(spine_points(usual), region_scores(usual)) == usual
    assert "T13" not in assign_levels(spine_points(with_t13), region_scores(with_t13), allow_transitional=False)


def test_l6_only_when_six_lumbar_bodies():
    with_l6 = levels_between("T10", "S1", l6=True)
    # a detector that knows the sacrum: its S1 is sacral, the sixth lumbar-looking body is L6
    assert assign_levels(spine_points(with_l6), region_scores(with_l6, "CTLS")) == with_l6
    usual = levels_between("T10", "S1")
    assert assign_levels(spine_points(usual), region_scores(usual, "CTLS")) == usual


def test_lumbar_looking_sacrum_of_a_ctl_detector_becomes_s1():
    names = levels_between("T11", "S1")
    claimed = names[:-1] + ["L5"]                         # a C/T/L head calls the sacrum lumbar
    assert assign_levels(spine_points(names), region_scores(claimed)) == names


# --- partial fields of view, curvature, orientation ----------------------------------------------------
@pytest.mark.parametrize("first,last", [("C3", "T3"), ("T2", "T8"), ("T12", "L4")])
def test_partial_field_of_view(first, last):
    names = levels_between(first, last)
    assert assign_levels(spine_points(names), level_scores(names, seed=1)) == names
    if names[0][0] != names[-1][0]:                       # a region boundary in view: region scores suffice
        assert assign_levels(spine_points(names), region_scores(names)) == names


def test_strongly_curved_spine():
    names = levels_between("C2", "L5")
    points = spine_points(names, curve_mm=45.0)
    assert np.ptp(points[:, 1]) > 80                      # really bent
    assert assign_levels(points, region_scores(names)) == names
    assert assign_levels(points, locked={names.index("T1"): "T1"}) == names


def test_horizontal_and_oblique_spines():
    names = levels_between("T5", "L5")
    points = spine_points(names, curve_mm=20.0)
    horizontal = (points - points.mean(0)) @ rotation([0, 1, 0], 90).T   # head now points to the right
    assert np.ptp(horizontal[:, 2]) < 0.2 * np.ptp(horizontal[:, 0])
    assert assign_levels(horizontal, region_scores(names)) == names
    # upside down along the table with only geometry: two anchors tell the direction
    flipped = (points - points.mean(0)) @ rotation([0, 1, 0], -90).T
    assert assign_levels(flipped, locked={2: "T7", 8: "L1"}) == names
    oblique = (points - points.mean(0)) @ rotation([1, 1, 0.3], 35).T
    assert assign_levels(oblique, region_scores(names)) == names


def test_small_patient_scale():
    names = levels_between("T9", "L5")
    assert assign_levels(spine_points(names, scale=0.75), region_scores(names)) == names


def test_default_without_scores_or_anchors_ends_at_l5():
    names = levels_between("T9", "L5")
    assert assign_levels(spine_points(names)) == names


def test_bad_scores_shape_is_an_input_error():
    with pytest.raises(InputError):
        assign_levels(spine_points(["L1", "L2"]), np.ones((2, 3)))
    assert assign_levels(np.zeros((0, 3))) == []


# --- SpineResult adapters -----------------------------------------------------------------------------------
def _result(names: list[str], with_scores: bool = False) -> SpineResult:
    points = spine_points(names)
    scores = region_scores(names)
    vertebrae = [Vertebra("", p, instance=i + 1, score=0.9,
                          level_scores=dict(zip(anatomy.ORDER, map(float, scores[i]))) if with_scores else None)
                 for i, p in enumerate(points)]
    return SpineResult("synthetic", vertebrae=vertebrae)


def test_relabel_result_keeps_locked_and_records_changes():
    names = levels_between("T10", "L5")
    result = _result(names, with_scores=True)
    relabel_result(result)
    assert [v.level for v in result.vertebrae] == names
    (entry,) = [c for c in result.corrections if c["action"] == "relabel"]
    assert {(c["from"], c["to"]) for c in entry["changes"]} == {("", n) for n in names}
    relabel_result(result)
    assert len(result.corrections) == 1                   # nothing changed, nothing recorded
    result.vertebrae[0].level, result.vertebrae[0].locked = "T8", True   # a person's (odd) statement
    relabel_result(result)
    assert result.vertebrae[0].level == "T8"
    got = [anatomy.order_index(v.level) for v in result.vertebrae if v.level]
    assert got == sorted(set(got)) and result.vertebrae[1].level == "T9"


def test_set_level_makes_the_others_follow():
    names = levels_between("T10", "L5")
    result = _result(names)
    relabel_result(result)
    target = result.vertebrae[3]
    set_level(result, target, "L2")                       # one level lower than the geometry default
    assert target.locked and target.level == "L2"
    assert [v.level for v in result.vertebrae] == levels_between("T11", "L5") + ["S1"]
    assert any(c["action"] == "set_level" and c["level"] == "L2" for c in result.corrections)
    set_level(result, target, "L1")                       # correct it back: everything follows again
    assert [v.level for v in result.vertebrae] == names
    with pytest.raises(InputError):
        set_level(result, result.vertebrae[0], "L1")      # L1 is fixed on another vertebra
    with pytest.raises(InputError):
        set_level(result, result.vertebrae[0], "X9")


def test_relabel_markups_file_round_trip(tmp_path):
    from SpineLabelLib.io.markups import read_markups, write_markups

    names = levels_between("T11", "L5")
    points = spine_points(names)
    vertebrae = [Vertebra("", p, score=1.0, source="manual") for p in points]
    vertebrae[2].level, vertebrae[2].locked = "L1", True
    vertebrae.append(Vertebra("", points[3] + [0, 70.0, 0], score=1.0, source="manual"))   # off the column
    src, out = tmp_path / "in.mrk.json", tmp_path / "out.mrk.json"
    write_markups(vertebrae, src)
    got = relabel_markups_file(src, out)
    assert got == names + [""]
    back = read_markups(out)
    assert [v.level for v in back] == names + [""]
    assert back[2].locked and not back[0].locked
    assert np.allclose([v.centroid_ras for v in back], [v.centroid_ras for v in vertebrae], atol=1e-6)
