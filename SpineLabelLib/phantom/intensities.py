"""Intensities: a tissue-class map rendered as a CT- or MRI-like image (intensity table per modality,
texture, bias field, blur, noise)."""
from __future__ import annotations

import math

import numpy as np

from .tissues import AIR, ANNULUS, CANCELLOUS, CORTICAL, MUSCLE, TISSUE_NAMES

MODALITIES = ("ct", "t1", "t2", "random")


# Mean intensity per tissue class (order as TISSUE_NAMES). CT in Hounsfield units; T1/T2 in arbitrary
# units 0..1000 (T1: fat bright, marrow medium-bright, disc dark; T2: nucleus and CSF bright, bone dark).
INTENSITY = {
    "ct": (-1000, -100, 45, 35, -850, 850, 200, 90, 75, 10, 35),
    "t1": (0, 900, 320, 380, 10, 40, 600, 230, 270, 120, 420),
    "t2": (0, 700, 220, 400, 10, 40, 380, 170, 850, 950, 430),
}
DEFAULT_NOISE = {"ct": 15.0, "t1": 15.0, "t2": 15.0, "random": 15.0}


def tissue_intensities(modality: str, rng: np.random.Generator) -> np.ndarray:
    """Mean intensity per tissue class for one phantom (slightly varied per seed)."""
    if modality == "random":        # domain randomisation: any contrast, bodies distinct from discs
        for _ in range(100):
            values = rng.uniform(0.0, 1000.0, len(TISSUE_NAMES))
            values[AIR] = rng.uniform(0.0, 60.0)
            if abs(values[CANCELLOUS] - values[ANNULUS]) > 150 and abs(values[CANCELLOUS] - values[MUSCLE]) > 100:
                break
        return values.astype(np.float32)
    values = np.array(INTENSITY[modality], dtype=np.float32)
    if modality == "ct":
        values += rng.uniform(-5.0, 5.0, len(values)).astype(np.float32)
        values[CORTICAL] = rng.uniform(750.0, 950.0)
        values[CANCELLOUS] = rng.uniform(160.0, 240.0)
        values[AIR] = -1000.0
    else:
        values *= rng.uniform(0.9, 1.1, len(values)).astype(np.float32)
    return values


def _bias_field(shape, rng: np.random.Generator, strength: float = 0.15) -> tuple[np.ndarray, ...]:
    """Smooth multiplicative field as a product of one slow curve per axis (broadcastable factors)."""
    factors = []
    for axis, n in enumerate(shape):
        u = np.linspace(0.0, 1.0, n, dtype=np.float32)
        curve = sum(rng.uniform(-1, 1) * np.cos(np.pi * f * u + rng.uniform(0, np.pi)) for f in (0.5, 1.0, 1.5))
        curve = np.exp(strength * curve / 2.0).astype(np.float32)
        factors.append(curve.reshape([n if a == axis else 1 for a in range(3)]))
    return tuple(factors)


# Relative texture amplitude per tissue class (order as TISSUE_NAMES): organs and marrow are the most
# heterogeneous, fluid the least.
TEXTURE_WEIGHT = np.array([0.0, 0.5, 0.8, 1.5, 0.5, 0.3, 1.0, 0.5, 0.6, 0.15, 0.3], dtype=np.float32)
TEXTURE_SCALE_MM = 12.0


def _smooth_field(shape, spacing_kji, rng: np.random.Generator, scale_mm: float = TEXTURE_SCALE_MM) -> np.ndarray:
    """Smooth random field (about unit SD, features ~scale_mm): coarse Gaussian noise interpolated with
    per-axis Gaussian weight matrices, applied as three matrix products (BLAS, no 3-D resampling)."""
    matrices = []
    for n, s in zip(shape, spacing_kji):
        coarse = int(math.ceil(n * s / scale_mm)) + 4
        position = np.arange(n) * s / scale_mm + 2.0
        weights = np.exp(-0.5 * ((position[:, None] - np.arange(coarse)[None, :]) / 0.8) ** 2)
        weights /= np.sqrt((weights ** 2).sum(axis=1, keepdims=True))      # unit variance after mixing
        matrices.append(weights.astype(np.float32))
    wk, wj, wi = matrices
    field = rng.standard_normal((wk.shape[1], wj.shape[1], wi.shape[1]), dtype=np.float32)
    field = field @ wi.T                                         # (ck, cj, ni)
    field = np.einsum("kjn,Jj->kJn", field, wj)                  # (ck, nj, ni)
    return (wk @ field.reshape(field.shape[0], -1)).reshape(shape)


def render(tissues: np.ndarray, modality: str, seed: int = 0, noise: float | None = None,
           bias_field: bool = True, *, texture: float = 0.0, blur_mm: float = 0.0,
           spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Image (float32) from a tissue-class map: intensity table, texture, bias field, blur, then noise.

    texture: relative SD of a smooth (~12 mm) multiplicative variation of each tissue's contrast to
    air, weighted per tissue (TEXTURE_WEIGHT). blur_mm: Gaussian point-spread SD in mm. spacing (i, j, k)
    mm is needed for both. CT has no bias field (bias_field is ignored for "ct"); MR-like images are
    clipped at 0.
    """
    rng = np.random.default_rng([int(seed), 1])
    values = tissue_intensities(modality, rng)
    bias = _bias_field(tissues.shape, rng) if bias_field and modality != "ct" else ()
    spacing_kji = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))[::-1]
    field = None
    if texture > 0:
        field = _smooth_field(tissues.shape, spacing_kji, np.random.default_rng([int(seed), 2]))
        # CT contrast to air is ~1000 HU for every tissue: a tenth of the MR-like relative texture
        amplitude = np.float32(texture * (0.1 if modality == "ct" else 1.0)) * TEXTURE_WEIGHT
    air = np.float32(values[AIR])
    image = np.empty(tissues.shape, dtype=np.float32)
    step = max(1, 4_000_000 // max(1, tissues[0].size))      # in slabs: no second full-size float array
    for k0 in range(0, tissues.shape[0], step):
        slab = tissues[k0:k0 + step]
        clean = np.take(values - air, slab)
        if field is not None:
            clean *= 1.0 + np.take(amplitude, slab) * field[k0:k0 + step]
        clean += air
        for factor in bias:
            clean *= factor[k0:k0 + step] if factor.shape[0] > 1 else factor
        image[k0:k0 + step] = clean
    if blur_mm > 0:
        from scipy import ndimage

        image = ndimage.gaussian_filter(image, sigma=[blur_mm / s for s in spacing_kji], truncate=3.0)
    sigma = DEFAULT_NOISE[modality] if noise is None else float(noise)
    if sigma > 0:
        for k0 in range(0, tissues.shape[0], step):
            image[k0:k0 + step] += rng.standard_normal(image[k0:k0 + step].shape, dtype=np.float32) * np.float32(sigma)
    if modality != "ct":
        np.maximum(image, 0.0, out=image)
    return image
