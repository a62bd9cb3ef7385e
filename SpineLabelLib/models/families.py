"""Model families: what a model card's ``architecture.family`` means.

A family is one registration: its role (a detector finds and names bodies; a segmenter redraws their
masks), how to build its network from the card, its inference stage, and its training recipe (which
also writes the card fields every model of the family shares). Bundled and user models resolve through it, so a new
family is one module that calls `register_family` (or, from another package, an entry point in the
``spinelabel.families`` group) — the way torchvision's `register_model` and nnU-Net's trainers by
name work. Nothing here imports torch: the callables do, when they are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable

from ..core.errors import ModelError

#: what a family's models do in a run
ROLES = ("detector", "segmenter", "disc-segmenter")
#: the family a card means when its architecture names none (the first bundled detector's cards)
DEFAULT_FAMILY = "mask-rcnn-slices"
ENTRY_POINT_GROUP = "spinelabel.families"
_BUILTIN_MODULES = ("SpineLabelLib.models.maskrcnn.family", "SpineLabelLib.models.body_unet.family",
                    "SpineLabelLib.models.dense.family", "SpineLabelLib.models.disc_unet.family")


@dataclass(frozen=True)
class ModelFamily:
    """One kind of network and everything SpineLabel needs to run, load and train it.

    run: the inference stage. Detector role: ``run(view, network, options, progress, cancel)`` ->
    `DetectionOutput` (body instances on the input grid, per body centroid, score, level
    probabilities). Segmenter role: ``run(view, instances, network, cancel)`` -> instance map.
    build_network: card ``architecture`` dict -> network in eval mode (weights loaded afterwards).
    prepare_network: applied after the weights are loaded (memory layout, say), or None.
    training_recipe: "module:attribute" of the recipe `spinelabel train` uses ('' = not trainable).
    """

    name: str
    role: str
    build_network: Callable[[dict[str, Any]], Any]
    run: Callable[..., Any]
    description: str = ""
    training_recipe: str = ""
    prepare_network: Callable[[Any], Any] | None = None

    def recipe(self):
        if not self.training_recipe:
            raise ModelError(f"model family {self.name!r} cannot be trained with spinelabel train")
        module, _, attribute = self.training_recipe.partition(":")
        return getattr(import_module(module), attribute)


_FAMILIES: dict[str, ModelFamily] = {}
_loaded = False


def register_family(family: ModelFamily) -> ModelFamily:
    """Make a family known (a later registration under the same name replaces the earlier one)."""
    if family.role not in ROLES:
        raise ValueError(f"family {family.name!r}: role must be one of {ROLES}, got {family.role!r}")
    _FAMILIES[family.name] = family
    return family


def _load_known() -> None:
    """The bundled families, then those other installed packages declare as entry points."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        import_module(module)
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if isinstance(loaded, ModelFamily):
            register_family(loaded)


def families(role: str | None = None) -> list[ModelFamily]:
    _load_known()
    return [f for f in _FAMILIES.values() if role is None or f.role == role]


def get_family(name: str | None) -> ModelFamily:
    _load_known()
    name = name or DEFAULT_FAMILY
    if name not in _FAMILIES:
        raise ModelError(f"unknown model family {name!r} (known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def family_of_card(card: dict[str, Any]) -> ModelFamily:
    return get_family(card.get("architecture", {}).get("family"))
