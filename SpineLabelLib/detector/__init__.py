"""The bundled vertebra detector: Mask R-CNN on sagittal slices, fused into 3-D bodies.

`detect(result)` fills ``result.vertebrae`` (level = most probable class, to be revised by
`labelling`), ``result.instances`` on the image grid, ``result.models`` and ``result.modality``.
When the body segmenter is installed, it redraws the masks at 1 mm (`segmenter.infer`) and the
centroids are taken from the redrawn masks.
"""
from __future__ import annotations

from typing import Callable

from ..errors import InputError
from ..result import SpineResult, Vertebra

MODALITIES = ("auto", "ct", "mr")
INPUT_MODES = ("slices", "mip")


def detect(result: SpineResult, model=None, modality: str = "auto",
           progress: Callable[[float, str], None] | None = None,
           cancel: Callable[[], bool] | None = None, segmenter="auto",
           input_mode: str = "slices") -> SpineResult:
    """Detect and segment the vertebral bodies of ``result.image``.

    model: a `models.LoadedModel`, a model name or folder, or None for the bundled default.
    segmenter: "auto" (the bundled body segmenter when installed), "none" (the detector's own
    masks), or a `models.LoadedModel`, model name or folder.
    input_mode: "slices" (sagittal slices linked in 3-D) or "mip" (CT only: the sagittal
    maximum-intensity projection of the spine's slab, paper 001).
    progress(fraction, message) is called as work proceeds; cancel() returning True stops with
    a SpineLabelError('cancelled').
    """
    from ..models import LoadedModel, load_model, segmenter_for
    from .infer import detect_volume, guess_modality

    if model == "ensemble":                    # both families, level evidence fused (dense.ensemble)
        from ..dense.ensemble import detect_ensemble

        return detect_ensemble(result, modality, progress, cancel, segmenter, input_mode)
    if result.image is None:
        raise InputError(f"{result.case_id}: no image to detect vertebrae in")
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if input_mode not in INPUT_MODES:
        raise InputError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    result.modality = guess_modality(result.image) if modality == "auto" else modality
    refiner = segmenter_for(segmenter)
    detector_progress = progress
    if refiner is not None and progress is not None:
        detector_progress = lambda fraction, message: progress(0.9 * fraction, message)  # noqa: E731
    from ..dense import FAMILY as DENSE_FAMILY, detect_dense

    if loaded.card.get("architecture", {}).get("family") == DENSE_FAMILY:     # paper 002's family
        output = detect_dense(result.image, result.modality, loaded.network, progress=detector_progress,
                              cancel=cancel)
    else:
        output = detect_volume(result.image, loaded.network, result.modality, progress=detector_progress,
                               cancel=cancel, input_mode=input_mode)
    if refiner is not None and output.bodies:
        if progress:
            progress(0.92, "redrawing body masks at 1 mm")
        _refine(output, result, refiner, cancel)
        if progress:
            progress(1.0, f"{len(output.bodies)} vertebral bodies segmented")
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
    used = [loaded] + ([refiner] if refiner is not None else [])
    result.models = [m for m in result.models if m.get("name") not in {u.name for u in used}] + [u.summary() for u in used]
    result.extras["detector"] = output.extras
    return result


def _refine(output, result: SpineResult, refiner, cancel) -> None:
    """Masks from the segmenter; each body's centroid moves to its redrawn mask's centre."""
    import numpy as np
    from scipy import ndimage

    from ..segmenter.infer import refine_instances

    refined = refine_instances(result.image, output.instances, refiner.network, result.modality, cancel=cancel)
    numbers = [body["instance"] for body in output.bodies]
    size = max(numbers) + 1
    before = np.bincount(output.instances.ravel(), minlength=size)
    after = np.bincount(refined.ravel(), minlength=size)
    for number, old, new in zip(numbers, before[numbers], after[numbers]):
        if new < 0.3 * old:
            # The segmenter does not see this body (an unusual contrast, say): a mask that is
            # too coarse beats a vertebra without one.
            result.warnings.append(f"segmenter: body {number} kept the detector's mask")
            refined[(output.instances == number) & (refined == 0)] = number
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = ndimage.center_of_mass(np.ones(refined.shape, np.uint8), refined, numbers)
    for body, centre in zip(output.bodies, centres):
        if not np.any(np.isnan(centre)):
            body["centroid_ras"] = result.image.kji_to_ras(np.array(centre))[0]
    output.instances = refined


__all__ = ["detect", "MODALITIES", "INPUT_MODES"]
