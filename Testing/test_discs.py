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


# --- measurement: a shape whose answer is known, on an oblique anisotropic grid ------------------------
@pytest.fixture(scope="module")
def oblique_phantom():
    from SpineLabelLib.phantom.generate import generate_phantom

    return generate_phantom(["L3", "L4", "L5"], "t2", spacing=(0.9, 1.1, 1.3), rotation_deg=(12.0, -8.0, 20.0),
                            lordosis_deg=12.0, crop_to_spine=True, seed=4)


def test_disc_heights_and_dhi_match_the_analytic_disc(oblique_phantom):
    from SpineLabelLib.measurement.bodies import measure_result
    from SpineLabelLib.measurement.discs import measure_discs

    assert not np.allclose(oblique_phantom.image.ijk_to_ras[:3, :3] / oblique_phantom.image.spacing, np.diag([-1, -1, 1]))
    result = oblique_phantom.to_result("p", with_discs=True)
    measure_result(result)
    rows = {row["name"]: row for row in measure_discs(result)}
    truth = {d["name"]: d for d in oblique_phantom.truth["discs"]}
    assert set(rows) == set(truth) == {"L3-L4", "L4-L5"}
    for name, row in rows.items():
        for line in ("anterior", "middle", "posterior"):
            assert row[f"height_{line}_mm"] == pytest.approx(truth[name][f"height_{line}_mm"], abs=0.6)
        assert row["dhi"] == pytest.approx(truth[name]["dhi"], abs=0.02)
        assert row["volume_mm3"] == pytest.approx((result.layers["discs"] == result.by_level(row["upper"]).instance).sum()
                                                  * np.prod(result.image.spacing), rel=1e-3)
        assert row["disc_csf_ratio"] is not None and 0 < row["disc_csf_ratio"] < 1    # T2: CSF behind the disc


def test_anterior_wedge_disc_is_higher_in_front(oblique_phantom):
    """Lordosis opens the disc anteriorly: the measured heights must say so, as the truth does."""
    from SpineLabelLib.measurement.bodies import measure_result
    from SpineLabelLib.measurement.discs import measure_discs

    result = oblique_phantom.to_result("p", with_discs=True)
    measure_result(result)
    for row, truth in zip(measure_discs(result), oblique_phantom.truth["discs"]):
        assert truth["height_anterior_mm"] > truth["height_posterior_mm"] + 0.5
        assert row["height_anterior_mm"] > row["height_posterior_mm"] + 0.5


def test_geometric_disc_fills_the_space_between_the_end_plates():
    from SpineLabelLib.core.disc_layer import adjacent_pairs
    from SpineLabelLib.phantom.generate import generate_phantom
    from SpineLabelLib.stages.discs import fill_geometric

    phantom = generate_phantom(["L4", "L5", "S1"], "ct", spacing=(1.0, 0.9, 1.2), rotation_deg=(5, 10, 0),
                               crop_to_spine=True)
    result = phantom.to_result("p")
    layer = np.zeros(result.instances.shape, np.uint16)
    assert fill_geometric(result, layer, adjacent_pairs(result), everywhere=True) == ["L4-L5", "L5-S1"]
    for name, upper in (("L4-L5", "L4"), ("L5-S1", "L5")):
        mine = layer == result.by_level(upper).instance
        truth = phantom.discs.array == __import__("SpineLabelLib.core.discs", fromlist=["x"]).label_of(name)
        assert 2 * (mine & truth).sum() / (mine.sum() + truth.sum()) > 0.9
        assert not (mine & (result.instances > 0)).any()


# --- files ------------------------------------------------------------------------------------------
def test_disc_segments_in_seg_nrrd_read_by_slicer_with_terminology(lumbar_phantom, tmp_path):
    pytest.importorskip("slicer")
    from SpineLabelLib.io.segfile import read_segmentation_as_result, write_label_nifti, write_seg_nrrd
    from SpineLabelLib.core.volume import load_volume
    from SpineLabelLib.slicer_adapter import scene

    result = lumbar_phantom.to_result("p", with_discs=True)
    write_seg_nrrd(result, tmp_path / "p.seg.nrrd")
    write_label_nifti(result, tmp_path / "p_seg.nii.gz")
    node = scene.read_segmentation_file(scene.new_scene(), tmp_path / "p.seg.nrrd")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert {"L1-L2", "L4-L5", "L5-S1"} <= set(names)
    l4_l5 = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("L4-L5"))
    assert "84020006" in l4_l5.GetTerminology() and l4_l5.GetLabelValue() == 123
    assert tuple(round(c, 4) for c in l4_l5.GetColor()) == discs.colour("L4-L5")
    nifti = load_volume(tmp_path / "p_seg.nii.gz", check_values=False).array
    assert sorted(int(v) for v in np.unique(nifti) if v >= 100) == [120, 121, 122, 123, 124]
    back = read_segmentation_as_result(tmp_path / "p.seg.nrrd", result.image, "p")
    assert _names(back) == _names(result)
    from SpineLabelLib.core.disc_layer import disc_label_map
    assert np.array_equal(disc_label_map(back), disc_label_map(result))


