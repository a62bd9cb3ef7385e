"""The run summary `<case>.json`: what went in (with its SHA-256), which models, what came out."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.paths import atomic_write_text
from ..core.result import SpineResult

SUMMARY_FORMAT = "spinelabel-summary-1"


def _hash_stream(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file; of a folder (a DICOM series): of its files' sorted content hashes.

    Sorting the per-file hashes makes the folder hash independent of file names and listing order,
    so a copied or renamed series keeps its identity. Hidden files (.DS_Store ...) are ignored.
    """
    path = Path(path)
    if not path.is_dir():
        return _hash_stream(path)
    hashes = sorted(_hash_stream(p) for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy to Python, NaN/inf to None, paths to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def summary_dict(result: SpineResult) -> dict:
    from .. import __version__
    from ..alignment.table import summary_section as alignment_summary

    return _plain({
        "format": SUMMARY_FORMAT,
        "case_id": result.case_id,
        "spinelabel_version": __version__,
        "input": {"path": result.input_path, "sha256": result.input_sha256},
        "modality": result.modality,
        "models": result.models,
        "timings_s": {stage: round(float(seconds), 3) for stage, seconds in result.timings.items()},
        "vertebrae": [{"level": v.level, "code": v.code, "centroid_ras": [round(float(x), 3) for x in v.centroid_ras],
                       "confidence": round(float(v.score), 4), "source": v.source, "locked": bool(v.locked),
                       "has_mask": bool(v.instance)} for v in result.vertebrae],
        "naming": result.naming or None,
        "warnings": list(result.warnings),
        "corrections": result.corrections,
        "alignment": alignment_summary(result),
    })


def write_summary_json(result: SpineResult, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(summary_dict(result), indent=2, allow_nan=False) + "\n")
