"""The second bundled detector family: paper 002's two-stage dense detection and identification."""
from __future__ import annotations

from ..families import ModelFamily, register_family
from .networks import FAMILY as NAME


def build_network(architecture: dict):
    from .networks import build_network as build

    return build(architecture)


def channels_last(network):
    """Both stages' weights in channels-last layout, as their inputs (`infer`): a third less CPU
    time for the convolutions (measured on this machine, one thread); the values are the same."""
    import torch

    network.detection.to(memory_format=torch.channels_last_3d)
    network.identification.to(memory_format=torch.channels_last)
    return network


def run(view, network, options, progress=None, cancel=None, masks=True, focus_ras=None):
    from .infer import detect_dense

    return detect_dense(view, view.modality, network, progress=progress, cancel=cancel, masks=masks,
                        focus_ras=focus_ras)


FAMILY = register_family(ModelFamily(
    name=NAME, role="detector", build_network=build_network, run=run, prepare_network=channels_last,
    description="paper 002: 3-D column U-Net x 2-D level-index U-Net, votes aggregated per level",
    training_recipe="SpineLabelLib.training.recipes:DenseRecipe"))
