"""`<case>.alignment.csv` and the alignment section of `<case>.json`: one row per measure.

Columns: name, value, unit, levels, plane, grade, flags (the issue's contract), then direction (listhesis:
anterior | posterior; Cobb: convex_right | convex_left), apex (Cobb) and endplates (the endplates the value
comes from, `L1:superior S1:superior`). Names: `segmental:L4-L5`, `lordosis:L1-S1` or `lordosis:L1-L5`,
`kyphosis:T4-T12`, `cervical_lordosis:C2-C7`, `cobb`, `listhesis:L4-L5` (two rows: mm and percent).
Units: deg, mm, percent. An empty value means the measure's levels are in view but an endplate it needs is
flagged; `flags` says which and why.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.result import SpineResult
from ..io.tables import write_csv, write_table_tsv

ALIGNMENT_COLUMNS = ("name", "value", "unit", "levels", "plane", "grade", "flags", "direction", "apex", "endplates")
DESCRIPTIONS = {
    "name": "measure: segmental:<pair>, lordosis:L1-S1|L1-L5, kyphosis:T4-T12, cervical_lordosis:C2-C7, cobb, "
            "listhesis:<pair>",
    "value": "deg: lordosis positive (kyphosis positive for kyphosis:T4-T12; Cobb unsigned); mm/percent: "
             "positive anterior", "unit": "deg, mm or percent", "levels": "levels the measure spans",
    "plane": "patient plane it is measured in", "grade": "Meyerding grade I-V (listhesis)",
    "flags": "why a value is missing or doubtful", "direction": "listhesis direction or Cobb convexity",
    "apex": "apex vertebra of the Cobb curve", "endplates": "endplates the value comes from"}


def alignment_of(result: SpineResult) -> dict:
    """The result's alignment records, measured first when they are not there yet."""
    if not result.alignment:
        from .measures import measure_alignment

        measure_alignment(result)
    return result.alignment


def alignment_rows(result: SpineResult) -> list[dict]:
    return [dict(row) for row in alignment_of(result).get("measures", [])]


def write_alignment_csv(result: SpineResult, path: str | os.PathLike) -> Path:
    return write_csv(alignment_rows(result), path, ALIGNMENT_COLUMNS)


def write_alignment_tsv(result: SpineResult, path: str | os.PathLike) -> Path:
    """The same table as Slicer reads it (`.tsv` + `.schema.tsv`)."""
    return write_table_tsv(alignment_rows(result), path, ALIGNMENT_COLUMNS, DESCRIPTIONS)


def summary_section(result: SpineResult) -> dict:
    """For `<case>.json`: the measures (the CSV's rows) and the fitted endplates."""
    records = alignment_of(result)
    return {"columns": list(ALIGNMENT_COLUMNS), "measures": records.get("measures", []),
            "endplates": records.get("endplates", [])}
