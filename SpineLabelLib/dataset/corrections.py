"""The correction summary of a manifest line, from the label maps before and after correction or from the
correction record, reduced to level names and counts so no free text can leak; model records likewise."""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from ..core import anatomy


def corrections_from_maps(original: np.ndarray, corrected: np.ndarray) -> dict:
    """Levels relabelled (most of a level's voxels now carry another level), added, deleted; voxels changed.

    ``voxels_changed[L]`` counts voxels whose membership in level L differs between the two maps.
    Disc labels (100 + code above) follow the bodies' names and are left out here.
    """
    from ..core.discs import DISC_LABEL_OFFSET

    original = np.where(original >= DISC_LABEL_OFFSET, 0, original)
    corrected = np.where(corrected >= DISC_LABEL_OFFSET, 0, corrected)
    original_codes = {int(c) for c in np.unique(original) if c}
    corrected_codes = {int(c) for c in np.unique(corrected) if c}
    relabelled = []
    for code in sorted(original_codes):
        values, counts = np.unique(corrected[original == code], return_counts=True)
        target = int(values[np.argmax(counts)])
        if target not in (0, code) and 2 * counts.max() > counts.sum():
            relabelled.append((code, target))
    sources, targets = {a for a, _ in relabelled}, {b for _, b in relabelled}
    changed = original != corrected
    per_level = np.bincount(original[changed], minlength=256) + np.bincount(corrected[changed], minlength=256)
    return {
        "basis": "label maps",
        "relabelled": [{"from": anatomy.name_of(a), "to": anatomy.name_of(b)} for a, b in relabelled],
        "added": [anatomy.name_of(c) for c in sorted(corrected_codes - original_codes - targets)],
        "deleted": [anatomy.name_of(c) for c in sorted(original_codes - corrected_codes - sources)],
        "voxels_changed": {anatomy.name_of(c): int(per_level[c]) for c in sorted(original_codes | corrected_codes)
                           if per_level[c]},
        "voxels_changed_total": int(changed.sum()),
    }


def _level_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value in anatomy.CODE_BY_NAME else None


def _sanitised_actions(record: Sequence[dict]) -> list[dict]:
    """The correction record reduced to action names, level names and counts: no free text can leak."""
    actions = []
    for item in record or []:
        clean = {"action": re.sub(r"[^a-z0-9_]+", "_", str(item.get("action", "")).lower())[:40]}
        for key in ("level", "from", "to", "old", "new", "from_level", "to_level"):
            if _level_or_none(item.get(key)):
                clean[key] = item[key]
        for key in ("voxels", "voxels_changed", "instance"):
            if isinstance(item.get(key), (int, float)) and not isinstance(item.get(key), bool):
                clean[key] = item[key]
        actions.append(clean)
    return actions


def corrections_from_record(record: Sequence[dict]) -> dict:
    """The same summary from `SpineResult.corrections` when no original label map is available."""
    actions = _sanitised_actions(record)
    summary = {"basis": "correction record" if actions else "none", "relabelled": [], "added": [],
               "deleted": [], "voxels_changed": {}, "voxels_changed_total": None}
    for item in actions:
        action = item["action"]
        source = item.get("from") or item.get("old") or item.get("from_level")
        target = item.get("to") or item.get("new") or item.get("to_level")
        level = item.get("level") or target or source
        if any(word in action for word in ("relabel", "rename")) and source and target:
            summary["relabelled"].append({"from": source, "to": target})
        elif any(word in action for word in ("add", "create")) and level:
            summary["added"].append(level)
        elif any(word in action for word in ("delete", "remove")) and level:
            summary["deleted"].append(level)
        voxels = item.get("voxels_changed", item.get("voxels"))
        if voxels is not None and level:
            summary["voxels_changed"][level] = summary["voxels_changed"].get(level, 0) + int(voxels)
    if summary["voxels_changed"]:
        summary["voxels_changed_total"] = sum(summary["voxels_changed"].values())
    return summary


def _sanitised_models(model: dict | Sequence[dict] | None) -> list[dict]:
    models = [model] if isinstance(model, dict) else list(model or [])
    keep = ("name", "version", "sha256", "hash", "task", "modality")
    return [{k: str(m[k])[:200] for k in keep if m.get(k) not in (None, "")} for m in models]
