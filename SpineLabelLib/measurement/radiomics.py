"""First-order radiomic features inside a body mask (paper 004: skewness, kurtosis, mean of positive
valued voxels, entropy), on the 3-D mask and on the body's central sagittal slice.

Conventions, chosen to match PyRadiomics' first-order features (the "popular radiomics software"
paper 004 feeds its masks to): skewness and kurtosis are the population (biased) moment ratios from
scipy.stats, kurtosis *not* excess (a normal distribution gives 3). Entropy is the Shannon entropy in
bits of the intensity histogram inside the mask with ENTROPY_BINS equal-width bins spanning the
mask's own intensity range (a fixed bin count, so CT HU and arbitrary MR units are treated alike).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

ENTROPY_BINS = 32
FEATURES = ("mean_positive", "skewness", "kurtosis", "entropy")


def first_order(values: np.ndarray) -> dict[str, float | None]:
    """The four paper-004 features of the intensities inside a mask (None where undefined)."""
    values = np.asarray(values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    out: dict[str, float | None] = dict.fromkeys(FEATURES)
    if values.size == 0:
        return out
    positive = values[values > 0]
    out["mean_positive"] = float(positive.mean()) if positive.size else None
    if values.size >= 3 and values.std() > 1e-9 * max(1.0, abs(values.mean())):
        out["skewness"] = float(stats.skew(values))
        out["kurtosis"] = float(stats.kurtosis(values, fisher=False))
    counts, _ = np.histogram(values, bins=ENTROPY_BINS)
    out["entropy"] = float(stats.entropy(counts, base=2)) if np.ptp(values) > 0 else 0.0
    return out
