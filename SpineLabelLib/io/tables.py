"""Measurement and distance tables: CSV for people and spreadsheets, TSV + schema for Slicer.

Columns come from the measurement dicts: a fixed leading set in a fixed order, then any other key in
first-seen order. Cells: numbers with 6 significant digits (no exponent), empty for None/NaN, values
that are not scalars (e.g. `lines_ras`, drawn by the QC image) are left out.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..core import anatomy
from ..core.paths import atomic_write_text
from ..core.result import SpineResult

MEASUREMENT_COLUMNS = ("level", "code", "r_mm", "a_mm", "s_mm", "volume_mm3",
                       "height_anterior_mm", "height_middle_mm", "height_posterior_mm")
DISTANCE_COLUMNS = ("upper", "lower", "anterior_distance_mm", "middle_distance_mm", "posterior_distance_mm")
UNIT_SUFFIXES = (("_mm3", "mm3"), ("_mm2", "mm2"), ("_mm", "mm"), ("_deg", "deg"), ("_s", "s"))


def _is_scalar(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    return value is None or isinstance(value, (str, bool, int, float, np.generic))


def format_cell(value: Any) -> str:
    """A CSV cell: '' for None/NaN, integers as integers, floats to 6 significant digits."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        if value == 0:
            return "0"
        return np.format_float_positional(value, precision=6, unique=False, fractional=False, trim="-")
    return str(value)


def table_columns(rows: Iterable[dict], leading: Iterable[str] = ()) -> list[str]:
    """Leading columns, then every other scalar-valued key in first-seen order."""
    columns = list(leading)
    for row in rows:
        for key, value in row.items():
            if key not in columns and _is_scalar(value):
                columns.append(key)
    return columns


def _render(rows: list[dict], columns: list[str], delimiter: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) if _is_scalar(row.get(c)) else "" for c in columns])
    return buffer.getvalue()


def write_csv(rows: list[dict], path: str | os.PathLike, leading: Iterable[str] = ()) -> Path:
    rows = list(rows)
    return atomic_write_text(path, _render(rows, table_columns(rows, leading), ","))


def measurement_rows(result: SpineResult) -> list[dict]:
    """One row per vertebra: the measurement dicts, completed with code and centroid when missing."""
    rows = [dict(m) for m in result.measurements]
    if not rows:   # no measurements yet: still one row per named vertebra
        rows = [{"level": v.level} for v in result.vertebrae if v.level]
    for row in rows:
        level = row.get("level") or ""
        vertebra = result.by_level(level) if level else None
        if row.get("code") is None and level in anatomy.CODE_BY_NAME:
            row["code"] = anatomy.code_of(level)
        if vertebra is not None:
            for axis, key in enumerate(("r_mm", "a_mm", "s_mm")):
                if row.get(key) is None:
                    row[key] = float(vertebra.centroid_ras[axis])
    return rows


def write_measurements_csv(result: SpineResult, path: str | os.PathLike) -> Path:
    return write_csv(measurement_rows(result), path, MEASUREMENT_COLUMNS)


def write_distances_csv(result: SpineResult, path: str | os.PathLike) -> Path:
    return write_csv(result.distances, path, DISTANCE_COLUMNS)


# --- Slicer table (TSV + schema) ---------------------------------------------------------
def unit_of(column: str) -> str:
    return next((unit for suffix, unit in UNIT_SUFFIXES if column.endswith(suffix)), "")


def _column_type(rows: list[dict], column: str) -> str:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return "bit"
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return "int"
    if values and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        return "double"
    return "string"


def write_table_tsv(rows: list[dict], path: str | os.PathLike, leading: Iterable[str] = (),
                    descriptions: dict[str, str] | None = None) -> Path:
    """A `.tsv` table plus the `<name>.schema.tsv` sidecar Slicer reads for types and units."""
    rows = list(rows)
    path = Path(path)
    columns = table_columns(rows, leading)
    descriptions = descriptions or {}
    schema_rows = [{"columnName": c, "unitLabel": unit_of(c), "description": descriptions.get(c, ""),
                    "type": _column_type(rows, c), "componentNames": ""} for c in columns]
    stem = path.name[: -len(".tsv")] if path.name.lower().endswith(".tsv") else path.stem
    schema_path = path.with_name(f"{stem}.schema.tsv")
    atomic_write_text(schema_path, _render(schema_rows, ["columnName", "unitLabel", "description", "type",
                                                         "componentNames"], "\t"))
    return atomic_write_text(path, _render(rows, columns, "\t"))


# --- reading ------------------------------------------------------------------------------
def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a CSV/TSV table as dicts; numbers parsed, empty cells None."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as stream:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(stream, delimiter=delimiter)]
