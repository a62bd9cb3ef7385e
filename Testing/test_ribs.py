"""The CT rib detector on phantoms (oblique grids, anisotropic voxels), with and without ribs."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.phantom import generate_phantom
from SpineLabelLib.naming.ribs import rib_evidence, vertebra_frame


def truth_points(phantom) -> tuple[list[str], np.ndarray]:
    entries = phantom.truth["vertebrae"]
    return [v["level"] for v in entries], np.array([v["centroid_ras"] for v in entries])


@pytest.fixture(scope="module")
def thoracolumbar():
    return generate_phantom(["T11", "T12", "L1", "L2"], "ct", spacing=(0.9, 1.1, 2.5), seed=2,
                            rotation_deg=(12, -8, 6))


def test_rib_bearing_vertebrae_are_told_from_the_lumbar_ones(thoracolumbar):
    names, points = truth_points(thoracolumbar)
    evidence = rib_evidence(thoracolumbar.image, points, "ct")
    assert names == ["T11", "T12", "L1", "L2"]
    assert (evidence[:2] >= 0.5).all() and (evidence[2:] < 0.5).all()


def test_cervicothoracic_junction_first_rib_on_t1():
    phantom = generate_phantom(["C6", "C7", "T1", "T2"], "ct", spacing=(1.0, 1.0, 2.0), seed=4)
    names, points = truth_points(phantom)
    evidence = rib_evidence(phantom.image, points, "ct")
    assert [n for n, e in zip(names, evidence) if e >= 0.5] == ["T1", "T2"]


def test_it_is_the_ribs_that_count_not_the_level(thoracolumbar):
    ribless = generate_phantom(["T11", "T12", "L1", "L2"], "ct", spacing=(0.9, 1.1, 2.5), seed=2,
                               rotation_deg=(12, -8, 6), ribs=False)
    _, points = truth_points(ribless)
    assert (rib_evidence(ribless.image, points, "ct") < 0.5).all()


def test_sacral_alae_are_not_ribs():
    phantom = generate_phantom(["L4", "L5", "S1"], "ct", spacing=(1.2, 1.2, 2.0), seed=5)
    _, points = truth_points(phantom)
    assert (rib_evidence(phantom.image, points, "ct") < 0.5).all()


def test_no_rib_evidence_on_mri_or_outside_the_field_of_view(thoracolumbar):
    names, points = truth_points(thoracolumbar)
    assert np.isnan(rib_evidence(thoracolumbar.image, points, "mr")).all()
    narrow = generate_phantom(["T12", "L1"], "ct", spacing=(1.0, 1.0, 2.0), seed=2, lateral_fov_mm=70)
    _, points = truth_points(narrow)
    assert np.isnan(rib_evidence(narrow.image, points, "ct")).all()       # unknown, not "no rib"


def test_vertebra_frame_is_right_handed_and_follows_the_column():
    points = np.array([[0, 0, 50.0], [0, 10, 25.0], [0, 20, 0.0]])
    frame = vertebra_frame(points, 1)
    assert np.allclose(frame.T @ frame, np.eye(3))
    assert np.isclose(np.linalg.det(frame), 1.0)
    assert frame[2, 2] > 0.9 and frame[0, 0] > 0.99          # z cranial, x to the right
