"""Label map in -> synthetic CT / T1 / T2 / random-contrast image with the labels' geometry out.

The SynthSeg recipe (Billot et al., Medical Image Analysis 2023) with TorchIO's transforms:
  1. the spine label map is put on the canonical grid with room for the body around it, and
     dressed with the tissues a scan shows (`tissues.tissue_map`);
  2. the field of view is cut at random levels (any level can be the first or last in view,
     bodies cut through at the edge are kept) and, half the time, in front of the spine;
  3. TorchIO: random patient tilt and scale (RandomAffine), RandomElasticDeformation, one random
     intensity per tissue (RandomLabelsToImage, ranges from `contrasts`), partial-volume blur
     (RandomBlur), slice thickness (RandomAnisotropy along the slice axis: axial for CT, sagittal
     for MRI), coil bias (RandomBiasField, MRI only), noise (RandomNoise);
  4. the grid is stored in a random orientation (axis order and flips), as scanners do.
Reproducible: the same label map, contrast and seed give the same image (numpy and torch
generators are seeded; torch's global state is restored afterwards).

TorchIO is a training-time dependency (the `train` extra); nothing at run time imports this.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import anatomy
from ..core.volume import Volume, canonical_grid, resample
from .contrasts import CONTRASTS, ranges
from .tissues import tissue_map

#: Room around the spine for the body outline (mm): left-right, anterior, posterior.
MARGIN_X_MM, MARGIN_ANTERIOR_MM, MARGIN_POSTERIOR_MM = 25.0, 230.0, 150.0


@dataclass
class SyntheticCase:
    image: Volume            # HU for CT, 0..~1 for the MRI-like contrasts
    labels: Volume           # vertebral BODY masks, VerSe codes, same grid
    contrast: str
    seed: int
    modality: str            # "ct" or "mr": how the detector normalises it
    notes: dict = field(default_factory=dict)


def padded_canonical(vertebrae: Volume, spacing: float) -> Volume:
    """Whole-vertebra codes on a canonical grid around the labels, with room for the body."""
    points = np.argwhere(vertebrae.array > 0)
    corners = np.array([[a, b, c] for a in points[:, 0][[0, -1]] for b in (points[:, 1].min(), points[:, 1].max())
                        for c in (points[:, 2].min(), points[:, 2].max())], float)
    grid = canonical_grid(vertebrae, spacing, points_kji=corners, margin_mm=(MARGIN_X_MM, 2.0, 0.0))
    front, back = int(MARGIN_ANTERIOR_MM / spacing), int(MARGIN_POSTERIOR_MM / spacing)
    shape = grid.array.shape
    matrix = grid.ijk_to_ras.copy()
    matrix[:3, 3] -= front * matrix[:3, 0]               # array axis 2 = ijk i: step the origin forward
    grid = Volume(np.zeros((shape[0], shape[1], shape[2] + front + back), np.uint8), matrix)
    return resample(vertebrae.with_array(vertebrae.array.astype(np.uint8)), None, reference=grid, label=True)


def crop_field_of_view(tissues: np.ndarray, bodies: np.ndarray, matrix: np.ndarray, rng,
                       min_levels: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random superior-inferior window starting and ending at random levels (cut through a body at
    most half-way), and half the time an anterior cut 60-200 mm in front of the bodies."""
    codes = sorted((int(c) for c in np.unique(bodies) if c), key=lambda c: anatomy.order_index(anatomy.name_of(c)))
    rows = {c: np.flatnonzero((bodies == c).any(axis=(0, 2))) for c in codes}
    n = len(codes)
    keep = min(n, max(min_levels, int(rng.integers(min_levels, n + 1)))) if n > min_levels else n
    first = int(rng.integers(0, n - keep + 1))
    top_rows, bottom_rows = rows[codes[first]], rows[codes[first + keep - 1]]
    top = int(top_rows.min() + rng.uniform(-0.1, 0.5) * top_rows.size) if first > 0 or rng.random() < 0.5 else 0
    bottom = int(bottom_rows.max() - rng.uniform(-0.1, 0.5) * bottom_rows.size) \
        if first + keep < n or rng.random() < 0.5 else tissues.shape[1] - 1
    top, bottom = max(0, top), min(tissues.shape[1] - 1, max(bottom, top + 8))
    front = 0
    if rng.random() < 0.5:
        a_front = np.argwhere(bodies > 0)[:, 2].min()
        front = int(max(0, a_front - rng.uniform(60, 200) / np.linalg.norm(matrix[:3, 0])))
    window = (slice(None), slice(top, bottom + 1), slice(front, None))
    moved = matrix.copy()
    moved[:3, 3] = matrix[:3, :3] @ np.array([front, top, 0]) + matrix[:3, 3]   # ijk order: i=a, j=s, k=x
    return tissues[window], bodies[window], moved


