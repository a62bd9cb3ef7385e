"""The spine's slab is searched around the torso, not around everything in the field of view
(issue 12: chest CTs with arms, the table and air beside the patient)."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.core.canonical import CanonicalView
from SpineLabelLib.core.volume import resample
from SpineLabelLib.models.maskrcnn import infer
from SpineLabelLib.models.maskrcnn.network import DetectorConfig
from SpineLabelLib.phantom import generate_phantom

SPACING = 1.25


@pytest.fixture(scope="module")
def chest():
    """A whole-torso CT phantom on the canonical grid (0..1) and its body labels there; stored with
    an oblique grid and anisotropic voxels, as a scanner would."""
    phantom = generate_phantom(anatomy.parse_level_range("T9-L1"), "ct", spacing=(1.1, 1.1, 2.5), seed=5,
                               lateral_fov_mm=None, rotation_deg=(4.0, -3.0, 2.0))
    view = CanonicalView(phantom.image, "ct")
    image = view.normalised(SPACING)
    labels = resample(phantom.labels, None, reference=view.at(SPACING), label=True).array
    return image, labels


def weighted_centre(image: np.ndarray) -> float:
    """The previous rule: the intensity-weighted left-right centre of the whole image."""
    profile = image.reshape(image.shape[0], -1).mean(axis=1)
    return float(np.average(np.arange(len(profile)), weights=np.clip(profile - profile.min(), 0, None) + 1e-9))


def column_range(labels: np.ndarray) -> tuple[int, int]:
    xs = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    return int(xs[0]), int(xs[-1])


def crowded(image: np.ndarray, air_mm: float = 220.0, arms: int = 2) -> np.ndarray:
    """The torso with a wide field of view of air on its right, arms lying apart beside it on that
    side (muscle round a humerus) and a patient table below, under everything."""
    pad = int(air_mm / SPACING)
    out = np.pad(image, ((0, pad), (0, 0), (0, 20)))
    x, col = np.mgrid[0:out.shape[0], 0:out.shape[2]]
    right = np.flatnonzero(image.reshape(image.shape[0], -1).max(axis=1) > infer.TISSUE_LEVEL)[-1]
    for n in range(arms):
        centre_x, centre_col = right + int((45 + 80 * n) / SPACING), out.shape[2] // 2
        distance = np.hypot(x - centre_x, col - centre_col) * SPACING
        out = np.where((distance < 38)[:, None, :], 0.23, out)          # muscle, about 40 HU
        out = np.where((distance < 12)[:, None, :], 0.8, out)           # cortical bone
    out[:, :, -12:-8] = 0.45                                            # table shell, every slice
    return out.astype(np.float32)


def test_torso_centre_ignores_arms_table_and_air(chest):
    image, labels = chest
    low, high = column_range(labels)
    column = (low + high) / 2
    assert abs(infer.torso_centre(image, SPACING) - column) * SPACING < 10.0
    busy = crowded(image)
    # The distractors do pull the old, whole-image centre far off the spine ...
    assert abs(weighted_centre(busy) - column) * SPACING > 40.0
    # ... and the torso's centre stays on it.
    assert abs(infer.torso_centre(busy, SPACING) - column) * SPACING < 10.0


def test_slab_covers_the_column_in_a_crowded_field_of_view(chest, monkeypatch):
    """find_slab's search range starts at the torso: with a detector that sees exactly the bodies
    of each slice, the slab spans the column although arms, table and air fill the image."""
    image, labels = chest
    busy = crowded(image, arms=3)
    busy_labels = np.zeros(busy.shape, labels.dtype)
    busy_labels[:labels.shape[0], :, :labels.shape[2]] = labels

    def exact_detector(model, image_, xs, offset, **kwargs):
        found = {}
        for x in xs:
            found[x] = []
            for code in np.unique(busy_labels[x])[1:]:
                rows, cols = np.nonzero(busy_labels[x] == code)
                box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
                found[x].append(infer.SliceDetection(x, box, 0.95, np.ones(len(anatomy.ORDER)) / len(anatomy.ORDER),
                                                     np.ones((box[3] - box[1], box[2] - box[0]), np.float32)))
        return found

    monkeypatch.setattr(infer, "run_on_slices", exact_detector)
    low, high, coarse = infer.find_slab(None, busy, DetectorConfig(spacing_mm=SPACING))
    column_low, column_high = column_range(labels)
    seen = [x for x in coarse if column_low <= x <= column_high]
    assert len(seen) >= 3                             # the coarse pass crossed the column
    # the slab holds the column's middle third (where every body is) and not the arms
    third = (column_high - column_low) / 3
    assert low <= column_low + third and high >= column_high - third
    assert high < labels.shape[0] + 20
