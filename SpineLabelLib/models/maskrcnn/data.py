"""Training data for the detector: canonical volumes -> augmented sagittal slices with targets.

A case is prepared once (resampled to canonical orientation at the detector's spacing, intensity
normalised, cut to the slab through the spine) and stored as .npz; `SliceSampler` then draws
augmented 3-channel slices (neighbours n-d, n, n+d) with per-level instance targets.

Real lumbar MRI masks label only some levels (L1-L5 or T11-L5), yet the vertebrae above are
visible. Left in, they would teach "a body there is background". Each real slice is therefore
blanked above the topmost labelled body (plus a disc-sized margin), which looks like a field of
view ending there -- a situation the detector must handle anyway. S1 is a detector class; a real
case that labels no S1 is likewise blanked below its lowest body, so its unlabelled sacrum is not
taught as background.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core import anatomy
from ...core.volume import Volume, resample_to_canonical

#: VerSe code -> class index (1-based position in anatomy.ORDER) of the vertebral bodies above the
#: sacrum; S1 maps to background here (the body segmenter's foreground).
CLASS_OF_CODE = np.zeros(256, dtype=np.int64)
for _name in anatomy.ORDER:
    if _name != "S1":
        CLASS_OF_CODE[anatomy.code_of(_name)] = anatomy.ORDER.index(_name) + 1

#: The detector's targets: every level, S1 included -- the sacrum's first segment is a naming
#: anchor, so every detector training (the synthesis mix and `spinelabel train`) keeps it a class.
#: Real cases whose labels stop above a visible sacrum are blanked below their lowest body
#: (`SliceSampler`), so that they never teach "the sacrum is background".
S1_CODE = anatomy.code_of("S1")
DETECTOR_CLASS_OF_CODE = CLASS_OF_CODE.copy()
DETECTOR_CLASS_OF_CODE[S1_CODE] = anatomy.ORDER.index("S1") + 1


# Intensities are normalised as at inference (one definition: core.canonical).
from ...core.canonical import normalise_intensity  # noqa: E402


def split_real_cases(names: list[str]) -> tuple[list[str], list[str]]:
    """Fixed split: every 4th case in sorted order is validation (vb2 and vb3 both represented)."""
    ordered = sorted(names)
    validation = [n for index, n in enumerate(ordered) if index % 4 == 3]
    return [n for n in ordered if n not in validation], validation


def prepare_case(image: Volume, labels: Volume, spacing: float, out_path: Path, kind: str,
                 margin_slices: int = 8, modality: str = "mr") -> dict:
    """Resample, normalise and cut to the labelled slab; write .npz (atomically); return a summary."""
    from ...core.paths import atomic_path

    canonical = resample_to_canonical(image, spacing)
    canonical_labels = resample_to_canonical(labels, spacing, label=True)
    codes = canonical_labels.array.astype(np.uint8)
    # A corrected export also holds its discs (100 + the level above): no detector class, background.
    codes[~np.isin(codes, list(anatomy.NAME_BY_CODE))] = 0
    present = np.flatnonzero(codes.reshape(codes.shape[0], -1).max(axis=1))
    if present.size == 0:
        raise ValueError(f"{out_path.name}: no labelled voxel")
    low = max(0, present[0] - margin_slices)
    high = min(codes.shape[0], present[-1] + margin_slices + 1)
    intensity = normalise_intensity(canonical.array, modality)[low:high].astype(np.float16)
    summary = {"file": out_path.name, "shape": list(intensity.shape),
               "levels": [anatomy.name_of(c) for c in np.unique(codes) if c]}
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, image=intensity, labels=codes[low:high],
                                kind=np.array(kind), spacing=np.array(spacing), modality=np.array(modality))
    return summary


@dataclass
class Case:
    image: np.ndarray         # (x, s-i, a-p) float16 0..1
    labels: np.ndarray        # VerSe codes, same shape
    blank_top: bool           # real data with unlabelled vertebrae above the labelled ones
    name: str
    ct: bool = False          # CT: may also be shown as a sagittal MIP (paper 001)

    @classmethod
    def load(cls, path: Path) -> "Case":
        with np.load(path) as data:
            kind = str(data["kind"])
            # Files written before the modality was stored read as MRI (callers may still set .ct).
            modality = str(data["modality"]) if "modality" in data.files else "mr"
            return cls(data["image"], data["labels"], kind == "real", path.stem, ct=modality == "ct")

    @property
    def labelled_slices(self) -> np.ndarray:
        return np.flatnonzero(self.labels.reshape(self.labels.shape[0], -1).max(axis=1))


def top_boundary(labels: np.ndarray) -> np.ndarray:
    """Per column (A-P), the first row (S-I) holding any label in the slab; gaps filled from neighbours."""
    any_label = labels.max(axis=0) > 0                       # (rows, cols)
    has = any_label.any(axis=0)
    first = np.where(has, any_label.argmax(axis=0), -1)
    columns = np.arange(first.size)
    if has.any():
        first = np.interp(columns, columns[has], first[has]).astype(int)
    return first


def bottom_boundary(labels: np.ndarray) -> np.ndarray:
    """Per column (A-P), the last row (S-I) holding any label in the slab; gaps filled from neighbours."""
    any_label = labels.max(axis=0) > 0
    has = any_label.any(axis=0)
    last = np.where(has, any_label.shape[0] - 1 - any_label[::-1].argmax(axis=0), -1)
    columns = np.arange(last.size)
    if has.any():
        last = np.interp(columns, columns[has], last[has]).astype(int)
    return last


class SliceSampler:
    """Draws augmented training slices: (3, size, size) float32 image and a Mask R-CNN target."""

    def __init__(self, cases: list[Case], size: int, slice_offset: int, seed: int = 0,
                 weights: list[float] | None = None, augment: bool = True, bottom_cut: float = 0.0,
                 bias_field: float = 0.0, mip: float = 0.0, thick_slices: float = 0.0,
                 bone_density: float = 0.0, contrast_remap: float = 0.0) -> None:
        self.cases, self.size, self.offset, self.augment = cases, size, slice_offset, augment
        self.bottom_cut, self.bias_field, self.mip = bottom_cut, bias_field, mip
        self.thick_slices, self.bone_density = thick_slices, bone_density
        self.contrast_remap = contrast_remap
        self.rng = np.random.default_rng(seed)
        weights = np.ones(len(cases)) if weights is None else np.asarray(weights, float)
        self.weights = weights / weights.sum()
        self.tops = [self._cuts(c.labels) if c.blank_top else None for c in cases]
        # Real cases that label no S1: nothing below their lowest body is shown (the sacrum there
        # is unlabelled, not background).
        self.bottoms = [bottom_boundary(c.labels) if c.blank_top and not (c.labels == S1_CODE).any() else None
                        for c in cases]

    @staticmethod
    def _cuts(labels: np.ndarray) -> list[np.ndarray]:
        """Per labelled level (cranial first), the boundary above which everything is blanked when
        the image is cut just above that level."""
        codes = sorted((int(c) for c in np.unique(labels) if c),
                       key=lambda c: anatomy.order_index(anatomy.name_of(c)))
        ranks = {c: n for n, c in enumerate(codes)}
        rank_map = np.full(256, -1)
        for code, rank in ranks.items():
            rank_map[code] = rank
        ranked = rank_map[labels]
        return [top_boundary(np.where(ranked >= n, 1, 0).astype(np.uint8)) for n in range(len(codes))]

    def slice_stack(self, case: Case, x: int) -> tuple[np.ndarray, np.ndarray]:
        last = case.image.shape[0] - 1
        picks = [min(last, max(0, x + d)) for d in (-self.offset, 0, self.offset)]
        return case.image[picks].astype(np.float32), case.labels[x]

    @staticmethod
    def mip_stack(case: Case, x: int, half_width: int) -> tuple[np.ndarray, np.ndarray]:
        """Paper 001's input: the maximum-intensity projection of a sagittal slab (three equal
        channels); each body's target is its projection over the slab."""
        low, high = max(0, x - half_width), min(case.image.shape[0], x + half_width + 1)
        projection = case.image[low:high].max(axis=0).astype(np.float32)
        labels = case.labels[low:high].max(axis=0)
        return np.stack([projection] * 3), labels

    def sample(self):
        index = int(self.rng.choice(len(self.cases), p=self.weights))
        case = self.cases[index]
        labelled = case.labelled_slices
        if self.rng.random() < 0.85 and labelled.size:
            x = int(self.rng.choice(labelled))
        else:
            x = int(self.rng.integers(case.image.shape[0]))
        if case.ct and self.rng.random() < self.mip:
            image, labels = self.mip_stack(case, x, int(self.rng.integers(6, 33)))
        else:
            image, labels = self.slice_stack(case, x)
        if self.augment and self.contrast_remap and not case.ct and self.rng.random() < self.contrast_remap:
            image = remap_contrast(image, self.rng)
        if self.bottoms[index] is not None:
            image, labels = self._blank_below(image, labels, self.bottoms[index])
        cuts = self.tops[index]
        if cuts is not None:
            # Half the time the cut is above a lower level, so that the first visible body is not
            # always the same level (it would teach "top body = L1").
            n = 0 if self.rng.random() < 0.5 or len(cuts) < 3 else int(self.rng.integers(1, len(cuts) - 1))
            image, labels = self._blank_above(image, labels, cuts[n])
        if self.augment and self.rng.random() < self.bottom_cut:
            image, labels = self._cut_below(image, labels)
        if self.augment and case.ct:
            image = self._ct_appearance(image)
        image, labels = self._geometry(image, labels)
        if self.augment:
            image = self._intensity(image)
        return image, labels

    def _blank_above(self, image, labels, top):
        margin = int(self.rng.integers(1, 4))                 # pixels: part of a disc space
        rows = np.arange(image.shape[1])[:, None]
        keep = rows >= (top[None, :] - margin)
        return image * keep[None], labels * keep

    def _blank_below(self, image, labels, bottom):
        rows = np.arange(image.shape[1])[:, None]
        keep = rows <= (bottom[None, :] + int(self.rng.integers(1, 4)))
        return image * keep[None], labels * keep

    def _cut_below(self, image, labels):
        """A field of view ending just below a random body of this slice (the sacrum, or more,
        out of view): the lowest visible body is then not always sitting on the sacrum."""
        codes = [int(c) for c in np.unique(labels) if c]
        if len(codes) < 2:
            return image, labels
        code = codes[int(self.rng.integers(len(codes)))]
        rows = np.flatnonzero((labels == code).any(axis=1))
        bottom = rows.max() + int(self.rng.integers(1, 6))
        image, labels = image.copy(), labels.copy()
        image[:, bottom:] = 0.0
        labels[bottom:] = 0
        return image, labels

    def _geometry(self, image, labels):
        """Random scale/rotation/crop centred near the labels; left-right flip swaps neighbours."""
        from scipy import ndimage

        size = self.size
        rng = self.rng
        angle = np.deg2rad(rng.uniform(-10, 10)) if self.augment else 0.0
        scale = rng.uniform(0.85, 1.15) if self.augment else 1.0
        rows, cols = np.nonzero(labels)
        if rows.size:
            centre = np.array([rng.uniform(rows.min(), rows.max()), rng.uniform(cols.min(), cols.max())])
        else:
            centre = np.array(labels.shape, float) / 2 + rng.uniform(-40, 40, 2)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = rotation / scale                                  # output pixel -> input pixel
        jitter = rng.uniform(-0.3, 0.3, 2) * size if self.augment else np.zeros(2)
        offset = centre + jitter - matrix @ (np.array([size, size]) / 2.0)
        out = np.stack([ndimage.affine_transform(ch, matrix, offset, (size, size), order=1, cval=0.0)
                        for ch in image])
        out_labels = ndimage.affine_transform(labels, matrix, offset, (size, size), order=0, cval=0)
        if self.augment and rng.random() < 0.5:
            out = out[::-1].copy()                                 # mirror: n-d and n+d swap
        return out, out_labels

    def _ct_appearance(self, image):
        """Real CT unlike its one acquisition: thicker axial slices and less dense bone."""
        if self.rng.random() < self.thick_slices:
            image = thicken_axial_slices(image, float(self.rng.uniform(1.5, 4.5)))
        if self.rng.random() < self.bone_density:
            image = scale_bone_contrast(image, float(self.rng.uniform(0.5, 1.0)))
        return image

    def _bias_field(self, image):
        return image * _bias_field_gain(image.shape[1:], self.rng)[None]

    def _intensity(self, image):
        rng = self.rng
        image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.5)
        if rng.random() < self.bias_field:
            image = self._bias_field(image)
        image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        image = image + rng.normal(0, rng.uniform(0, 0.05), image.shape)
        return np.clip(image, -0.2, 1.2).astype(np.float32)


