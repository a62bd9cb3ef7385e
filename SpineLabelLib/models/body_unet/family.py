"""The bundled body segmenter family: a 2-D U-Net redrawing body masks at 1 mm (paper 003's second stage)."""
from __future__ import annotations

from ..families import ModelFamily, register_family

NAME = "body-unet"


def build_network(architecture: dict):
    from .network import SegmenterConfig, build_model

    return build_model(SegmenterConfig.from_dict(architecture))


def channels_last(network):
    import torch

    return network.to(memory_format=torch.channels_last)    # its convolutions: ~1/3 faster on CPU


def run(view, instances, network, cancel=None):
    from .infer import refine_instances

    return refine_instances(view, instances, network, cancel=cancel)


FAMILY = register_family(ModelFamily(
    name=NAME, role="segmenter", build_network=build_network, run=run, prepare_network=channels_last,
    description="2-D U-Net: vertebral body foreground at 1 mm, split among the detected bodies",
    training_recipe="SpineLabelLib.training.recipes:SegmenterRecipe"))
