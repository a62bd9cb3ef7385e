"""Writing a phantom: image, body labels, Slicer segmentation and markups, and the truth as JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.paths import atomic_write_text
from ..core.volume import save_volume
from .generate import Phantom


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_phantom(phantom: Phantom, out_dir, case_id: str) -> dict[str, Path]:
    """Write <case>.nii.gz (image, int16: HU for CT), <case>_seg.nii.gz (body labels), <case>.seg.nrrd,
    <case>.mrk.json and <case>_truth.json."""
    from ..io.markups import write_markups
    from ..core.paths import safe_name
    from ..io.segfile import write_seg_nrrd

    out_dir, case_id = Path(out_dir), safe_name(case_id)
    paths = {"image": out_dir / f"{case_id}.nii.gz", "labels": out_dir / f"{case_id}_seg.nii.gz",
             "segmentation": out_dir / f"{case_id}.seg.nrrd", "markups": out_dir / f"{case_id}.mrk.json",
             "truth": out_dir / f"{case_id}_truth.json"}
    # Whole numbers as scanners store them; float noise would make the file ~5x larger.
    stored = np.clip(np.rint(phantom.image.array), -32768, 32767).astype(np.int16)
    save_volume(phantom.image.with_array(stored), paths["image"])
    save_volume(phantom.labels, paths["labels"])
    result = phantom.to_result(case_id)
    write_seg_nrrd(result, paths["segmentation"])
    write_markups(result, paths["markups"])
    atomic_write_text(paths["truth"], json.dumps(_jsonable({"case_id": case_id, **phantom.truth}), indent=1))
    return paths
