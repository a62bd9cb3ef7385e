"""Markups point lists: schema-valid, read by Slicer's storage node in RAS, and Slicer's files read back."""
from __future__ import annotations

import json

import numpy as np
import pytest

from SpineLabelLib.io import markups
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.core.result import Vertebra

from conftest import FIXTURES

import slicer
import jsonschema  # noqa: F401
def slicer_point_list():
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerMarkupsLogic().SetMRMLScene(scene)      # registers the markups node classes
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    return node, storage


def slicer_points(node) -> list[tuple[str, np.ndarray, bool, int]]:
    out = []
    for n in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(n, position)
        out.append((node.GetNthControlPointLabel(n), np.array(position), bool(node.GetNthControlPointLocked(n)),
                    node.GetNthControlPointPositionStatus(n)))
    return out


def test_written_file_is_schema_valid_lps(spine_result, tmp_path):
    path = markups.write_markups(spine_result, tmp_path / "case.mrk.json")
    markups.validate_markups(path, [FIXTURES])
    document = json.loads(path.read_text())
    markup = document["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    first = spine_result.vertebrae[0]
    assert np.allclose(markup["controlPoints"][0]["position"], first.centroid_ras * [-1, -1, 1])


def test_slicer_reads_centroids_in_ras(spine_result, tmp_path):
    path = markups.write_markups(spine_result, tmp_path / "case.mrk.json")
    node, storage = slicer_point_list()
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    points = slicer_points(node)
    assert [p[0] for p in points] == ["L1", "L2", "L3"]
    for (label, position, locked, status), vertebra in zip(points, spine_result.vertebrae):
        assert np.allclose(position, vertebra.centroid_ras, atol=1e-9)     # oblique grid centroids, RAS
        assert locked == vertebra.locked
        assert status == 2                                                   # defined
    assert [p[2] for p in points] == [False, True, False]


def test_own_round_trip_keeps_level_lock_score_source(spine_result, tmp_path):
    spine_result.vertebrae.append(Vertebra("", [1.0, 2.0, 3.0], score=0.25, source="manual"))
    spine_result.vertebrae.append(Vertebra("T12", [np.nan, 0.0, 0.0]))     # undefined: not written
    path = markups.write_markups(spine_result.vertebrae, tmp_path / "v.mrk.json", name="Centroids")
    markups.validate_markups(path, [FIXTURES])
    back = markups.read_markups(path)
    assert [v.level for v in back] == ["L1", "L2", "L3", ""]
    for old, new in zip(spine_result.vertebrae, back):
        assert np.allclose(old.centroid_ras, new.centroid_ras, atol=1e-9)
        assert (old.locked, old.source) == (new.locked, new.source)
        assert new.score == pytest.approx(old.score, abs=1e-3)


@pytest.mark.parametrize("use_ras", [False, True])
def test_slicer_written_file_reads_with_undefined_point(tmp_path, use_ras):
    node, storage = slicer_point_list()
    node.AddControlPoint(10.5, -20.25, 30.0, "L4")
    node.AddControlPoint(-3.0, 4.0, -5.5, "F-2")                            # not a level name
    node.AddControlPoint(1.0, 1.0, 1.0, "L5")
    node.UnsetNthControlPointPosition(2)                                     # placed later by a person
    node.AddControlPoint(7.0, 8.0, 9.0, "S1")
    node.SetNthControlPointLocked(3, True)
    if use_ras:
        storage.UseRASOn()
    storage.SetFileName(str(tmp_path / "slicer.mrk.json"))
    assert storage.WriteData(node) == 1
    text = (tmp_path / "slicer.mrk.json").read_text()
    assert '"position": ""' in text and ('"RAS"' in text) == use_ras          # Slicer's own quirks
    back = markups.read_markups(tmp_path / "slicer.mrk.json")
    assert [v.level for v in back] == ["L4", "", "S1"]
    assert np.allclose([v.centroid_ras for v in back], [[10.5, -20.25, 30.0], [-3.0, 4.0, -5.5], [7.0, 8.0, 9.0]])
    assert [v.locked for v in back] == [False, False, True]


def test_slicer_written_file_validates_against_the_schema_it_names(tmp_path):
    node, storage = slicer_point_list()
    node.AddControlPoint(1.0, 2.0, 3.0, "C2")
    storage.SetFileName(str(tmp_path / "slicer.mrk.json"))
    assert storage.WriteData(node) == 1
    document = json.loads((tmp_path / "slicer.mrk.json").read_text())
    markups.validate_markups(document, [FIXTURES])
    assert markups.find_schema(document["@schema"], [FIXTURES]).name.startswith("markups-schema-v1.0.")


def test_missing_coordinate_system_means_lps(tmp_path):
    document = {"@schema": markups.SCHEMA_URL,
                "markups": [{"type": "Fiducial", "controlPoints": [{"label": "T7", "position": [1.0, 2.0, 3.0]}]}]}
    (tmp_path / "m.mrk.json").write_text(json.dumps(document))
    markups.validate_markups(tmp_path / "m.mrk.json", [FIXTURES])
    (vertebra,) = markups.read_markups(tmp_path / "m.mrk.json")
    assert vertebra.level == "T7" and np.allclose(vertebra.centroid_ras, [-1.0, -2.0, 3.0])
    node, storage = slicer_point_list()                                      # Slicer agrees
    storage.SetFileName(str(tmp_path / "m.mrk.json"))
    assert storage.ReadData(node) == 1
    assert np.allclose(slicer_points(node)[0][1], vertebra.centroid_ras)


def test_schema_violation_is_reported(spine_result, tmp_path):
    document = markups.markups_dict(spine_result.vertebrae)
    document["markups"][0]["controlPoints"][0]["position"] = [1.0, 2.0]
    with pytest.raises(InputError, match="position"):
        markups.validate_markups(document, [FIXTURES])


@pytest.mark.parametrize("content, message", [
    ("", "not a JSON"),
    ("{not json", "not a JSON"),
    ('{"markups": []}', "@schema"),
    ('{"@schema": "x", "markups": []}', "@schema"),
    ('[1, 2]', "no 'markups'"),
    (json.dumps({"@schema": markups.SCHEMA_URL, "markups": [{"type": "Line"}]}), "no point list"),
    (json.dumps({"@schema": markups.SCHEMA_URL, "markups": [{"type": "Fiducial", "coordinateSystem": "XYZ"}]}),
     "coordinateSystem"),
    (json.dumps({"@schema": markups.SCHEMA_URL, "markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "L1", "position": ["a", "b", "c"]}]}]}), "non-numeric"),
])
def test_bad_markups_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        markups.read_markups(path)
    assert "\n" not in str(error.value)


def test_missing_markups_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        markups.read_markups(tmp_path / "absent.mrk.json")
