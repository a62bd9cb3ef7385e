"""The MRML scene adapter against real Slicer classes (PyPI `slicer-core`).

result -> nodes -> files written by Slicer's storage nodes -> read back by them -> result: identical,
on an oblique, anisotropic grid. And the edits a person makes in the views come back as a result
with a correction record.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import slicer
import slicer.util  # noqa: F401
from conftest import FIXTURES, box_result, oblique_image  # noqa: E402

from SpineLabelLib.core import anatomy
from SpineLabelLib.slicer_adapter import scene  # noqa: E402


@pytest.fixture
def mrml():
    return scene.new_scene()


def _centroids(result):
    return np.array([v.centroid_ras for v in result.vertebrae])


def test_volume_node_round_trip_keeps_voxels_and_geometry(mrml):
    image = oblique_image()
    node = scene.volume_to_node(mrml, image, "oblique")
    back = scene.node_to_volume(node)
    assert np.array_equal(back.array, image.array)
    assert back.array.dtype == image.array.dtype
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-9)
    assert node.GetSpacing() == pytest.approx(tuple(image.spacing))


def test_nodes_carry_levels_codes_terminology_colours_and_locks(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    segmentation = nodes.segmentation.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == ["L1", "L2", "L3"]
    for level in ("L1", "L2", "L3"):
        segment = segmentation.GetSegment(level)
        assert segment.GetName() == level
        assert segment.GetLabelValue() == anatomy.code_of(level)
        assert segment.GetColor() == pytest.approx(anatomy.COLOUR_BY_NAME[level], abs=1e-4)
        assert anatomy.SNOMED_BY_NAME[level] in segment.GetTerminology()
    points = nodes.points
    assert [points.GetNthControlPointLabel(i) for i in range(3)] == ["L1", "L2", "L3"]
    assert [bool(points.GetNthControlPointLocked(i)) for i in range(3)] == [False, True, False]
    assert points.GetNthControlPointAssociatedNodeID(0) == nodes.segmentation.GetID()
    assert "score=0.800" in points.GetNthControlPointDescription(0)


def _save_and_reload(nodes, folder):
    """Write with Slicer's storage nodes, read into a fresh scene with them."""
    scene.write_volume_file(nodes.volume, folder / "image.nrrd")
    scene.write_segmentation_file(nodes.segmentation, folder / "case.seg.nrrd")
    scene.write_markups_file(nodes.points, folder / "case.mrk.json")
    fresh = scene.new_scene()
    volume = scene.read_volume_file(fresh, folder / "image.nrrd")
    segmentation = scene.read_segmentation_file(fresh, folder / "case.seg.nrrd")
    points = scene.read_markups_file(fresh, folder / "case.mrk.json")
    return scene.SceneNodes(volume, segmentation, points)


def test_result_nodes_files_nodes_result_is_identical(mrml, tmp_path):
    result = box_result()
    reread = scene.nodes_to_result(_save_and_reload(scene.result_to_nodes(mrml, result), tmp_path))
    assert reread.levels == result.levels
    assert np.allclose(_centroids(reread), _centroids(result), atol=1e-6)
    assert [v.locked for v in reread.vertebrae] == [v.locked for v in result.vertebrae]
    assert [v.score for v in reread.vertebrae] == pytest.approx([v.score for v in result.vertebrae], abs=1e-3)
    assert [v.source for v in reread.vertebrae] == ["detector"] * 3
    assert np.allclose(reread.image.ijk_to_ras, result.image.ijk_to_ras, atol=1e-6)
    assert np.array_equal(reread.image.array, result.image.array)
    assert np.array_equal(reread.level_map(), result.level_map())          # voxel for voxel
    assert reread.corrections == []


def test_files_written_by_slicer_are_standard(mrml, tmp_path):
    import jsonschema
    import slicerio

    nodes = scene.result_to_nodes(mrml, box_result())
    scene.write_segmentation_file(nodes.segmentation, tmp_path / "case.seg.nrrd")
    scene.write_markups_file(nodes.points, tmp_path / "case.mrk.json")
    seg = slicerio.read_segmentation(str(tmp_path / "case.seg.nrrd"))
    assert {s["name"]: s["labelValue"] for s in seg["segments"]} == {"L1": 20, "L2": 21, "L3": 22}
    assert seg["segments"][0]["terminology"]["type"][1] == anatomy.SNOMED_BY_NAME["L1"]
    document = json.loads((tmp_path / "case.mrk.json").read_text())
    schema = json.loads((FIXTURES / "markups-schema-v1.0.4.json").read_text())
    jsonschema.validate(document, schema)
    assert [p["label"] for p in document["markups"][0]["controlPoints"]] == ["L1", "L2", "L3"]
    assert not list(tmp_path.glob(".*part*"))                               # atomic writes left nothing


