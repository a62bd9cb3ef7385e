"""Training recipes: what differs between model families when they are trained with `loop.fit`.

- `DetectorRecipe` (family "mask-rcnn-slices"): the vertebra detector, 2-D Mask R-CNN on sagittal slice
  stacks; loss = the sum of torchvision's RPN/ROI losses, gradients clipped at norm 10; validation =
  share of bodies found (mask IoU >= 0.5) and identified on fixed held-out slices.
- `SegmenterRecipe` (family "body-unet"): the body segmenter U-Net; loss = BCE + soft Dice over the
  labelled pixels; validation = foreground Dice on held-out slices.
- `DenseRecipe` (family "dense-two-stage"): paper 002's two stages, one batch of each per step;
  loss = stage 1's weighted cross-entropy + stage 2's L1 on column pixels (`training.dense`);
  validation = stage-1 Dice and stage-2 index error / level accuracy on fixed held-out draws.

A recipe is built with its training pool (cases + draw weights) and validation slices; the same
recipe serves training from scratch (`training.detector` / `training.segmenter`) and fine-tuning
(`training.finetune`, which passes initial weights to `loop.fit`). The model registry names them
(`models/*/family.py`: training_recipe="SpineLabelLib.training.recipes:DetectorRecipe"); a recipe
class takes no required arguments, so that ``family.recipe()()`` gives one to fill.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .loop import Recipe

DETECTOR_TASK = "vertebral body detection, instance segmentation and level probabilities on sagittal slices"
SEGMENTER_TASK = "vertebral body foreground on sagittal slices, refining the detector's body masks"


class _SliceRecipe(Recipe):
    """Both families draw 3-slice sagittal stacks from prepared .npz cases with a weighted sampler."""

    def __init__(self, cases: Sequence = (), weights: Sequence[float] | None = None,
                 validation: Sequence = (), augment: dict | None = None) -> None:
        self.cases, self.weights = list(cases), weights
        self.validation = list(validation)
        self.augment = dict(augment or {})

    def site_data(self):
        from .finetune import SliceData

        return SliceData(self)


# --- detector -------------------------------------------------------------------------------------
class DetectorRecipe(_SliceRecipe):
    family = "mask-rcnn-slices"            # as registered in models/; detector cards name no family
    clip_grad_norm = 10.0

    def config(self, data: dict | None = None):
        from ..models.maskrcnn.network import DetectorConfig

        return DetectorConfig.from_dict(data) if data is not None else DetectorConfig()

    def build(self, config):
        from ..models.maskrcnn.network import build_model

        return build_model(config)

    def sampler(self, config, seed: int):
        from ..models.maskrcnn.data import CT_APPEARANCE, SliceSampler

        # Real CT cases (Case.ct, from the modality their .npz records) are also shown at thicker
        # slices and lighter bone, as in the synthesis mix; the caller's settings win.
        return SliceSampler(self.cases, config.train_size, config.slice_offset, seed=seed, weights=self.weights,
                            **{**CT_APPEARANCE, **self.augment})

    def batch(self, sampler, size: int):
        import torch

        from ..models.maskrcnn.data import make_target

        images, targets = [], []
        for _ in range(size):
            image, labels = sampler.sample()
            images.append(torch.from_numpy(image))
            targets.append(make_target(labels))
        return images, targets

    def loss(self, model, batch) -> dict:
        images, targets = batch
        return model(images, targets)

    def validate(self, model) -> dict | None:
        return evaluate_slices(model, self.validation) if self.validation else None

    def score(self, metrics: dict) -> float:
        return metrics["recall"] + metrics["identified"]

    @staticmethod
    def validation_slices(folder: Path, offset: int) -> list:
        return detector_validation_slices(folder, offset)

    def card(self, config) -> dict:
        from ..core import anatomy
        from ..models.maskrcnn.network import CLASS_NAMES

        return {"task": DETECTOR_TASK, "modality": ["ct", "mr"], "levels": list(anatomy.ORDER),
                "classes": list(CLASS_NAMES),
                "input": {"orientation": "canonical sagittal slices (rows superior->inferior, columns anterior->posterior)",
                          "spacing_mm": config.spacing_mm, "channels": "slices x-d, x, x+d",
                          "slice_offset_voxels": config.slice_offset},
                "normalisation": {"mr": "per volume: clip to the 1st..99th percentile, scale to 0..1",
                                  "ct": "Hounsfield window -250..1000 HU scaled to 0..1"}}


def detector_validation_slices(data: Path, offset: int, per_case: int = 3) -> list:
    """Fixed 2-D validation set: the most-labelled sagittal slice of each val_*.npz case and two beside it."""
    from ..models.maskrcnn.data import Case

    slices = []
    for path in sorted(Path(data).glob("val_*.npz")):
        case = Case.load(path)
        counts = (case.labels > 0).reshape(case.labels.shape[0], -1).sum(axis=1)
        centre = int(counts.argmax())
        for x in (centre - 6, centre, centre + 6)[:per_case]:
            slices.append((_stack(case, x, offset), case.labels[x]))
    return slices


def _stack(case, x: int, offset: int) -> np.ndarray:
    """Slices x-offset, x, x+offset (clamped at the volume's edges) as float32 channels."""
    last = case.image.shape[0] - 1
    picks = [min(last, max(0, x + d)) for d in (-offset, 0, offset)]
    return case.image[picks].astype(np.float32)


def evaluate_slices(model, slices) -> dict:
    """Share of ground-truth bodies found (mask IoU >= 0.5) and of those with the right level."""
    import torch

    from ..models.maskrcnn.data import DETECTOR_CLASS_OF_CODE

    model.eval()
    found = correct = total = 0
    with torch.no_grad():
        for image, labels in slices:
            output = model([torch.from_numpy(image)])[0]
            masks = (output["masks"][:, 0] > 0.5).numpy()
            for code in np.unique(labels):
                if code == 0 or DETECTOR_CLASS_OF_CODE[code] == 0:
                    continue
                truth = labels == code
                total += 1
                if not len(masks):
                    continue
                inter = (masks & truth).reshape(len(masks), -1).sum(1)
                union = (masks | truth).reshape(len(masks), -1).sum(1)
                iou = inter / np.maximum(union, 1)
                best = int(iou.argmax())
                if iou[best] >= 0.5:
                    found += 1
                    correct += int(int(output["labels"][best]) == DETECTOR_CLASS_OF_CODE[code])
    model.train()
    return {"recall": found / max(total, 1), "identified": float(correct) / max(total, 1), "bodies": total}


# --- body segmenter -------------------------------------------------------------------------------
class SegmenterRecipe(_SliceRecipe):
    family = "body-unet"                   # as registered in models/ (SegmenterConfig.family)
    clip_grad_norm = None          # trained without clipping; its loss is bounded (BCE + Dice)

    def config(self, data: dict | None = None):
        from ..models.body_unet.network import SegmenterConfig

        return SegmenterConfig.from_dict(data) if data is not None else SegmenterConfig()

    def build(self, config):
        from ..models.body_unet.network import build_model

        return build_model(config)

    def sampler(self, config, seed: int):
        from ..models.body_unet.data import BodySliceSampler

        return BodySliceSampler(self.cases, config.train_size, config.slice_offset, seed=seed, weights=self.weights,
                                **self.augment)

    def batch(self, sampler, size: int):
        import torch

        drawn = [sampler.sample() for _ in range(size)]
        images = torch.from_numpy(np.stack([image for image, _ in drawn]))
        targets = torch.from_numpy(np.stack([target for _, target in drawn]).astype(np.int64))
        return images, targets

    def loss(self, model, batch):
        images, targets = batch
        return loss_function(model(images), targets)

    def validate(self, model) -> dict | None:
        return {"validation_slice_dice": round(slice_dice(model, self.validation), 4)} if self.validation else None

    @staticmethod
    def validation_slices(folder: Path, offset: int) -> list:
        return segmenter_validation_slices(folder, offset)

    def card(self, config) -> dict:
        return {"task": SEGMENTER_TASK, "modality": ["ct", "mr"], "levels": []}


def segmenter_validation_slices(data: Path, offset: int, every: int = 6) -> list:
    """Every 6th labelled sagittal slice of each val_*.npz case, with its body target."""
    from ..models.body_unet.data import body_target
    from ..models.maskrcnn.data import Case

    slices = []
    for path in sorted(Path(data).glob("val_*.npz")):
        case = Case.load(path)
        for x in case.labelled_slices[::every]:
            slices.append((_stack(case, x, offset), body_target(case.labels[x])))
    return slices


def slice_dice(model, slices) -> float:
    """Foreground Dice over the validation slices, below the topmost labelled row of each slice
    (bodies above the annotated ones are unlabelled)."""
    import torch

    from ..models.body_unet.infer import predict_probability

    inter = total = 0.0
    model.eval()
    for image, target in slices:
        probability = predict_probability(model, image[None])[0]
        rows = np.flatnonzero(target.any(axis=1))
        valid = np.zeros(target.shape, bool)
        if rows.size:
            valid[max(0, rows[0] - 3):] = True
        predicted = (probability >= 0.5) & valid
        inter += float((predicted & (target > 0)).sum())
        total += float(predicted.sum() + (target > 0).sum())
    model.train()
    torch.set_grad_enabled(True)      # inference switches gradients off globally
    return 2 * inter / max(total, 1.0)


def loss_function(logits, targets):
    """Binary cross-entropy plus soft Dice, both over the pixels that are not IGNORE."""
    import torch
    import torch.nn.functional as F

    from ..models.body_unet.data import IGNORE

    valid = (targets != IGNORE).float()
    truth = (targets == 1).float()
    bce = (F.binary_cross_entropy_with_logits(logits, truth, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
    probability = torch.sigmoid(logits) * valid
    dice = 1 - (2 * (probability * truth).sum() + 1) / (probability.sum() + truth.sum() + 1)
    return bce + dice


# --- dense detector (paper 002) -------------------------------------------------------------------
DENSE_TASK = ("vertebral column detection (3-D) and continuous level index (2-D) -> vertebral bodies with "
              "centroids, level probabilities and masks (paper 002)")


class DenseRecipe(Recipe):
    """Both stages in one step: a batch of 3-D patches for stage 1 and one of slice stacks for
    stage 2, the two losses summed (the stages share no parameters, so one optimiser step on the
    sum trains each as its own run would: the paper's alternating training, on one schedule)."""

    family = "dense-two-stage"             # as registered in models/dense (DenseConfig.family)
    clip_grad_norm = None                  # both losses are bounded (weighted BCE, L1 of indices)

    def __init__(self, cases: Sequence = (), weights: Sequence[float] | None = None, validation=None,
                 detect_batch: int | None = None, identify_batch: int | None = None) -> None:
        self.cases, self.weights = list(cases), weights
        self.validation = validation       # (detection batch, identification batch) or None
        self.detect_batch, self.identify_batch = detect_batch, identify_batch

    def config(self, data: dict | None = None):
        from ..models.dense.networks import DenseConfig

        return DenseConfig.from_dict(data) if data is not None else DenseConfig()

    def build(self, config):
        from ..models.dense.networks import build_network

        return build_network(config)

    def sampler(self, config, seed: int):
        from .dense import DenseSampler

        return DenseSampler(self.cases, config, self.weights, seed=seed)

    def batch(self, sampler, size: int):
        """Each stage has its own batch size (``detect_batch``, ``identify_batch``: the from-scratch
        trainer's 16 each); unset, the loop's (`spinelabel train`)."""
        import torch

        detection = [sampler.detection_sample() for _ in range(self.detect_batch or size)]
        identification = [sampler.identification_sample() for _ in range(self.identify_batch or size)]
        return ([torch.from_numpy(np.stack([d[i] for d in detection])) for i in range(3)],
                [torch.from_numpy(np.stack([d[i] for d in identification])) for i in range(2)])

    def loss(self, model, batch) -> dict:
        from .dense import detection_loss, identification_loss

        (images, targets, valid), (stacks, index) = batch
        return {"detection": detection_loss(model.detection(images), targets, valid),
                "identification": identification_loss(model.identification(stacks), index)}

    def validate(self, model) -> dict | None:
        from .dense import validate

        return validate(model, *self.validation) if self.validation is not None else None

    def card(self, config) -> dict:
        from ..models.dense.targets import OUTPUT_LEVELS

        return {"task": DENSE_TASK, "modality": ["ct", "mr"], "levels": list(OUTPUT_LEVELS)}

    def site_data(self):
        from .dense import DenseSiteData

        return DenseSiteData()
