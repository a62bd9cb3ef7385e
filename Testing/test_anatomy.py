import pytest

from SpineLabelLib.core import anatomy


def test_codes_follow_verse():
    assert anatomy.code_of("C1") == 1 and anatomy.code_of("T1") == 8 and anatomy.code_of("L1") == 20
    assert anatomy.code_of("L6") == 25 and anatomy.code_of("S1") == 26 and anatomy.code_of("T13") == 28
    assert all(anatomy.name_of(anatomy.code_of(n)) == n for n in anatomy.ORDER)


def test_order_places_transitional_levels():
    assert anatomy.ORDER.index("T13") == anatomy.ORDER.index("T12") + 1 == anatomy.ORDER.index("L1") - 1
    assert anatomy.ORDER.index("L6") == anatomy.ORDER.index("L5") + 1 == anatomy.ORDER.index("S1") - 1
    assert "T13" not in anatomy.STANDARD_ORDER and len(anatomy.STANDARD_ORDER) == 25


@pytest.mark.parametrize("text,expected", [
    ("T11-L3", ["T11", "T12", "L1", "L2", "L3"]),
    ("l4-s1", ["L4", "L5", "S1"]),
    ("C3", ["C3"]),
])
def test_parse_level_range(text, expected):
    assert anatomy.parse_level_range(text) == expected


def test_parse_level_range_options_and_errors():
    assert "T13" in anatomy.parse_level_range("T12-L1", t13=True)
    assert "L6" in anatomy.parse_level_range("L5-S1", l6=True)
    for bad in ("L3-T11", "X1-L2", "T11-L3-S1"):
        with pytest.raises(ValueError):
            anatomy.parse_level_range(bad)


def test_terminology_has_snomed_per_level():
    entry = anatomy.terminology_entry("L1").split("~")
    assert len(entry) == 7 and entry[2] == "SCT^66794005^L1 vertebra"
    assert "51282000" in anatomy.terminology_entry("T13")  # no own code: generic vertebra


def test_colours_distinct_between_neighbours():
    for upper, lower in zip(anatomy.ORDER, anatomy.ORDER[1:]):
        assert anatomy.COLOUR_BY_NAME[upper] != anatomy.COLOUR_BY_NAME[lower]


def test_body_sizes_grow_caudally_in_thoracolumbar_spine():
    heights = [anatomy.body_size(n).height for n in ("T1", "T6", "T12", "L3")]
    assert heights == sorted(heights)