def _measured(result):
    """Measurement rows as the measurement stage fills them: floats past 6 digits, None, NaN, numpy
    scalars, a nested non-scalar (drawn lines), a key only one row has, an int column with a gap."""
    result.measurements = []
    for n, v in enumerate(result.vertebrae):
        result.measurements.append({
            "level": v.level, "code": v.code, "r_mm": v.centroid_ras[0], "a_mm": v.centroid_ras[1],
            "s_mm": v.centroid_ras[2], "volume_mm3": 1000.0 + n / 3, "height_anterior_mm": 20.123456789,
            "height_middle_mm": None, "height_posterior_mm": float("nan"), "height_loss_pct": 12.5 * n,
            "genant_grade": n if n else None, "genant_type": "wedge", "confidence": np.float32(0.5),
            "lines_ras": {"middle": ([0.0, 0.0, 1.0], [0.0, 0.0, -1.0])}})
    result.measurements[-1]["radiomic_energy"] = 1.5e-7
    return result


def _node_cells(table_node) -> dict[str, list]:
    """Column name -> cell values of a table node (NaN read as None, as the CSV reader does)."""
    table = table_node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        array = table.GetColumn(c)
        values = [array.GetValue(r) for r in range(array.GetNumberOfTuples())]
        if array.GetClassName() == "vtkStringArray":
            values = [v if v != "" else None for v in values]
        else:
            values = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
        out[array.GetName()] = values
    return out


def test_table_node_and_csv_carry_identical_columns_units_and_values(mrml, tmp_path):
    from SpineLabelLib.io import tables

    result = _measured(box_result())
    nodes = scene.result_to_nodes(mrml, result)
    csv_path = tables.write_measurements_csv(result, tmp_path / "m.csv")
    header = csv_path.read_text().splitlines()[0].split(",")
    rows = tables.read_csv_rows(csv_path)
    cells = _node_cells(nodes.table)
    assert list(cells) == header
    assert "lines_ras" not in header and "radiomic_energy" in header
    for name in header:
        assert cells[name] == [row[name] for row in rows], name
        assert nodes.table.GetColumnUnitLabel(name) == tables.unit_of(name)
    units = {name: nodes.table.GetColumnUnitLabel(name) for name in ("level", "s_mm", "volume_mm3", "height_loss_pct")}
    assert units == {"level": "", "s_mm": "mm", "volume_mm3": "mm3", "height_loss_pct": "%"}
    table = nodes.table.GetTable()
    assert table.GetColumnByName("code").GetClassName() == "vtkIntArray"
    assert table.GetColumnByName("genant_grade").GetClassName() == "vtkDoubleArray"     # a gap: NaN
    assert table.GetColumnByName("level").GetClassName() == "vtkStringArray"


