"""MRML scene adapter: `SpineResult` <-> Slicer nodes (volume, segmentation, point list, table).

No Qt and no `slicer.app`: every function takes the scene or the nodes as arguments and uses only
MRML classes, static logic calls and `slicer.util` array helpers, so the same code runs inside 3D
Slicer and under the PyPI package `slicer-core` (tests, headless batch).

How nodes map to a result:
- segmentation: one segment per vertebral body; ID = name = level, label value = level code, explicit
  terminology tag, fixed colour, reference geometry = the volume. Each segment also carries the tag
  ``SpineLabel.Instance`` (the body's value in ``result.instances``) so a relabelled point keeps its mask.
- point list: one control point per vertebra, label = level, ``locked`` kept, description
  ``score=...; source=...; instance=...``, associated node = the segmentation.
- table: ``result.measurements`` with units.

Reading back (`nodes_to_result`) takes what a person did in the views: moved, relabelled, added or
deleted points, painted or erased masks; the difference to the previous result goes to its record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import anatomy
from .result import SpineResult, Vertebra
from .volume import Volume

INSTANCE_TAG = "SpineLabel.Instance"
SEGMENTATION_ROLE_TAG = "SpineLabel.Role"
UNLABELLED = "unlabelled"
_UNLABELLED_CODE_BASE = 100      # label values of unlabelled bodies (level codes stop at 28)


@dataclass
class SceneNodes:
    """The nodes that show one case in Slicer."""

    volume: Any
    segmentation: Any = None
    points: Any = None
    table: Any = None
    alignment: Any = None      # alignment.slicer_nodes.AlignmentNodes: endplate lines and the measure table


# --- scene set-up (slicer-core needs the logics registered) -----------------------------------
_KEEP_ALIVE: list = []


def prepare_scene(scene) -> Any:
    """Register segmentation converters and markups classes on a bare `vtkMRMLScene` (no-op in Slicer)."""
    import slicer

    if getattr(slicer, "app", None) is not None:
        return scene
    if scene.GetSingletonNode("Singleton", "vtkMRMLSelectionNode") is None:
        selection = slicer.vtkMRMLSelectionNode()
        selection.SetSingletonTag("Singleton")
        scene.AddNode(selection)
    for logic_class in (slicer.vtkSlicerSegmentationsModuleLogic, slicer.vtkSlicerMarkupsLogic):
        logic = logic_class()
        logic.SetMRMLScene(scene)
        _KEEP_ALIVE.append(logic)
    return scene


def new_scene():
    """A scene usable without the application (tests, `slicer-core`, PythonSlicer)."""
    import slicer

    return prepare_scene(slicer.vtkMRMLScene())


# --- volumes ----------------------------------------------------------------------------------
def _vtk_matrix(array: np.ndarray):
    import slicer

    return slicer.util.vtkMatrixFromArray(np.asarray(array, dtype=float))


def volume_to_node(scene, volume: Volume, name: str = "volume", node=None, labelmap: bool = False):
    """A scalar (or labelmap) volume node holding a copy of ``volume`` with its IJK->RAS matrix."""
    import slicer

    if node is None:
        node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(node_class, name)
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:          # VTK/Slicer reject int64 voxels
        array = array.astype(np.int32)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.ijk_to_ras))
    return node


def node_to_volume(volume_node) -> Volume:
    """`Volume` (copy, (k, j, i)) from a volume node; parent transforms are not applied."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    return Volume(array, slicer.util.arrayFromVTKMatrix(matrix), {"name": volume_node.GetName()})


# --- result -> nodes --------------------------------------------------------------------------
def _label_value(vertebra: Vertebra, unlabelled_index: int) -> int:
    return vertebra.code if vertebra.level else _UNLABELLED_CODE_BASE + unlabelled_index


def _segment_id(vertebra: Vertebra) -> str:
    return vertebra.level or f"{UNLABELLED}-{vertebra.instance}"


def _masked(result: SpineResult) -> list[Vertebra]:
    """Vertebrae with a non-empty mask, each level once (a duplicate level keeps only its first body)."""
    if result.instances is None:
        return []
    present = set(np.unique(result.instances).tolist())
    out, seen = [], set()
    for v in result.vertebrae:
        if v.instance and v.instance in present and (not v.level or v.level not in seen):
            out.append(v)
            seen.add(v.level)
    return out


