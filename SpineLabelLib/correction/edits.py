"""Guided correction of a `SpineResult`: what a person does in Slicer's panel, as pure functions.

Every function changes the result in place and appends what it changed to ``result.corrections``
(via `SpineResult.record`), so an exported case says which labels, points and voxels a person
touched. No MRML here: the Slicer module reads the scene with `scene.nodes_to_result`, calls these,
and writes the result back with `scene.result_to_nodes`.

Locked vertebrae are a person's statements: software never moves or renames them (a person may).
"""
from __future__ import annotations

import numpy as np

from ..core import anatomy
from ..core.errors import InputError
from ..core.result import SpineResult, Vertebra


def _vertebra(result: SpineResult, which: str | Vertebra) -> Vertebra:
    """Accept a level name or a `Vertebra` of this result."""
    if isinstance(which, Vertebra):
        if not any(v is which for v in result.vertebrae):
            raise InputError("that vertebra is not part of this result")
        return which
    found = result.by_level(str(which))
    if found is None:
        raise InputError(f"no vertebra labelled {which!r} in {result.case_id}")
    return found


def _ras_list(ras) -> list[float]:
    return [round(float(c), 3) for c in np.asarray(ras, float).reshape(3)]


def move_centroid(result: SpineResult, which: str | Vertebra, ras) -> Vertebra:
    """Put a vertebra's centroid where a person dropped it."""
    v = _vertebra(result, which)
    ras = np.asarray(ras, dtype=float).reshape(3)
    distance = float(np.linalg.norm(ras - v.centroid_ras))
    result.record("move", level=v.level, instance=v.instance, from_ras=_ras_list(v.centroid_ras),
                  to_ras=_ras_list(ras), distance_mm=round(distance, 3))
    v.centroid_ras = ras
    return v


def set_level(result: SpineResult, which: str | Vertebra, level: str) -> SpineResult:
    """A person names one vertebra (it becomes an anchor); unlocked others follow anatomical order."""
    from ..naming import labelling

    return labelling.set_level(result, _vertebra(result, which), level)


def add_vertebra(result: SpineResult, ras, level: str | None = None) -> Vertebra:
    """A vertebra the detector missed, at a clicked point (no mask yet).

    With ``level`` it is a locked statement; without, it is named by anatomical order with the others.
    """
    if level is not None and level not in anatomy.CODE_BY_NAME:
        raise InputError(f"unknown vertebral level {level!r}")
    if level and any(v.level == level and v.locked for v in result.vertebrae):
        raise InputError(f"{level} is already fixed on another vertebra; unlock it first")
    v = Vertebra(level or "", np.asarray(ras, float), instance=0, score=1.0, source="manual",
                 locked=bool(level))
    result.vertebrae.append(v)
    result.sort_cranio_caudal()
    result.record("add", level=v.level, centroid_ras=_ras_list(v.centroid_ras))
    from ..naming import labelling

    labelling.relabel_result(result)
    return v


def delete_vertebra(result: SpineResult, which: str | Vertebra) -> None:
    """Remove a false detection (its point and its mask). Its disc (the one below it) goes to the
    vertebra above, merging the discs around a spurious body; a disc left without neighbours goes."""
    from ..core.disc_layer import drop_orphans
    from ..core.result import DISCS

    v = _vertebra(result, which)
    if DISCS in result.layers and v.instance:
        ordered = sorted(result.vertebrae, key=lambda w: -w.centroid_ras[2])
        above = [w for w in ordered[:ordered.index(v)] if w.instance]
        layer = result.layers[DISCS]
        layer[layer == v.instance] = above[-1].instance if above else 0
    voxels = 0
    if v.instance and result.instances is not None:
        mask = result.instances == v.instance
        voxels = int(mask.sum())
        result.instances[mask] = 0
    result.vertebrae = [w for w in result.vertebrae if w is not v]
    result.record("delete", level=v.level, instance=v.instance, centroid_ras=_ras_list(v.centroid_ras),
                  voxels=voxels)
    if DISCS in result.layers:
        drop_orphans(result)


