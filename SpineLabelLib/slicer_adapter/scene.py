"""MRML scene adapter: `SpineResult` <-> Slicer nodes (volume, segmentation, point list, table).

No Qt and no `slicer.app`: every function takes the scene or the nodes as arguments and uses only
MRML classes, static logic calls and `slicer.util` array helpers, so the same code runs inside 3D
Slicer and under the PyPI package `slicer-core` (tests, headless batch).

How nodes map to a result:
- segmentation: one segment per vertebral body; ID = name = level, label value = level code, explicit
  terminology tag, fixed colour, reference geometry = the volume. Each segment also carries the tag
  ``SpineLabel.Instance`` (the body's value in ``result.instances``) so a relabelled point keeps its mask.
- point list: one control point per vertebra, label = level, ``locked`` kept, description
  ``score=...; source=...; instance=...`` (`io.point_description`), associated node = the segmentation.
- table: the measurement table of `io.tables` (the CSV's columns, units and values); a second table
  holds the discs (`io.tables.disc_table`, the .discs.csv).
- discs: one segment per disc in the same segmentation (name "L4-L5", disc label value, terminology,
  colour), tagged ``SpineLabel.DiscUpper`` with the instance of the vertebra above, so relabelling or
  deleting vertebrae moves the disc with them (`correction.reconcile`).

Reading back (`nodes_to_result`) takes what a person did in the views: moved, relabelled, added or
deleted points, painted or erased masks. This module only translates nodes into plain records
(`read_records`); reconciling them with the previous result (which point owns which mask, instance
numbers, the correction record) is `correction.reconcile`, engine code that needs no Slicer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import anatomy
from ..core.result import SpineResult, Vertebra
from ..core.volume import Volume
from ..correction.reconcile import PointRecord, SceneRecords, SegmentRecord, reconcile
from ..io import point_description, tables

INSTANCE_TAG = "SpineLabel.Instance"
DISC_UPPER_TAG = "SpineLabel.DiscUpper"
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
    alignment: Any = None      # alignment_nodes.AlignmentNodes: endplate lines and the measure table
    disc_table: Any = None     # the disc table (one row per disc)


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
    seg_node.GetSegmentation().RemoveAllSegments()
    vertebrae = _masked(result)
    if not vertebrae:
        return
    values = {v.instance: _label_value(v, n) for n, v in enumerate(vertebrae)}
    lookup = np.zeros(int(result.instances.max()) + 1, dtype=np.uint16)
    for instance, value in values.items():
        lookup[instance] = value
    segments = _import_labelmap(scene, seg_node, result.image.with_array(lookup[result.instances]),
                                {values[v.instance]: _segment_id(v) for v in vertebrae}, "vertebra")
    for v in vertebrae:
        segment = segments[_segment_id(v)]
        segment.SetTag(INSTANCE_TAG, str(v.instance))
        if v.level:
            segment.SetColor(*anatomy.COLOUR_BY_NAME[v.level])
            segment.SetTag(segment.GetTerminologyEntryTagName(), anatomy.terminology_entry(v.level))
    _anatomical_segment_order(seg_node, vertebrae)
    _add_disc_segments(scene, seg_node, result)


def _import_labelmap(scene, seg_node, labelmap, names: dict[int, str], what: str) -> dict:
    """Import a label map whose voxel value n is segment ``names[n]`` in one call (label n <-> ids[n-1]);
    the temporary label map node is always removed. Returns {name: segment}, name and label value set."""
    import slicer
    import vtk

    labelmap_node = volume_to_node(scene, labelmap, f"SpineLabel temporary {what} labelmap", labelmap=True)
    ids = vtk.vtkStringArray()
    ids.SetNumberOfValues(int(max(names)))
    for n in range(ids.GetNumberOfValues()):
        ids.SetValue(n, "")
    for value, name in names.items():
        ids.SetValue(value - 1, name)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, seg_node, ids):
            raise RuntimeError(f"Slicer could not import the {what} label map into the segmentation")
    finally:
        scene.RemoveNode(labelmap_node)
    segments = {}
    for value, name in names.items():
        segment = seg_node.GetSegmentation().GetSegment(name)
        segment.SetName(name)
        segment.SetLabelValue(value)
        segments[name] = segment
    return segments


def _add_disc_segments(scene, seg_node, result: SpineResult) -> None:
    """One segment per disc of the disc layer, imported from one more label map whose voxel values are
    the disc label values (a segment's label value is its voxel value in its layer: label n <-> ids[n-1])."""
    from ..core import discs as disc_names
    from ..core.disc_layer import result_discs

    found = result_discs(result)
    if not found:
        return
    lookup = np.zeros(int(result.layers["discs"].max()) + 1, dtype=np.uint16)
    for disc in found:
        lookup[disc.value] = disc.label
    segments = _import_labelmap(scene, seg_node, result.image.with_array(lookup[result.layers["discs"]]),
                                {disc.label: disc.name for disc in found}, "disc")
    for disc in found:
        segment = segments[disc.name]
        segment.SetColor(*disc_names.colour(disc.name))
        segment.SetTag(segment.GetTerminologyEntryTagName(), disc_names.terminology_entry(disc.name))
        segment.SetTag(DISC_UPPER_TAG, str(disc.value))


def rename_disc_segments(seg_node, result: SpineResult) -> None:
    """Disc segments take their current names (their vertebrae may have been relabelled); the label
    value stays, it is the segment's voxel value in its layer."""
    from ..core import discs as disc_names
    from ..core.disc_layer import result_discs

    by_value = {d.value: d.name for d in result_discs(result)}
    segmentation = seg_node.GetSegmentation()
    for segment_id in list(segmentation.GetSegmentIDs()):
        segment = segmentation.GetSegment(segment_id)
        name = by_value.get(_int_tag(segment, DISC_UPPER_TAG))
        if name and segment.GetName() != name:
            segment.SetName(name)
            segment.SetColor(*disc_names.colour(name))
            segment.SetTag(segment.GetTerminologyEntryTagName(), disc_names.terminology_entry(name))


def _anatomical_segment_order(seg_node, vertebrae: list[Vertebra]) -> None:
    """Segments listed cranio-caudally (import orders them by label value, which puts T13 = 28 after L5)."""
    segmentation = seg_node.GetSegmentation()
    named = sorted((v for v in vertebrae if v.level), key=lambda v: anatomy.order_index(v.level))
    for index, v in enumerate(named):
        segmentation.SetSegmentIndex(_segment_id(v), index)


def _fill_points(points_node, result: SpineResult, associated_id: str) -> None:
    points_node.RemoveAllControlPoints()
    for v in result.vertebrae:
        index = points_node.AddControlPoint(*[float(c) for c in v.centroid_ras], v.level or "")
        points_node.SetNthControlPointDescription(index, point_description.encode(v, naming=result.naming))
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
    else:
        rename_disc_segments(seg, result)
    if nodes.points is None:
        nodes.points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} centroids")
        nodes.points.CreateDefaultDisplayNodes()
    _fill_points(nodes.points, result, seg.GetID())
    if nodes.table is None:
        nodes.table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} measurements")
    update_table(nodes.table, result)
    if result.disc_measurements or nodes.disc_table is not None:
        if nodes.disc_table is None:
            nodes.disc_table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} discs")
        update_table(nodes.disc_table, result, tables.disc_table(result))
    from .alignment_nodes import alignment_to_nodes

    nodes.alignment = alignment_to_nodes(scene, result, nodes.alignment, name)
    return nodes


