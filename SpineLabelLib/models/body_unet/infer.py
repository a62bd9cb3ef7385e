"""Refine body masks: U-Net foreground at 1 mm, split into bodies by the detector's instances.

The detector decides which bodies exist, where they are and what they are called; the segmenter
only decides, voxel by voxel, where each body's boundary lies. A foreground voxel joins the
nearest detected body within `reach_mm`; each body then keeps its largest connected piece.
Works on any instance map on the image grid, so it can also redraw masks a person has moved.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ...core.canonical import CanonicalView
from ...core.volume import Volume, covering_part, resample

Cancel = Callable[[], bool]


def predict_probability(model, stack: np.ndarray, batch: int = 2) -> np.ndarray:
    """Foreground probability for (N, 3, H, W) slices; sides are padded to the network's divisor.
    Two slices a batch: a quarter less CPU time than eight on one thread (the activations of
    eight whole sagittal slices do not fit the cache; measured on this machine)."""
    import torch

    count, _, height, width = stack.shape
    divisor = model.config.divisor
    pad_h, pad_w = (-height) % divisor, (-width) % divisor
    padded = np.pad(stack, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)))
    out = np.empty((count, height, width), np.float32)
    with torch.inference_mode():
        for start in range(0, count, batch):
            chunk = torch.from_numpy(np.ascontiguousarray(padded[start: start + batch], dtype=np.float32))
            chunk = chunk.to(memory_format=torch.channels_last)   # as the loaded network (weights.py)
            out[start: start + batch] = torch.sigmoid(model(chunk))[:, :height, :width].numpy()
    return out


def slab_probability(model, image: np.ndarray, low: int, high: int, step: int) -> np.ndarray:
    """Foreground probability for slices low..high-1 of ``image`` (canonical, x first), running the
    network on every ``step``-th slice (and the last) and interpolating linearly in between."""
    offset = model.config.slice_offset
    last = image.shape[0] - 1
    xs = sorted(set(range(low, high, max(1, step))) | {high - 1})
    stacks = np.stack([image[[min(last, max(0, x + d)) for d in (-offset, 0, offset)]] for x in xs])
    computed = predict_probability(model, stacks)
    if len(xs) == high - low:
        return computed
    out = np.empty((high - low, *computed.shape[1:]), np.float32)
    for n, (before, after) in enumerate(zip(xs[:-1], xs[1:])):
        for x in range(before, after):
            weight = (x - before) / (after - before)
            out[x - low] = (1 - weight) * computed[n] + weight * computed[n + 1]
    out[xs[-1] - low] = computed[-1]
    return out


def refine_instances(source: Volume | CanonicalView, instances: np.ndarray, model, modality: str | None = None,
                     cancel: Cancel | None = None, reach_mm: float = 4.0,
                     margin_mm: float = 40.0, lateral_margin_mm: float = 6.0, slice_step: int = 2) -> np.ndarray:
    """New instance map on ``volume``'s grid with boundaries from the segmenter.

    The U-Net sees the bodies with ``margin_mm`` of surroundings in the sagittal plane: cut
    closer, L5 loses the sacrum below it and is drawn short (MRI training cases: Dice 0.898 at
    8 mm, 0.905 at 40 mm with an early checkpoint; 0.9162 at 24 mm and 0.9171 at 40 mm with the
    final one; the lowest body of a C3-L5 CT phantom: 0.62 at 24 mm, 0.89 at 40 mm). Slices run
    ``lateral_margin_mm`` beyond the bodies' lateral edges; the U-Net sees every
    ``slice_step``-th of them and the probability is interpolated between (every slice: same Dice).

    Bodies whose surroundings do not touch are redrawn on grids of their own (`body_groups`): one
    stray detection 90 mm beside the column made one grid cover both and quadrupled the slices
    (dense detector, T8-S1 CT phantom: 17 of 24 CPU s in this U-Net). A group's masks are what it
    gives alone, whatever other groups there are."""
    view = source if isinstance(source, CanonicalView) else CanonicalView(source, modality or "mr")
    margins = (lateral_margin_mm, margin_mm, margin_mm)
    groups = body_groups(view.volume, instances, margins)
    if len(groups) <= 1:
        return _refine_group(view, instances, model, cancel, reach_mm, margins, slice_step)
    out = np.zeros(instances.shape, np.uint16)
    keep = np.zeros(int(instances.max()) + 1, bool)
    for numbers in groups:
        keep[:] = False
        keep[numbers] = True
        redrawn = _refine_group(view, np.where(keep[instances], instances, 0), model, cancel, reach_mm, margins,
                                slice_step)
        out = np.where(out > 0, out, redrawn)      # disjoint surroundings: a voxel is one group's at most
    return out


def body_groups(volume: Volume, instances: np.ndarray, margin_mm) -> list[list[int]]:
    """The bodies (instance numbers) in groups whose canonical boxes, grown by ``margin_mm``, overlap
    (linked transitively); a body's box is its voxels' extent along the canonical axes."""
    from scipy import ndimage

    from ...core.volume import CANONICAL_AXES_RAS

    where = np.nonzero(instances)
    if not where[0].size:
        return []
    values = instances[where]
    numbers = [int(n) for n in np.unique(values)]
    projected = volume.kji_to_ras(np.stack(where, 1).astype(float)) @ CANONICAL_AXES_RAS.T
    low = np.stack([ndimage.minimum(projected[:, a], values, numbers) for a in range(3)], 1) - margin_mm
    high = np.stack([ndimage.maximum(projected[:, a], values, numbers) for a in range(3)], 1) + margin_mm
    touching = np.all((low[:, None] <= high[None]) & (low[None] <= high[:, None]), axis=2)
    count, group = _components(touching)
    return [[n for n, g in zip(numbers, group) if g == c] for c in range(count)]


def _components(adjacent: np.ndarray) -> tuple[int, np.ndarray]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    return connected_components(csr_matrix(adjacent), directed=False)


def _refine_group(view: CanonicalView, instances: np.ndarray, model, cancel, reach_mm, margins,
                  slice_step) -> np.ndarray:
    from ..maskrcnn.infer import _check, to_input_grid, torch_threads

    volume = view.volume
    config = model.config
    present = np.argwhere(instances)
    if present.size == 0:
        return instances
    # Only the bodies' surroundings are resampled (a whole CT at 1 mm is ~50 M voxels), their
    # voxels' own extent, not their oblique bounding box; the MRI intensity window still comes
    # from the whole volume, as in training.
    grid, image = view.around(present, config.spacing_mm, margins)
    labels = covering_part(volume.with_array(instances), grid)     # not the whole CT grid's labels
    detected = resample(labels.with_array(labels.array.astype(np.uint16)), None, reference=grid, label=True).array
    _check(cancel)
    with torch_threads(int(os.environ.get("SPINELABEL_THREADS", "1"))):   # as the detector: see torch_threads
        probability = slab_probability(model, image, 0, image.shape[0], slice_step)
    _check(cancel)
    refined = assign_to_bodies(probability >= 0.5, detected, reach_mm / config.spacing_mm)
    probability = np.where(refined > 0, probability, 0.0).astype(np.float32)
    return to_input_grid(refined, probability, grid, volume)


def draw_body(source: Volume | CanonicalView, instances: np.ndarray, centre_ras, model, modality: str | None = None,
              seed_radius_mm: float = 5.0, reach_mm: float = 12.0) -> np.ndarray:
    """The body around a clicked centre (a vertebra a person added): a small ball there seeds a new
    body among the existing ones, which keep their voxels; returns its mask (maybe empty)."""
    view = source if isinstance(source, CanonicalView) else CanonicalView(source, modality or "mr")
    volume = view.volume
    centre = volume.ras_to_kji(np.asarray(centre_ras, float)[None])[0]
    half = np.ceil(seed_radius_mm / volume.spacing[::-1]).astype(int)        # per k, j, i
    low = np.maximum(np.floor(centre).astype(int) - half, 0)
    high = np.minimum(np.ceil(centre).astype(int) + half + 1, instances.shape)
    if np.any(high <= low):
        return np.zeros(instances.shape, bool)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    kji = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij"), -1).reshape(-1, 3)
    near = np.linalg.norm(volume.kji_to_ras(kji) - np.asarray(centre_ras, float), axis=1) <= seed_radius_mm
    seed = np.zeros(instances.shape, bool)
    seed[box] = near.reshape(tuple(high - low)) & (instances[box] == 0)
    if not seed.any():
        return seed
    new = int(instances.max()) + 1
    seeded = np.where(seed, new, instances).astype(np.uint16)
    refined = refine_instances(view, seeded, model, reach_mm=reach_mm)
    return (refined == new) & (instances == 0)


def assign_to_bodies(foreground: np.ndarray, detected: np.ndarray, reach_voxels: float) -> np.ndarray:
    """Each foreground voxel takes the label of the nearest detected body within reach; each body
    keeps its largest connected component (stray islands of a neighbour's label go).

    The distance transform runs on the detected bodies' box plus the reach only: a voxel beyond
    it is out of every body's reach, and inside it the nearest body voxel is the same."""
    from scipy import ndimage

    labels = np.zeros(detected.shape, np.uint16)
    present = np.argwhere(detected)
    if present.size == 0:
        return labels
    grow = int(np.ceil(reach_voxels)) + 1
    low = np.maximum(present.min(axis=0) - grow, 0)
    high = np.minimum(present.max(axis=0) + grow + 1, detected.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    distance, nearest = ndimage.distance_transform_edt(detected[box] == 0, return_indices=True)
    owner = detected[box][tuple(nearest)]
    labels[box] = np.where(foreground[box] & (distance <= reach_voxels), owner, 0)
    return keep_largest_pieces(labels)


def keep_largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Each label keeps its largest connected piece (in place; returns ``labels``)."""
    from scipy import ndimage

    for number, piece_box in enumerate(ndimage.find_objects(labels), start=1):
        if piece_box is None:
            continue
        mine = labels[piece_box] == number
        pieces, count = ndimage.label(mine)
        if count > 1:
            sizes = ndimage.sum(mine, pieces, range(1, count + 1))
            labels[piece_box][mine & (pieces != 1 + int(np.argmax(sizes)))] = 0
    return labels
