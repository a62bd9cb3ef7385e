"""Stage 1, locate bodies: the detector family finds the vertebral bodies, outlines them and gives
each its level probabilities (the most probable level is a first guess that `name_levels` revises).

needs: image. gives: modality, vertebrae (centroid, score, level probabilities), layers.bodies,
models, notes["locate"].
"""
from __future__ import annotations

from ..core.errors import InputError
from ..core.result import SpineResult, Vertebra
from .base import RunContext


def guess_modality(image) -> str:
    """'ct' when the values look like Hounsfield units (air near -1000), else 'mr'."""
    import numpy as np

    array = image.array
    sample = array[::4, ::4, ::4] if array.size > 1_000_000 else array
    low, high = np.percentile(sample, [1, 99.5])
    return "ct" if low < -500 and high > 150 else "mr"


def record_models(result: SpineResult, *used) -> None:
    """The models a result was made with, once each (a rerun replaces its own entries)."""
    names = {model.name for model in used}
    result.models = [m for m in result.models if m.get("name") not in names] + [m.summary() for m in used]


class LocateBodies:
    name = "locate"
    needs = ("image",)
    gives = ("modality", "vertebrae", "layers.bodies", "models")
    share = 0.85

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..models.families import family_of_card
        from ..models.registry import load_model

        if result.image is None:
            raise InputError(f"{result.case_id}: no image to detect vertebrae in")
        options = context.options
        from ..core.options import ENSEMBLE

        name = None if options.model == ENSEMBLE else options.model     # the ensemble's bodies: Mask R-CNN's
        detector = context.detector if context.detector is not None else load_model(name)
        family = family_of_card(detector.card)
        if family.role != "detector":
            raise InputError(f"{detector.name} is a {family.role} model, not a detector; pass it as the segmenter")
        result.modality = guess_modality(result.image) if options.modality == "auto" else options.modality
        output = family.run(result.canonical_view(), detector.network, options, context.progress, context.cancel)
        result.instances = output.instances
        result.vertebrae = [_vertebra(body) for body in output.bodies]
        result.sort_cranio_caudal()
        if not result.vertebrae:
            result.warnings.append("detector: no vertebral body found")
        record_models(result, detector)
        result.notes[self.name] = output.extras


def _vertebra(body: dict) -> Vertebra:
    scores = body["level_probs"]
    return Vertebra(max(scores, key=scores.get), body["centroid_ras"], instance=body["instance"],
                    score=float(body["score"]), source="detector", level_scores=scores)
