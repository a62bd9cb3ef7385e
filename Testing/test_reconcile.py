"""Reconciling what a person did in the views with the previous result: plain records in, a result
and the segment tags to write out; no Slicer here (the adapter's side is in test_scene.py)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import box_result

from SpineLabelLib.correction.reconcile import PointRecord, SceneRecords, SegmentRecord, reconcile
from SpineLabelLib.io import point_description


def records_of(result) -> SceneRecords:
    """The records `slicer_adapter.scene.read_records` returns for a scene showing ``result`` unedited."""
    points = [PointRecord(v.level, v.centroid_ras.copy(), v.locked, point_description.encode(v))
              for v in result.vertebrae]
    masked = [v for v in result.vertebrae if v.instance]
    segments = [SegmentRecord(v.level, v.level, v.code, v.instance) for v in masked]
    lookup = np.zeros(int(result.instances.max()) + 1, np.uint16)
    for position, v in enumerate(masked, start=1):
        lookup[v.instance] = position
    return SceneRecords(result.image.with_array(result.image.array.copy()), points, segments,
                        lookup[result.instances])


def paint(records: SceneRecords, segment: SegmentRecord, box) -> np.ndarray:
    """A new segment over ``box`` (painting takes the voxels over from other segments)."""
    records.segments.append(segment)
    records.segment_map[box] = len(records.segments)
    return records.segment_map == len(records.segments)


def actions(result) -> list[tuple[str, str]]:
    return [(c["action"], c.get("level", c.get("to", ""))) for c in result.corrections]


def test_an_unedited_scene_gives_the_previous_result_and_no_record():
    previous = box_result()
    reconciled = reconcile(records_of(previous), previous)
    result = reconciled.result
    assert result.levels == previous.levels
    assert [v.instance for v in result.vertebrae] == [v.instance for v in previous.vertebrae]
    assert np.array_equal(result.instances, previous.instances)
    assert [v.locked for v in result.vertebrae] == [v.locked for v in previous.vertebrae]
    assert [v.score for v in result.vertebrae] == pytest.approx([v.score for v in previous.vertebrae], abs=1e-3)
    assert result.corrections == [] and reconciled.instance_tags == {}
    # the case facts come along, copied; the measurements describe bodies that may have changed
    assert (result.case_id, result.input_sha256, result.models) == (previous.case_id, previous.input_sha256,
                                                                    previous.models)
    assert result.models is not previous.models
    assert result.measurements == [] and result.distances == []


def test_a_relabelled_point_keeps_its_mask_through_the_instance_in_its_description():
    previous = box_result()
    records = records_of(previous)
    records.points[2] = PointRecord("L4", records.points[2].ras, False, records.points[2].description)
    result = reconcile(records, previous).result
    assert result.levels == ["L1", "L2", "L4"]
    assert result.by_level("L4").instance == previous.by_level("L3").instance
    assert ("relabel", "L4") in actions(result) and len(result.corrections) == 1
    assert all(c["origin"] == "scene" for c in result.corrections)


def test_a_point_without_instance_finds_its_segment_by_name():
    previous = box_result()
    records = records_of(previous)
    records.points[1] = PointRecord("L2", records.points[1].ras + [0.0, 0.0, 2.0], True, "")
    result = reconcile(records, previous).result
    l2 = result.by_level("L2")
    assert l2.instance == previous.by_level("L2").instance
    assert (l2.source, l2.score) == ("manual", 1.0)             # what a point a person typed stands for
    assert actions(result) == [("move", "L2")]


def test_a_painted_segment_without_point_becomes_a_vertebra_with_a_fresh_instance():
    previous = box_result()
    records = records_of(previous)
    mask = paint(records, SegmentRecord("T12", "T12"), (slice(21, 24), slice(5, 10), slice(4, 9)))
    reconciled = reconcile(records, previous)
    t12 = reconciled.result.by_level("T12")
    assert t12.instance == previous.next_instance()
    assert reconciled.instance_tags == {"T12": t12.instance}
    assert np.array_equal(reconciled.result.instances == t12.instance, mask)
    centre = previous.image.kji_to_ras(np.argwhere(mask).mean(axis=0))[0]
    assert np.allclose(t12.centroid_ras, centre, atol=1e-9)
    assert ("add", "T12") in actions(reconciled.result)


def test_a_painted_segment_named_like_a_point_of_another_body_stays_unlabelled():
    previous = box_result()
    records = records_of(previous)
    paint(records, SegmentRecord("copy", "L1"), (slice(21, 24), slice(5, 10), slice(4, 9)))
    result = reconcile(records, previous).result
    assert result.levels == ["L1", "L2", "L3", ""]
    assert result.by_level("L1").instance == 1


def test_a_copied_instance_tag_is_not_shared_by_two_bodies():
    previous = box_result()
    records = records_of(previous)
    paint(records, SegmentRecord("L2 copy", "", instance=2), (slice(21, 24), slice(5, 10), slice(4, 9)))
    reconciled = reconcile(records, previous)
    instances = [v.instance for v in reconciled.result.vertebrae]
    assert sorted(instances) == [1, 2, 3, 4]
    assert reconciled.instance_tags == {"L2 copy": 4}


def test_an_erased_segment_leaves_its_point_without_mask_and_a_pointless_one_is_dropped():
    previous = box_result()
    records = records_of(previous)
    records.segment_map[records.segment_map == 3] = 0                  # L3 erased, its point stays
    paint(records, SegmentRecord("empty", "T11"), (slice(0, 0),))      # added, never painted
    result = reconcile(records, previous).result
    assert result.levels == ["L1", "L2", "L3"]
    assert result.by_level("L3").instance == 0
    assert not np.any(result.instances == 3)
    edit = [c for c in result.corrections if c["action"] == "edit_mask"]
    assert edit and edit[0]["voxels_removed"] == int((previous.instances == 3).sum())


def test_deleting_point_and_segment_is_a_delete():
    previous = box_result()
    records = records_of(previous)
    del records.points[1]
    records.segment_map[records.segment_map == 2] = 0
    result = reconcile(records, previous).result
    assert result.levels == ["L1", "L3"]
    assert actions(result) == [("delete", "L2")]


def test_without_a_previous_result_the_case_is_named_after_the_image():
    records = records_of(box_result())
    records.image.metadata["name"] = "patient 7/series 2"
    result = reconcile(records).result
    assert result.case_id and "/" not in result.case_id
    assert result.levels == ["L1", "L2", "L3"] and result.corrections == []