def test_export_carries_disc_labels(lumbar_phantom, tmp_path):
    import json

    from SpineLabelLib import dataset as ds
    from SpineLabelLib.core.volume import load_volume

    result = lumbar_phantom.to_result("p", with_discs=True)
    record = ds.export_result(tmp_path / "set", result)
    labels = load_volume(record.paths["label"], check_values=False).array
    assert sorted(int(v) for v in np.unique(labels) if v >= 100) == [120, 121, 122, 123, 124]
    dataset_json = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert dataset_json["labels"]["L4-L5"] == 123 and dataset_json["labels"]["L5-S1"] == 124
    assert record.manifest_entry["disc_labels"] == [120, 121, 122, 123, 124]


def test_discs_follow_their_vertebrae_through_the_slicer_scene(lumbar_phantom):
    """Shown in Slicer (segments + disc table), a vertebra relabelled in the point list renames its discs."""
    pytest.importorskip("slicer")
    from SpineLabelLib.measurement.bodies import measure_result
    from SpineLabelLib.measurement.discs import measure_discs
    from SpineLabelLib.slicer_adapter import scene

    result = lumbar_phantom.to_result("p", with_discs=True)
    measure_result(result)
    measure_discs(result)
    nodes = scene.result_to_nodes(scene.new_scene(), result)
    assert nodes.disc_table.GetNumberOfRows() == 5
    assert nodes.disc_table.GetCellText(0, 0) == "L1-L2"
    points = nodes.points
    labels = [points.GetNthControlPointLabel(n) for n in range(points.GetNumberOfControlPoints())]
    for n, label in enumerate(labels):          # a person renames every point one level up
        points.SetNthControlPointLabel(n, {"L1": "T12", "L2": "L1", "L3": "L2", "L4": "L3", "L5": "L4",
                                           "S1": "L5"}[label])
    reread = scene.nodes_to_result(nodes, previous=result)
    assert _names(reread) == ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5"]
    from SpineLabelLib.core.disc_layer import disc_label_map
    assert np.array_equal(disc_label_map(reread) > 0, disc_label_map(result) > 0)
    scene.result_to_nodes(nodes.volume.GetScene(), reread, nodes=nodes, segments=False)
    segmentation = nodes.segmentation.GetSegmentation()
    names = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
    assert {"T12-L1", "L4-L5"} <= names and "L5-S1" not in names      # the scene's disc segments renamed


def test_spinelabel_measure_writes_the_disc_table_from_disc_segments(lumbar_phantom, tmp_path):
    from SpineLabelLib.app.pipeline import measure_files
    from SpineLabelLib.core.volume import save_volume
    from SpineLabelLib.io.segfile import write_seg_nrrd
    from SpineLabelLib.io.tables import read_csv_rows

    result = lumbar_phantom.to_result("p", with_discs=True)
    image = save_volume(lumbar_phantom.image, tmp_path / "p.nii.gz")
    write_seg_nrrd(result, tmp_path / "p.seg.nrrd")
    measure_files(image, tmp_path / "p.seg.nrrd", tmp_path / "tables")
    rows = read_csv_rows(tmp_path / "tables" / "p.discs.csv")
    truth = {d["name"]: d for d in lumbar_phantom.truth["discs"]}
    assert [r["name"] for r in rows] == list(truth)
    assert list(rows[0])[:4] == ["name", "upper", "lower", "label"]
    for row in rows:
        assert row["height_middle_mm"] == pytest.approx(truth[row["name"]]["height_middle_mm"], abs=0.6)
        assert row["dhi"] == pytest.approx(truth[row["name"]]["dhi"], abs=0.03)


@pytest.mark.parametrize("choice, method", [("none", "geometric"), ("auto", "model")])
def test_the_disc_segmenter_option_reaches_the_disc_stage(lumbar_phantom, choice, method):
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.discs import SegmentDiscs

    result = lumbar_phantom.to_result("options")
    result.modality = "mr"
    SegmentDiscs().run(result, RunContext(RunOptions(disc_segmenter=choice)))
    assert result.notes["discs"]["method"] == method
    assert result.layers["discs"].any()


def test_disc_segmenter_is_a_run_argument():
    import argparse

    from SpineLabelLib.core.options import RunOptions, add_run_arguments

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    assert RunOptions.from_args(parser.parse_args(["--disc-segmenter", "none"])).disc_segmenter == "none"
    assert RunOptions.from_args(parser.parse_args([])).disc_segmenter == "auto"


def test_a_disc_site_beyond_the_grid_places_nothing_and_does_not_fail():
    """A probe below the lowest body at the image's lower edge (vb2-19 with a leave-one-site-out
    detector) put the disc crop wholly below the grid; placing it raised a shape error."""
    from SpineLabelLib.models.disc_unet.infer import _place

    discs = np.zeros((4, 30, 30), np.uint16)
    probability = np.zeros(discs.shape, np.float32)
    crop = np.ones((4, 10, 10), np.float32)
    _place(discs, probability, crop, np.arange(4), np.array([0.0, 40.0, 15.0]), 10, 10, 121)
    assert not discs.any() and not probability.any()
    _place(discs, probability, crop, np.arange(4), np.array([0.0, 27.0, 15.0]), 10, 10, 121)   # half inside
    assert (discs[:, 22:, 10:20] == 121).all() and not discs[:, :22].any()
