"""The bundled detector family: Mask R-CNN on sagittal slices, linked into 3-D bodies (papers 001, 004)."""
from __future__ import annotations

from ..families import DEFAULT_FAMILY, ModelFamily, register_family


def build_network(architecture: dict):
    from .network import DetectorConfig, build_model

    return build_model(DetectorConfig.from_dict(architecture))


def run(view, network, options, progress=None, cancel=None):
    from .infer import detect_volume

    return detect_volume(view, network, view.modality, progress=progress, cancel=cancel,
                         input_mode=options.input_mode)


FAMILY = register_family(ModelFamily(
    name=DEFAULT_FAMILY, role="detector", build_network=build_network, run=run,
    description="Mask R-CNN on sagittal slices: boxes, masks and level probabilities per body",
    training_recipe="SpineLabelLib.training.recipes:DetectorRecipe"))
