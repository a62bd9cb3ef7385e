"""From a volume to 3-D vertebral bodies: slice-wise Mask R-CNN, linking across slices, fusion.

1. Resample to canonical orientation at the model's spacing; normalise intensity per volume.
2. Find the spine's sagittal slab: a coarse pass every ~10 mm across the central part of the body.
3. Run the detector on the slices of that slab; each detection keeps its full level-probability
   vector (a second pass of the box classifier on the final boxes) and a mask.
4. Link detections of neighbouring slices into bodies (box IoU, Hungarian matching), fuse their
   masks into one canonical instance map, and bring it back onto the input grid.
Per body: centroid (RAS, from the 3-D mask), score, level probabilities averaged over slices.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...core import anatomy
from ...core.errors import SpineLabelError
from ...core.volume import Volume, label_centres, resample, sub_grid
from ...core.canonical import CanonicalView, apply_window

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


@dataclass
class SliceDetection:
    """One body seen on one sagittal slice (pixel box in canonical rows/cols, mask cropped to the box)."""

    x: int
    box: np.ndarray                   # (col0, row0, col1, row1) integer pixels
    score: float                      # 1 - P(background)
    level_probs: np.ndarray           # (len(ORDER),) sums to 1
    mask: np.ndarray                  # float probabilities inside the box, shape (row1-row0, col1-col0)


@dataclass
class Body:
    """Detections linked across slices."""

    detections: list[SliceDetection] = field(default_factory=list)

    @property
    def last(self) -> SliceDetection:
        return self.detections[-1]

    @property
    def score(self) -> float:
        return float(np.median([d.score for d in self.detections]))

    @property
    def level_probs(self) -> np.ndarray:
        weights = np.array([d.score for d in self.detections])
        probs = np.average([d.level_probs for d in self.detections], axis=0, weights=weights)
        return probs / probs.sum()


@dataclass
class DetectionOutput:
    instances: np.ndarray             # (k, j, i) uint16 on the input grid
    bodies: list[dict]                # instance, centroid_ras, score, level_probs
    extras: dict


def _check(cancel: Cancel | None) -> None:
    if cancel is not None and cancel():
        raise SpineLabelError("cancelled")


# --- per slice ------------------------------------------------------------------------------
def predict_slices(model, stack: np.ndarray, nms_iou: float = 0.5) -> list[list[SliceDetection]]:
    """Run the network on a batch of (3, H, W) slices; detections with full level probabilities."""
    import torch
    import torchvision

    images = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)) for s in stack]
    with torch.inference_mode():
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        outputs, _ = model.roi_heads(features, proposals, batch.image_sizes)
        # No postprocess: the transform never resizes, and masks are pasted per box below
        # (pasting every mask into a full-size slice dominated the run time).
        kept_boxes = []
        for out in outputs:
            keep = torchvision.ops.nms(out["boxes"], out["scores"], nms_iou)
            for key in ("boxes", "scores", "labels", "masks"):
                out[key] = out[key][keep]
            kept_boxes.append(out["boxes"])
        # The class head again on the final boxes: the whole level distribution, not one class.
        pooled = model.roi_heads.box_roi_pool(features, kept_boxes, batch.image_sizes)
        logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        probs = torch.softmax(logits, dim=1).numpy()
    results, start = [], 0
    for out, image in zip(outputs, images):
        count = len(out["boxes"])
        mine = probs[start: start + count]
        start += count
        results.append(_to_detections(out, mine, tuple(image.shape[-2:])))
    return results


def _to_detections(out, probs: np.ndarray, image_size: tuple[int, int]) -> list[SliceDetection]:
    detections = []
    for box, mask, p in zip(out["boxes"].numpy(), out["masks"][:, 0], probs):
        pasted = paste_mask(mask, box, image_size)
        if pasted is None:
            continue
        levels = p[1:] + 1e-6
        detections.append(SliceDetection(-1, pasted[0], float(1.0 - p[0]), levels / levels.sum(), pasted[1]))
    return detections


def paste_mask(mask, box: np.ndarray, image_size: tuple[int, int]):
    """The mask head's M x M output resized into its box, as torchvision pastes it (padded by one
    cell, box expanded accordingly) but kept cropped to the box: returns (int box, probabilities)."""
    import torch.nn.functional as F

    size = mask.shape[-1]
    padded = F.pad(mask[None, None], (1, 1, 1, 1))
    scale = (size + 2.0) / size
    centre = (box[:2] + box[2:]) / 2
    half = (box[2:] - box[:2]) / 2 * scale
    col0, row0 = np.floor(centre - half).astype(int)
    col1, row1 = np.ceil(centre + half).astype(int)
    if col1 - col0 < 2 or row1 - row0 < 2:
        return None
    resized = F.interpolate(padded, size=(int(row1 - row0), int(col1 - col0)), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    height, width = image_size
    top, left = max(0, row0), max(0, col0)
    bottom, right = min(height, row1), min(width, col1)
    if bottom <= top or right <= left:
        return None
    crop = resized[top - row0: bottom - row0, left - col0: right - col0]
    return np.array([left, top, right, bottom]), np.ascontiguousarray(crop)


def slice_stack(image: np.ndarray, x: int, offset: int) -> np.ndarray:
    last = image.shape[0] - 1
    return image[[min(last, max(0, x + d)) for d in (-offset, 0, offset)]]


def run_on_slices(model, image: np.ndarray, xs, offset: int, batch: int = 4,
                  progress: Progress | None = None, cancel: Cancel | None = None,
                  span: tuple[float, float] = (0.0, 1.0)) -> dict[int, list[SliceDetection]]:
    xs = list(xs)
    found: dict[int, list[SliceDetection]] = {}
    for start in range(0, len(xs), batch):
        _check(cancel)
        chunk = xs[start: start + batch]
        stack = np.stack([slice_stack(image, x, offset) for x in chunk])
        for x, detections in zip(chunk, predict_slices(model, stack)):
            for d in detections:
                d.x = x
            found[x] = detections
        if progress is not None:
            done = min(1.0, (start + len(chunk)) / max(1, len(xs)))
            progress(span[0] + (span[1] - span[0]) * done, "detecting vertebrae")
    return found


# --- the slab through the spine ---------------------------------------------------------------
#: Tissue in the 0..1 input (about -190 HU on CT's -250..1000 window; above the background of an
#: MRI): fat, muscle, organs and bone count, air and lung do not.
TISSUE_LEVEL = 0.05


def torso_centre(image: np.ndarray, spacing: float, cell_mm: float = 5.0, opening_mm: float = 10.0) -> int:
    """The left-right (canonical axis 0) centre of the patient's torso, where the spine is searched.

    The intensity-weighted centre of the whole image is pulled sideways by anything else in the
    field of view: an arm lying beside the chest (one arm shifted it 31 mm on a phantom, two on one
    side 57 mm, close to the search half-width), a second limb, a positioning cushion. Here the
    torso is the largest connected piece of tissue on a coarse grid, after an opening that cuts
    thin bridges (skin contact with an arm, a blanket, the table's thin shell); the centre is the
    intensity-weighted mean over that piece only. Falls back to the whole image when no tissue."""
    from scipy import ndimage

    step = max(1, int(round(cell_mm / spacing)))
    coarse = image[::step, ::step, ::step]
    tissue = coarse > TISSUE_LEVEL
    radius = max(1, int(round(opening_mm / 2 / (step * spacing))))
    opened = ndimage.binary_opening(tissue, ndimage.generate_binary_structure(3, 1), iterations=radius)
    pieces, count = ndimage.label(opened if opened.any() else tissue)
    weights = coarse
    if count:
        sizes = ndimage.sum(np.ones(pieces.shape, np.uint8), pieces, range(1, count + 1))
        weights = np.where(pieces == 1 + int(np.argmax(sizes)), coarse, 0.0)
    profile = weights.reshape(weights.shape[0], -1).sum(axis=1)
    if profile.sum() <= 0:
        profile = np.ones(len(profile))
    centre = np.average(np.arange(len(profile)) * step, weights=profile)
    return int(np.clip(round(centre), 0, image.shape[0] - 1))


def find_slab(model, image: np.ndarray, config, min_score: float = 0.5, progress=None, cancel=None,
              search_half_width_mm: float = 72.0, stride_mm: float = 12.0) -> tuple[int, int, dict]:
    """Coarse pass every ~12 mm near the torso's left-right centre; returns the slab [low, high]."""
    spacing = config.spacing_mm
    stride = max(1, int(round(stride_mm / spacing)))
    centre = torso_centre(image, spacing)
    half = int(round(search_half_width_mm / spacing))
    xs = list(range(max(0, centre - half), min(image.shape[0], centre + half + 1), stride))
    coarse = run_on_slices(model, image, xs, config.slice_offset, progress=progress, cancel=cancel,
                           span=(0.05, 0.3))
    counts = {x: sum(d.score >= min_score for d in dets) for x, dets in coarse.items()}
    if not counts or max(counts.values()) == 0:
        return -1, -1, coarse
    best = max(counts, key=lambda x: (counts[x], -abs(x - centre)))
    low = high = best
    # Grow over neighbouring coarse slices that still see at least two bodies.
    while low - stride in counts and counts[low - stride] >= 2:
        low -= stride
    while high + stride in counts and counts[high + stride] >= 2:
        high += stride
    return max(0, low - stride), min(image.shape[0] - 1, high + stride), coarse


# --- linking across slices ----------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N, 4) and (M, 4) boxes (x0, y0, x1, y1), by torchvision."""
    import torch
    from torchvision.ops import box_iou as torch_box_iou

    a = torch.as_tensor(np.asarray(a, np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4))
    return torch_box_iou(a, b).numpy()


def link_detections(per_slice: dict[int, list[SliceDetection]], max_gap: int = 3,
                    min_iou: float = 0.3, min_score: float = 0.3) -> list[Body]:
    """Greedy-optimal (Hungarian) linking of detections on consecutive slices into bodies."""
    from scipy.optimize import linear_sum_assignment

    bodies: list[Body] = []
    for x in sorted(per_slice):
        detections = [d for d in per_slice[x] if d.score >= min_score]
        active = [b for b in bodies if 0 < x - b.last.x <= max_gap]
        matched = set()
        if active and detections:
            iou = box_iou(np.array([b.last.box for b in active]), np.array([d.box for d in detections]))
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= min_iou:
                    active[r].detections.append(detections[c])
                    matched.add(c)
        bodies.extend(Body([d]) for n, d in enumerate(detections) if n not in matched)
    return bodies


def keep_bodies(bodies: list[Body], spacing: float, min_extent_mm: float = 12.0,
                min_score: float = 0.5) -> list[Body]:
    """Drop one-slice flickers and weak tracks: a body is several millimetres wide."""
    kept = []
    for body in bodies:
        extent = (body.last.x - body.detections[0].x + 1) * spacing
        if extent >= min_extent_mm and body.score >= min_score:
            kept.append(body)
    return kept


def body_centre_mm(body: Body, spacing: float) -> np.ndarray:
    """Canonical (x, superior-inferior, anterior-posterior) centre of a body in mm."""
    boxes = np.array([d.box for d in body.detections], float)
    xs = np.array([d.x for d in body.detections], float)
    return np.array([xs.mean(), ((boxes[:, 1] + boxes[:, 3]) / 2).mean(),
                     ((boxes[:, 0] + boxes[:, 2]) / 2).mean()]) * spacing


#: How much further (mm per mm) a body beyond the confident bodies may stand off their curve's
#: straight continuation: the column bends (thoracic kyphosis, a scoliotic curve) where nothing
#: confident pins the curve down.
EXTRAPOLATION_SLACK = 0.3


def drop_off_spine(bodies: list[Body], spacing: float, max_off_mm: float = 20.0,
                   strong_score: float = 0.9) -> list[Body]:
    """Vertebral bodies form a smooth column: fit left-right and antero-posterior position as
    quadratics of the superior-inferior position through the confident bodies, and drop bodies
    further than max_off_mm from that curve (bowel, psoas, posterior elements seen as bodies).
    Beyond the confident bodies the curve is continued straight, and the allowance grows with
    the distance: a quadratic extrapolated 10 cm up a chest CT leaves the real column."""
    if len(bodies) < 4:
        return bodies
    centres = np.array([body_centre_mm(b, spacing) for b in bodies])
    strong = np.array([b.score >= strong_score for b in bodies])
    if strong.sum() < 3:
        strong = np.ones(len(bodies), bool)
    degree = 2 if strong.sum() >= 5 else 1
    s = centres[:, 1]
    span = s[strong].min(), s[strong].max()
    nearest_end = np.clip(s, *span)
    beyond = np.abs(s - nearest_end)
    off = np.zeros(len(bodies))
    for axis in (0, 2):
        fit = np.polyfit(s[strong], centres[strong, axis], degree)
        expected = np.polyval(fit, nearest_end) + np.polyval(np.polyder(fit), nearest_end) * (s - nearest_end)
        off += (centres[:, axis] - expected) ** 2
    allowed = max_off_mm + EXTRAPOLATION_SLACK * beyond
    return [b for b, distance, limit in zip(bodies, np.sqrt(off), allowed) if distance <= limit]


# --- fusion -----------------------------------------------------------------------------------
def fuse_masks(bodies: list[Body], x_range: tuple[int, int], shape_2d: tuple[int, int]):
    """Canonical (slab) instance map and its mask probability; slices a body skipped are filled
    from the nearest slice it was seen on."""
    low, high = x_range
    best = np.zeros((high - low + 1, *shape_2d), np.float32)
    instances = np.zeros(best.shape, np.uint16)
    for number, body in enumerate(bodies, start=1):
        seen = {d.x: d for d in body.detections}
        xs = sorted(seen)
        for x in range(xs[0], xs[-1] + 1):
            box, mask = _mask_at(seen, xs, x)
            col0, row0, col1, row1 = box
            region = (x - low, slice(row0, row1), slice(col0, col1))
            better = mask > best[region]
            best[region] = np.where(better, mask, best[region])
            instances[region] = np.where(better, number, instances[region])
    return instances, best


def _mask_at(seen: dict[int, SliceDetection], xs: list[int], x: int) -> tuple[np.ndarray, np.ndarray]:
    """The body's mask on slice x: its own, or the distance-weighted mean of the slices either side."""
    if x in seen:
        return seen[x].box, seen[x].mask
    before = max(s for s in xs if s < x)
    after = min(s for s in xs if s > x)
    a, b = seen[before], seen[after]
    box = np.concatenate([np.minimum(a.box[:2], b.box[:2]), np.maximum(a.box[2:], b.box[2:])])
    mean = np.zeros((box[3] - box[1], box[2] - box[0]), np.float32)
    weight_b = (x - before) / (after - before)
    for d, weight in ((a, 1 - weight_b), (b, weight_b)):
        col0, row0, col1, row1 = d.box - np.array([box[0], box[1], box[0], box[1]])
        mean[row0:row1, col0:col1] += weight * d.mask
    return box, mean


def to_input_grid(instances: np.ndarray, probability: np.ndarray, slab: Volume, reference: Volume) -> np.ndarray:
    """Instance map on the input grid: nearest-neighbour labels (dilated one voxel so boundaries
    are covered) kept where the linearly resampled mask probability is at least 0.5.

    Only the input voxels around the bodies are resampled (a whole CT grid is tens of millions of
    voxels): the bodies' box on ``slab`` plus `BOX_MARGIN` voxels, and the input voxels inside it.
    A kept voxel's nearest slab voxel is at most one from a body (the dilation) and its linear
    interpolation reaches one further, so the margin keeps every value the whole grid would give."""
    from scipy import ndimage

    out = np.zeros(reference.array.shape, np.uint16)
    present = np.argwhere(instances)
    if present.size == 0:
        return out
    low = np.maximum(present.min(axis=0) - BOX_MARGIN, 0)
    high = np.minimum(present.max(axis=0) + BOX_MARGIN + 1, instances.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    part = sub_grid(slab, low, high)
    dilated = ndimage.grey_dilation(instances[box], size=(3, 3, 3))
    dilated = np.where(instances[box] > 0, instances[box], dilated)
    corners = np.array([[a, b, c] for a in (low[0], high[0] - 1) for b in (low[1], high[1] - 1)
                        for c in (low[2], high[2] - 1)], float)
    inside = reference.ras_to_kji(slab.kji_to_ras(corners))
    ref_low = np.clip(np.floor(inside.min(axis=0)).astype(int) - 1, 0, reference.array.shape)
    ref_high = np.clip(np.ceil(inside.max(axis=0)).astype(int) + 2, 0, reference.array.shape)
    if np.any(ref_high <= ref_low):
        return out
    target = sub_grid(reference, ref_low, ref_high)
    labels = resample(part.with_array(dilated), None, reference=target, label=True).array
    prob = resample(part.with_array(probability[box]), None, reference=target, default_value=0.0).array
    out[tuple(slice(int(a), int(b)) for a, b in zip(ref_low, ref_high))] = np.where(prob >= 0.5, labels, 0)
    return out


#: Slab voxels around the bodies that `to_input_grid` resamples (dilation 1 + interpolation 1 + 1 spare).
BOX_MARGIN = 3


def slab_volume(canonical: Volume, low: int, high: int) -> Volume:
    """The sub-grid of canonical slices low..high (canonical axis 0 is array axis k)."""
    matrix = canonical.ijk_to_ras.copy()
    matrix[:3, 3] = canonical.kji_to_ras(np.array([low, 0, 0]))[0]
    return Volume(np.zeros((high - low + 1, *canonical.array.shape[1:]), np.uint8), matrix)


# --- the whole volume --------------------------------------------------------------------------
@contextmanager
def torch_threads(count: int):
    """Run torch with ``count`` threads, restoring the previous setting afterwards.

    One thread by default: on a small shared machine, two OpenMP threads waiting for each other
    made slice inference 10-20 times slower than one (measured on this 2-core box)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


#: Empty margin added above and below the image before detection (see `pad_head_and_feet`).
EDGE_PADDING_MM = 40.0


def detect_volume(source: Volume | CanonicalView, model, modality: str = "mr", progress: Progress | None = None,
                  cancel: Cancel | None = None, slice_step: int = 2, threads: int | None = None,
                  input_mode: str = "slices") -> DetectionOutput:
    """Detect vertebral bodies in a volume (or a case's canonical view); masks on the input grid,
    centroids in RAS.

    input_mode "slices" runs every other sagittal slice of the spine's slab and links them;
    "mip" (CT only, paper 001) runs once on the slab's maximum-intensity projection."""
    view = source if isinstance(source, CanonicalView) else CanonicalView(source, modality)
    threads = int(os.environ.get("SPINELABEL_THREADS", "1")) if threads is None else threads
    with torch_threads(threads):
        if input_mode == "mip":
            return _detect_mip(view, model, progress, cancel)
        return _detect_volume(view, model, progress, cancel, slice_step)


def pad_head_and_feet(canonical: Volume, padding_mm: float) -> Volume:
    """The canonical volume with empty rows above and below, its geometry moved to match.

    Training crops reach past the image, so the detector has learnt image ends as empty space; a
    field of view cut through a body with tissue up to the edge is then unusual, and the level
    probabilities of the bodies near it drift (a lumbar MRI whose L5 touched the lower edge was
    named one level off until padded)."""
    rows = int(round(padding_mm / canonical.spacing[1]))
    if rows <= 0:
        return canonical
    array = np.pad(canonical.array, ((0, 0), (rows, rows), (0, 0)), constant_values=canonical.array.min())
    matrix = canonical.ijk_to_ras.copy()
    matrix[:3, 3] = canonical.kji_to_ras(np.array([[0, -rows, 0]]))[0]
    return Volume(array, matrix, dict(canonical.metadata))


def _detect_volume(view: CanonicalView, model, progress: Progress | None,
                   cancel: Cancel | None, slice_step: int, edge_padding_mm: float | None = None) -> DetectionOutput:
    config = model.config
    volume = view.volume
    _check(cancel)
    if progress:
        progress(0.0, "resampling to canonical orientation")
    padding = EDGE_PADDING_MM if edge_padding_mm is None else edge_padding_mm
    canonical = pad_head_and_feet(view.at(config.spacing_mm), padding)
    image = apply_window(canonical.array, view.window)
    low, high, coarse = find_slab(model, image, config, progress=progress, cancel=cancel)
    if low < 0:
        return DetectionOutput(np.zeros(volume.array.shape, np.uint16), [], {"slab": None})
    xs = [x for x in range(low, high + 1, max(1, slice_step)) if x not in coarse]
    per_slice = run_on_slices(model, image, xs, config.slice_offset, progress=progress,
                              cancel=cancel, span=(0.3, 0.9))
    per_slice.update({x: dets for x, dets in coarse.items() if low <= x <= high})
    bodies = keep_bodies(link_detections(per_slice, max_gap=2 * max(1, slice_step)), config.spacing_mm)
    bodies = drop_off_spine(bodies, config.spacing_mm)
    bodies.sort(key=lambda b: np.mean([(d.box[1] + d.box[3]) / 2 for d in b.detections]))
    _check(cancel)
    if progress:
        progress(0.9, "fusing slices into 3-D bodies")
    instances, probability = fuse_masks(bodies, (low, high), image.shape[1:])
    slab = slab_volume(canonical, low, high)
    on_input = to_input_grid(instances, probability, slab, volume)
    out_bodies = _describe(bodies, on_input, instances, volume, slab)
    extras = {"slab_ras_x_mm": [float(canonical.kji_to_ras(np.array([x, 0, 0]))[0][0]) for x in (low, high)],
              "most_bodies_slice": _most_bodies_slice(per_slice, canonical),
              "slices_run": len(set(per_slice) | set(coarse))}
    if progress:
        progress(1.0, f"{len(out_bodies)} vertebral bodies found")
    return DetectionOutput(on_input, out_bodies, extras)


#: Bone in the CT window: 150 HU on the -250..1000 HU scale of `normalise_intensity`.
BONE_LEVEL = (150.0 + 250.0) / 1250.0


def _detect_mip(view: CanonicalView, model, progress: Progress | None,
                cancel: Cancel | None, min_score: float = 0.5) -> DetectionOutput:
    """Paper 001: one detector pass on the sagittal MIP of the spine's slab. The slab (found as
    in slice mode) leaves out the hip bones, which would hide L5 in a projection. A body's 3-D
    mask is its 2-D mask carried across the slab where the CT is bone (>= 150 HU), largest piece."""
    from scipy import ndimage

    if view.modality != "ct":
        raise SpineLabelError("the sagittal MIP input is for CT (paper 001); use --input-mode slices for MRI")
    config = model.config
    volume = view.volume
    _check(cancel)
    if progress:
        progress(0.0, "resampling to canonical orientation")
    canonical = view.at(config.spacing_mm)
    image = view.normalised(config.spacing_mm)
    low, high, _ = find_slab(model, image, config, progress=progress, cancel=cancel)
    if low < 0:
        return DetectionOutput(np.zeros(volume.array.shape, np.uint16), [], {"slab": None})
    slab_image = image[low: high + 1]
    projection = slab_image.max(axis=0)
    if progress:
        progress(0.5, "detecting vertebrae on the sagittal MIP")
    detections = [d for d in predict_slices(model, np.stack([projection] * 3)[None])[0] if d.score >= min_score]
    detections.sort(key=lambda d: (d.box[1] + d.box[3]) / 2)
    instances = np.zeros(slab_image.shape, np.uint16)
    probability = np.zeros(slab_image.shape, np.float32)
    bone = slab_image >= BONE_LEVEL
    bodies = []
    for d in detections:
        col0, row0, col1, row1 = d.box
        region = (slice(None), slice(row0, row1), slice(col0, col1))
        column = (d.mask >= 0.5)[None] & bone[region] & (instances[region] == 0)
        pieces, count = ndimage.label(column)
        if count == 0:
            continue
        largest = pieces == 1 + int(np.argmax(ndimage.sum(column, pieces, range(1, count + 1))))
        bodies.append(Body([d]))
        instances[region][largest] = len(bodies)
        probability[region][largest] = np.maximum(np.broadcast_to(d.mask, largest.shape)[largest], 0.5)
    slab = slab_volume(canonical, low, high)
    on_input = to_input_grid(instances, probability, slab, volume)
    out_bodies = _describe(bodies, on_input, instances, volume, slab)
    extras = {"input_mode": "mip", "slab_ras_x_mm": [float(canonical.kji_to_ras(np.array([x, 0, 0]))[0][0]) for x in (low, high)]}
    if progress:
        progress(1.0, f"{len(out_bodies)} vertebral bodies found")
    return DetectionOutput(on_input, out_bodies, extras)


def _describe(bodies: list[Body], on_input: np.ndarray, canonical_instances: np.ndarray,
              volume: Volume, slab: Volume) -> list[dict]:
    # Centres from one pass over the labelled voxels: scipy's center_of_mass over the whole input
    # grid took 2.5 CPU s on a C3-L5 CT phantom (tens of millions of voxels, a few percent labelled).
    numbers = list(range(1, len(bodies) + 1))
    centres = label_centres(on_input, numbers)
    described = []
    for number, body, centre in zip(numbers, bodies, centres):
        if not np.any(np.isnan(centre)):
            centroid = volume.kji_to_ras(np.array(centre))[0]
        else:                                   # body thinner than an input voxel: use canonical grid
            centroid = slab.kji_to_ras(label_centres(canonical_instances, [number])[0])[0]
        probs = body.level_probs
        described.append({"instance": number, "centroid_ras": centroid, "score": body.score,
                          "level_probs": {name: float(p) for name, p in zip(anatomy.ORDER, probs)},
                          "slices": len(body.detections)})
    return described


def _most_bodies_slice(per_slice: dict[int, list[SliceDetection]], canonical: Volume,
                       min_score: float = 0.5) -> dict:
    """SpineTK's choice (paper 004): the sagittal slice showing the most vertebral bodies."""
    if not per_slice:
        return {}
    counts = {x: sum(d.score >= min_score for d in dets) for x, dets in per_slice.items()}
    best = max(sorted(counts), key=lambda x: counts[x])
    return {"canonical_slice": int(best), "bodies": int(counts[best]),
            "x_ras_mm": float(canonical.kji_to_ras(np.array([best, 0, 0]))[0][0])}