# --- table ------------------------------------------------------------------------------------
_VTK_ARRAY_CLASS = {"string": "vtkStringArray", "int": "vtkIntArray", "double": "vtkDoubleArray",
                    "bit": "vtkBitArray"}


def _vtk_column(column, cells: list) -> Any:
    """One table column as the VTK array its schema type names (missing numbers as NaN)."""
    import vtk

    array = getattr(vtk, _VTK_ARRAY_CLASS[column.type])()
    array.SetName(column.name)
    array.SetNumberOfValues(len(cells))
    for n, cell in enumerate(cells):
        if column.type == "string":
            array.SetValue(n, tables.format_cell(cell))
        elif column.type == "double":
            array.SetValue(n, float("nan") if cell is None else float(cell))
        else:
            array.SetValue(n, int(cell))
    return array


def update_table(table_node, result: SpineResult, table=None) -> None:
    """Fill the table exactly as the CSV holds it: the measurements (`io.tables.measurement_table`), or
    ``table`` (the discs' `io.tables.disc_table`)."""
    table = table if table is not None else tables.measurement_table(result)
    table_node.RemoveAllColumns()
    for index, column in enumerate(table.columns):
        table_node.AddColumn(_vtk_column(column, [row[index] for row in table.rows]))
        if column.unit:
            table_node.SetColumnUnitLabel(column.name, column.unit)
    table_node.Modified()