def test_table_node_without_measurements_lists_the_named_vertebrae(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    cells = _node_cells(nodes.table)
    assert cells["level"] == result.levels
    assert cells["s_mm"] == pytest.approx([v.centroid_ras[2] for v in result.vertebrae], abs=1e-3)


def test_read_records_translate_nodes_into_plain_points_and_segments(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    nodes.points.UnsetNthControlPointPosition(1)                       # a point waiting to be placed
    records = scene.read_records(nodes, mrml)
    assert [(p.label, p.locked) for p in records.points] == [("L1", False), ("L3", False)]
    assert np.allclose(records.points[1].ras, result.vertebrae[2].centroid_ras)
    assert "instance=3" in records.points[1].description
    assert [(s.id, s.name, s.label_value, s.instance) for s in records.segments] == [
        ("L1", "L1", 20, 1), ("L2", "L2", 21, 2), ("L3", "L3", 22, 3)]
    for index, segment in enumerate(records.segments):
        assert np.array_equal(records.mask(index), result.instances == segment.instance)   # voxel for voxel
    assert np.array_equal(records.image.array, result.image.array)


def _erase_in_segment(nodes, mrml, level, kji_box):
    """What the Segment Editor's Erase effect does: remove voxels from one segment."""
    import vtk

    records = scene.read_records(nodes, mrml)
    ids, positions = [s.id for s in records.segments], records.segment_map
    mask = positions == ids.index(level) + 1
    mask[kji_box] = False
    labelmap = scene.volume_to_node(mrml, scene.node_to_volume(nodes.volume).with_array(mask.astype(np.uint8)),
                                    "edit", labelmap=True)
    one = vtk.vtkStringArray()
    one.InsertNextValue(level)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, nodes.segmentation, one)
    mrml.RemoveNode(labelmap)
    return int((positions == ids.index(level) + 1).sum() - mask.sum())


def test_edits_in_the_views_come_back_with_a_record(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    points = nodes.points
    # A person drags L1 by 4 mm, renames L3's point to L4, deletes L2's point, clicks a new point,
    # and erases a slab of L3's mask.
    moved = result.vertebrae[0].centroid_ras + [0.0, 0.0, 4.0]
    points.SetNthControlPointPosition(0, *moved)
    points.SetNthControlPointLabel(2, "L4")
    points.RemoveNthControlPoint(1)
    points.AddControlPoint(1.0, 2.0, 3.0, "")
    erased = _erase_in_segment(nodes, mrml, "L3", (slice(0, 4),))
    assert erased > 0
    after = scene.nodes_to_result(nodes, previous=result)
    # L2's point is gone but its segment remains: it comes back as a vertebra from the mask.
    assert after.levels == ["L1", "L4", "", "L2"]
    assert np.allclose(after.vertebrae[0].centroid_ras, moved)
    assert np.allclose(after.by_level("L2").centroid_ras, result.vertebrae[1].centroid_ras, atol=1e-6)
    assert "delete" not in [c["action"] for c in after.corrections]
    actions = [(c["action"], c.get("level", c.get("to"))) for c in after.corrections]
    assert ("move", "L1") in actions
    assert ("relabel", "L4") in actions
    assert ("edit_mask", "L4") in actions
    assert ("add", "") in actions
    edit = next(c for c in after.corrections if c["action"] == "edit_mask")
    assert edit["voxels_removed"] == erased and edit["voxels_added"] == 0
    move = next(c for c in after.corrections if c["action"] == "move")
    assert move["distance_mm"] == pytest.approx(4.0, abs=1e-3)
    assert all(c["origin"] == "scene" for c in after.corrections)
    l4 = after.by_level("L4")
    assert (after.instances == l4.instance).sum() == (result.instances == 3).sum() - erased


def test_deleting_point_and_segment_records_a_delete(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    nodes.points.RemoveNthControlPoint(1)
    nodes.segmentation.GetSegmentation().RemoveSegment("L2")
    after = scene.nodes_to_result(nodes, previous=result)
    assert after.levels == ["L1", "L3"]
    delete = [c for c in after.corrections if c["action"] == "delete"]
    assert len(delete) == 1 and delete[0]["level"] == "L2"
    assert delete[0]["voxels"] == int((result.instances == 2).sum())
    assert not np.any(after.instances == 2)


def test_painted_segment_without_point_becomes_a_vertebra(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    import vtk

    painted = np.zeros(result.image.array.shape, np.uint8)
    painted[20:24, 5:10, 4:9] = 1
    labelmap = scene.volume_to_node(mrml, result.image.with_array(painted), "paint", labelmap=True)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue("T12")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, nodes.segmentation, ids)
    after = scene.nodes_to_result(nodes, previous=result)
    t12 = after.by_level("T12")
    assert t12 is not None and t12.source == "manual"
    assert np.allclose(t12.centroid_ras, result.image.kji_to_ras(np.array([21.5, 7.0, 6.0]))[0], atol=1e-6)
    assert (after.instances == t12.instance).sum() == painted.sum()
    assert {v.instance for v in after.vertebrae} == {1, 2, 3, 4}
    # Reading stamped the new segment with its instance: reading again changes nothing.
    again = scene.nodes_to_result(nodes, previous=after)
    assert again.by_level("T12").instance == t12.instance
    assert again.corrections == after.corrections


def test_keeping_the_segmentation_when_only_points_and_table_change(mrml):
    result = box_result()
    nodes = scene.result_to_nodes(mrml, result)
    segment = nodes.segmentation.GetSegmentation().GetSegment("L1")
    result.vertebrae[0].level = "T12"
    scene.result_to_nodes(mrml, result, nodes=nodes, segments=False)
    assert nodes.segmentation.GetSegmentation().GetSegment("L1") is segment
    assert nodes.points.GetNthControlPointLabel(0) == "T12"
    scene.result_to_nodes(mrml, result, nodes=nodes)
    assert list(nodes.segmentation.GetSegmentation().GetSegmentIDs()) == ["T12", "L2", "L3"]


@pytest.mark.parametrize("levels", [("L5", "L6", "S1"), ("T12", "T13", "L1")])
def test_sacral_and_transitional_levels_in_slicer_nodes(mrml, levels):
    result = box_result(levels=levels)
    nodes = scene.result_to_nodes(mrml, result)
    segmentation = nodes.segmentation.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == list(levels)
    for level in levels:
        segment = segmentation.GetSegment(level)
        assert segment.GetLabelValue() == anatomy.code_of(level)
        assert anatomy.SNOMED_BY_NAME.get(level, anatomy.VERTEBRA_SNOMED) in segment.GetTerminology()
    back = scene.nodes_to_result(nodes, previous=result)
    assert back.levels == list(levels)


def test_evidence_and_naming_survive_a_reading_of_the_scene(mrml):
    result = box_result(levels=("L5", "S1", ""))
    result.vertebrae[0].evidence = {"rib": 0.1, "sacrum": None, "c2": None}
    result.vertebrae[1].evidence = {"rib": 0.1, "sacrum": 0.9, "c2": None}
    result.naming = {"confidence": 0.95, "uncertain": False, "reason": "levels anchored by sacrum"}
    nodes = scene.result_to_nodes(mrml, result)
    back = scene.nodes_to_result(nodes, previous=result)
    assert [v.evidence for v in back.vertebrae[:2]] == [v.evidence for v in result.vertebrae[:2]]
    assert back.naming == result.naming