#: The CT appearance augmentations every detector fine-tune applies to real CT cases (the
#: synthesis mix and `spinelabel train`): share of draws with thicker slices / less dense bone.
CT_APPEARANCE = {"thick_slices": 0.5, "bone_density": 0.4}

#: Soft tissue (about 60 HU) on the -250..1000 HU scale of the CT window.
SOFT_TISSUE_LEVEL = (60.0 + 250.0) / 1250.0


def thicken_axial_slices(image: np.ndarray, factor: float) -> np.ndarray:
    """A CT reconstructed with `factor` times thicker axial slices, seen on the sagittal grid:
    the superior-inferior axis (rows) blurred by the slice profile, sampled every `factor` pixels
    and interpolated back. Chest CTs come at 2.5-5 mm; at 5 mm thoracic discs almost vanish."""
    from scipy import ndimage
    from scipy.interpolate import make_interp_spline

    rows = np.arange(image.shape[1], dtype=float)
    blurred = ndimage.gaussian_filter1d(image.astype(np.float32), sigma=factor / 2.355, axis=1)
    slices = np.arange(0.0, rows[-1] + 1e-6, factor)
    if len(slices) < 2:                       # shorter than one thick slice: nothing to resample
        return image.astype(np.float32)
    sampled = make_interp_spline(rows, blurred, k=1, axis=1)(slices)
    back = make_interp_spline(slices, sampled, k=1, axis=1)(np.clip(rows, 0, slices[-1]))
    return back.astype(np.float32)


