"""The bundled disc segmenter family: one disc per pair of neighbouring bodies, drawn by a 2-D U-Net."""
from __future__ import annotations

from ..families import ModelFamily, register_family
from .network import FAMILY as NAME


def build_network(architecture: dict):
    from .network import DiscConfig, build_model

    return build_model(DiscConfig.from_dict(architecture))


def run(view, result, network, cancel=None, sites=None):
    """The disc layer: per pair of neighbouring named bodies, or per `infer.DiscSite` given."""
    from .infer import segment_discs

    return segment_discs(view, result, network, cancel=cancel, sites=sites)


def channels_last(network):
    from ..body_unet.family import channels_last as body_channels_last

    return body_channels_last(network)


FAMILY = register_family(ModelFamily(
    name=NAME, role="disc-segmenter", build_network=build_network, run=run, prepare_network=channels_last,
    description="2-D U-Net: the intervertebral disc between two found bodies, sagittal slices at 1 mm",
    training_recipe="SpineLabelLib.training.discs:DiscRecipe"))
