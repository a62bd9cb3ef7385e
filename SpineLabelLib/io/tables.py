"""Measurement and distance tables: one encoder for the CSV files, the TSV + schema and Slicer's table node.

`encode_table` turns row dicts into a `Table` (columns with unit and type, rows of cell values);
every writer renders that one `Table`, so the CSV a pipeline run writes and the table a person sees
in Slicer (`slicer_adapter.scene.update_table`) carry the same columns, units and values.

Columns come from the measurement dicts: a fixed leading set in a fixed order, then any other key in
first-seen order. Cells: numbers with 6 significant digits (no exponent), empty for None/NaN, values
that are not scalars (e.g. `lines_ras`, drawn by the QC image) are left out.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..core import anatomy
from ..core.paths import atomic_write_text
from ..core.result import SpineResult

MEASUREMENT_COLUMNS = ("level", "code", "r_mm", "a_mm", "s_mm", "volume_mm3",
                       "height_anterior_mm", "height_middle_mm", "height_posterior_mm")
DISTANCE_COLUMNS = ("upper", "lower", "anterior_distance_mm", "middle_distance_mm", "posterior_distance_mm")
DISC_COLUMNS = ("name", "upper", "lower", "label", "volume_mm3", "height_anterior_mm", "height_middle_mm",
                "height_posterior_mm", "depth_mm", "dhi", "disc_csf_ratio")
UNIT_SUFFIXES = (("_mm3", "mm3"), ("_mm2", "mm2"), ("_mm", "mm"), ("_deg", "deg"), ("_pct", "%"), ("_s", "s"))
COLUMN_TYPES = ("string", "int", "double", "bit")      # the type names of Slicer's table schema


@dataclass(frozen=True)
class Column:
    name: str
    unit: str                      # '' for none
    type: str                      # one of COLUMN_TYPES


@dataclass(frozen=True)
class Table:
    """Columns and rows of cells; a cell is None (empty), bool, int, float (6 significant digits) or str."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _is_scalar(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    return value is None or isinstance(value, (str, bool, int, float, np.generic))


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.item()
    return value


def _six_digits(value: float) -> str:
    if value == 0:
        return "0"
    return np.format_float_positional(value, precision=6, unique=False, fractional=False, trim="-")


def cell_value(value: Any) -> Any:
    """The value a table carries for ``value``: what `format_cell` prints, as a number or text."""
    value = _plain(value)
    if isinstance(value, float):
        return float(_six_digits(value)) if math.isfinite(value) else None
    return value


def format_cell(value: Any) -> str:
    """A CSV cell: '' for None/NaN, integers as integers, floats to 6 significant digits."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _six_digits(value) if math.isfinite(value) else ""
    return str(value)


def unit_of(column: str) -> str:
    return next((unit for suffix, unit in UNIT_SUFFIXES if column.endswith(suffix)), "")


def _column_names(rows: list[dict], leading: Iterable[str]) -> list[str]:
    """Leading columns, then every other scalar-valued key in first-seen order."""
    columns = list(leading)
    for row in rows:
        for key, value in row.items():
            if key not in columns and _is_scalar(value):
                columns.append(key)
    return columns


def _column_type(cells: list[Any]) -> str:
    """'int' only without empty cells: an integer array has no value meaning 'missing' (doubles have NaN)."""
    values = [c for c in cells if c is not None]
    if values and all(isinstance(v, bool) for v in values):
        return "bit" if len(values) == len(cells) else "string"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int" if len(values) == len(cells) else "double"
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "double"
    return "string"


def encode_table(rows: Iterable[dict], leading: Iterable[str] = ()) -> Table:
    rows = list(rows)
    names = _column_names(rows, leading)
    cells = [tuple(cell_value(r.get(n)) if _is_scalar(r.get(n)) else None for n in names) for r in rows]
    columns = tuple(Column(n, unit_of(n), _column_type([row[i] for row in cells])) for i, n in enumerate(names))
    return Table(columns, tuple(cells))


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


def measurement_table(result: SpineResult) -> Table:
    """The measurements of a case as the CSV file and the Slicer table node both show them."""
    return encode_table(measurement_rows(result), MEASUREMENT_COLUMNS)


def distance_table(result: SpineResult) -> Table:
    return encode_table(result.distances, DISTANCE_COLUMNS)


def disc_table(result: SpineResult) -> Table:
    """One row per intervertebral disc (`measurement.discs`): the .discs.csv and the Slicer disc table."""
    return encode_table(result.disc_measurements, DISC_COLUMNS)


# --- text files ---------------------------------------------------------------------------
def _render(header: list[str], rows: Iterable[Iterable[Any]], delimiter: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([format_cell(cell) for cell in row])
    return buffer.getvalue()


def write_table_csv(table: Table, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, _render(table.names, table.rows, ","))


def write_csv(rows: list[dict], path: str | os.PathLike, leading: Iterable[str] = ()) -> Path:
    return write_table_csv(encode_table(rows, leading), path)


def write_measurements_csv(result: SpineResult, path: str | os.PathLike) -> Path:
    return write_table_csv(measurement_table(result), path)


def write_distances_csv(result: SpineResult, path: str | os.PathLike) -> Path:
    return write_table_csv(distance_table(result), path)


def write_discs_csv(result: SpineResult, path: str | os.PathLike) -> Path:
    return write_table_csv(disc_table(result), path)


def write_table_tsv(rows: list[dict], path: str | os.PathLike, leading: Iterable[str] = (),
                    descriptions: dict[str, str] | None = None) -> Path:
    """A `.tsv` table plus the `<name>.schema.tsv` sidecar Slicer reads for types and units."""
    table = encode_table(rows, leading)
    path = Path(path)
    descriptions = descriptions or {}
    schema = [(c.name, c.unit, descriptions.get(c.name, ""), c.type, "") for c in table.columns]
    stem = path.name[: -len(".tsv")] if path.name.lower().endswith(".tsv") else path.stem
    atomic_write_text(path.with_name(f"{stem}.schema.tsv"),
                      _render(["columnName", "unitLabel", "description", "type", "componentNames"], schema, "\t"))
    return atomic_write_text(path, _render(table.names, table.rows, "\t"))


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
