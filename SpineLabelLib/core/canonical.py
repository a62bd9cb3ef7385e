"""The case as the models see it: canonical sagittal stacks, resampled and normalised once.

Every stage that looks at voxels (locating bodies, redrawing their masks, the QC picture) asks the
case's `CanonicalView` instead of resampling the input itself: the whole volume is resampled to the
canonical grid once per spacing, and the intensity window (a fixed Hounsfield window for CT, the
1st-99th percentile for MRI) is computed once, on the input volume, and applied everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .volume import Volume, canonical_grid, covering_part, resample

#: CT is windowed in Hounsfield units: a percentile clip would put soft tissue and bone together.
CT_WINDOW_HU = (-250.0, 1000.0)
#: How intensities are normalised, as the model cards state it.
NORMALISATION_CARD = {"mr": "per volume: clip to the 1st..99th percentile, scale to 0..1",
                      "ct": "Hounsfield window -250..1000 HU scaled to 0..1"}


def intensity_window(array: np.ndarray, modality: str = "mr") -> tuple[float, float]:
    """The intensities that become 0 and 1: a fixed HU window for CT, the 1st and 99th
    percentiles for MRI (computed once on a whole volume, then applied to any part of it)."""
    if modality == "ct":
        return CT_WINDOW_HU
    array = np.asarray(array)
    sample = array[::2, ::2, ::2] if array.size > 8_000_000 else array
    low, high = np.percentile(sample, [1.0, 99.0])
    return float(low), float(high) if high > low else float(low) + 1.0


def apply_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``array`` to 0..1 float32 through ``window``. In place on one new array: a whole canonical CT
    grid is tens of millions of voxels and each temporary cost ~0.2 CPU s; same float32 operations."""
    low, high = window
    out = np.array(array, dtype=np.float32)              # always a copy: the input stays as it is
    np.subtract(out, np.float32(low), out=out)
    np.divide(out, np.float32(high - low), out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_intensity(array: np.ndarray, modality: str = "mr") -> np.ndarray:
    """To 0..1 (float32): CT through a fixed HU window, MRI by the volume's 1st-99th percentile."""
    return apply_window(array, intensity_window(array, modality))


@dataclass
class CanonicalView:
    """One case's canonical sagittal grids (cached per spacing) and its intensity window."""

    volume: Volume
    modality: str
    _grids: dict[float, Volume] = field(default_factory=dict, repr=False)
    _normalised: dict[float, np.ndarray] = field(default_factory=dict, repr=False)
    _window: tuple[float, float] | None = field(default=None, repr=False)
    _minimum: float | None = field(default=None, repr=False)
    #: how often the whole volume was resampled (a test holds the pipeline to once per spacing)
    resamplings: int = 0

    @property
    def window(self) -> tuple[float, float]:
        if self._window is None:
            self._window = intensity_window(self.volume.array, self.modality)
        return self._window

    @property
    def spacings(self) -> list[float]:
        """Spacings already resampled, first requested first."""
        return list(self._grids)

    def at(self, spacing: float) -> Volume:
        """The whole volume on an axis-aligned canonical grid at isotropic ``spacing`` (raw intensities)."""
        key = round(float(spacing), 6)
        if key not in self._grids:
            self._grids[key] = resample(self.volume, None, reference=canonical_grid(self.volume, key))
            self.resamplings += 1
        return self._grids[key]

    def normalised(self, spacing: float) -> np.ndarray:
        """`at(spacing)` through the case's intensity window, 0..1 float32."""
        key = round(float(spacing), 6)
        if key not in self._normalised:
            self._normalised[key] = apply_window(self.at(key).array, self.window)
        return self._normalised[key]

    def around(self, points_kji: np.ndarray, spacing: float, margin_mm) -> tuple[Volume, np.ndarray]:
        """A canonical sub-grid covering input voxels ``points_kji`` plus margins, and its normalised
        intensities: for stages that need a finer spacing over a small region only."""
        grid = canonical_grid(self.volume, spacing, points_kji, margin_mm)
        # The input voxels under the grid only; ``default_value``: what the whole volume's minimum
        # gave outside it (the part's minimum may be higher).
        part = covering_part(self.volume, grid)
        values = resample(part, None, reference=grid, default_value=self.minimum).array
        return grid, apply_window(values, self.window)

    @property
    def minimum(self) -> float:
        if self._minimum is None:
            self._minimum = float(self.volume.array.min())
        return self._minimum