def remap_contrast(image: np.ndarray, rng, control_points: int = 5) -> np.ndarray:
    """The same anatomy at another MRI contrast: intensities (0..1) through a random piecewise-linear
    map, not necessarily monotonic (SynthSeg's random contrasts, applied to a real image). The
    sacrum of a T1 water-fat study looked like nothing the T2-trained detector knew."""
    levels = np.linspace(0.0, 1.0, control_points)
    return np.interp(np.clip(image, 0.0, 1.0), levels, rng.random(control_points)).astype(np.float32)


def scale_bone_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Osteopenic bone: everything denser than soft tissue brought `factor` closer to it (real
    chest CT cancellous bone measured 73-222 HU against the phantoms' 160-240)."""
    above = np.maximum(image - SOFT_TISSUE_LEVEL, 0.0)
    return (image - above * (1.0 - factor)).astype(np.float32)


def _bias_field_gain(shape: tuple[int, int], rng) -> np.ndarray:
    """Receive-coil fall-off: a smooth gain across the slice (MRI bodies at the image edge look
    darker and flatter than in the middle)."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]] / max(shape) - 0.5
    return np.exp(rng.uniform(-0.6, 0.6) * rows + rng.uniform(-0.4, 0.4) * cols)


def make_target(labels: np.ndarray, min_pixels: int = 15) -> dict:
    """Mask R-CNN target from a 2-D label slice of VerSe codes (one instance per level present)."""
    import torch

    boxes, classes, masks = [], [], []
    for code in np.unique(labels):
        klass = DETECTOR_CLASS_OF_CODE[int(code)] if code else 0
        if klass == 0:
            continue
        mask = labels == code
        if mask.sum() < min_pixels:
            continue
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        classes.append(klass)
        masks.append(mask)
    shape = labels.shape
    return {
        "boxes": torch.tensor(np.array(boxes, np.float32).reshape(-1, 4)),
        "labels": torch.tensor(np.array(classes, np.int64)),
        "masks": torch.tensor(np.array(masks, np.uint8).reshape(-1, *shape)),
    }