def _fill_segmentation(scene, seg_node, volume_node, result: SpineResult) -> None:
    """Replace all segments with the result's bodies in one labelmap import (label n <-> ids[n-1])."""
    import slicer
    import vtk

    seg_node.GetSegmentation().RemoveAllSegments()
    vertebrae = _masked(result)
    if not vertebrae:
        return
    values = {v.instance: _label_value(v, n) for n, v in enumerate(vertebrae)}
    lookup = np.zeros(int(result.instances.max()) + 1, dtype=np.uint16)
    for instance, value in values.items():
        lookup[instance] = value
    labelmap = result.image.with_array(lookup[result.instances])
    labelmap_node = volume_to_node(scene, labelmap, "SpineLabel temporary labelmap", labelmap=True)
    ids = vtk.vtkStringArray()
    ids.SetNumberOfValues(int(max(values.values())))
    for n in range(ids.GetNumberOfValues()):
        ids.SetValue(n, "")
    for v in vertebrae:
        ids.SetValue(values[v.instance] - 1, _segment_id(v))
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, seg_node, ids):
            raise RuntimeError("Slicer could not import the vertebra label map into the segmentation")
    finally:
        scene.RemoveNode(labelmap_node)
    for v in vertebrae:
        segment = seg_node.GetSegmentation().GetSegment(_segment_id(v))
        segment.SetName(_segment_id(v))
        segment.SetLabelValue(values[v.instance])
        segment.SetTag(INSTANCE_TAG, str(v.instance))
        if v.level:
            segment.SetColor(*anatomy.COLOUR_BY_NAME[v.level])
            segment.SetTag(segment.GetTerminologyEntryTagName(), anatomy.terminology_entry(v.level))


def _description(v: Vertebra) -> str:
    return f"score={v.score:.3f}; source={v.source}; instance={v.instance}"


def _fill_points(points_node, result: SpineResult, associated_id: str) -> None:
    points_node.RemoveAllControlPoints()
    for v in result.vertebrae:
        index = points_node.AddControlPoint(*[float(c) for c in v.centroid_ras], v.level or "")
        points_node.SetNthControlPointDescription(index, _description(v))
        points_node.SetNthControlPointLocked(index, bool(v.locked))
        if associated_id:
            points_node.SetNthControlPointAssociatedNodeID(index, associated_id)


def result_to_nodes(scene, result: SpineResult, volume_node=None, nodes: SceneNodes | None = None,
                    name: str | None = None, segments: bool = True) -> SceneNodes:
    """Show a result: create (or refill ``nodes``) segmentation, point list and measurement table.

    ``segments=False`` keeps an existing segmentation as it is (after `nodes_to_result` read a person's
    edits from it: rewriting it would disturb the Segment Editor mid-work).
    """
    name = name or result.case_id
    if volume_node is None:
        volume_node = nodes.volume if nodes is not None else None
    if volume_node is None:
        volume_node = volume_to_node(scene, result.image, name)
    nodes = nodes or SceneNodes(volume_node)
    nodes.volume = volume_node
    if nodes.segmentation is None:
        nodes.segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} vertebrae")
        nodes.segmentation.CreateDefaultDisplayNodes()
    seg = nodes.segmentation
    if segments or seg.GetSegmentation().GetNumberOfSegments() == 0:
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        # Also a node reference: Slicer's DICOM SEG export looks for it.
        seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
        _fill_segmentation(scene, seg, volume_node, result)
    if nodes.points is None:
        nodes.points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} centroids")
        nodes.points.CreateDefaultDisplayNodes()
    _fill_points(nodes.points, result, seg.GetID())
    if nodes.table is None:
        nodes.table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} measurements")
    update_table(nodes.table, result)
    from .alignment.slicer_nodes import alignment_to_nodes

    nodes.alignment = alignment_to_nodes(scene, result, nodes.alignment, name)
    return nodes


# --- table ------------------------------------------------------------------------------------
def _unit(column: str) -> str:
    for suffix, unit in (("_mm3", "mm3"), ("_mm2", "mm2"), ("_mm", "mm"), ("_deg", "deg"), ("_percent", "%")):
        if column.endswith(suffix):
            return unit
    return ""


