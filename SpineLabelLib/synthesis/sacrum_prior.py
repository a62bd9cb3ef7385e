"""A first-sacral-segment (S1) label for real training volumes whose manual masks stop at L5.

The real lumbar MRI we train on labels L1-L5 (or T11-L5) while S1 lies in view below. Left
unlabelled, the sacrum teaches the detector "S1 is background"; blanked, it teaches nothing, and on
new scans the detector then takes S1 for L5 and every name shifts. S1 is drawn here as a shape prior:
L5 moved by the rigid motion that carries L4 onto L5 in the sagittal plane (centroids and the
bodies' depth axes, so the lordotic curve continues), minus tissue much brighter than L5's marrow
(the L5-S1 disc, CSF), minus labelled voxels. It is not a segmentation, but it puts a body of the
right size at the right place, which is what the detector's S1 class needs. Cases where it cannot be
drawn credibly (L4/L5 axes unreliable, sacrum mostly out of view) get none.

Arrays are canonical training volumes (axis 0 left-right, 1 superior->inferior, 2 anterior->posterior;
isotropic voxels), as `models.maskrcnn.data.prepare_case` writes them.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core import anatomy

S1, L5, L4 = anatomy.code_of("S1"), anatomy.code_of("L5"), anatomy.code_of("L4")
#: Beyond this L4->L5 turn the principal axes are not trusted (a near-square body flips them).
MAX_TURN_DEG = 45.0
#: The turn applied is clipped to this: a noisy axis must not swing S1 away from the column.
CLIP_TURN_DEG = 25.0
#: Less than this fraction of L5's volume in view: S1 is out of the field of view.
MIN_IN_VIEW = 0.25


def sagittal_frame(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Centroid (voxels) and the angle of the body's depth axis in the sagittal (row, column) plane."""
    points = np.argwhere(mask).astype(float)
    centre = points.mean(axis=0)
    _, _, axes = np.linalg.svd(points[:, 1:] - centre[1:], full_matrices=False)
    depth = axes[0] if axes[0][1] >= 0 else -axes[0]
    return centre, float(np.arctan2(depth[0], depth[1]))


def sagittal_rotation(turn: float) -> np.ndarray:
    """Rotation about the left-right axis by ``turn`` radians, angles measured as in `sagittal_frame`."""
    cos, sin = np.cos(turn), np.sin(turn)
    return np.array([[1, 0, 0], [0, cos, sin], [0, -sin, cos]])


def moved_l5(labels: np.ndarray) -> tuple[np.ndarray | None, str]:
    """L5's voxels carried one segment further down the column (the L4->L5 motion applied to L5)."""
    l4, l5 = labels == L4, labels == L5
    if min(l4.sum(), l5.sum()) < 200:
        return None, "L4 or L5 not labelled"
    centre4, angle4 = sagittal_frame(l4)
    centre5, angle5 = sagittal_frame(l5)
    turn = angle5 - angle4
    if abs(np.degrees(turn)) > MAX_TURN_DEG:
        return None, f"L4->L5 turn {np.degrees(turn):.0f} deg: body axes unreliable"
    rotation = sagittal_rotation(float(np.clip(turn, -np.radians(CLIP_TURN_DEG), np.radians(CLIP_TURN_DEG))))
    moved = np.rint((np.argwhere(l5) - centre4) @ rotation.T + centre5).astype(int)
    inside = np.all((moved >= 0) & (moved < np.array(labels.shape)), axis=1)
    prior = np.zeros(labels.shape, bool)
    prior[tuple(moved[inside].T)] = True
    return ndi.binary_closing(prior, iterations=1), "ok"


def sacral_prior(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(S1 mask or None, why). ``image`` normalised intensities, ``labels`` VerSe codes, same grid."""
    if (labels == S1).any():
        return None, "S1 already labelled"
    prior, why = moved_l5(labels)
    if prior is None:
        return None, why
    l5 = labels == L5
    core = ndi.binary_erosion(l5, iterations=2)
    marrow = image[core if core.sum() > 100 else l5].astype(float)
    median, high = np.percentile(marrow, [50, 97])
    prior &= image.astype(float) <= high + 0.5 * (high - median)
    prior &= ~ndi.binary_dilation(labels > 0, iterations=1)
    prior = ndi.binary_opening(prior, iterations=1)
    pieces, count = ndi.label(prior)
    if count == 0:
        return None, "S1 out of view"
    sizes = ndi.sum(prior, pieces, index=np.arange(1, count + 1))
    s1 = pieces == int(np.argmax(sizes)) + 1
    for x in range(s1.shape[0]):
        s1[x] = ndi.binary_fill_holes(s1[x])
    in_view = s1.sum() / l5.sum()
    if in_view < MIN_IN_VIEW:
        return None, f"S1 mostly out of view ({in_view:.2f} of L5's volume)"
    return s1, f"drawn ({in_view:.2f} of L5's volume)"


def add_sacral_priors(folder, prefixes=("real_", "val_")) -> dict[str, str]:
    """Write S1 priors into the real MRI training files of a prepared folder (in place, atomically).
    Returns {file stem: why}; files that already label S1 are left alone."""
    from pathlib import Path

    from ..core.paths import atomic_path

    report = {}
    for path in sorted(Path(folder).glob("*.npz")):
        if not path.name.startswith(tuple(prefixes)):
            continue
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
        s1, why = sacral_prior(arrays["image"], arrays["labels"])
        report[path.stem] = why
        if s1 is None:
            continue
        labels = arrays["labels"].copy()
        labels[s1 & (labels == 0)] = S1
        arrays["labels"] = labels
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                np.savez_compressed(stream, **arrays)
    return report
