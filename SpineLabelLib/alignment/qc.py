"""Endplate lines and alignment values on the sagittal QC image (`SpineLabelLib.qc` calls `draw_alignment`).

Each usable endplate is drawn from its anterior to its posterior corner (projected onto the QC slice),
each segmental angle is written in front of its disc, and the regional angles, the Cobb angle and any
listhesis of 3 mm or more are listed in a box at the bottom. A flagged endplate is drawn dashed in red.
"""
from __future__ import annotations

import numpy as np

from .table import alignment_of

LINE_COLOUR, FLAGGED_COLOUR, TEXT_COLOUR = "#00e5ff", "#ff4040", "#00e5ff"
LISTED_SLIP_MM = 3.0        # smaller slips stay in the table only (a QC image must stay legible)


def _segment(to_row_col, plate: dict):
    start, end = plate.get("anterior_corner_ras"), plate.get("posterior_corner_ras")
    if start is None or end is None:
        return None
    (r0, c0), (r1, c1) = to_row_col(start), to_row_col(end)
    return (c0, c1), (r0, r1)


def summary_lines(measures: list[dict]) -> list[str]:
    """Text lines of the alignment box: regional angles, Cobb, slips of LISTED_SLIP_MM or more."""
    lines = []
    for row in measures:
        kind = row["name"].split(":")[0]
        if row["value"] is None:
            if kind != "segmental" and row["unit"] != "percent":
                lines.append(f"{row['name']}: not measured ({row['flags']})")
            continue
        if kind in ("lordosis", "kyphosis", "cervical_lordosis"):
            lines.append(f"{row['name']}  {row['value']:.1f} deg")
        elif kind == "cobb":
            side = row["direction"].replace("convex_", "convex ") if row["direction"] else ""
            lines.append(f"Cobb {row['levels']}  {row['value']:.1f} deg  apex {row['apex'] or '-'} {side}".rstrip())
        elif kind == "listhesis" and row["unit"] == "mm" and abs(row["value"]) >= LISTED_SLIP_MM:
            percent = next((r["value"] for r in measures if r["name"] == row["name"] and r["unit"] == "percent"), None)
            share = "" if percent is None else f" ({percent:+.0f} %)"
            lines.append(f"{row['name']}  {row['value']:+.1f} mm{share} {row['direction']}, Meyerding {row['grade']}")
    return lines


def draw_alignment(result, to_row_col, axes, bottom: float = 0.01) -> None:
    """Draw on matplotlib `axes`; `to_row_col(ras) -> (row, col)` maps world points into the picture."""
    if result.image is None or result.instances is None:
        return
    records = alignment_of(result)
    plates = {(p["level"], p["side"]): p for p in records.get("endplates", [])}
    for plate in plates.values():
        segment = _segment(to_row_col, plate)
        if segment is None:
            continue
        flagged = bool(plate["flags"])
        axes.plot(*segment, color=FLAGGED_COLOUR if flagged else LINE_COLOUR, linewidth=1.4,
                  linestyle="--" if flagged else "-")
    for row in records.get("measures", []):
        if not row["name"].startswith("segmental:") or row["value"] is None:
            continue
        upper, lower = row["levels"].split("-")
        a, b = plates.get((upper, "inferior")), plates.get((lower, "superior"))
        if not a or not b or a["anterior_corner_ras"] is None or b["anterior_corner_ras"] is None:
            continue
        front = (np.asarray(a["anterior_corner_ras"]) + np.asarray(b["anterior_corner_ras"])) / 2
        row_px, col_px = to_row_col(front)
        axes.text(col_px - 3, row_px, f"{row['value']:+.1f}\N{DEGREE SIGN}", color=TEXT_COLOUR, fontsize=7,
                  ha="right", va="center")
    lines = summary_lines(records.get("measures", []))
    if lines:
        import textwrap

        width_px = axes.figure.get_figwidth() * axes.figure.dpi
        characters = max(12, int(width_px * 0.94 / 6.5))   # 7-point DejaVu Sans, bold digits: ~6.5 px a character
        lines = [part for line in lines for part in textwrap.wrap(line, characters, subsequent_indent="  ")]
        axes.text(0.01, bottom, "\n".join(lines), color="white", fontsize=7, va="bottom", ha="left",
                  transform=axes.transAxes, bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
