"""From a volume to vertebral bodies with the dense detector (paper 002, both stages).

1. The case's canonical 2 mm grid (`CanonicalView.at`, shared with any other stage at 2 mm),
   normalised as in training (the 2 mm grid's own window); 2x2x2 block means give the 4 mm input
   of stage 1 (as in training).
2. Stage 1 on the box of 4 mm voxels holding anything brighter than background (`content_box`,
   plus the network's receptive radius: air and the empty corners of an oblique grid hold no
   column, and no content voxel's probability changes), in
   tiles along the superior-inferior axis as large as `TILE_VOXELS` allows; each tile's outer
   rows are discarded (the paper's patch-wise application with borders discarded, done with whole
   slabs because the network is fully convolutional). Its probability is brought back to 2 mm by
   trilinear interpolation.
3. Stage 2 on the sagittal slices that hold column voxels (slices between them without votes are
   skipped: nothing there uses an index): 8-slice stacks, the whole superior-inferior extent for
   long-range context, the column's antero-posterior extent plus a margin. (Only the slices of
   the column's main band would be faster still, but dropping the other slices' votes lost bodies
   on the MRI and fracture phantoms of bench/families.py.)
4. `aggregate`: votes of column voxels, per-level threshold, median centroids, masks and level
   probabilities; masks go to the input grid as the Mask R-CNN detector's do.

With ``focus_ras`` (the ensemble: Mask R-CNN's body centroids) only the sagittal slices within
`FOCUS_MARGIN_MM` of the bodies' left-right extent vote, and stage 1 sees them plus `TILE_CONTEXT`
voxels of context either side (the borders a tile discards along the column, the paper's patch
border): the ensemble only asks the dense family about those bodies, and the far lateral slices
(ribs, the iliac wings) cost a third of stage 2 on a C3-L5 CT phantom while their votes can only
pull a level's piece off the column.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ..maskrcnn.data import normalise_intensity
from ..maskrcnn.infer import DetectionOutput, _check, to_input_grid, torch_threads
from ...core.canonical import CanonicalView
from ...core.volume import Volume
from .aggregate import aggregate
from .networks import downsample_mean

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]
#: Stage-1 tiles: rows (4 mm voxels) of context discarded either side of a tile, the fewest rows a
#: tile keeps, and the most voxels a tile holds (memory: ~0.4 GB of activations at 1 M voxels).
TILE_CONTEXT, TILE_ROWS, TILE_VOXELS = 8, 32, 1_000_000
#: A 4 mm voxel brighter than this (normalised 0..1) is content: CT air and the empty corners of an
#: oblique grid are 0, fat (-100 HU) is 0.12, an MRI's background is below its 1st percentile.
CONTENT_LEVEL = 0.05
#: Antero-posterior margin (mm) around the detected column that stage 2 sees.
AP_MARGIN_MM = 40.0
#: With a focus (the ensemble), slices this far beyond the outermost body centroid still vote: a
#: body is at most ~50 mm wide (L5), so its centroid +- 30 mm holds all of it, with scoliosis too.
FOCUS_MARGIN_MM = 30.0


def detect_dense(source: Volume | CanonicalView, modality: str, network, progress: Progress | None = None,
                 cancel: Cancel | None = None, threads: int | None = None, masks: bool = True,
                 focus_ras: np.ndarray | None = None) -> DetectionOutput:
    """Bodies (instance, centroid_ras, score, level_probs) and their instance map on the input grid
    (``source``: the input volume or the case's canonical view). ``masks=False`` leaves the map
    empty: the ensemble takes only the level evidence, and the map costs a resampling.
    ``focus_ras`` (N, 3): bodies already found; only the slices around them vote (`focus_slices`)."""
    view = source if isinstance(source, CanonicalView) else CanonicalView(source, modality)
    threads = int(os.environ.get("SPINELABEL_THREADS", "1")) if threads is None else threads
    with torch_threads(threads):
        return _detect(view, modality, network, progress, cancel, masks, focus_ras)


def focus_slices(canonical: Volume, focus_ras, margin_mm: float = FOCUS_MARGIN_MM) -> slice | None:
    """The sagittal slices (canonical axis 0) within ``margin_mm`` of the left-right extent of
    the points ``focus_ras``, or None (all slices) without points."""
    if focus_ras is None or len(focus_ras) == 0:
        return None
    x = canonical.ras_to_kji(np.asarray(focus_ras, float).reshape(-1, 3))[:, 0]
    margin = margin_mm / float(canonical.spacing[0])
    size = canonical.array.shape[0]
    low = int(np.clip(np.floor(x.min() - margin), 0, size))
    return slice(low, int(np.clip(np.ceil(x.max() + margin) + 1, low, size)))


def _detect(view: CanonicalView, modality: str, network, progress, cancel, masks: bool = True,
            focus_ras=None) -> DetectionOutput:
    config = network.config
    volume = view.volume
    _check(cancel)
    if progress:
        progress(0.0, "resampling to canonical orientation")
    canonical = view.at(config.identify_spacing_mm)
    # The 2 mm grid's own window, as in training (training.dense normalises its canonical arrays).
    image = normalise_intensity(canonical.array, modality)
    if progress:
        progress(0.15, "finding the vertebral column (stage 1)")
    focus = focus_slices(canonical, focus_ras)
    column = column_probability(network, image, cancel, focus)
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
    if masks:
        probability = np.where(instances > 0, np.maximum(detection, 0.5), 0.0).astype(np.float32)
        on_input = to_input_grid(instances, probability, canonical, volume)
    else:
        on_input = np.zeros(volume.array.shape, np.uint16)
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


def receptive_radius(levels: int) -> int:
    """How far (voxels) a U-Net of ``levels`` levels with two 3-wide convolutions per block sees:
    2^l per convolution at level l (two per block, encoder and decoder), and at most 2^l for each
    pooling and each transposed convolution between levels l and l+1 (an upper bound)."""
    return sum(2 * 2 ** l for l in range(levels)) + sum(4 * 2 ** l for l in range(levels - 1))


def content_box(small: np.ndarray, margin: int, divisor: int = 1, level: float = CONTENT_LEVEL):
    """The box (slices) of voxels brighter than ``level`` plus ``margin`` voxels each side, or
    None when nothing is. Stage 1 runs only there: with a margin of the network's receptive radius
    every content voxel's probability is what the whole volume gives it (its view never reaches
    the box's edge; the box starts on a multiple of ``divisor`` so that the poolings pair the same
    voxels as on the whole volume); outside is air, where there is no column."""
    bright = small > level
    if not bright.any():
        return None
    box = []
    for axis, size in enumerate(small.shape):
        present = np.flatnonzero(bright.any(axis=tuple(a for a in range(3) if a != axis)))
        low = max(0, int(present[0]) - margin) // divisor * divisor
        box.append(slice(low, min(size, int(present[-1]) + margin + 1)))
    return tuple(box)


def tile_starts(rows: int, plane_voxels: int, divisor: int = 4, context: int = TILE_CONTEXT,
                voxels: int = TILE_VOXELS, least: int = TILE_ROWS) -> tuple[int, list[int]]:
    """Rows each tile keeps and the tiles' first kept rows: as few tiles as ``voxels`` allows
    (a tile holds its kept rows plus ``context`` rows either side); tiles start on multiples of
    ``divisor`` (the network's poolings)."""
    kept = max(least, (voxels // max(1, plane_voxels) - 2 * context) // divisor * divisor)
    return kept, list(range(0, rows, kept))


def column_probability(network, image: np.ndarray, cancel: Cancel | None = None,
                       focus: slice | None = None) -> np.ndarray:
    """Stage-1 probability on the 2 mm grid of ``image`` (x, rows, cols); 0 outside `content_box`,
    and with ``focus`` (2 mm slices) 0 outside those slices (computed on them plus `TILE_CONTEXT`)."""
    import torch

    config = network.config
    small = downsample_mean(image)
    box = content_box(small, receptive_radius(len(config.detect_widths)), config.detect_divisor)
    probability = np.zeros(small.shape, np.float32)
    if box is not None and focus is not None:
        box = focus_box(box, focus, config.detect_divisor)
    if box is None:
        return upsample_probability(probability, box, image.shape)
    padded, shape = _pad_to(small[box], config.detect_divisor, (0, 2))
    rows = shape[1]
    out = np.zeros(padded.shape, np.float32)
    kept, starts = tile_starts(rows, padded.shape[0] * padded.shape[2], config.detect_divisor)
    with torch.inference_mode():
        for start in starts:
            _check(cancel)
            stop = min(rows, start + kept)
            low, high = max(0, start - TILE_CONTEXT), min(rows, stop + TILE_CONTEXT)
            tile = padded[:, low:high]
            extra = (-tile.shape[1]) % config.detect_divisor
            tile = np.pad(tile, ((0, 0), (0, extra), (0, 0)))
            batch = torch.from_numpy(np.ascontiguousarray(tile, np.float32))[None, None]
            logits = network.detection(batch.contiguous(memory_format=torch.channels_last_3d))[0]
            out[:, start:stop] = torch.sigmoid(logits).numpy()[:, start - low: stop - low]
    probability[box] = out[: shape[0], :, : shape[2]]
    if focus is not None:
        # The context slices were only context: 0 beyond the focus (2 mm), as outside the box.
        kept = slice(focus.start // 2, -(-focus.stop // 2))
        outside = np.ones(small.shape[0], bool)
        outside[kept] = False
        probability[outside] = 0.0
    full = upsample_probability(probability, box, image.shape)
    if focus is not None:
        full[: focus.start] = 0.0
        full[focus.stop:] = 0.0
    return full


def focus_box(box: tuple, focus: slice, divisor: int, context: int = TILE_CONTEXT):
    """``box`` (4 mm voxels) narrowed along axis 0 to the 2 mm slices ``focus`` plus ``context``
    voxels either side (its start on a multiple of ``divisor``, as `content_box`'s); None when
    they do not meet."""
    low = max(box[0].start, (focus.start // 2 - context) // divisor * divisor)
    high = min(box[0].stop, -(-focus.stop // 2) + context)
    if high <= low:
        return None
    return (slice(low, high), *box[1:])


def upsample_probability(small: np.ndarray, box, shape) -> np.ndarray:
    """4 mm -> 2 mm by trilinear interpolation (half-voxel centres), on ``box`` plus one voxel only:
    beyond it the map is 0 and so is its interpolation; inside, the values are the whole map's."""
    import torch
    import torch.nn.functional as F

    full = np.zeros(shape, np.float32)
    if box is None:
        return full
    grown = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, small.shape))
    part = F.interpolate(torch.from_numpy(np.ascontiguousarray(small[grown]))[None, None], scale_factor=2,
                         mode="trilinear", align_corners=False)[0, 0].numpy()
    # Output 2i blends inputs i-1 and i, output 2i+1 inputs i and i+1: all but the outermost
    # output voxel of the grown box see only its inputs (at the volume's own edges both clamp alike).
    inner, source = [], []
    for g, b, n, size in zip(grown, box, small.shape, shape):
        first = 2 * g.start + (0 if g.start == 0 else 1)
        last = min(size, 2 * g.stop - (0 if g.stop == n else 1))
        inner.append(slice(first, last))
        source.append(slice(first - 2 * g.start, last - 2 * g.start))
    # 2x2x2 means padded odd sides; the upsampled map is one voxel longer there (cut by ``last``).
    full[tuple(inner)] = part[tuple(source)]
    return full


def level_index(network, image: np.ndarray, column: np.ndarray, cancel: Cancel | None = None,
                batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Stage-2 level index on the sagittal slices that hold votes, all rows, and the columns
    around the detected column; returns the index map and where it was computed."""
    import torch

    config = network.config
    voting = column >= 0.5
    found = np.argwhere(voting)
    margin = int(round(AP_MARGIN_MM / config.identify_spacing_mm))
    c_low = max(0, found[:, 2].min() - margin)
    c_high = min(image.shape[2], found[:, 2].max() + margin + 1)
    index = np.zeros(image.shape, np.float32)
    computed = np.zeros(image.shape, bool)
    count = config.identify_slices
    zeros = np.zeros((image.shape[1], c_high - c_low), np.float32)
    part = image[:, :, c_low:c_high]
    # A slice without votes needs no index (each stack is made from the image alone, so skipping
    # one changes no other slice's index).
    xs = [int(x) for x in np.flatnonzero(voting.any(axis=(1, 2)))]
    with torch.inference_mode():
        for start in range(0, len(xs), batch):
            _check(cancel)
            chunk = xs[start: start + batch]
            stacks = np.stack([np.stack([part[p] if 0 <= p < image.shape[0] else zeros
                                         for p in range(x - 3, x + count - 3)]) for x in chunk])
            padded, shape = _pad_to(stacks, config.identify_divisor, (2, 3))
            inputs = torch.from_numpy(np.ascontiguousarray(padded, np.float32))
            output = network.identification(inputs.contiguous(memory_format=torch.channels_last)).numpy()
            for x, values in zip(chunk, output):
                index[x, :, c_low:c_high] = values[: shape[2], : shape[3]]
                computed[x, :, c_low:c_high] = True
    return index, computed
