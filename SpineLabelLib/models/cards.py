"""Models as data: a safetensors file + a model card, hash-checked, never unpickled; the card's
``architecture.family`` names the `families.ModelFamily` that builds the network."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import ModelError
from ..io.summary import sha256_file

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
#: How a card may store its floating-point weights (card key "weights_dtype"; float32 if absent).
#: float16 halves the file (the extension's repository stays under the catalog's 100 MB); the
#: network still computes in float32: weights are widened when loaded.
WEIGHTS_DTYPES = ("float32", "float16")
REQUIRED_CARD_FIELDS = ("name", "version", "task", "modality", "levels", "weights", "sha256", "architecture")


def sha256_of(path: Path) -> str:
    return sha256_file(path)


def read_card(directory: Path) -> dict:
    card_path = Path(directory) / CARD_FILE
    if not card_path.is_file():
        raise ModelError(f"{directory}: no {CARD_FILE}; not a SpineLabel model folder")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{card_path}: unreadable model card ({error})") from None
    missing = [key for key in REQUIRED_CARD_FIELDS if key not in card]
    if missing:
        raise ModelError(f"{card_path}: model card lacks {', '.join(missing)}")
    return card


def load_network(directory: Path, card: dict | None = None):
    """Build the network of a model folder and load its weights after checking the file's sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    card = card or read_card(directory)
    weights = directory / card["weights"]
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing")
    if sha256_of(weights) != card["sha256"]:
        raise ModelError(f"{weights}: sha256 does not match the model card (file changed or damaged); refusing to load")
    from .families import family_of_card

    family = family_of_card(card)
    try:
        network = family.build_network(card["architecture"])
        network.load_state_dict(_widened(load_file(str(weights))), strict=True)
    except (SafetensorError, RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{weights}: weights do not fit the card's architecture ({first})") from None
    network.eval()
    return family.prepare_network(network) if family.prepare_network else network


def _widened(tensors: dict) -> dict:
    """float16-stored weights as float32 (the network computes in float32 on the CPU)."""
    import torch

    return {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}


def _stored(tensors: dict, dtype: str) -> dict:
    import torch

    if dtype not in WEIGHTS_DTYPES:
        raise ModelError(f"weights_dtype {dtype!r} not supported; one of {', '.join(WEIGHTS_DTYPES)}")
    if dtype == "float32":
        return tensors
    return {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}


def export_checkpoint(checkpoint: Path, out: Path, config_class, card: dict, history_key: str,
                      extra_card: Path | None = None) -> dict:
    """A training checkpoint -> model folder. ``card`` holds what the model does; this adds the
    input and normalisation every slice model shares, the training facts from the checkpoint and
    then ``extra_card`` (data, split, metrics: a JSON file merged last)."""
    import torch

    from ..core.canonical import NORMALISATION_CARD

    state = torch.load(checkpoint, weights_only=True)
    config = config_class.from_dict(json.loads(state["config"]))
    history = json.loads(state["history"])
    input_card = {"orientation": "canonical sagittal slices (rows superior->inferior, columns anterior->posterior)",
                  "spacing_mm": config.spacing_mm, "channels": "slices x-d, x, x+d",
                  "slice_offset_voxels": config.slice_offset, "train_crop_px": config.train_size}
    card = {**card, "input": {**input_card, **card.get("input", {})}, "normalisation": NORMALISATION_CARD,
            "training": {"iterations": int(state["iteration"]),
                         "training_minutes": round(float(state.get("elapsed", 0)) / 60, 1),
                         "validation_history": [h for h in history if history_key in h]}}
    if extra_card is not None and Path(extra_card).is_file():
        card.update(json.loads(Path(extra_card).read_text()))
    return export_weights(state["model"], config, out, card)


def export_weights(state_dict: dict, config, directory: Path, card: dict) -> dict:
    """Write model.safetensors and model_card.json (with its sha256) into ``directory``."""
    from safetensors.torch import save_file

    from ..core.paths import atomic_path, atomic_write_text

    dtype = card.get("weights_dtype", "float32")
    tensors = _stored({key: value.detach().contiguous().clone() for key, value in state_dict.items()}, dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
    card = {**card, "weights": WEIGHTS_FILE, "weights_dtype": dtype, "sha256": sha256_of(weights),
            "weights_bytes": weights.stat().st_size, "architecture": config.to_dict()}
    atomic_write_text(directory / CARD_FILE, json.dumps(card, indent=2) + "\n")
    return card