def _flat_row(row: dict) -> dict[str, Any]:
    """Scalars as they are; nested dicts as 'key.sub'; lists joined (the table holds text)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in _flat_row(value).items()})
        elif isinstance(value, (list, tuple, np.ndarray)):
            out[key] = " ".join(str(x) for x in np.ravel(value))
        else:
            out[key] = value
    return out


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def update_table(table_node, result: SpineResult) -> None:
    """Fill the table with one row per measured vertebra; numeric columns get units (mm, mm3)."""
    import vtk

    rows = [_flat_row(r) for r in result.measurements]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    table_node.RemoveAllColumns()
    for column in columns:
        numeric = all(isinstance(r.get(column), (int, float, np.integer, np.floating, type(None))) and
                      not isinstance(r.get(column), bool) for r in rows)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(column)
        array.SetNumberOfValues(len(rows))
        for n, row in enumerate(rows):
            value = row.get(column)
            if numeric:
                array.SetValue(n, float("nan") if value is None else float(value))
            else:
                array.SetValue(n, _cell_text(value))
        table_node.AddColumn(array)
        if _unit(column):
            table_node.SetColumnUnitLabel(column, _unit(column))
    table_node.Modified()


# --- nodes -> result --------------------------------------------------------------------------
_FIELD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*([^;]*)")


def _parse_description(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in _FIELD.findall(text or "")}


def _read_points(points_node) -> list[dict]:
    """Defined control points as dicts: label, position (RAS, node coordinates), locked, description fields."""
    out = []
    if points_node is None:
        return out
    position = [0.0, 0.0, 0.0]
    for i in range(points_node.GetNumberOfControlPoints()):
        if points_node.GetNthControlPointPositionStatus(i) != points_node.PositionDefined:
            continue
        points_node.GetNthControlPointPosition(i, position)
        out.append({"label": points_node.GetNthControlPointLabel(i).strip(), "ras": np.array(position, float),
                    "locked": bool(points_node.GetNthControlPointLocked(i)),
                    **_parse_description(points_node.GetNthControlPointDescription(i))})
    return out


def _export_segments(scene, seg_node, volume_node) -> tuple[list[str], np.ndarray]:
    """(segment IDs, (k, j, i) map of 1-based positions in that list) on the volume's grid, voxel for voxel."""
    import slicer
    import vtk

    ids = list(seg_node.GetSegmentation().GetSegmentIDs())
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    if not ids:
        return ids, np.zeros(shape, dtype=np.uint16)
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SpineLabel temporary export")
    try:
        id_array = vtk.vtkStringArray()
        for segment_id in ids:
            id_array.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg_node, id_array, labelmap_node, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError("Slicer could not export the vertebra segments to a label map")
        labels = np.array(slicer.util.arrayFromVolume(labelmap_node), dtype=np.uint16, copy=True)
    finally:
        scene.RemoveNode(labelmap_node)
    if labels.shape != shape:
        raise RuntimeError(f"exported label map {labels.shape} is not on the volume grid {shape}")
    return ids, labels


def _segment_info(seg_node, ids: list[str]) -> list[dict]:
    out = []
    for position, segment_id in enumerate(ids, start=1):
        segment = seg_node.GetSegmentation().GetSegment(segment_id)
        instance = _int_tag(segment, INSTANCE_TAG)
        name = segment.GetName().strip()
        level = name if name in anatomy.CODE_BY_NAME else ""
        out.append({"id": segment_id, "position": position, "instance": instance, "level": level})
    return out


def _int_tag(segment, name: str) -> int:
    """An integer segment tag, 0 when absent (VTK returns tag values through a reference)."""
    import vtk

    value = vtk.reference("")
    if not segment.GetTag(name, value):
        return 0
    text = str(value).strip()
    return int(text) if text.isdigit() else 0


def _as_nodes(nodes) -> SceneNodes:
    if isinstance(nodes, SceneNodes):
        return nodes
    return SceneNodes(*nodes)


