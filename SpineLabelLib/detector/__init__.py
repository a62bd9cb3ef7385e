"""The bundled vertebra detector: Mask R-CNN on sagittal slices, fused into 3-D bodies.

`detect(result)` fills ``result.vertebrae`` (level = most probable class, to be revised by
`labelling`), ``result.instances`` on the image grid, ``result.models`` and ``result.modality``.
"""
from __future__ import annotations

from typing import Callable

from ..errors import InputError
from ..result import SpineResult, Vertebra

MODALITIES = ("auto", "ct", "mr")


def detect(result: SpineResult, model=None, modality: str = "auto",
           progress: Callable[[float, str], None] | None = None,
           cancel: Callable[[], bool] | None = None) -> SpineResult:
    """Detect and segment the vertebral bodies of ``result.image``.

    model: a `models.LoadedModel`, a model name or folder, or None for the bundled default.
    progress(fraction, message) is called as work proceeds; cancel() returning True stops with
    a SpineLabelError('cancelled').
    """
    from ..models import LoadedModel, load_model
    from .infer import detect_volume, guess_modality

    if result.image is None:
        raise InputError(f"{result.case_id}: no image to detect vertebrae in")
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    result.modality = guess_modality(result.image) if modality == "auto" else modality
    output = detect_volume(result.image, loaded.network, result.modality, progress=progress, cancel=cancel)
    result.instances = output.instances
    result.vertebrae = []
    for body in output.bodies:
        scores = body["level_probs"]
        best = max(scores, key=scores.get)
        result.vertebrae.append(Vertebra(best, body["centroid_ras"], instance=body["instance"],
                                         score=float(body["score"]), source="detector",
                                         level_scores=scores))
    result.sort_cranio_caudal()
    if not result.vertebrae:
        result.warnings.append("detector: no vertebral body found")
    result.models = [m for m in result.models if m.get("name") != loaded.name] + [loaded.summary()]
    result.extras["detector"] = output.extras
    return result


__all__ = ["detect", "MODALITIES"]
