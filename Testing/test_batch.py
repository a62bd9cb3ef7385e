"""The headless batch script, run for real (runpy, its own argv and sys.exit) under `slicer-core`.

The detector is the tests' blob family (`blob_family`: bright boxes of a synthetic spine are bodies),
passed as --model, so the test does not depend on trained weights; labelling, measurement, writers
and Slicer storage nodes are real.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import slicer  # noqa: F401
from conftest import FIXTURES  # noqa: E402
from test_correction import lumbar_result  # noqa: E402

from SpineLabelLib.core.volume import save_volume  # noqa: E402

BATCH = Path(__file__).resolve().parents[1] / "SpineLabel" / "Scripts" / "batch.py"
CONTRACT = (".seg.nrrd", "_seg.nii.gz", ".mrk.json", ".measurements.csv", ".distances.csv", ".json", ".qc.png",
            ".alignment.csv", ".discs.csv")


@pytest.fixture
def spine_file(tmp_path) -> Path:
    path = tmp_path / "in" / "spine case.nrrd"
    path.parent.mkdir()
    save_volume(lumbar_result().image, path)
    return path


def run_batch(monkeypatch, *args: str, model: Path | None = None) -> int:
    """The batch script as Slicer runs it; ``model``: the tests' blob detector (bright blobs are bodies)."""
    extra = ["--model", str(model), "--segmenter", "none"] if model is not None else []
    monkeypatch.setattr(sys, "argv", [str(BATCH), "--", *args, *extra])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(BATCH), run_name="__main__")
    return stop.value.code


def test_batch_writes_the_contract_with_slicer_storage_nodes(monkeypatch, spine_file, tmp_path, blob_model_dir):
    import jsonschema
    import slicerio

    out = tmp_path / "out"
    assert run_batch(monkeypatch, str(spine_file), "--modality", "ct", "--out", str(out), model=blob_model_dir) == 0
    case = out / "spine_case"
    assert sorted(p.name for p in case.iterdir()) == sorted(f"spine_case{s}" for s in CONTRACT)
    document = json.loads((case / "spine_case.mrk.json").read_text())
    jsonschema.validate(document, json.loads((FIXTURES / "markups-schema-v1.0.4.json").read_text()))
    labels = [p["label"] for p in document["markups"][0]["controlPoints"]]
    assert len(labels) == 5 and all(labels)
    segmentation = slicerio.read_segmentation(str(case / "spine_case.seg.nrrd"))
    from SpineLabelLib.core import anatomy

    from SpineLabelLib.core import discs

    bodies = [s for s in segmentation["segments"] if not discs.is_disc_name(s["name"])]
    assert [s["name"] for s in bodies] == labels
    assert [s["labelValue"] for s in bodies] == [anatomy.code_of(n) for n in labels]
    disc_segments = [s for s in segmentation["segments"] if discs.is_disc_name(s["name"])]
    assert [s["name"] for s in disc_segments] == discs.discs_between(labels)      # the gaps between the boxes
    # Voxels are on the input grid: the body layer equals the blob detector's boxes.
    voxels = segmentation["voxels"]
    body_layer = voxels[bodies[0]["layer"]] if voxels.ndim == 4 else voxels
    body_voxels = np.isin(body_layer, [s["labelValue"] for s in bodies])
    assert np.array_equal(body_voxels.transpose(2, 1, 0), lumbar_result().instances > 0)
    assert len((case / "spine_case.measurements.csv").read_text().strip().splitlines()) == 6
    summary = json.loads((case / "spine_case.json").read_text())
    from SpineLabelLib.io.summary import sha256_file

    assert summary["input"]["sha256"] == sha256_file(spine_file)


def test_batch_exit_one_when_a_case_fails_and_the_other_is_complete(monkeypatch, spine_file, tmp_path, capsys,
                                                                   blob_model_dir):
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    assert run_batch(monkeypatch, str(broken), str(spine_file), "--out", str(out), model=blob_model_dir) == 1
    assert (out / "spine_case" / "spine_case.seg.nrrd").exists()
    assert not (out / "broken").exists()
    errors = [line for line in capsys.readouterr().err.splitlines() if "SpineLabel batch" in line]
    assert len(errors) == 1 and "broken.nii.gz" in errors[0]


def test_batch_usage_error_exits_two(monkeypatch, capsys):
    assert run_batch(monkeypatch, "--out") == 2
    assert "usage" in capsys.readouterr().err