def nodes_to_result(nodes, previous: SpineResult | None = None, scene=None) -> SpineResult:
    """Read the scene (after a person edited it) into a new `SpineResult`; record changes vs ``previous``.

    Points give levels, positions and locks; segments give masks. A point and a segment belong to the
    same vertebra when the point's ``instance=`` matches the segment's instance tag, else when the
    point's label equals the segment's name. Segments without a point become vertebrae whose centroid
    is the mask's centre; points without a segment are maskless vertebrae.
    """
    from .correction import diff_results

    nodes = _as_nodes(nodes)
    scene = scene or nodes.volume.GetScene()
    image = node_to_volume(nodes.volume)
    ids, positions = (_export_segments(scene, nodes.segmentation, nodes.volume) if nodes.segmentation is not None
                      else ([], np.zeros(image.array.shape, np.uint16)))
    segments = _segment_info(nodes.segmentation, ids) if ids else []
    vertebrae, claimed = _link_points(_read_points(nodes.points), segments)
    vertebrae += _unlinked_segments(segments, claimed, vertebrae)
    instances = _renumber(positions, segments, vertebrae, previous)
    _stamp_instances(nodes.segmentation, segments, vertebrae)
    result = _new_result(previous, image, vertebrae, instances)
    _finish_new_segments(result)
    if previous is not None:
        for change in diff_results(previous, result):
            result.record(change.pop("action"), **change, origin="scene")
    return result


def _link_points(points: list[dict], segments: list[dict]) -> tuple[list[Vertebra], set[int]]:
    """Vertebrae from points; each linked segment's list position is stashed in ``_position``."""
    by_instance = {s["instance"]: s for s in segments if s["instance"]}
    claimed: set[int] = set()
    vertebrae = []
    for point in points:
        instance = int(point["instance"]) if point.get("instance", "").isdigit() else 0
        segment = by_instance.get(instance) if instance else None
        if segment is None or segment["position"] in claimed:
            segment = next((s for s in segments if s["position"] not in claimed and point["label"]
                            and s["level"] == point["label"]), None)
        level = point["label"] if point["label"] in anatomy.CODE_BY_NAME else ""
        score = float(point["score"]) if _is_number(point.get("score")) else 1.0
        source = point.get("source") or "manual"
        v = Vertebra(level, point["ras"], instance=0, score=score, source=source, locked=point["locked"])
        v._position = segment["position"] if segment else 0          # type: ignore[attr-defined]
        if segment:
            claimed.add(segment["position"])
        vertebrae.append(v)
    return vertebrae, claimed


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _unlinked_segments(segments: list[dict], claimed: set[int], vertebrae: list[Vertebra]) -> list[Vertebra]:
    """A segment a person painted without a point: a new vertebra (centroid filled in later)."""
    taken = {v.level for v in vertebrae if v.level}
    out = []
    for s in segments:
        if s["position"] in claimed:
            continue
        level = s["level"] if s["level"] not in taken else ""
        v = Vertebra(level, np.zeros(3), instance=0, score=1.0, source="manual")
        v._position = s["position"]                                  # type: ignore[attr-defined]
        v._needs_centroid = True                                      # type: ignore[attr-defined]
        taken.add(level)
        out.append(v)
    return out


def _renumber(positions: np.ndarray, segments: list[dict], vertebrae: list[Vertebra],
              previous: SpineResult | None) -> np.ndarray:
    """Instance map with each vertebra's segment; instance numbers kept from the segment tags when free."""
    by_position = {s["position"]: s for s in segments}
    used: set[int] = set()
    wanted = {}
    for v in vertebrae:
        s = by_position.get(getattr(v, "_position", 0))
        if s and s["instance"] and s["instance"] not in used:
            wanted[id(v)] = s["instance"]
            used.add(s["instance"])
    next_free = max(used | {previous.next_instance() - 1 if previous else 0}) + 1
    lookup = np.zeros(len(segments) + 1, dtype=np.uint16)
    for v in vertebrae:
        position = getattr(v, "_position", 0)
        if not position or not np.any(positions == position):
            v.instance = 0
            continue
        if id(v) not in wanted:
            wanted[id(v)] = next_free
            next_free += 1
        v.instance = wanted[id(v)]
        lookup[position] = v.instance
    return lookup[positions]


