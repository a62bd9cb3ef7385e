"""Spine phantom generator: geometry, truth, intensities, files. Small volumes (crop_to_spine) only."""
import json

import numpy as np
import pytest
from scipy import ndimage

from SpineLabelLib.core import anatomy
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.phantom import CANCELLOUS, CORTICAL, CSF, FAT, MUSCLE, ANNULUS, NUCLEUS, AIR, Phantom, generate_phantom, genant_grade, make_phantom, write_phantom
from SpineLabelLib.core.volume import load_volume

LUMBAR = ["L1", "L2", "L3"]


def small(levels=LUMBAR, **kwargs) -> Phantom:
    kwargs.setdefault("crop_to_spine", True)
    return generate_phantom(levels, **kwargs)


def column_height(phantom: Phantom, level: str, fraction_from_anterior: float) -> float:
    """Voxel measurement on an axis-aligned phantom: label run length along k at one AP position."""
    entry = phantom.vertebra(level)
    centre, anterior = np.array(entry["center_ras"]), np.array(entry["axes_ras"]["anterior"])
    y = entry["depth_mm"] * (0.5 - fraction_from_anterior)
    k, j, i = np.round(phantom.labels.ras_to_kji(centre + y * anterior)[0]).astype(int)
    column = phantom.labels.array[:, j, i] == entry["code"]
    runs = np.flatnonzero(column)
    assert len(runs) and np.all(np.diff(runs) == 1), "body column must be one contiguous run"
    return len(runs) * phantom.labels.spacing[2]


def test_deterministic_per_seed():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.truth == b.truth
    assert not np.array_equal(a.image.array, c.image.array)


def test_labels_are_requested_levels_in_cranio_caudal_order():
    levels = ["T11", "T12", "L1", "L2"]
    phantom = small(levels, lordosis_deg=20, scoliosis_deg=10)
    codes = sorted(int(c) for c in np.unique(phantom.labels.array) if c)
    assert codes == sorted(anatomy.code_of(n) for n in levels)
    superior = [v["centroid_ras"][2] for v in phantom.truth["vertebrae"]]
    assert [v["level"] for v in phantom.truth["vertebrae"]] == levels
    assert np.all(np.diff(superior) < -15)
    assert phantom.image.array.dtype == np.float32 and phantom.labels.array.dtype == np.uint8
    result = phantom.to_result("case")
    assert result.levels == levels and all(v.source == "phantom" for v in result.vertebrae)


def test_centroid_truth_is_label_mask_centroid():
    phantom = small(rotation_deg=(15, -10, 25), spacing=(0.9, 1.1, 1.3))
    labels = phantom.labels.array
    for entry in phantom.truth["vertebrae"]:
        kji = ndimage.center_of_mass(labels == entry["code"])
        np.testing.assert_allclose(entry["centroid_ras"], phantom.labels.kji_to_ras(np.array(kji))[0], atol=1e-6)
        # an unfractured body is symmetric about its construction centre
        assert np.linalg.norm(np.subtract(entry["centroid_ras"], entry["center_ras"])) < 1.0


@pytest.mark.parametrize("fracture", [None, ("wedge", 30), ("biconcave", 35), ("crush", 25)])
def test_analytic_heights_match_voxels(fracture):
    fractures = {"L1": fracture} if fracture else None
    phantom = small(["T12", "L1", "L2"], spacing=0.5, fractures=fractures, size_jitter=0.05, seed=2)
    for level in ("L1", "L2"):
        entry = phantom.vertebra(level)
        for fraction, key in ((0.1, "height_anterior_mm"), (0.5, "height_middle_mm"), (0.9, "height_posterior_mm")):
            assert abs(column_height(phantom, level, fraction) - entry[key]) <= 0.6, (level, key)


def test_wedge_fracture_truth_and_genant():
    phantom = small(["T12", "L1", "L2"], fractures={"L1": ("wedge", 30)})
    l1, l2 = phantom.vertebra("L1"), phantom.vertebra("L2")
    assert l1["height_anterior_mm"] / l1["height_posterior_mm"] == pytest.approx(0.7, abs=1e-9)
    assert l1["fracture_type"] == "wedge" and l1["fracture_percent"] == 30 and l1["genant_grade"] == 2
    assert l2["fracture_type"] is None and l2["genant_grade"] == 0
    assert l2["height_anterior_mm"] == pytest.approx(l2["height_posterior_mm"])
    biconcave = small(["L1"], fractures={"L1": ("biconcave", 45)}).vertebra("L1")
    assert biconcave["height_middle_mm"] / biconcave["height_posterior_mm"] == pytest.approx(0.55)
    assert biconcave["genant_grade"] == 3
    crush = small(["L1"], fractures={"L1": ("crush", 22)}).vertebra("L1")
    assert crush["height_posterior_mm"] == pytest.approx(0.78 * crush["height_expected_mm"])
    assert crush["genant_grade"] == 1


