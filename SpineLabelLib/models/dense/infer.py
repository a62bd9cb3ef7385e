"""From a volume to vertebral bodies with the dense detector (paper 002, both stages).

1. Resample to canonical orientation at 2 mm, normalise intensity (as the Mask R-CNN detector);
   2x2x2 block means give the 4 mm input of stage 1 (as in training).
2. Stage 1 on the whole 4 mm volume in overlapping tiles along the superior-inferior axis; each
   tile's outer rows are discarded (the paper's patch-wise application with borders discarded,
   done with whole slabs because the network is fully convolutional). Its probability is brought
   back to 2 mm by trilinear interpolation.
3. Stage 2 on every sagittal slice through the detected column (8-slice stacks, the whole
   superior-inferior extent for long-range context, the column's antero-posterior extent plus a
   margin).
4. `aggregate`: votes of column voxels, per-level threshold, median centroids, masks and level
   probabilities; masks go to the input grid as the Mask R-CNN detector's do.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ..maskrcnn.data import normalise_intensity
from ..maskrcnn.infer import DetectionOutput, _check, to_input_grid, torch_threads
from ...core.volume import Volume, resample_to_canonical
from .aggregate import aggregate
from .networks import downsample_mean

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]
#: Stage-1 tiles: rows (4 mm voxels) kept per tile, and rows of context discarded either side.
TILE_ROWS, TILE_CONTEXT = 32, 8
#: Antero-posterior margin (mm) around the detected column that stage 2 sees.
AP_MARGIN_MM = 40.0


def detect_dense(volume: Volume, modality: str, network, progress: Progress | None = None,
                 cancel: Cancel | None = None, threads: int | None = None) -> DetectionOutput:
    """Bodies (instance, centroid_ras, score, level_probs) and their instance map on ``volume``'s grid."""
    threads = int(os.environ.get("SPINELABEL_THREADS", "1")) if threads is None else threads
    with torch_threads(threads):
        return _detect(volume, modality, network, progress, cancel)


def _detect(volume: Volume, modality: str, network, progress, cancel) -> DetectionOutput:
    config = network.config
    _check(cancel)
    if progress:
        progress(0.0, "resampling to canonical orientation")
    canonical = resample_to_canonical(volume, config.identify_spacing_mm)
    image = normalise_intensity(canonical.array, modality)
    if progress:
        progress(0.15, "finding the vertebral column (stage 1)")
    column = column_probability(network, image, cancel)
    empty = DetectionOutput(np.zeros(volume.array.shape, np.uint16), [], {"family": config.family})
    if not (column >= 0.5).any():
        return empty
    _check(cancel)
    if progress:
        progress(0.5, "identifying levels (stage 2)")
    index, computed = level_index(network, image, column, cancel)
    detection = np.where(computed, column, 0.0)
    _check(cancel)
    if progress:
        progress(0.85, "aggregating votes")
    bodies, instances = aggregate(detection, index, config.identify_spacing_mm)
    probability = np.where(instances > 0, np.maximum(detection, 0.5), 0.0).astype(np.float32)
    on_input = to_input_grid(instances, probability, canonical, volume)
    described = [{"instance": n, "centroid_ras": canonical.kji_to_ras(body.centroid[None])[0],
                  "score": body.score, "level_probs": body.level_probs, "votes": body.votes,
                  "vote_level": body.level}
                 for n, body in enumerate(bodies, start=1)]
    described.sort(key=lambda b: -b["centroid_ras"][2])
    extras = {"family": config.family, "column_voxels_2mm": int((detection >= 0.5).sum()),
              "levels_voted": [b.level for b in bodies]}
    if progress:
        progress(1.0, f"{len(described)} vertebral bodies found")
    return DetectionOutput(on_input, described, extras)


def _pad_to(array: np.ndarray, divisor: int, axes) -> tuple[np.ndarray, tuple[int, ...]]:
    pad = [(0, (-s) % divisor) if n in axes else (0, 0) for n, s in enumerate(array.shape)]
    return np.pad(array, pad), array.shape


def column_probability(network, image: np.ndarray, cancel: Cancel | None = None) -> np.ndarray:
    """Stage-1 probability on the 2 mm grid of ``image`` (x, rows, cols)."""
    import torch
    import torch.nn.functional as F

    config = network.config
    small = downsample_mean(image)
    padded, shape = _pad_to(small, config.detect_divisor, (0, 2))
    rows = shape[1]
    out = np.zeros(padded.shape, np.float32)
    with torch.inference_mode():
        for start in range(0, rows, TILE_ROWS):
            _check(cancel)
            stop = min(rows, start + TILE_ROWS)
            low, high = max(0, start - TILE_CONTEXT), min(rows, stop + TILE_CONTEXT)
            tile = padded[:, low:high]
            extra = (-tile.shape[1]) % config.detect_divisor
            tile = np.pad(tile, ((0, 0), (0, extra), (0, 0)))
            logits = network.detection(torch.from_numpy(np.ascontiguousarray(tile, np.float32))[None, None])[0]
            out[:, start:stop] = torch.sigmoid(logits).numpy()[:, start - low: stop - low]
    small_probability = out[: shape[0], :, : shape[2]]
    full = F.interpolate(torch.from_numpy(small_probability)[None, None], scale_factor=2, mode="trilinear",
                         align_corners=False)[0, 0].numpy()
    # 2x2x2 means padded odd sides; the upsampled map is one voxel longer there.
    return np.ascontiguousarray(full[: image.shape[0], : image.shape[1], : image.shape[2]])


def level_index(network, image: np.ndarray, column: np.ndarray, cancel: Cancel | None = None,
                batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Stage-2 level index on the slices and columns around the detected column; returns the
    index map and where it was computed."""
    import torch

    config = network.config
    found = np.argwhere(column >= 0.5)
    x_low, x_high = found[:, 0].min(), found[:, 0].max() + 1
    margin = int(round(AP_MARGIN_MM / config.identify_spacing_mm))
    c_low = max(0, found[:, 2].min() - margin)
    c_high = min(image.shape[2], found[:, 2].max() + margin + 1)
    index = np.zeros(image.shape, np.float32)
    computed = np.zeros(image.shape, bool)
    count = config.identify_slices
    zeros = np.zeros(image.shape[1:], np.float32)
    xs = list(range(x_low, x_high))
    with torch.inference_mode():
        for start in range(0, len(xs), batch):
            _check(cancel)
            chunk = xs[start: start + batch]
            stacks = np.stack([np.stack([image[p] if 0 <= p < image.shape[0] else zeros
                                         for p in range(x - 3, x + count - 3)]) for x in chunk])
            stacks = stacks[:, :, :, c_low:c_high]
            padded, shape = _pad_to(stacks, config.identify_divisor, (2, 3))
            output = network.identification(torch.from_numpy(np.ascontiguousarray(padded, np.float32))).numpy()
            for x, values in zip(chunk, output):
                index[x, :, c_low:c_high] = values[: shape[2], : shape[3]]
                computed[x, :, c_low:c_high] = True
    return index, computed
