"""The model registry: bundled and user models are folders holding weights and a model card.

Search order: folders named in the environment variable SPINELABEL_MODELS (os.pathsep-separated),
then <repo>/Resources/Models beside the package (a source checkout), then Resources/Models inside
or beside the installed package (the Slicer extension layout), then <prefix>/share/spinelabel/Models
(where `pip install spinelabel` puts them). Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ModelError

DEFAULT_MODEL = "vertebra-detector"
#: Redraws the detector's body masks at 1 mm when installed (`segmenter="auto"`).
DEFAULT_SEGMENTER = "vertebral-body-segmenter"
#: Draws the intervertebral discs on MRI when installed (CT and a missing model: the geometric method).
DEFAULT_DISC_SEGMENTER = "intervertebral-disc-segmenter"

#: SHA-256 of the weights shipped with this release. A model card can be edited together with its
#: weights; this table lives in the code, so a bundled model swapped on disk is still refused.
BUNDLED_SHA256 = {
    "vertebra-detector": "33736c17779c15569ca94d723b1cc45b7ae542725cc199919a5286833ad97037",
    "vertebral-body-segmenter": "fe384e9b320a4a06bb30b48a55d7024018ecdd3699b44da0d0162f6eb0bd1a33",
    "vertebra-dense-detector": "71efdca087160a3b389075de9495ff210b8b742414508dbdffe1d334ea31aec2",
    "intervertebral-disc-segmenter": "08e7ac5c3ad294a9e4424594575b5af8a687e55379c56e4e298d11cea8fd8457",
}
ENVIRONMENT_VARIABLE = "SPINELABEL_MODELS"


@dataclass
class LoadedModel:
    """A network ready for inference plus the card that describes it."""

    name: str
    version: str
    directory: Path
    card: dict[str, Any]
    network: Any = field(repr=False)

    @property
    def config(self):
        return self.network.config

    def summary(self) -> dict[str, str]:
        """What a result records about the model that produced it."""
        return {"name": self.name, "version": self.version, "sha256": self.card["sha256"],
                "task": self.card.get("task", "")}


def model_roots() -> list[Path]:
    package = Path(__file__).resolve().parents[1]
    roots = [Path(p) for p in os.environ.get(ENVIRONMENT_VARIABLE, "").split(os.pathsep) if p]
    roots += [package.parent / "Resources" / "Models", package / "Resources" / "Models",
              package.parent.parent / "Resources" / "Models", installed_root()]
    unique: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def _model_dirs() -> list[Path]:
    from .cards import CARD_FILE

    found = []
    for root in model_roots():
        if (root / CARD_FILE).is_file():          # SPINELABEL_MODELS may name a model folder itself
            found.append(root)
        found += sorted(d for d in root.iterdir() if (d / CARD_FILE).is_file())
    return found


def list_models() -> list[dict[str, Any]]:
    """Model cards of every model found (first one wins when names repeat), with 'directory' added."""
    from .cards import read_card

    cards, names = [], set()
    for directory in _model_dirs():
        try:
            card = read_card(directory)
        except ModelError:
            continue
        if card["name"] in names:
            continue
        names.add(card["name"])
        cards.append({**card, "directory": str(directory)})
    return cards


_CACHE: dict[tuple[str, str], LoadedModel] = {}
#: networks this process has built from weights (a cohort worker loads each model once, not per case)
NETWORK_LOADS = {"count": 0}


def load_model(name_or_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load a model by card name or folder path; the weights' sha256 is checked on every load."""
    from .cards import load_network, read_card, sha256_of

    name_or_dir = DEFAULT_MODEL if name_or_dir is None else name_or_dir
    candidate = Path(name_or_dir)
    if candidate.is_dir():
        directory = candidate
    else:
        matches = [Path(c["directory"]) for c in list_models() if c["name"] == str(name_or_dir)]
        if not matches:
            known = ", ".join(c["name"] for c in list_models()) or "none"
            raise ModelError(f"model {str(name_or_dir)!r} not found (known: {known}; "
                             f"set {ENVIRONMENT_VARIABLE} to add a folder)")
        directory = matches[0]
    card = read_card(directory)
    _check_bundled_pin(directory, card)
    weights = directory / card["weights"]
    key = (str(directory.resolve()), sha256_of(weights) if weights.is_file() else "")
    if key in _CACHE and key[1] == card["sha256"]:
        return _CACHE[key]
    network = load_network(directory, card)
    NETWORK_LOADS["count"] += 1
    loaded = LoadedModel(card["name"], str(card["version"]), directory, card, network)
    _CACHE[key] = loaded
    return loaded


def optional_model(choice, default_name: str) -> LoadedModel | None:
    """A model a run may go without: "auto" (`default_name` when installed, else None), "none"/None,
    a `LoadedModel`, or a model name or folder."""
    if choice is None or choice == "none":
        return None
    if isinstance(choice, LoadedModel):
        return choice
    if choice == "auto":
        if default_name not in {card["name"] for card in list_models()}:
            return None
        choice = default_name
    return load_model(choice)


def segmenter_for(choice) -> LoadedModel | None:
    """The body segmenter a caller asked for (`optional_model` with the bundled segmenter)."""
    return optional_model(choice, DEFAULT_SEGMENTER)


def disc_segmenter_for(choice="auto") -> LoadedModel | None:
    """The disc segmenter a caller asked for (`optional_model` with the bundled disc segmenter)."""
    return optional_model(choice, DEFAULT_DISC_SEGMENTER)


def bundled_root() -> Path:
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def installed_root() -> Path:
    """Where a wheel install puts the bundled models (pyproject's data-files)."""
    import sys

    return Path(sys.prefix) / "share" / "spinelabel" / "Models"


def _check_bundled_pin(directory: Path, card: dict[str, Any]) -> None:
    """A model inside the bundled folder must be the one this release shipped."""
    if directory.resolve().parent not in {bundled_root().resolve(), installed_root().resolve()}:
        return
    pinned = BUNDLED_SHA256.get(card["name"])
    if pinned is None or card["sha256"] != pinned:
        raise ModelError(f"{directory}: bundled model does not match the hash this SpineLabel release shipped; "
                         "reinstall SpineLabel or pass your own model folder with --model")
