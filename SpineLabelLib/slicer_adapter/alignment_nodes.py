"""The alignment in a Slicer scene: one markups line along each endplate a measure used, and a table.

Same rules as `SpineLabelLib.scene`: no Qt and no `slicer.app`, only MRML classes, so it runs inside 3D
Slicer and under `slicer-core`. Lines run from the endplate's anterior to its posterior corner (control
point labels `anterior`, `posterior`), are named `<case> <level> <side> endplate`, carry the role tag
``SpineLabel.Role = endplate`` and the level colour, and are locked: they are results, moved by measuring
again (after a correction `scene.result_to_nodes` refills them), not by dragging.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import anatomy
from ..core.result import SpineResult
from ..alignment.table import ALIGNMENT_COLUMNS, alignment_of

ROLE_ATTRIBUTE = "SpineLabel.Role"
ENDPLATE_ROLE = "endplate"
TEXT_COLUMNS = tuple(c for c in ALIGNMENT_COLUMNS if c != "value")


@dataclass
class AlignmentNodes:
    lines: dict[str, Any] = field(default_factory=dict)   # "L1 superior" -> vtkMRMLMarkupsLineNode
    table: Any = None


def used_endplates(records: dict) -> list[dict]:
    """Endplates a measure with a value came from, head to feet."""
    used = {tuple(item.split(":")) for row in records.get("measures", []) if row["value"] is not None
            for item in row["endplates"].split()}
    plates = [p for p in records.get("endplates", []) if (p["level"], p["side"]) in used
              and p["anterior_corner_ras"] is not None]
    return sorted(plates, key=lambda p: (anatomy.order_index(p["level"]), p["side"] != "superior"))


def _fill_line(node, plate: dict) -> None:
    node.RemoveAllControlPoints()
    node.AddControlPoint(*[float(c) for c in plate["anterior_corner_ras"]], "anterior")
    node.AddControlPoint(*[float(c) for c in plate["posterior_corner_ras"]], "posterior")
    node.SetDescription(f"{plate['level']} {plate['side']} endplate; normal_ras="
                        + " ".join(f"{c:.4f}" for c in plate["normal_ras"]) + f"; rms_mm={plate['rms_mm']}")
    node.SetLocked(True)
    node.SetAttribute(ROLE_ATTRIBUTE, ENDPLATE_ROLE)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*anatomy.COLOUR_BY_NAME.get(plate["level"], (0.0, 0.9, 1.0)))
        display.SetColor(*anatomy.COLOUR_BY_NAME.get(plate["level"], (0.0, 0.9, 1.0)))


def update_lines(scene, nodes: AlignmentNodes, records: dict, name: str) -> None:
    """One line per used endplate; lines of endplates no longer used leave the scene."""
    wanted = {f"{p['level']} {p['side']}": p for p in used_endplates(records)}
    for key in [k for k in nodes.lines if k not in wanted]:
        node = nodes.lines.pop(key)
        if node.GetScene() is not None:
            scene.RemoveNode(node)
    for key, plate in wanted.items():
        node = nodes.lines.get(key)
        if node is None or node.GetScene() is None:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{name} {key} endplate")
            node.CreateDefaultDisplayNodes()
            nodes.lines[key] = node
        _fill_line(node, plate)


def update_table(table_node, records: dict) -> None:
    """The measures, one row each: `value` numeric (NaN when not measured), the other columns text."""
    import vtk

    rows = records.get("measures", [])
    table_node.RemoveAllColumns()
    for column in ALIGNMENT_COLUMNS:
        array = vtk.vtkDoubleArray() if column == "value" else vtk.vtkStringArray()
        array.SetName(column)
        array.SetNumberOfValues(len(rows))
        for n, row in enumerate(rows):
            value = row.get(column)
            if column == "value":
                array.SetValue(n, float("nan") if value is None else float(value))
            else:
                array.SetValue(n, "" if value is None else str(value))
        table_node.AddColumn(array)
    table_node.Modified()


def alignment_to_nodes(scene, result: SpineResult, nodes: AlignmentNodes | None = None,
                       name: str | None = None) -> AlignmentNodes:
    """Show (or refresh) the result's alignment: endplate lines and the measure table."""
    name = name or result.case_id
    nodes = nodes or AlignmentNodes()
    records = alignment_of(result)
    update_lines(scene, nodes, records, name)
    if nodes.table is None or nodes.table.GetScene() is None:
        nodes.table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} alignment")
    update_table(nodes.table, records)
    return nodes


def read_line(node) -> tuple[np.ndarray, np.ndarray]:
    """(anterior, posterior) RAS of an endplate line node."""
    points = [np.zeros(3), np.zeros(3)]
    for i in range(2):
        node.GetNthControlPointPosition(i, points[i])
    return points[0], points[1]