# --- nodes -> records -> result -------------------------------------------------------------
def read_points(points_node) -> list[PointRecord]:
    """Defined control points (RAS, node coordinates) as records; undefined ones are skipped."""
    if points_node is None:
        return []
    out = []
    position = [0.0, 0.0, 0.0]
    for i in range(points_node.GetNumberOfControlPoints()):
        if points_node.GetNthControlPointPositionStatus(i) != points_node.PositionDefined:
            continue
        points_node.GetNthControlPointPosition(i, position)
        out.append(PointRecord(points_node.GetNthControlPointLabel(i).strip(), np.array(position, float),
                               bool(points_node.GetNthControlPointLocked(i)),
                               points_node.GetNthControlPointDescription(i) or ""))
    return out


def _export_segments(scene, seg_node, volume_node) -> tuple[list[str], np.ndarray]:
    """(segment IDs, (k, j, i) map of 1-based positions in that list) on the volume's grid, voxel for voxel.
    Disc segments (tagged, in a layer of their own) are exported on their own and fill what no body holds."""
    segmentation = seg_node.GetSegmentation()
    ids = list(segmentation.GetSegmentIDs())
    disc_ids = [i for i in ids if _int_tag(segmentation.GetSegment(i), DISC_UPPER_TAG)]
    body_ids = [i for i in ids if i not in disc_ids]
    body_ids, labels = _export_some(scene, seg_node, volume_node, body_ids)
    if disc_ids:
        disc_ids, disc_labels = _export_some(scene, seg_node, volume_node, disc_ids)
        fill = (labels == 0) & (disc_labels > 0)
        labels[fill] = disc_labels[fill] + len(body_ids)
    return body_ids + disc_ids, labels


def _export_some(scene, seg_node, volume_node, ids: list[str]) -> tuple[list[str], np.ndarray]:
    import slicer
    import vtk

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


def _segment_record(segment, segment_id: str) -> SegmentRecord:
    return SegmentRecord(segment_id, segment.GetName().strip(), int(segment.GetLabelValue()),
                         _int_tag(segment, INSTANCE_TAG), _int_tag(segment, DISC_UPPER_TAG))


def _int_tag(segment, name: str) -> int:
    """An integer segment tag, 0 when absent (VTK returns tag values through a reference)."""
    import vtk

    value = vtk.reference("")
    if not segment.GetTag(name, value):
        return 0
    text = str(value).strip()
    return int(text) if text.isdigit() else 0


def read_records(nodes, scene=None) -> SceneRecords:
    """The case as the views show it: image, points, segments and their voxels, as plain records."""
    nodes = _as_nodes(nodes)
    scene = scene or nodes.volume.GetScene()
    image = node_to_volume(nodes.volume)
    if nodes.segmentation is None:
        return SceneRecords(image, read_points(nodes.points), [], np.zeros(image.array.shape, np.uint16))
    ids, segment_map = _export_segments(scene, nodes.segmentation, nodes.volume)
    segmentation = nodes.segmentation.GetSegmentation()
    segments = [_segment_record(segmentation.GetSegment(i), i) for i in ids]
    return SceneRecords(image, read_points(nodes.points), segments, segment_map)


def tag_instances(seg_node, instance_tags: dict[str, int]) -> None:
    """Tag segments with their vertebra's instance, so the next reading pairs them the same way."""
    for segment_id, instance in instance_tags.items():
        seg_node.GetSegmentation().GetSegment(segment_id).SetTag(INSTANCE_TAG, str(instance))


def _as_nodes(nodes) -> SceneNodes:
    if isinstance(nodes, SceneNodes):
        return nodes
    return SceneNodes(*nodes)


def nodes_to_result(nodes, previous: SpineResult | None = None, scene=None) -> SpineResult:
    """Read the scene (after a person edited it) into a new `SpineResult`; record changes vs ``previous``.

    The rules (which point owns which segment, instance numbers, the record) are
    `correction.reconcile.reconcile`; here the nodes are only read and the new instance tags written.
    """
    nodes = _as_nodes(nodes)
    reconciled = reconcile(read_records(nodes, scene), previous)
    if nodes.segmentation is not None:
        tag_instances(nodes.segmentation, reconciled.instance_tags)
    return reconciled.result


# --- files through Slicer's storage nodes (work in Slicer and under slicer-core) ---------------
def _storage_write(storage, node, path) -> None:
    from ..core.paths import atomic_path

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

    from ..core.errors import InputError

    node = scene.AddNewNodeByClass(node_class, name)
    storage.SetFileName(str(Path(path).resolve()))
    if not Path(path).exists() or not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"{path}: Slicer could not read this file")
    return node


def read_volume_file(scene, path, name: str | None = None):
    """A scalar volume node read by Slicer's archetype storage node (NRRD, NIfTI, MHA...)."""
    import slicer

    from ..core.volume import case_id

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
