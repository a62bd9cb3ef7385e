"""The control point description codec shared by `.mrk.json` files and Slicer's point list."""
from __future__ import annotations

import pytest

from SpineLabelLib.core.result import Vertebra
from SpineLabelLib.io import point_description as codec


def test_encoded_fields_decode_back():
    vertebra = Vertebra("L2", [0.0, 0.0, 0.0], instance=7, score=0.93456, source="detector")
    decoded = codec.decode(codec.encode(vertebra))
    assert decoded == codec.PointDescription(score=pytest.approx(0.935), source="detector", instance=7)


def test_a_file_description_leaves_the_mask_link_out():
    text = codec.encode(Vertebra("L2", [0.0, 0.0, 0.0], instance=7, score=0.5), with_instance=False)
    assert "instance" not in text
    assert codec.decode(text).instance is None


@pytest.mark.parametrize("text, expected", [
    ("", codec.PointDescription()),
    (None, codec.PointDescription()),
    ("  score = 0.5 ;source=manual;  instance= 3 ", codec.PointDescription(0.5, "manual", 3)),
    ("score=high; source=guess; instance=-1", codec.PointDescription()),       # a person's typing
    ("note=checked by JD; score=1", codec.PointDescription(score=1.0)),
    ("instance=2.5", codec.PointDescription()),
])
def test_decoding_is_lenient(text, expected):
    assert codec.decode(text) == expected
