"""Intervertebral discs: naming from neighbours, label values, terminology."""
from __future__ import annotations

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