def test_genant_grade_boundaries():
    assert [genant_grade(p) for p in (None, 0, 19.9, 20, 24.9, 25, 40, 40.1, 60)] == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_oblique_anisotropic_centroids_inside_their_segments():
    phantom = small(["T12", "L1", "L2", "L3"], spacing=(0.8, 0.8, 2.0), rotation_deg=(20, -10, 30),
                    lordosis_deg=25, scoliosis_deg=15, angle_jitter_deg=3)
    directions = phantom.image.directions
    assert np.abs(directions - np.diag(np.diag(directions))).max() > 0.2   # really oblique
    np.testing.assert_allclose(phantom.image.spacing, (0.8, 0.8, 2.0))
    for entry in phantom.truth["vertebrae"]:
        kji = np.round(phantom.labels.ras_to_kji(entry["centroid_ras"])[0]).astype(int)
        assert phantom.labels.array[tuple(kji)] == entry["code"]
        assert np.linalg.norm(np.subtract(entry["centroid_ras"], entry["center_ras"])) < 2.0


def test_direction_override():
    swap = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])    # i -> S, j -> R, k -> A
    phantom = small(["L2"], direction=swap)
    np.testing.assert_allclose(phantom.image.directions, swap, atol=1e-12)
    assert phantom.labels.array.any()
    with pytest.raises(InputError):
        small(["L2"], direction=np.ones((3, 3)))


@pytest.mark.parametrize("levels", [["T12", "T13", "L1"], ["L4", "L5", "L6", "S1"]])
def test_transitional_levels(levels):
    phantom = small(levels)
    assert [v["level"] for v in phantom.truth["vertebrae"]] == levels
    assert set(np.unique(phantom.labels.array)) - {0} == {anatomy.code_of(n) for n in levels}


def test_partial_field_of_view():
    full = small(LUMBAR)
    cut = small(LUMBAR, field_of_view=(8.0, 10.0))
    assert [v["partial"] for v in full.truth["vertebrae"]] == [False, False, False]
    assert [v["partial"] for v in cut.truth["vertebrae"]] == [True, False, True]
    assert cut.vertebra("L1")["voxel_count"] < full.vertebra("L1")["voxel_count"]
    assert cut.vertebra("L2")["voxel_count"] == full.vertebra("L2")["voxel_count"]
    # heights stay analytic (the anatomy, not the visible part)
    assert cut.vertebra("L1")["height_posterior_mm"] == full.vertebra("L1")["height_posterior_mm"]
    gone = small(LUMBAR, field_of_view=(50.0, 0.0))
    assert gone.truth["outside_field_of_view"] == ["L1"]


def _class_means(phantom: Phantom) -> dict[int, float]:
    tissues, image = phantom.tissues.array, phantom.image.array
    return {c: float(image[tissues == c].mean()) for c in np.unique(tissues)}


def test_intensities_per_modality():
    kwargs = dict(noise=0.0, bias_field=False, crop_to_spine=False, lateral_fov_mm=120, levels=["L2", "L3"])
    ct = _class_means(generate_phantom(modality="ct", **kwargs))
    assert 700 <= ct[CORTICAL] <= 1000 and 150 <= ct[CANCELLOUS] <= 250
    assert ct[CORTICAL] > ct[CANCELLOUS] > ct[ANNULUS] > ct[MUSCLE] > ct[FAT] > ct[AIR] == -1000
    t1 = _class_means(generate_phantom(modality="t1", **kwargs))
    assert t1[FAT] > t1[CANCELLOUS] > max(t1[ANNULUS], t1[NUCLEUS])
    t2 = _class_means(generate_phantom(modality="t2", **kwargs))
    assert min(t2[NUCLEUS], t2[CSF]) > max(t2[CANCELLOUS], t2[CORTICAL])
    assert t2[NUCLEUS] > t2[ANNULUS]
    rand = generate_phantom(modality="random", seed=1, **kwargs)
    assert rand.image.array.min() >= 0