def replace_disc_mask(result: SpineResult, name: str, mask: np.ndarray) -> None:
    """Set the voxels of the disc "L4-L5" (painted or erased by a person); its row follows at the next
    measurement. Both neighbours must be there: a disc is named and valued by them."""
    from ..core import discs
    from ..core.result import DISCS

    upper_level, lower_level = discs.split_name(name)
    upper, lower = result.by_level(upper_level), result.by_level(lower_level)
    mask = np.asarray(mask, dtype=bool)
    if upper is None or lower is None or not upper.instance:
        raise InputError(f"disc {name}: {upper_level} and {lower_level} must both be there (with a mask)")
    if result.image is None or mask.shape != result.image.array.shape:
        raise InputError(f"mask shape {mask.shape} is not the image grid")
    layer = result.layers.setdefault(DISCS, np.zeros(mask.shape, np.uint16))
    old = layer == upper.instance
    layer[old & ~mask] = 0
    layer[mask] = upper.instance
    result.record("edit_disc", disc=name, voxels_added=int((mask & ~old).sum()),
                  voxels_removed=int((old & ~mask).sum()))


def draw_mask(result: SpineResult, which: str | Vertebra, segmenter="auto") -> Vertebra:
    """Draw the body mask of a vertebra that has none (one a person added) with the body segmenter,
    seeded at its centroid; other bodies keep their voxels. Without a segmenter, or when nothing
    body-like is there, the vertebra stays without a mask (a warning says so)."""
    from ..models.registry import segmenter_for
    from ..models.body_unet.infer import draw_body

    v = _vertebra(result, which)
    model = segmenter_for(segmenter)
    if model is None or result.image is None or v.instance:
        return v
    instances = result.instances if result.instances is not None else np.zeros(result.image.array.shape, np.uint16)
    mask = draw_body(result.image, instances, v.centroid_ras, model.network, result.modality or "mr")
    if not mask.any():
        result.warnings.append(f"no body mask drawn for the vertebra added at {np.round(v.centroid_ras, 1).tolist()}")
        return v
    result.instances = instances
    v.instance = result.next_instance()
    result.instances[mask] = v.instance
    result.record("draw_mask", level=v.level, instance=v.instance, voxels=int(mask.sum()))
    return v


def replace_mask(result: SpineResult, which: str | Vertebra, mask: np.ndarray) -> Vertebra:
    """Set a vertebra's body mask (painted or erased by a person); voxels of other bodies are taken over."""
    v = _vertebra(result, which)
    mask = np.asarray(mask, dtype=bool)
    if result.image is None or mask.shape != result.image.array.shape:
        raise InputError(f"mask shape {mask.shape} is not the image grid")
    if result.instances is None:
        result.instances = np.zeros(mask.shape, dtype=np.uint16)
    old = result.instances == v.instance if v.instance else np.zeros(mask.shape, bool)
    if not v.instance:
        v.instance = result.next_instance()
    result.instances[old & ~mask] = 0
    result.instances[mask] = v.instance
    result.record("edit_mask", level=v.level, instance=v.instance, voxels_added=int((mask & ~old).sum()),
                  voxels_removed=int((old & ~mask).sum()))
    if not mask.any():
        v.instance = 0
    return v


def recompute_centroids_from_masks(result: SpineResult) -> list[Vertebra]:
    """Centroids from the (edited) body masks; locked and maskless vertebrae keep theirs."""
    from scipy import ndimage

    moved = []
    if result.instances is None or result.image is None:
        return moved
    for v in result.vertebrae:
        if v.locked or not v.instance:
            continue
        mask = result.instances == v.instance
        if not mask.any():
            continue
        ras = result.image.kji_to_ras(np.array(ndimage.center_of_mass(mask)))[0]
        if np.linalg.norm(ras - v.centroid_ras) > 1e-6:
            move_centroid(result, v, ras)
            result.corrections[-1]["action"] = "recompute_centroid"
            moved.append(v)
    return moved


