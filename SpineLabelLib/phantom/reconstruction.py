"""A volume as a scanner would have reconstructed it at thicker slices (tests and benches: a 2.5 mm
chest CT shown as a 5 mm one, a phantom at 5 mm)."""
from __future__ import annotations

import numpy as np

from ..core.volume import Volume, resample


def thick_slices(volume: Volume, slice_mm: float, label: bool = False) -> Volume:
    """``volume`` at ``slice_mm`` along its k axis: blurred by the slice profile (a Gaussian of that
    full width at half maximum), then resampled; a label map is only resampled (nearest neighbour)."""
    from scipy import ndimage

    spacing = np.linalg.norm(volume.ijk_to_ras[:3, :3], axis=0)
    if not label:
        sigma = slice_mm / 2.355 / spacing[2]
        volume = Volume(ndimage.gaussian_filter1d(volume.array.astype(np.float32), sigma, axis=0),
                        volume.ijk_to_ras)
    return resample(volume, (spacing[0], spacing[1], slice_mm), label=label)
