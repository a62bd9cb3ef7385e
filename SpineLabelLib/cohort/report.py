"""`report.html`: one self-contained page over the cohort (no network: inline style and script, QC thumbnails as
base64 PNGs). Cases needing a look come first: fractured, then naming uncertain, then failed, then the rest;
a click on a column heading sorts by it. Each case links to its folder beside the report.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..core.paths import atomic_write_text
from .tables import case_row

REPORT_FILE = "report.html"
THUMBNAIL_PX = 220
COLUMNS = (("thumbnail", "QC"), ("case", "Case"), ("attention", "Needs a look"), ("status", "Status"),
           ("levels", "Levels"), ("levels_found", "Found"), ("fractures", "Fractures"),
           ("naming_confidence", "Naming confidence"), ("reason", "Reason"), ("seconds", "Seconds"))
ATTENTION = ("fracture", "naming uncertain", "failed", "")        # in the order the report lists them

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:middle;text-align:left}
th{background:#e8eef4;cursor:pointer;user-select:none}th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"}tr.fracture td{background:#fde2e2}tr.naming-uncertain td{background:#fff4d6}
tr.failed td{background:#eee;color:#666}img{display:block;max-width:%dpx}""" % THUMBNAIL_PX

# Sort by a column's data-sort values: numbers numerically, text alphabetically; a second click reverses.
# report.html#sort=seconds (or #sort=-seconds, descending) opens the page sorted by that column.
_SCRIPT = """function sortCases(index, ascending){
 var body = document.querySelector('#cases tbody'), rows = Array.from(body.rows);
 var headings = document.querySelectorAll('#cases th');
 headings.forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
 headings[index].classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
 function key(row){var v = row.cells[index].getAttribute('data-sort'); var n = Number(v);
  return (v !== '' && isFinite(n)) ? n : v.toLowerCase();}
 rows.sort(function(a, b){var x = key(a), y = key(b);
  if (typeof x !== typeof y){x = String(x); y = String(y);}
  return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);});
 rows.forEach(function(row){body.appendChild(row);});
}
document.querySelectorAll('#cases th').forEach(function(th, index){
 th.addEventListener('click', function(){sortCases(index, !th.classList.contains('sorted-asc'));});
});
var wanted = /^#sort=(-?)([a-z_]+)$/.exec(location.hash);
if (wanted){document.querySelectorAll('#cases th').forEach(function(th, index){
 if (th.getAttribute('data-key') === wanted[2]){sortCases(index, wanted[1] !== '-');}});}"""


def thumbnail(path: Path) -> str:
    """A downscaled copy of a QC picture as a data: URL ('' when there is none)."""
    from PIL import Image

    if not path.is_file():
        return ""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX * 2))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except OSError:
        return ""
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attention(row: dict) -> str:
    if row["status"] == "failed":
        return "failed"
    if row.get("fractures"):
        return "fracture"
    return "naming uncertain" if row.get("naming_uncertain") else ""


def _cell(key: str, row: dict, out_root: Path) -> str:
    value = row.get(key)
    if key == "thumbnail":
        source = thumbnail(out_root / row["case"] / f"{row['case']}.qc.png") if row["status"] != "failed" else ""
        image = f'<img src="{source}" alt="QC picture of {html.escape(row["case"])}">' if source else ""
        return f'<td data-sort="{html.escape(row["case"])}">{image}</td>'
    if key == "attention":          # sorted by the first reason; a fractured case's uncertain naming shown too
        also = "; naming uncertain" if value == "fracture" and row.get("naming_uncertain") else ""
        return f'<td data-sort="{ATTENTION.index(value)}">{html.escape(value + also)}</td>'
    text = "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
    if key == "case" and row["status"] != "failed":
        return f'<td data-sort="{html.escape(text)}"><a href="{html.escape(row["case"])}/">{html.escape(text)}</a></td>'
    return f'<td data-sort="{html.escape(text)}">{html.escape(text)}</td>'


def render(out_root: Path, run) -> str:
    rows = [case_row(out_root, record) for record in run.ordered]
    for row in rows:
        row["attention"] = attention(row)
    rows.sort(key=lambda r: (ATTENTION.index(r["attention"]), r["case"]))
    counts = {status: sum(r["status"] == status for r in rows) for status in ("done", "skipped", "failed")}
    heading = (f"{len(rows)} cases: {counts['done']} done, {counts['skipped']} skipped (done before), "
               f"{counts['failed']} failed; {sum(bool(r.get('fractures')) for r in rows)} with a fracture, "
               f"{sum(r['attention'] == 'naming uncertain' for r in rows)} more with uncertain naming")
    if run.interrupted:
        heading += f"; run interrupted, {len(run.cases) - len(rows)} cases not run"
    header = "".join(f'<th data-key="{key}">{html.escape(title)}</th>' for key, title in COLUMNS)
    body = "\n".join(f'<tr class="{row["attention"].replace(" ", "-")}">'
                     + "".join(_cell(key, row, out_root) for key, _ in COLUMNS) + "</tr>" for row in rows)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>SpineLabel cohort report</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>SpineLabel cohort</h1>\n<p id=\"summary\">{html.escape(heading)}"
            f"</p>\n<table id=\"cases\"><thead><tr>{header}</tr></thead><tbody>\n{body}\n</tbody></table>\n"
            f"<script>{_SCRIPT}</script>\n</body></html>\n")


def write_report(out_root: str | Path, run) -> Path:
    out_root = Path(out_root)
    return atomic_write_text(out_root / REPORT_FILE, render(out_root, run))
