"""Training slices for the body segmenter: real lumbar MRI at 1 mm plus phantoms.

The real masks label L1-L5 (or T11-L5) only, yet the vertebrae above are visible: everything
above the topmost labelled body (less a few millimetres of disc) is left out of the loss instead of
being taught as background. The sacrum is background here (the detector outlines S1).
"""
from __future__ import annotations

import numpy as np

from ..maskrcnn.data import CLASS_OF_CODE, Case, SliceSampler, top_boundary

IGNORE = 255


def body_target(codes: np.ndarray) -> np.ndarray:
    """1 where a vertebral body of an output level (not S1) is, else 0."""
    return (CLASS_OF_CODE[codes] > 0).astype(np.uint8)


class BodySliceSampler(SliceSampler):
    """Augmented (3, size, size) slices with a 0/1/IGNORE target per pixel."""

    def __init__(self, cases: list[Case], size: int, slice_offset: int, seed: int = 0,
                 weights: list[float] | None = None, augment: bool = True, disc_margin_px: int = 3) -> None:
        real = [c.blank_top for c in cases]
        for case in cases:
            case.blank_top = False           # the parent would blank the image; here the loss ignores
        super().__init__(cases, size, slice_offset, seed, weights, augment)
        self.ignore_above = [top_boundary(c.labels) - disc_margin_px if r else None for c, r in zip(cases, real)]

    def slice_target(self, index: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice x of case ``index`` (3 channels) and its 0/1/IGNORE target, before augmentation."""
        image, codes = self.slice_stack(self.cases[index], x)
        target = body_target(codes)
        top = self.ignore_above[index]
        if top is not None:
            rows = np.arange(target.shape[0])[:, None]
            target = np.where(rows < top[None, :], IGNORE, target).astype(np.uint8)
        return image, target

    def sample(self):
        index = int(self.rng.choice(len(self.cases), p=self.weights))
        case = self.cases[index]
        labelled = case.labelled_slices
        if self.rng.random() < 0.85 and labelled.size:
            # Bodies' lateral edges are where the masks go wrong most: draw slices near them too.
            x = int(np.clip(self.rng.choice(labelled) + self.rng.integers(-3, 4), 0, case.image.shape[0] - 1))
        else:
            x = int(self.rng.integers(case.image.shape[0]))
        image, target = self.slice_target(index, x)
        image, target = self._geometry(image, target)
        if self.augment:
            image = self._intensity(image)
        return image, target
