"""S1 (and T13, L6) in every output file and in Slicer's terminology; the QC picture shows the whole field of view."""
from __future__ import annotations

import json

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.io import markups, outputs, segfile, tables
from SpineLabelLib.phantom import make_phantom


@pytest.fixture(scope="module")
def lumbosacral(tmp_path_factory):
    """A phantom L5-S1 with a sixth lumbar vertebra, on an oblique anisotropic grid, written as a case."""
    from SpineLabelLib.measurement import bodies as measure

    result = make_phantom(["L4", "L5", "L6", "S1"], case_id="lumbosacral", spacing=(1.4, 1.1, 2.2),
                          rotation_deg=(8, -6, 4), lateral_fov_mm=120)
    measure.measure_result(result)
    return result, outputs.write_case_outputs(result, tmp_path_factory.mktemp("out"))


def test_s1_and_l6_in_segmentation_label_map_points_tables_and_summary(lumbosacral):
    result, folder = lumbosacral
    assert result.levels == ["L4", "L5", "L6", "S1"]
    labels, codes = segfile.read_seg_nrrd(folder / "lumbosacral.seg.nrrd")
    assert codes["S1"] == 26 and codes["L6"] == 25
    assert {26, 25} <= set(np.unique(labels.array).tolist())
    nifti = segfile.read_label_map(folder / "lumbosacral_seg.nii.gz")
    assert np.array_equal(nifti.array, result.level_map())
    assert [v.level for v in markups.read_markups(folder / "lumbosacral.mrk.json")] == ["L4", "L5", "L6", "S1"]
    rows = tables.read_csv_rows(folder / "lumbosacral.measurements.csv")
    assert [(r["level"], int(r["code"])) for r in rows] == [("L4", 23), ("L5", 24), ("L6", 25), ("S1", 26)]
    pairs = [(d["upper"], d["lower"]) for d in tables.read_csv_rows(folder / "lumbosacral.distances.csv")]
    assert pairs[-1] == ("L6", "S1")
    summary = json.loads((folder / "lumbosacral.json").read_text())
    assert [(v["level"], v["code"]) for v in summary["vertebrae"]][-1] == ("S1", 26)


def test_s1_terminology_in_the_segmentation_file(lumbosacral):
    import slicerio

    _, folder = lumbosacral
    segmentation = slicerio.read_segmentation(str(folder / "lumbosacral.seg.nrrd"), skip_voxels=True)
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert by_name["S1"]["labelValue"] == 26
    assert by_name["S1"]["terminology"]["type"] == ["SCT", "65985001", "S1 vertebra"]
    assert by_name["S1"]["terminology"]["category"][1] == anatomy.ANATOMICAL_STRUCTURE
    assert by_name["L6"]["terminology"]["type"][1] == anatomy.VERTEBRA_SNOMED          # no own code


@pytest.mark.parametrize("name, code", [("S1", 26), ("T13", 28), ("L6", 25)])
def test_slicer_terminology_entry_of_the_transitional_and_sacral_levels(name, code):
    entry = anatomy.terminology_entry(name).split("~")
    assert len(entry) == 7 and entry[1].startswith("SCT^123037004")
    assert entry[2].split("^")[1] == anatomy.SNOMED_BY_NAME.get(name, anatomy.VERTEBRA_SNOMED)
    assert anatomy.code_of(name) == code and anatomy.name_of(code) == name


def test_t13_written_and_read_back(tmp_path):
    result = make_phantom(["T12", "T13", "L1"], case_id="t13", spacing=(1.2, 1.2, 2.0), lateral_fov_mm=100)
    folder = outputs.write_case_outputs(result, tmp_path)
    _, codes = segfile.read_seg_nrrd(folder / "t13.seg.nrrd")
    assert codes["T13"] == 28
    assert [v.level for v in markups.read_markups(folder / "t13.mrk.json")] == ["T12", "T13", "L1"]
    back = segfile.read_segmentation_as_result(folder / "t13.seg.nrrd", result.image, "t13")
    assert back.levels == ["T12", "T13", "L1"]


def test_qc_picture_shows_the_whole_field_of_view_not_only_the_found_bodies(tmp_path):
    """A vertebra the detector missed must be on the picture: drop all but the top body and compare."""
    from PIL import Image

    from SpineLabelLib.io import qc
    from SpineLabelLib.core.volume import resample_to_canonical

    result = make_phantom(["T12", "L1", "L2", "L3"], case_id="qc", spacing=(1.3, 1.0, 2.4),
                          rotation_deg=(10, 5, -5), lateral_fov_mm=120)
    whole = qc.write_qc_png(result, tmp_path / "whole.png")
    top = result.vertebrae[0]
    result.instances[result.instances != top.instance] = 0
    result.vertebrae = [top]                              # three bodies missed by the detector
    missed = qc.write_qc_png(result, tmp_path / "missed.png")
    canonical = resample_to_canonical(result.image, qc._qc_spacing(result.image))
    rows, cols = canonical.array.shape[1:]
    for path in (whole, missed):
        width, height = Image.open(path).size
        assert height / width == pytest.approx(rows / cols, rel=0.02)
    assert Image.open(whole).size == Image.open(missed).size
