"""Slicer markups point lists (`.mrk.json`): one control point per vertebra, label = level name.

Written in LPS (Slicer's default), only defined points, valid against Slicer's markups schema.
Reading accepts LPS or RAS files, Slicer-written files with undefined points (skipped), and keeps
the `locked` flag: a locked point is a person's statement.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core import anatomy
from ..core.errors import InputError
from ..core.paths import atomic_write_text
from ..core.result import SpineResult, Vertebra
from . import point_description

SCHEMA_URL = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
              "Schema/markups-schema-v1.0.3.json#")
_SCHEMA_ID = re.compile(r".*markups-schema-(v1\.[0-9]+\.[0-9]+)\.json#*$", re.IGNORECASE)
_FLIP = np.array([-1.0, -1.0, 1.0])                  # RAS <-> LPS
_SCALE_TO_MM = {"mm": 1.0, "um": 0.001}
#: Folders searched for `markups-schema-vX.Y.Z.json` when validating (package resources first).
SCHEMA_DIRS = [Path(__file__).resolve().parents[1] / "resources" / "schemas"]


# --- writing ------------------------------------------------------------------------------
def markups_dict(vertebrae: Iterable[Vertebra], name: str = "Vertebrae", naming: dict | None = None) -> dict:
    points = []
    for n, v in enumerate(vertebrae, start=1):
        if not np.all(np.isfinite(v.centroid_ras)):
            continue                                   # undefined points would break the schema
        points.append({
            "id": str(n), "label": v.level or "", "description": point_description.encode(v, with_instance=False, naming=naming),
            "associatedNodeID": "",
            "position": [float(x) for x in v.centroid_ras * _FLIP],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],   # identity in RAS, as LPS
            "selected": True, "locked": bool(v.locked), "visibility": True, "positionStatus": "defined",
        })
    return {"@schema": SCHEMA_URL, "markups": [{
        "type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(points),
        "name": name, "controlPoints": points, "measurements": [],
    }]}


def write_markups(result_or_vertebrae: SpineResult | Iterable[Vertebra], path: str | os.PathLike,
                  name: str = "Vertebrae") -> Path:
    """Write the vertebra centroids as one Slicer point list (LPS), through a temporary file."""
    vertebrae = getattr(result_or_vertebrae, "vertebrae", result_or_vertebrae)
    naming = getattr(result_or_vertebrae, "naming", None)        # a whole result: its naming warning too
    text = json.dumps(markups_dict(vertebrae, name, naming), indent=2)
    return atomic_write_text(path, text + "\n")


# --- reading ------------------------------------------------------------------------------
def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a JSON file ({error.__class__.__name__}: {error})".splitlines()[0]) from None
    if not isinstance(document, dict) or not isinstance(document.get("markups"), list):
        raise InputError(f"{path}: not a Slicer markups file (no 'markups' list)")
    if not _SCHEMA_ID.match(str(document.get("@schema", ""))):
        raise InputError(f"{path}: not a Slicer markups file (missing or unknown '@schema')")
    return document


def _level(label: str) -> str:
    """A control point label as a level name ('' when it is not one, e.g. Slicer's 'F-1')."""
    label = str(label or "").strip().upper()
    return label if label in anatomy.CODE_BY_NAME else ""


def _point_to_vertebra(path: Path, point: dict, to_ras: np.ndarray, scale: float) -> Vertebra | None:
    if str(point.get("positionStatus", "defined")) != "defined":
        return None
    position = point.get("position")
    if not isinstance(position, list) or len(position) != 3:
        return None                                    # Slicer writes "" for an undefined point
    try:
        ras = np.array(position, dtype=float) * to_ras * scale
    except (TypeError, ValueError):
        raise InputError(f"{path}: control point {point.get('label', '')!r} has a non-numeric position") from None
    if not np.all(np.isfinite(ras)):
        return None
    described = point_description.decode(point.get("description", ""))
    return Vertebra(_level(point.get("label", "")), ras, locked=bool(point.get("locked", False)),
                    score=1.0 if described.score is None else described.score,
                    source=described.source or "manual")


def read_markups(path: str | os.PathLike) -> list[Vertebra]:
    """Vertebrae (RAS centroids) from the first point list of a `.mrk.json` file."""
    path = Path(path)
    document = _load_json(path)
    markup = next((m for m in document["markups"] if isinstance(m, dict) and m.get("type") == "Fiducial"), None)
    if markup is None:
        raise InputError(f"{path}: holds no point list (markup of type 'Fiducial')")
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(f"{path}: unknown coordinateSystem {system!r} (LPS or RAS expected)")
    units = markup.get("coordinateUnits", "mm")
    scale = _SCALE_TO_MM.get(units if isinstance(units, str) else "mm", None)
    if scale is None:
        raise InputError(f"{path}: unknown coordinateUnits {units!r} (mm or um expected)")
    to_ras = _FLIP if system == "LPS" else np.ones(3)
    points = markup.get("controlPoints") or []
    if not isinstance(points, list):
        raise InputError(f"{path}: 'controlPoints' is not a list")
    vertebrae = [_point_to_vertebra(path, p, to_ras, scale) for p in points if isinstance(p, dict)]
    return [v for v in vertebrae if v is not None]


# --- validation ---------------------------------------------------------------------------
def find_schema(schema_id: str, schema_dirs: Iterable[Path] | None = None) -> Path:
    """The local copy of the schema a file names in '@schema' (v1.0.3 when it names none)."""
    match = _SCHEMA_ID.match(str(schema_id or ""))
    version = match.group(1).lower() if match else "v1.0.3"
    for folder in list(schema_dirs or []) + SCHEMA_DIRS:
        candidate = Path(folder) / f"markups-schema-{version}.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no local copy of markups-schema-{version}.json")


def validate_markups(path_or_dict: str | os.PathLike | dict, schema_dirs: Iterable[Path] | None = None) -> None:
    """Raise InputError (one line) if the markups document does not satisfy Slicer's schema."""
    import jsonschema

    document = path_or_dict
    if not isinstance(document, dict):
        document = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
    schema = json.loads(find_schema(document.get("@schema", ""), schema_dirs).read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "document"
        raise InputError(f"markups file is not valid against the schema at {where}: {first.message}"
                         + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
