"""The CT rib detector on phantoms (oblique grids, anisotropic voxels), with and without ribs."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.phantom import generate_phantom
from SpineLabelLib.phantom.reconstruction import thick_slices
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


def test_at_thick_slices_the_first_rib_is_t1s_not_c7s():
    """At 5 mm slices C7's box reaches T1's first rib (lung-dx-a0001, lidc-0001 at body centroids);
    a rib counts for the vertebra its head is nearest."""
    phantom = generate_phantom(["C5", "C6", "C7", "T1", "T2", "T3"], "ct", spacing=(0.8, 0.8, 1.0), seed=4,
                               rotation_deg=(8, 0, 0))
    names, points = truth_points(phantom)
    evidence = rib_evidence(thick_slices(phantom.image, 5.0), points, "ct")
    assert [n for n, e in zip(names, evidence) if e >= 0.5] == ["T1", "T2", "T3"]


def test_a_rib_belongs_to_the_vertebra_its_head_is_nearest():
    from SpineLabelLib.naming.ribs import fill_between, owner_of

    points = np.array([[0, 0, 50.0], [0, 0, 25.0], [0, 0, 0.0]])
    frame = vertebra_frame(points, 1)
    assert owner_of(6.0, frame, points, 1) == 1            # head in the upper half of its own body
    assert owner_of(-18.0, frame, points, 1) == 2           # the next vertebra's rib reaching up
    assert owner_of(30.0, frame, points, 1) == 0
    assert owner_of(-18.0, vertebra_frame(points, 2), points, 2) is None   # below the last: not in the list
    ribbed = np.array([[True, True], [False, False], [True, False], [False, False]])
    assert fill_between(ribbed).any(axis=1).tolist() == [True, True, True, False]


def test_a_rib_goes_to_a_neighbour_only_if_that_neighbour_sees_a_rib_there():
    from SpineLabelLib.naming.ribs import credit_ribs

    # C7's box (0) reaches T1's first rib (head nearest 1), and T1's box sees ribs too: T1's.
    # T12's box (2) finds its low 12th rib nearest L1 (3), whose box finds none: it stays T12's.
    found = {(0, 0): [(-17.0, 1)], (1, 0): [(6.0, 1)], (2, 1): [(-16.0, 3)], (3, 1): []}
    assert credit_ribs(found, 4).tolist() == [[False, False], [True, False], [False, True], [False, False]]


def test_a_body_cut_by_the_field_of_view_is_not_called_rib_less(thoracolumbar):
    from SpineLabelLib.core.volume import Volume

    names, points = truth_points(thoracolumbar)
    image = thoracolumbar.image
    k_of_t11 = int(round((np.linalg.inv(image.ijk_to_ras) @ np.r_[points[0], 1.0])[2]))
    # Keep the slices from T11's centre down: the image ends there, T11's upper half is out of view.
    k_grows_up = image.ijk_to_ras[2, 2] > 0
    keep = slice(0, k_of_t11 + 1) if k_grows_up else slice(k_of_t11, None)
    matrix = image.ijk_to_ras.copy()
    matrix[:3, 3] = image.kji_to_ras(np.array([[float(keep.start or 0), 0, 0]]))[0]
    cut = Volume(image.array[keep], matrix)
    evidence = rib_evidence(cut, points, "ct")
    assert not (evidence[0] < 0.5)                          # unknown or rib-bearing, never "no rib"
    assert evidence[1] >= 0.5 and evidence[2] < 0.5
