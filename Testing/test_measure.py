"""Measurements on shapes whose answer is known by construction (heights, distances, Genant, flags,
radiomics). Bodies are built analytically on oblique, anisotropic grids and tilted 0-20 degrees."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SpineLabelLib.measurement.bodies import genant, genant_grade, measure_result
from SpineLabelLib.measurement.radiomics import first_order
from SpineLabelLib.core.result import SpineResult, Vertebra
from SpineLabelLib.core.volume import Volume, make_affine

OBLIQUE = Rotation.from_euler("xyz", [8, -6, 5], degrees=True).as_matrix()
DEPTH, WIDTH = 32.0, 40.0


def body_shape(height_anterior, height_posterior, dip=0.0):
    """Height profile over the relative AP position t (0 anterior, 1 posterior): linear from Ha to
    Hp, minus a central end-plate dip (each end plate, zero outside 20-80 % of the depth)."""
    def profile(t):
        linear = height_anterior + (height_posterior - height_anterior) * t
        central = dip * np.clip(1 - ((t - 0.5) / 0.3) ** 2, 0, None)
        return linear, central
    return profile


def truth(profile, t):
    linear, central = profile(np.asarray(t, float))
    return linear - 2 * central


def make_case(bodies, spacing=(0.9, 0.8, 1.2), tilt_deg=0.0, axial_deg=0.0, size_mm=(60, 60, 80),
              image_values=None):
    """bodies: list of (level, bottom_mm, profile): a flat inferior end plate at `bottom_mm` along
    the spine's local superior axis; the superior end plate follows the profile. The spine frame is
    tilted `tilt_deg` about R (sagittal) and turned `axial_deg` about S; the grid is oblique."""
    spacing = np.asarray(spacing, float)
    size = np.round(np.asarray(size_mm) / spacing).astype(int)
    origin = -OBLIQUE @ (spacing * (size - 1) / 2) + np.array([0.3, -0.4, 0.2])
    grid = Volume(np.zeros(size[::-1], np.int16), make_affine(spacing, OBLIQUE, origin))
    frame = (Rotation.from_euler("z", axial_deg, degrees=True)
             * Rotation.from_euler("x", tilt_deg, degrees=True)).as_matrix()
    ras = grid.kji_to_ras(np.indices(grid.array.shape).reshape(3, -1).T)
    x, y, z = (ras @ frame).T                       # lateral, anterior, superior in the spine frame
    t = (DEPTH / 2 - y) / DEPTH
    labels = np.zeros(x.shape, np.uint16)
    vertebrae = []
    for n, (level, bottom, profile) in enumerate(bodies, start=1):
        linear, central = profile(np.clip(t, 0, 1))
        inside = ((np.abs(x) <= WIDTH / 2) & (t >= 0) & (t <= 1)
                  & (z >= bottom + central) & (z <= bottom + linear - central))
        labels[inside] = n
        vertebrae.append(Vertebra(level, frame @ [0, 0, bottom + 10], instance=n))
    labels = labels.reshape(grid.array.shape)
    image = (labels > 0) * 100 if image_values is None else image_values(labels)
    result = SpineResult("phantom", grid.with_array(image.astype(np.int16)), vertebrae, labels)
    result.sort_cranio_caudal()
    return result


def heights_of(row):
    return np.array([row["height_anterior_mm"], row["height_middle_mm"], row["height_posterior_mm"]])


@pytest.mark.parametrize("tilt, axial", [(0, 0), (10, 5), (20, -10)])
def test_box_heights_and_volume_on_oblique_anisotropic_grid(tilt, axial):
    case = make_case([("L3", -13, body_shape(26, 26))], tilt_deg=tilt, axial_deg=axial)
    row = measure_result(case).measurements[0]
    assert row["level"] == "L3" and row["flags"] == ""
    assert np.abs(heights_of(row) - 26).max() < 0.6
    assert abs(row["volume_mm3"] / (26 * DEPTH * WIDTH) - 1) < 0.03
    assert row["genant_grade"] == 0 and row["genant_type"] == ""


@pytest.mark.parametrize("tilt", [0, 15])
def test_wedge_prism_heights_ratio_and_grade(tilt):
    shape = body_shape(26 * 0.65, 26)                       # 35 % anterior collapse
    case = make_case([("L1", -13, shape)], spacing=(1.0, 1.0, 1.0), tilt_deg=tilt)
    row = measure_result(case).measurements[0]
    expected = truth(shape, [0.1, 0.5, 0.9])
    assert np.abs(heights_of(row) - expected).max() < 0.5
    assert row["wedge_ratio"] == pytest.approx(expected[0] / expected[2], abs=0.02)
    assert row["genant_type"] == "wedge" and row["genant_grade"] == 2


def test_biconcave_middle_height():
    shape = body_shape(26, 26, dip=4.0)                     # Hm = 18 mm, 31 % loss
    case = make_case([("L2", -13, shape)], spacing=(1.0, 1.0, 1.0), tilt_deg=8)
    row = measure_result(case).measurements[0]
    assert np.abs(heights_of(row) - [26, 18, 26]).max() < 0.5
    assert row["biconcave_ratio"] == pytest.approx(18 / 26, abs=0.02)
    assert (row["genant_type"], row["genant_grade"]) == ("biconcave", 2)


def test_crush_against_neighbours_and_distances():
    # L1, L2 (crushed to 60 %), L3 stacked with 8 mm gaps, tilted 12 degrees.
    bodies = [("L1", 26, body_shape(26, 26)), ("L2", 26 - 8 - 15.6, body_shape(15.6, 15.6)),
              ("L3", 26 - 8 - 15.6 - 8 - 26, body_shape(26, 26))]
    case = make_case(bodies, spacing=(1.0, 1.0, 1.0), tilt_deg=12, size_mm=(60, 60, 110))
    result = measure_result(case)
    rows = {row["level"]: row for row in result.measurements}
    assert [row["level"] for row in result.measurements] == ["L1", "L2", "L3"]
    assert rows["L2"]["crush_ratio"] == pytest.approx(0.6, abs=0.03)
    assert (rows["L2"]["genant_type"], rows["L2"]["genant_grade"]) == ("crush", 2)
    assert rows["L1"]["genant_grade"] == 0 and rows["L3"]["genant_grade"] == 0
    assert [(d["upper"], d["lower"]) for d in result.distances] == [("L1", "L2"), ("L2", "L3")]
    for d in result.distances:
        for name in ("anterior", "middle", "posterior"):
            assert d[f"{name}_distance_mm"] == pytest.approx(8.0, abs=0.5)


def test_lines_are_in_the_mid_sagittal_plane_and_match_heights():
    case = make_case([("L4", -13, body_shape(22, 26))], tilt_deg=10)
    row = measure_result(case).measurements[0]
    lines = row["lines_ras"]
    assert list(lines) == ["anterior", "middle", "posterior"]
    for name, key in zip(lines, ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")):
        top, bottom = np.asarray(lines[name])
        assert np.linalg.norm(top - bottom) == pytest.approx(row[key], abs=0.01)
        assert top[2] > bottom[2]                            # superior end first
        assert abs(top[0]) < 0.5                             # x = 0 is the body's mid-sagittal plane
    assert lines["anterior"][0][1] > lines["posterior"][0][1]   # anterior line lies towards +A


def test_body_touching_border_is_flagged_without_heights():
    case = make_case([("L5", -35, body_shape(26, 26))], size_mm=(60, 60, 60))   # cut by the FOV
    row = measure_result(case).measurements[0]
    assert "touches_border" in row["flags"]
    assert row["height_anterior_mm"] is None and row["height_posterior_mm"] is None
    assert row["genant_grade"] is None and row["volume_mm3"] is None


def test_fragment_is_flagged_too_small():
    case = make_case([("L2", -2, lambda t: (np.full_like(t, 3.0), np.zeros_like(t)))])
    case.instances[:, :, : case.instances.shape[2] // 2] = 0           # half a thin slab
    row = measure_result(case).measurements[0]
    assert "too_small" in row["flags"] and row["height_middle_mm"] is None


def test_a_body_of_one_voxel_is_flagged_not_a_crash():
    """A detector may leave a one-voxel speck: it has no principal axes, yet the case must finish."""
    case = make_case([("L2", -2, lambda t: (np.full_like(t, 3.0), np.zeros_like(t)))])
    speck = np.argwhere(case.instances == 1)[0]
    case.instances[:] = 0
    case.instances[tuple(speck)] = 1
    row = measure_result(case).measurements[0]
    assert "too_small" in row["flags"] and row["height_middle_mm"] is None


def test_measurement_keys_in_contract_order():
    row = measure_result(make_case([("L3", -13, body_shape(26, 26))])).measurements[0]
    assert list(row) == [
        "level", "code", "r_mm", "a_mm", "s_mm", "volume_mm3", "height_anterior_mm", "height_middle_mm",
        "height_posterior_mm", "wedge_ratio", "biconcave_ratio", "crush_ratio", "height_loss_pct",
        "genant_grade", "genant_type", "mean_positive", "skewness", "kurtosis", "entropy",
        "mean_positive_midsagittal", "skewness_midsagittal", "kurtosis_midsagittal",
        "entropy_midsagittal", "confidence", "flags", "lines_ras", "depth_mm", "frame_ras"]


@pytest.mark.parametrize("loss, grade", [(0, 0), (19.999, 0), (20, 1), (24.999, 1), (25, 2), (40, 2),
                                         (40.001, 3), (75, 3)])
def test_genant_grade_thresholds(loss, grade):
    assert genant_grade(loss) == grade


def test_genant_type_and_loss_reference():
    assert genant(15, 24, 20, 20)[1:] == (2, "wedge")                   # 25 % anterior loss
    assert genant(20, 16, 20, 20) == pytest.approx((20.0, 1, "biconcave"))
    loss, grade, kind = genant(14, 14, 14, 20)                            # all heights 30 % down
    assert (kind, grade) == ("crush", 2) and loss == pytest.approx(30)
    assert genant(14, 14, 14, None) == (0.0, 0, "")                     # no crush reference


def test_radiomics_known_distribution():
    two_level = first_order(np.r_[np.zeros(500), np.full(500, 100.0)])
    assert two_level["mean_positive"] == pytest.approx(100)
    assert two_level["skewness"] == pytest.approx(0, abs=1e-9)
    assert two_level["kurtosis"] == pytest.approx(1.0)                 # Pearson, not excess
    assert two_level["entropy"] == pytest.approx(1.0)                  # bits
    four = first_order(np.repeat([-5.0, 1.0, 2.0, 3.0], 100))
    assert four["entropy"] == pytest.approx(2.0)
    assert four["mean_positive"] == pytest.approx(2.0)
    assert first_order(np.full(10, 7.0))["skewness"] is None


def test_radiomics_inside_mask_and_mid_sagittal_slice():
    # Intensity 100 in the left half of the body, 300 in the right half: the 3-D mask sees both
    # (skewness 0, entropy 1 bit); the mid-sagittal slice sits on the boundary.
    def image(labels):
        values = np.where(labels > 0, 100, -50).astype(np.int16)
        values[..., values.shape[2] // 2:] += np.where(labels[..., labels.shape[2] // 2:] > 0, 200, 0).astype(np.int16)
        return values
    case = make_case([("L3", -13, body_shape(26, 26))], spacing=(1.0, 1.0, 1.0), image_values=image)
    row = measure_result(case).measurements[0]
    assert row["mean_positive"] == pytest.approx(200, abs=8)
    assert row["entropy"] == pytest.approx(1.0, abs=0.02)
    assert 100 <= row["mean_positive_midsagittal"] <= 300


def test_stray_mask_voxels_do_not_move_the_lines():
    case = make_case([("L3", -13, body_shape(22, 26))], spacing=(1.0, 1.0, 1.0), tilt_deg=6)
    clean = heights_of(measure_result(case).measurements[0])
    k, j, i = np.argwhere(case.instances == 1).max(axis=0)
    case.instances[k - 2:k + 1, 2:5, 2:5] = 1                     # a stray blob far from the body
    stray = heights_of(measure_result(case).measurements[0])
    assert np.abs(stray - clean).max() < 0.3


def test_sheared_body_is_measured_along_its_walls():
    # A parallelogram body (walls leaning 12 degrees, end plates level): the lines join the 10/50/90 %
    # points of the two end plates, so each height is the wall-parallel length H / cos(12 deg).
    lean = np.tan(np.radians(12))
    case = make_case([("L2", -13, body_shape(26, 26))], spacing=(1.0, 1.0, 1.0))
    ras = case.image.kji_to_ras(np.indices(case.instances.shape).reshape(3, -1).T)
    x, y, z = ras.T
    t = (DEPTH / 2 - (y - lean * z)) / DEPTH                    # walls move anteriorly with height
    inside = (np.abs(x) <= WIDTH / 2) & (t >= 0) & (t <= 1) & (z >= -13) & (z <= 13)
    case.instances[...] = inside.reshape(case.instances.shape)
    row = measure_result(case).measurements[0]
    assert np.abs(heights_of(row) - 26 / np.cos(np.radians(12))).max() < 0.6