# --- what changed between two results ---------------------------------------------------------
def _pairs(before: list[Vertebra], after: list[Vertebra]) -> list[tuple[Vertebra, Vertebra]]:
    """Match vertebrae: same mask instance, then same level, then nearest centroid within 15 mm."""
    pairs, left, right = [], list(before), list(after)
    for rule in ("instance", "level", "near"):
        for a in list(left):
            if rule == "instance":
                match = next((b for b in right if a.instance and b.instance == a.instance), None)
            elif rule == "level":
                match = next((b for b in right if a.level and b.level == a.level), None)
            else:
                near = sorted(right, key=lambda b: np.linalg.norm(b.centroid_ras - a.centroid_ras))
                match = near[0] if near and np.linalg.norm(near[0].centroid_ras - a.centroid_ras) < 15 else None
            if match is not None:
                pairs.append((a, match))
                left.remove(a)
                right.remove(match)
    return pairs


def _mask_changes(before: SpineResult, after: SpineResult, pairs) -> dict[int, tuple[int, int]]:
    """{after instance: (voxels added, voxels removed)} for paired vertebrae, on a shared grid."""
    if before.instances is None or after.instances is None or before.instances.shape != after.instances.shape:
        return {}
    top = int(max(before.instances.max(), after.instances.max())) + 1
    lookup = np.arange(top, dtype=np.int64) + top          # unpaired old bodies: values nothing matches
    lookup[0] = 0
    for a, b in pairs:
        if a.instance:
            lookup[a.instance] = b.instance if b.instance else top + a.instance
    old = lookup[before.instances]
    changed = old != after.instances
    added = np.bincount(after.instances[changed].astype(np.int64), minlength=top)
    removed = np.bincount(old[changed], minlength=2 * top)
    out = {}
    for a, b in pairs:
        n_removed = int(removed[b.instance]) if b.instance else int(removed[top + a.instance]) if a.instance else 0
        n_added = int(added[b.instance]) if b.instance else 0
        if n_added or n_removed:
            out[id(b)] = (n_added, n_removed)
    return out


def diff_results(before: SpineResult, after: SpineResult) -> list[dict]:
    """What a person changed: relabel, move (mm), lock, add, delete, edit_mask (voxels) entries."""
    pairs = _pairs(before.vertebrae, after.vertebrae)
    masks = _mask_changes(before, after, pairs)
    changes: list[dict] = []
    for a, b in pairs:
        if a.level != b.level:
            changes.append({"action": "relabel", "from": a.level, "to": b.level, "instance": b.instance})
        distance = float(np.linalg.norm(a.centroid_ras - b.centroid_ras))
        if distance > 1e-3:
            changes.append({"action": "move", "level": b.level, "instance": b.instance,
                            "from_ras": _ras_list(a.centroid_ras), "to_ras": _ras_list(b.centroid_ras),
                            "distance_mm": round(distance, 3)})
        if a.locked != b.locked:
            changes.append({"action": "lock" if b.locked else "unlock", "level": b.level})
        if id(b) in masks:
            added, removed = masks[id(b)]
            changes.append({"action": "edit_mask", "level": b.level, "instance": b.instance,
                            "voxels_added": added, "voxels_removed": removed})
    paired_before = {id(a) for a, _ in pairs}
    paired_after = {id(b) for _, b in pairs}
    for action, result, paired in (("delete", before, paired_before), ("add", after, paired_after)):
        for v in result.vertebrae:
            if id(v) not in paired:
                changes.append({"action": action, "level": v.level, "instance": v.instance,
                                "centroid_ras": _ras_list(v.centroid_ras), "voxels": _voxels(result, v)})
    return changes


def _voxels(result: SpineResult, v: Vertebra) -> int:
    return int((result.instances == v.instance).sum()) if v.instance and result.instances is not None else 0
