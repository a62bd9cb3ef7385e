"""Intervertebral discs: naming from neighbours, label values, terminology."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import discs


@pytest.mark.parametrize("upper, lower, name, value", [
    ("L4", "L5", "L4-L5", 123), ("L5", "S1", "L5-S1", 124), ("C2", "C3", "C2-C3", 102),
    ("T12", "L1", "T12-L1", 119), ("T12", "T13", "T12-T13", 119), ("T13", "L1", "T13-L1", 128),
    ("L5", "L6", "L5-L6", 124), ("L6", "S1", "L6-S1", 125), ("C7", "T1", "C7-T1", 107),
])
def test_disc_named_and_valued_from_its_neighbours(upper, lower, name, value):
    assert discs.disc_name(upper, lower) == name
    assert discs.label_of(name) == value
    assert discs.upper_of_label(value) == upper
    assert discs.split_name(name) == (upper, lower)


@pytest.mark.parametrize("upper, lower", [("L3", "L5"), ("L5", "L4"), ("C1", "C2"), ("L4", "L4"), ("T11", "L1")])
def test_no_disc_between_levels_that_are_not_neighbours(upper, lower):
    assert not discs.is_adjacent(upper, lower)
    with pytest.raises(ValueError):
        discs.disc_name(upper, lower)


def test_discs_between_follow_the_order_and_skip_gaps():
    assert discs.discs_between(["L5", "L4", "S1", "L2", "L1"]) == ["L1-L2", "L4-L5", "L5-S1"]
    assert discs.discs_between(["T12", "T13", "L1"]) == ["T12-T13", "T13-L1"]
    assert discs.discs_between(["L5", "L6", "S1"]) == ["L5-L6", "L6-S1"]
    assert discs.discs_between(["C1", "C2", "C3"]) == ["C2-C3"]


def test_terminology_level_code_or_local_code_never_a_vertebra_code():
    from SpineLabelLib.core import anatomy

    entry = discs.terminology_entry("L4-L5").split("~")
    assert entry[2] == "SCT^84020006^L4/L5 disc"
    transitional = discs.terminology_entry("T13-L1").split("~")[2]
    assert transitional.startswith(discs.LOCAL_SCHEME + "^")
    codes = {discs.terminology_entry(n).split("~")[2].split("^")[1] for n in discs.SNOMED_BY_DISC}
    assert len(codes) == len(discs.SNOMED_BY_DISC)
    assert not codes & set(anatomy.SNOMED_BY_NAME.values())


def test_disc_colours_fixed_and_apart_from_neighbours():
    assert discs.colour("L4-L5") == discs.colour("L4-L5")
    assert discs.colour("L4-L5") != discs.colour("L5-S1")


# --- the disc layer follows its vertebrae ------------------------------------------------------------
@pytest.fixture(scope="module")
def lumbar_phantom():
    from SpineLabelLib.phantom.generate import generate_phantom

    return generate_phantom(["L1", "L2", "L3", "L4", "L5", "S1"], "t2", crop_to_spine=True, seed=2)


def _names(result):
    from SpineLabelLib.core.disc_layer import result_discs

    return [d.name for d in result_discs(result)]


def test_phantom_discs_are_labelled_between_their_bodies(lumbar_phantom):
    values = sorted(int(v) for v in set(lumbar_phantom.discs.array.ravel().tolist()) - {0})
    assert values == [120, 121, 122, 123, 124]
    assert not ((lumbar_phantom.discs.array > 0) & (lumbar_phantom.labels.array > 0)).any()
    assert [d["name"] for d in lumbar_phantom.truth["discs"]] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]


def test_relabelling_a_vertebra_renames_the_discs_next_to_it(lumbar_phantom):
    from SpineLabelLib.correction import edits

    result = lumbar_phantom.to_result("p", with_discs=True)
    assert _names(result) == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    voxels = result.layers["discs"].copy()
    edits.set_level(result, "L1", "T12")            # the others follow anatomical order
    assert _names(result) == ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5"]
    assert np.array_equal(result.layers["discs"], voxels)     # renaming never touches voxels


def test_deleting_a_spurious_vertebra_merges_its_discs(lumbar_phantom):
    from SpineLabelLib.correction import edits

    result = lumbar_phantom.to_result("p", with_discs=True)
    l2_l3 = result.layers["discs"] == result.by_level("L2").instance
    l3_l4 = result.layers["discs"] == result.by_level("L3").instance
    edits.delete_vertebra(result, "L3")
    merged = result.layers["discs"] == result.by_level("L2").instance
    assert np.array_equal(merged, l2_l3 | l3_l4)
    assert _names(result) == ["L1-L2", "L4-L5", "L5-S1"]      # L2 and L4 are no neighbours: not written
    for v, level in zip(sorted(result.vertebrae, key=lambda v: -v.centroid_ras[2]), ["L1", "L2", "L3", "L4", "L5"]):
        v.level = level                                        # the spurious body was the extra one
    assert _names(result) == ["L1-L2", "L2-L3", "L3-L4", "L4-L5"]
    from SpineLabelLib.core.disc_layer import result_discs
    assert np.array_equal(result.layers["discs"] == result_discs(result)[1].value, l2_l3 | l3_l4)


def test_deleting_the_lowest_vertebra_removes_its_disc(lumbar_phantom):
    from SpineLabelLib.correction import edits

    result = lumbar_phantom.to_result("p", with_discs=True)
    edits.delete_vertebra(result, "S1")
    assert _names(result) == ["L1-L2", "L2-L3", "L3-L4", "L4-L5"]
    assert not (result.layers["discs"] == result.by_level("L5").instance).any()
