"""A tiny detector family for tests, registered the way a new family is: one module, one registration.

Its "network" is one learnable threshold: bright connected blobs above it are vertebral bodies, with
no level evidence (uniform probabilities), so labelling names them by geometry alone. Its card's
architecture can ask it to pause (a slow model, for cancel tests) and it reports the options it ran
with in its notes (so a test sees what a background job passed through).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from SpineLabelLib.core import anatomy
from SpineLabelLib.models.families import ModelFamily, register_family

NAME = "test-blobs"
#: an image holding this value ends the process running the family (a crashing worker, for isolation tests)
CRASH_VALUE = 4321.0


def build_network(architecture: dict):
    import torch

    network = torch.nn.Module()
    network.threshold = torch.nn.Parameter(torch.tensor([float(architecture.get("threshold", 500.0))]))
    network.pause_s = float(architecture.get("pause_s", 0.0))
    return network


def run(view, network, options, progress=None, cancel=None):
    from scipy import ndimage

    from SpineLabelLib.models.maskrcnn.infer import DetectionOutput

    if network.pause_s:
        progress(0.5, "thinking hard")
        time.sleep(network.pause_s)
    volume = view.volume
    if abs(float(volume.array.max()) - CRASH_VALUE) < 0.5:
        import os

        os._exit(3)
    labels, count = ndimage.label(volume.array > float(network.threshold.detach()))
    numbers = list(range(1, count + 1))
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, numbers) if count else []
    uniform = {name: 1.0 / len(anatomy.ORDER) for name in anatomy.ORDER}
    bodies = [{"instance": n, "centroid_ras": volume.kji_to_ras(np.array(c))[0], "score": 0.9,
               "level_probs": dict(uniform)} for n, c in zip(numbers, centres)]
    return DetectionOutput(labels.astype(np.uint16), bodies, {"options": options.to_dict()})


FAMILY = register_family(ModelFamily(name=NAME, role="detector", build_network=build_network, run=run,
                                     description="test: bright blobs are bodies"))


def write_model(folder: Path, threshold: float = 500.0, pause_s: float = 0.0, name: str = "blob-detector") -> Path:
    """A model folder of this family (weights + card), loadable by `models.registry.load_model`."""
    from safetensors.torch import save_file

    from SpineLabelLib.models.cards import CARD_FILE, WEIGHTS_FILE, sha256_of

    folder.mkdir(parents=True, exist_ok=True)
    architecture = {"family": NAME, "threshold": threshold, "pause_s": pause_s}
    save_file(build_network(architecture).state_dict(), str(folder / WEIGHTS_FILE))
    card = {"name": name, "version": "0", "task": "test detector", "modality": ["ct", "mr"], "levels": [],
            "weights": WEIGHTS_FILE, "sha256": sha256_of(folder / WEIGHTS_FILE), "architecture": architecture}
    (folder / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    return folder


def write_entry_point(site: Path) -> Path:
    """Declare this family as an installed package would (entry point group spinelabel.families), so a
    child process that has ``site`` and this folder on its path finds it."""
    info = site / "spinelabel_test_blobs-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spinelabel-test-blobs\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[spinelabel.families]\nblobs = blob_family:FAMILY\n")
    return site
