"""Training crops for the disc U-Net: a crop of 3 sagittal slices centred near a disc (jittered the
way the midpoint of two found bodies misses the disc centre), its disc as the target; the other
discs are background. Cases are canonical 1 mm grids: real T2 MRI with manual disc masks, phantoms."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage


@dataclass
class DiscCase:
    image: np.ndarray            # (x, rows S->I, cols A->P) float32 0..1, canonical 1 mm
    labels: np.ndarray           # same grid, disc label values (core.discs)
    name: str = ""

    @classmethod
    def load(cls, path: Path) -> "DiscCase":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["image"].astype(np.float32), data["labels"], Path(path).stem)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, image=self.image.astype(np.float16), labels=self.labels)

    def discs(self) -> list[tuple[int, np.ndarray, tuple[int, int]]]:
        """(label, centre (x, row, col), lateral range) per disc."""
        found = []
        for value in np.unique(self.labels):
            if value:
                voxels = np.argwhere(self.labels == value)
                found.append((int(value), voxels.mean(axis=0), (int(voxels[:, 0].min()), int(voxels[:, 0].max()))))
        return found


def crop(image: np.ndarray, x: int, centre_rc, rows: int, cols: int, offset: int) -> np.ndarray:
    """(3, rows, cols) slices x-offset, x, x+offset around (row, col), zero outside the image."""
    last = image.shape[0] - 1
    r0, c0 = int(round(centre_rc[0])) - rows // 2, int(round(centre_rc[1])) - cols // 2
    out = np.zeros((3, rows, cols), np.float32)
    for n, d in enumerate((-offset, 0, offset)):
        out[n] = window(image[min(last, max(0, x + d))], r0, c0, rows, cols)
    return out


def window(plane: np.ndarray, r0: int, c0: int, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), plane.dtype)
    rs, cs = slice(max(r0, 0), min(r0 + rows, plane.shape[0])), slice(max(c0, 0), min(c0 + cols, plane.shape[1]))
    if rs.stop > rs.start and cs.stop > cs.start:
        out[rs.start - r0: rs.stop - r0, cs.start - c0: cs.stop - c0] = plane[rs, cs]
    return out


class DiscCropSampler:
    def __init__(self, cases: list[DiscCase], config, seed: int = 0, weights=None, augment: bool = True,
                 jitter_mm=(4.0, 5.0)):
        self.cases, self.config, self.augment, self.jitter = cases, config, augment, jitter_mm
        self.rng = np.random.default_rng(seed)
        self.weights = None if weights is None else np.asarray(weights, float) / np.sum(weights)
        self.index = [case.discs() for case in cases]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        rng, config = self.rng, self.config
        n = int(rng.choice(len(self.cases), p=self.weights))
        case = self.cases[n]
        value, centre, (x_low, x_high) = self.index[n][int(rng.integers(len(self.index[n])))]
        if rng.random() < 0.85:
            x = int(rng.integers(x_low - 2, x_high + 3))
        else:
            x = int(centre[0] + rng.integers(-30, 31))
        x = int(np.clip(x, 0, case.image.shape[0] - 1))
        rc = centre[1:] + rng.normal(0, 1, 2) * np.asarray(self.jitter)
        image = crop(case.image, x, rc, config.crop_rows, config.crop_cols, config.slice_offset)
        r0, c0 = int(round(rc[0])) - config.crop_rows // 2, int(round(rc[1])) - config.crop_cols // 2
        target = (window(case.labels[x], r0, c0, config.crop_rows, config.crop_cols) == value).astype(np.uint8)
        if self.augment:
            image, target = self._geometry(image, target)
            image = self._intensity(image)
        return image, target

    def _geometry(self, image, target):
        rng = self.rng
        angle = np.radians(rng.uniform(-12, 12))
        scale = rng.uniform(0.85, 1.15)
        matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
        centre = (np.array(target.shape) - 1) / 2.0
        offset = centre - matrix @ centre
        image = np.stack([ndimage.affine_transform(c, matrix, offset, order=1) for c in image])
        target = ndimage.affine_transform(target, matrix, offset, order=0)
        return image.astype(np.float32), target

    def _intensity(self, image):
        rng = self.rng
        image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.5)
        image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        image = image + rng.normal(0, rng.uniform(0, 0.05), image.shape)
        return image.astype(np.float32)