def storage_orientation(volume: Volume, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
    """The same image stored with array axes permuted and flipped (world geometry unchanged)."""
    array = np.transpose(volume.array, order)
    matrix = volume.ijk_to_ras.copy()
    columns_kji = matrix[:3, :3][:, ::-1]                 # columns for array axes k, j, i
    columns = columns_kji[:, list(order)]
    origin = matrix[:3, 3].copy()
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
            origin = origin + columns[:, axis] * (array.shape[axis] - 1)
            columns[:, axis] = -columns[:, axis]
    new = np.eye(4)
    new[:3, :3] = columns[:, ::-1]
    new[:3, 3] = origin
    return Volume(np.ascontiguousarray(array), new, dict(volume.metadata))


def torchio_pipeline(contrast: str, slice_axis: int, present: list[int], geometry: bool = True):
    """TorchIO transforms, in the SynthSeg order. Axes are TorchIO's (i, j, k) = canonical
    (anterior-posterior, superior-inferior, left-right). ``present``: the tissues in the map, in
    the order of the consecutive values they are given (RandomLabelsToImage wants one range per
    label value found, indexed by value)."""
    import torchio as tio

    means, spreads = ranges(contrast)
    means, spreads = [means[t] for t in present], [spreads[t] for t in present]
    ct = contrast == "ct"
    steps = []
    if geometry:
        # Patient tilt mostly in the sagittal plane (rotation about left-right = axis k).
        steps += [tio.RandomAffine(scales=0.08, degrees=(-5, 5, -5, 5, -14, 14), p=0.7),
                  tio.RandomElasticDeformation(num_control_points=7, max_displacement=6.0, p=0.4)]
    steps += [tio.RandomLabelsToImage(label_key="tissues", image_key="image", mean=means, std=spreads),
              tio.RandomBlur(std=(0.0, 1.0)),
              tio.RandomAnisotropy(axes=(slice_axis,), downsampling=(1.5, 4.5), p=0.6)]
    if not ct:
        steps.append(tio.RandomBiasField(coefficients=0.5, p=0.8))
    steps.append(tio.RandomNoise(std=(0.0, 40.0) if ct else (0.0, 0.04)))
    return tio.Compose(steps)


def synthesise(vertebrae: Volume, contrast: str = "ct", seed: int = 0, spacing: float = 1.25,
               extra: dict | None = None, geometry: bool = True, crop: bool = True,
               reorient: bool = True) -> SyntheticCase:
    """A synthetic image from a whole-vertebra label map (VerSe codes; body-only maps work too:
    the body rule then keeps them). ``extra``: boolean masks on the same grid as ``vertebrae``
    ('ribs', 'sacrum', 'lungs', 'organs') from a multi-structure map."""
    import torch
    import torchio as tio

    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; one of {', '.join(CONTRASTS)}")
    rng = np.random.default_rng([seed, CONTRASTS.index(contrast)])
    canonical = padded_canonical(vertebrae, spacing)
    extra_canonical = {name: resample(vertebrae.with_array(mask.astype(np.uint8)), None, reference=canonical,
                                      label=True).array.astype(bool) for name, mask in (extra or {}).items()}
    tissues, bodies = tissue_map(canonical.array, spacing, rng, extra_canonical)
    matrix = canonical.ijk_to_ras
    if crop:
        tissues, bodies, matrix = crop_field_of_view(tissues, bodies, matrix, rng)
    # CT is acquired axially (thick slices along superior-inferior), spine MRI mostly sagittally.
    slice_axis = 1 if contrast == "ct" or rng.random() < 0.2 else 2
    present = [int(t) for t in np.unique(tissues)]
    consecutive = np.zeros(256, np.uint8)
    consecutive[present] = np.arange(len(present))
    tissues = consecutive[tissues]
    subject = tio.Subject(tissues=tio.LabelMap(tensor=torch.from_numpy(tissues.transpose(2, 1, 0)[None].copy()), affine=matrix),
                          bodies=tio.LabelMap(tensor=torch.from_numpy(bodies.transpose(2, 1, 0)[None].copy()), affine=matrix))
    with torch.random.fork_rng():
        torch.manual_seed(int(rng.integers(2**31)))
        out = torchio_pipeline(contrast, slice_axis, present, geometry)(subject)
    image = out["image"].data[0].numpy().transpose(2, 1, 0).astype(np.float32)
    labels = out["bodies"].data[0].numpy().transpose(2, 1, 0).astype(np.uint8)
    image_volume, label_volume = Volume(image, matrix), Volume(labels, matrix)
    if reorient:
        order = tuple(int(a) for a in rng.permutation(3))
        flips = tuple(bool(f) for f in rng.random(3) < 0.5)
        image_volume = storage_orientation(image_volume, order, flips)
        label_volume = storage_orientation(label_volume, order, flips)
    return SyntheticCase(image_volume, label_volume, contrast, seed, "ct" if contrast == "ct" else "mr",
                         {"slice_axis": ["anterior-posterior", "superior-inferior", "left-right"][slice_axis]})