def test_cervical_and_sacrum_levels():
    phantom = small(["C1", "C2", "C3"])
    c1, c2 = phantom.vertebra("C1"), phantom.vertebra("C2")
    assert c1["height_middle_mm"] is None and c1["voxel_count"] > 0
    assert c2["height_middle_mm"] > c2["height_posterior_mm"]          # the dens continues the middle column
    s1 = small(["L5", "S1"]).vertebra("S1")
    assert s1["height_posterior_mm"] == pytest.approx(s1["height_expected_mm"])


def test_bad_input_is_refused():
    with pytest.raises(InputError):
        small(["L1", "L3"])
    with pytest.raises(InputError):
        small(["L2", "L1"])
    with pytest.raises(InputError):
        small(["X9"])
    with pytest.raises(InputError):
        small(LUMBAR, fractures={"L1": ("wedge", 80)})
    with pytest.raises(InputError):
        small(LUMBAR, fractures={"L4": ("crush", 20)})
    with pytest.raises(InputError):
        small(LUMBAR, modality="pet")
    assert [v["level"] for v in small(["T12", "L1"]).truth["vertebrae"]] == ["T12", "L1"]   # T13 may be skipped


def test_write_phantom(tmp_path):
    phantom = small(["L2", "L3"], rotation_deg=(0, 0, 30), spacing=(1.0, 1.2, 1.5))
    paths = write_phantom(phantom, tmp_path, "case 1")
    image = load_volume(paths["image"])
    np.testing.assert_allclose(image.ijk_to_ras, phantom.image.ijk_to_ras, atol=1e-4)
    labels = load_volume(paths["labels"])
    assert np.array_equal(labels.array, phantom.labels.array)
    truth = json.loads(paths["truth"].read_text())
    assert truth["case_id"] == "case_1" and [v["level"] for v in truth["vertebrae"]] == ["L2", "L3"]
    assert truth["vertebrae"][0]["centroid_ras"] == pytest.approx(phantom.truth["vertebrae"][0]["centroid_ras"])


def test_physiological_curves_bend_the_regions():
    phantom = small(["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"], physiological_curves=True,
                    spacing=1.5)
    superior = {v["level"]: np.array(v["axes_ras"]["superior"]) for v in phantom.truth["vertebrae"]}
    # lumbar lordosis: from L1 to S1 the superior axis turns from pointing backwards to pointing forwards
    assert superior["L1"][1] < superior["S1"][1] - 0.5
    assert [v["level"] for v in phantom.truth["vertebrae"]][-1] == "S1"
    assert not phantom.truth["vertebrae"][-1]["partial"]


def test_make_phantom_gives_a_spine_result():
    result = make_phantom("L2-L3", spacing=2.0, crop_to_spine=True)
    assert result.levels == ["L2", "L3"] and result.modality == "ct"
    assert result.instances.shape == result.image.array.shape


def test_write_phantom_slicer_files_when_writers_exist(tmp_path):
    import SpineLabelLib.io.segfile  # noqa: F401
    import SpineLabelLib.io.markups  # noqa: F401
    from SpineLabelLib.io.markups import read_markups

    phantom = small(["L2", "L3"], spacing=1.5)
    paths = write_phantom(phantom, tmp_path, "ph")
    assert paths["segmentation"].name == "ph.seg.nrrd" and paths["segmentation"].stat().st_size > 0
    points = read_markups(paths["markups"])
    assert [p.level for p in points] == ["L2", "L3"]
    np.testing.assert_allclose(points[0].centroid_ras, phantom.vertebra("L2")["centroid_ras"], atol=1e-3)


def test_texture_and_blur_change_only_the_image():
    plain = small(["L2", "L3"], modality="t1", seed=5)
    rich = small(["L2", "L3"], modality="t1", seed=5, texture=0.15, blur_mm=0.7)
    again = small(["L2", "L3"], modality="t1", seed=5, texture=0.15, blur_mm=0.7)
    assert np.array_equal(rich.image.array, again.image.array)
    assert np.array_equal(rich.labels.array, plain.labels.array) and rich.truth["vertebrae"] == plain.truth["vertebrae"]
    assert np.abs(rich.image.array - plain.image.array).mean() > 5
    means = _class_means(rich)
    assert means[FAT] > means[CANCELLOUS] > means[ANNULUS]