def _stamp_instances(seg_node, segments: list[dict], vertebrae: list[Vertebra]) -> None:
    """Tag segments a person painted with their vertebra's instance, so the next reading keeps it."""
    by_position = {s["position"]: s for s in segments}
    for v in vertebrae:
        s = by_position.get(getattr(v, "_position", 0))
        if s and v.instance and s["instance"] != v.instance:
            seg_node.GetSegmentation().GetSegment(s["id"]).SetTag(INSTANCE_TAG, str(v.instance))


def _finish_new_segments(result: SpineResult) -> None:
    """Centroids of vertebrae made from a painted segment; drop those whose segment is empty."""
    from scipy import ndimage

    keep = []
    for v in result.vertebrae:
        if getattr(v, "_needs_centroid", False):
            if not v.instance:
                continue
            centre = ndimage.center_of_mass(result.instances == v.instance)
            v.centroid_ras = result.image.kji_to_ras(np.array(centre))[0]
        for attribute in ("_position", "_needs_centroid"):
            if hasattr(v, attribute):
                delattr(v, attribute)
        keep.append(v)
    result.vertebrae = keep


def _new_result(previous: SpineResult | None, image: Volume, vertebrae: list[Vertebra],
                instances: np.ndarray) -> SpineResult:
    """A result carrying the previous one's case facts (id, input, models, record) with the scene's content."""
    if previous is None:
        from .paths import safe_name

        return SpineResult(safe_name(image.metadata.get("name", "")), image, vertebrae, instances)
    import copy

    return SpineResult(previous.case_id, image, vertebrae, instances, previous.modality,
                       previous.input_path, previous.input_sha256, copy.deepcopy(previous.models),
                       dict(previous.timings), list(previous.warnings), [], [],
                       copy.deepcopy(previous.corrections), copy.deepcopy(previous.extras))



# --- files through Slicer's storage nodes (work in Slicer and under slicer-core) ---------------
def _storage_write(storage, node, path) -> None:
    from .paths import atomic_path

    with atomic_path(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise RuntimeError(f"Slicer could not write {path}")


def write_segmentation_file(segmentation_node, path) -> None:
    """`.seg.nrrd` written by Slicer's own segmentation storage node (full reference extent)."""
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetCropToMinimumExtent(False)
    _storage_write(storage, segmentation_node, path)


def write_markups_file(points_node, path) -> None:
    """`.mrk.json` (LPS, Slicer's default) written by Slicer's markups JSON storage node."""
    import slicer

    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    _storage_write(storage, points_node, path)


def write_volume_file(volume_node, path) -> None:
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    _storage_write(storage, volume_node, path)


def _read(scene, node_class: str, storage, path, name: str):
    from pathlib import Path

    from .errors import InputError

    node = scene.AddNewNodeByClass(node_class, name)
    storage.SetFileName(str(Path(path).resolve()))
    if not Path(path).exists() or not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"{path}: Slicer could not read this file")
    return node


def read_volume_file(scene, path, name: str | None = None):
    """A scalar volume node read by Slicer's archetype storage node (NRRD, NIfTI, MHA...)."""
    import slicer

    from .volume import case_id

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetSingleFile(True)
    return _read(scene, "vtkMRMLScalarVolumeNode", storage, path, name or case_id(path))


def read_segmentation_file(scene, path, name: str | None = None):
    import slicer

    node = _read(scene, "vtkMRMLSegmentationNode", slicer.vtkMRMLSegmentationStorageNode(), path,
                 name or "vertebrae")
    node.CreateDefaultDisplayNodes()
    return node


def read_markups_file(scene, path, name: str | None = None):
    import slicer

    node = _read(scene, "vtkMRMLMarkupsFiducialNode", slicer.vtkMRMLMarkupsJsonStorageNode(), path,
                 name or "centroids")
    node.CreateDefaultDisplayNodes()
    return node


def segment_id_of(segmentation_node, vertebra: Vertebra) -> str:
    """The segment holding a vertebra's body: by instance tag, else by level name ('' when none)."""
    segmentation = segmentation_node.GetSegmentation()
    ids = list(segmentation.GetSegmentIDs())
    if vertebra.instance:
        for segment_id in ids:
            if _int_tag(segmentation.GetSegment(segment_id), INSTANCE_TAG) == vertebra.instance:
                return segment_id
    return next((i for i in ids if vertebra.level and segmentation.GetSegment(i).GetName() == vertebra.level), "")
