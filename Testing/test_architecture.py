"""The engine's architecture as behaviour: stages with declared inputs, one canonical view per case,
model families from one registry (a new family is one module and one registration)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import blob_family
from test_correction import lumbar_result

from SpineLabelLib.app import pipeline
from SpineLabelLib.core.canonical import CanonicalView
from SpineLabelLib.core.errors import ModelError, SpineLabelError
from SpineLabelLib.core.options import RunOptions
from SpineLabelLib.core.result import SpineResult
from SpineLabelLib.core.volume import save_volume
from SpineLabelLib.models import families
from SpineLabelLib.models.registry import load_model

CONTRACT = (".seg.nrrd", "_seg.nii.gz", ".mrk.json", ".measurements.csv", ".distances.csv", ".alignment.csv", ".json",
            ".qc.png", ".discs.csv")


def test_a_new_family_is_one_registration_and_runs_end_to_end(tmp_path, blob_model_dir):
    """The tests' blob family (Testing/blob_family.py) was registered by importing it; a model folder
    of it runs through every stage and writes the whole contract, named by anatomical order."""
    assert families.get_family(blob_family.NAME) is blob_family.FAMILY
    assert blob_family.NAME in [f.name for f in families.families("detector")]
    path = save_volume(lumbar_result().image, tmp_path / "five boxes.nrrd")
    result = pipeline.run_case(path, tmp_path / "out", RunOptions(model=str(blob_model_dir), segmenter="none"))
    assert result.levels == ["L1", "L2", "L3", "L4", "L5"]
    discs = ["intervertebral-disc-segmenter"] if result.modality == "mr" else []   # the disc stage's model on MRI
    assert [m["name"] for m in result.models] == ["blob-detector", *discs]
    folder = tmp_path / "out" / "five_boxes"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"five_boxes{s}" for s in CONTRACT)


def test_models_command_lists_families_and_installed_models(blob_model_dir, monkeypatch):
    monkeypatch.setenv("SPINELABEL_MODELS", str(blob_model_dir))
    code = ("import blob_family, sys\nfrom SpineLabelLib.app.cli import main\nsys.exit(main(['models']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=blob_family.__file__.rsplit("/", 1)[0])
    assert proc.returncode == 0, proc.stderr
    families_part, models_part = proc.stdout.split("installed models")
    assert "mask-rcnn-slices\tdetector" in families_part and "body-unet\tsegmenter" in families_part
    assert "test-blobs\tdetector" in families_part
    assert "blob-detector\t0\ttest-blobs" in models_part and "vertebra-detector" in models_part


def test_an_unknown_family_is_one_clear_error(tmp_path):
    folder = blob_family.write_model(tmp_path / "odd")
    card = (folder / "model_card.json").read_text().replace(blob_family.NAME, "no-such-family")
    (folder / "model_card.json").write_text(card)
    with pytest.raises(ModelError, match="unknown model family 'no-such-family'"):
        load_model(folder)


def test_a_segmenter_given_as_detector_is_refused(tmp_path):
    from SpineLabelLib.models.registry import bundled_root

    result = SpineResult("case", image=lumbar_result().image)
    with pytest.raises(SpineLabelError, match="segmenter model, not a detector"):
        pipeline.detect(result, RunOptions(model=str(bundled_root() / "vertebral-body-segmenter")))


def test_a_stage_without_its_input_is_refused_by_name():
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.refine import RefineBodies

    result = SpineResult("case", image=lumbar_result().image)      # no body layer yet
    with pytest.raises(SpineLabelError, match="stage 'refine' needs layers.bodies"):
        pipeline.Pipeline([RefineBodies()]).run(result, RunContext(RunOptions()))


def test_the_whole_volume_is_resampled_once_per_case(tmp_path):
    """Bundled detector, bundled segmenter, measurement and every writer (the QC picture included)
    share the case's canonical view: one whole-volume resampling, one intensity window."""
    from SpineLabelLib import phantom

    truth = phantom.generate_phantom(["L2", "L3", "L4"], "t2", spacing=(1.2, 1.1, 2.0), seed=5,
                                     rotation_deg=(8.0, -5.0, 3.0), crop_to_spine=True)
    result = SpineResult("case", image=truth.image)
    windows = []
    original = CanonicalView.window.fget

    def counted(view):
        if view._window is None:
            windows.append(1)
        return original(view)

    try:
        CanonicalView.window = property(counted)
        pipeline.analyse(result, RunOptions(modality="mr"))
        pipeline.write_outputs(result, tmp_path)
    finally:
        CanonicalView.window = property(original)
    assert result.view.resamplings == 1 and result.view.spacings == [1.25]
    assert len(windows) == 1
    assert set(result.timings) >= {"locate", "refine", "name", "measure"}


def test_layers_hold_the_bodies_and_survive_a_snapshot(tmp_path):
    from SpineLabelLib.core.result import BODIES, load_snapshot, save_snapshot

    result = lumbar_result()
    assert result.layers[BODIES] is result.instances
    save_snapshot(result, tmp_path / "r.npz")
    again = load_snapshot(tmp_path / "r.npz")
    assert set(again.layers) == {BODIES} and np.array_equal(again.instances, result.instances)
