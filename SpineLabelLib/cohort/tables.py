"""The cohort's tables, read back from the case folders: `cohort.csv` (one row per vertebra of every case) and
`cases.csv` (one row per case).

A case's vertebra rows are its `<case>.measurements.csv`; every other `<case>.<kind>.csv` in its folder joins in
generically, as `<kind>_...` columns: a row with a `level` joins that vertebra; a row about the space below a
vertebra (an `upper` column, or `levels` naming two neighbouring vertebrae, as the distance, disc and alignment
tables have) joins the upper one as `<kind>_below_...`; named measures (`name`, `value`, `unit` columns) become
one column per measure and unit. Regional measures (over several levels) stay in the case's own files.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io.tables import MEASUREMENT_COLUMNS, read_csv_rows, write_csv
from .case import DONE, SKIPPED

COHORT_FILE, CASES_FILE = "cohort.csv", "cases.csv"
CASE_COLUMNS = ("case", "input", "status", "reason", "levels_found", "levels", "fractures", "naming_confidence",
                "naming_uncertain", "seconds")
COHORT_LEADING = ("case", *MEASUREMENT_COLUMNS, "wedge_ratio", "biconcave_ratio", "crush_ratio", "height_loss_pct",
                  "genant_grade", "genant_type", "confidence", "naming_confidence", "naming_warning")
_KEYS = ("level", "code", "upper", "lower", "levels", "endplates")


def case_summary(out_root: Path, case_id: str) -> dict:
    try:
        return json.loads((out_root / case_id / f"{case_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def measurement_rows(out_root: Path, case_id: str) -> list[dict]:
    path = out_root / case_id / f"{case_id}.measurements.csv"
    return read_csv_rows(path) if path.is_file() else []


def _other_tables(folder: Path, case_id: str) -> dict[str, list[dict]]:
    tables = {}
    for path in sorted(folder.glob(f"{case_id}.*.csv")):
        kind = path.name[len(case_id) + 1:-len(".csv")]
        if kind != "measurements" and "." not in kind:
            tables[kind] = read_csv_rows(path)
    return tables


def _anchor(row: dict, neighbours: dict[str, str]) -> tuple[str, str] | None:
    """(vertebra the row belongs to, column prefix), or None for a row about the case or a region."""
    if row.get("level"):
        return str(row["level"]), ""
    if row.get("upper"):
        return str(row["upper"]), "below_"
    levels = str(row.get("levels") or "")
    if "name" in row and not str(row["name"]).endswith(f":{levels}"):
        return None                    # a measure named without its pair (the Cobb angle) is about a region
    upper, _, lower = levels.partition("-")
    if upper and neighbours.get(upper) == lower:
        return upper, "below_"
    return None


def _columns(kind: str, prefix: str, row: dict) -> dict:
    if "name" in row and "value" in row:
        measure = f"{kind}_{prefix}{str(row['name']).split(':')[0]}_{row.get('unit') or 'value'}"
        cells = {measure: row["value"]}
        if row.get("grade"):
            cells[f"{kind}_{prefix}{str(row['name']).split(':')[0]}_grade"] = row["grade"]
        return cells
    return {f"{kind}_{prefix}{column}": value for column, value in row.items() if column not in _KEYS}


def vertebra_rows(out_root: Path, case_id: str) -> list[dict]:
    """cohort.csv's rows of one finished case."""
    base = measurement_rows(out_root, case_id)
    naming = case_summary(out_root, case_id).get("naming") or {}
    warning = naming.get("reason", "") if naming.get("uncertain") else ""
    levels = [str(row["level"]) for row in base]
    neighbours = dict(zip(levels, levels[1:]))
    extra: dict[str, dict] = {level: {} for level in levels}
    for kind, rows in _other_tables(out_root / case_id, case_id).items():
        for row in rows:
            anchor = _anchor(row, neighbours)
            if anchor is not None and anchor[0] in extra:
                extra[anchor[0]].update(_columns(kind, anchor[1], row))
    return [{"case": case_id, **row, "naming_confidence": naming.get("confidence"), "naming_warning": warning,
             **extra[str(row["level"])]} for row in base]


def _fractures(rows: list[dict]) -> str:
    return "; ".join(f"{row['level']} grade {row['genant_grade']}" + (f" {row['genant_type']}" if row.get("genant_type") else "")
                     for row in rows if (row.get("genant_grade") or 0) >= 1)


def case_row(out_root: Path, record) -> dict:
    """cases.csv's row of one case; what was found is read from its folder (empty when it failed)."""
    row = {"case": record.case_id, "input": record.input, "status": record.status, "reason": record.reason,
           "seconds": record.seconds}
    if record.status in (DONE, SKIPPED):
        rows = measurement_rows(out_root, record.case_id)
        naming = case_summary(out_root, record.case_id).get("naming") or {}
        levels = [str(r["level"]) for r in rows]
        row.update(levels_found=len(levels), levels=f"{levels[0]}-{levels[-1]}" if levels else "",
                   fractures=_fractures(rows), naming_confidence=naming.get("confidence"),
                   naming_uncertain=bool(naming.get("uncertain")))
    return row


def write_cohort_tables(out_root: str | Path, run) -> tuple[Path, Path]:
    """cases.csv and cohort.csv in ``out_root`` (each written atomically)."""
    out_root = Path(out_root)
    records = run.ordered
    cases = write_csv([case_row(out_root, r) for r in records], out_root / CASES_FILE, CASE_COLUMNS)
    vertebrae = [row for r in records if r.status in (DONE, SKIPPED) for row in vertebra_rows(out_root, r.case_id)]
    cohort = write_csv(vertebrae, out_root / COHORT_FILE, COHORT_LEADING if vertebrae else ("case", "level"))
    return cohort, cases


def case_line(out_root: str | Path, record) -> str:
    """One line per finished case, as `spinelabel run` prints it: what was found and how sure the naming is."""
    from ..naming.confidence import naming_line

    row = case_row(Path(out_root), record)
    if record.status not in (DONE, SKIPPED):
        return f"{record.case_id}: failed: {record.reason}"
    found = f"{row['levels_found']} vertebrae" + (f" {row['levels']}" if row["levels"] else "")
    naming = case_summary(Path(out_root), record.case_id).get("naming")
    skipped = " (skipped: done before with the same input and models)" if record.status == SKIPPED else ""
    return f"{record.case_id}: {found}; {naming_line(naming)}{skipped}"
