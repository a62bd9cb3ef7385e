"""`spinelabel train --init <disc model>`: the disc model fine-tuned from an exported dataset's disc labels.

Phantom cases (T2, oblique anisotropic grids) exported with their discs, one without discs; a tiny
disc U-Net trained for a few iterations through the shared loop. The model folder loads through the
registry as a disc segmenter, runs in `spinelabel run --disc-segmenter <folder>`, and its card lists
the cases; tampered weights and a dataset without discs are refused with one line."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

import torch
import safetensors  # noqa: F401
from SpineLabelLib.app import cli
from SpineLabelLib.dataset import MANIFEST, export_result, iter_dataset_cases
from SpineLabelLib.io.summary import sha256_file
from SpineLabelLib.models.cards import CARD_FILE, export_weights, read_card, sha256_of
from SpineLabelLib.models.disc_unet.network import DiscConfig, build_model
from SpineLabelLib.models.registry import load_model
from SpineLabelLib.training import finetune
from SpineLabelLib.training.discs import DISC_TASK, DiscSiteData

LEVELS = ["L3", "L4", "L5", "S1"]
TINY = DiscConfig(widths=(4, 8), crop_rows=32, crop_cols=48)


def _phantom(seed: int):
    from SpineLabelLib.phantom import generate_phantom

    return generate_phantom(LEVELS, "t2", spacing=(1.5, 1.2, 2.0), seed=seed, crop_to_spine=True,
                            rotation_deg=(6.0, -4.0, 3.0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two MRI cases with discs (spl_0001, spl_0002) and one whose label map has none (spl_0003)."""
    folder = tmp_path_factory.mktemp("discds") / "dataset"
    for seed, discs in ((1, True), (2, True), (3, False)):
        export_result(folder, _phantom(seed).to_result(f"p{seed}", with_discs=discs))
    return folder


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("discinit") / "tiny-discs"
    card = {"name": "tiny-discs", "version": "0.0.1", "task": DISC_TASK, "modality": ["mr"], "levels": [],
            "data": "the initial model's own data (not the fine-tuned model's)"}
    export_weights(build_model(TINY).state_dict(), TINY, folder, card)
    return folder


@pytest.fixture(scope="module")
def tuned(dataset, tiny_init, tmp_path_factory):
    """`spinelabel train` on the dataset from the tiny disc model: (exit status, stdout, model folder)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("tuned") / "site-discs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(["train", "--dataset", str(dataset), "--init", str(tiny_init), "--out", str(out),
                           "--iterations", "3", "--threads", "1", "--holdout", "0.5"])
    return status, printed.getvalue(), out


def test_the_disc_model_fine_tunes_from_the_disc_labels(tuned, dataset, tiny_init):
    status, printed, out = tuned
    assert status == 0, printed
    card = read_card(out)
    assert card["sha256"] == sha256_of(out / card["weights"])
    assert card["architecture"]["family"] == "disc-unet" and card["architecture"]["widths"] == [4, 8]
    assert card["base_model"]["name"] == "tiny-discs" and card["base_model"]["sha256"] == read_card(tiny_init)["sha256"]
    assert card["task"] == DISC_TASK and "data" not in card        # the initial model's data is not this one's
    data = card["training_data"]["dataset"]
    assert data["manifest_sha256"] == sha256_file(dataset / MANIFEST)
    assert sorted(data["trained_on"] + data["held_out"]) == ["spl_0001", "spl_0002"] and len(data["held_out"]) == 1
    assert data["skipped"] == [{"case": "spl_0003", "reason": "its label map has no disc label"}]
    assert card["training"]["iterations"] == 3 and card["training"]["kind"] == "fine-tuned"
    assert "validation_disc_dice" in card["training"]["validation_history"][-1]
    held = card["held_out_metrics"]
    assert held["cases"] == data["held_out"]
    for role in ("model", "base_model"):
        assert held[role]["discs"] == 3 and sorted(held[role]["per_case"][0]["dice"]) == ["L3-L4", "L4-L5", "L5-S1"]
        assert 0 <= held[role]["median_disc_dice"] <= 1
    assert f"held-out 1 cases, model: median disc Dice {held['model']['median_disc_dice']} over 3 discs" in printed
    tuned_weights, initial = load_model(out).network.state_dict(), load_model(tiny_init).network.state_dict()
    assert any(not torch.equal(tuned_weights[k], initial[k]) for k in initial if initial[k].is_floating_point())


def test_cases_without_discs_are_skipped_with_a_message(dataset, caplog):
    cases = list(iter_dataset_cases(dataset))
    with caplog.at_level(logging.WARNING, logger="spinelabel.train"):
        usable, skipped = finetune.usable_cases(DiscSiteData(), cases)
    assert [c.case_id for c in usable] == ["spl_0001", "spl_0002"] and [s["case"] for s in skipped] == ["spl_0003"]
    assert [r.getMessage() for r in caplog.records] == ["spl_0003: skipped (its label map has no disc label)"]
    # the detector still learns from all three (disc labels are background to it)
    detector_site = finetune.recipe_for(None, "detector").site_data()
    assert len(detector_site.usable(cases)[0]) == 3


def test_the_folder_is_a_disc_segmenter_of_the_registry_and_the_panel(tuned):
    from SpineLabelLib.app.panel import model_choices
    from SpineLabelLib.models.families import family_of_card
    from SpineLabelLib.models.registry import disc_segmenter_for

    out = tuned[2]
    loaded = disc_segmenter_for(str(out))
    assert family_of_card(loaded.card).role == "disc-segmenter" and loaded.config.widths == (4, 8)
    assert str(out) in [c.value for c in model_choices("disc-segmenter", user_folders=[str(out)])]
    assert str(out) not in [c.value for c in model_choices("segmenter", user_folders=[str(out)])]


def test_spinelabel_run_uses_the_fine_tuned_disc_model(tuned, tmp_path, blob_model_dir):
    """The bodies come from the tests' blob detector on bright phantom bodies (the bundled detector
    takes too long for a test); the discs come from the fine-tuned folder."""
    import blob_family

    from SpineLabelLib.core.volume import save_volume

    phantom = _phantom(4)
    bright = np.where(phantom.labels.array > 0, 1500.0, np.minimum(phantom.image.array, 1200.0)).astype(np.float32)
    image = save_volume(phantom.image.with_array(bright), tmp_path / "case.nii.gz")
    detector = blob_family.write_model(tmp_path / "bright-blobs", threshold=1300.0)
    out = tuned[2]
    status = cli.main(["run", str(image), "--out", str(tmp_path / "run"), "--modality", "mr", "--model", str(detector),
                       "--segmenter", "none", "--disc-segmenter", str(out), "-q"])
    assert status == 0
    summary = json.loads((tmp_path / "run" / "case" / "case.json").read_text())
    card = read_card(out)
    assert {"name": card["name"], "sha256": card["sha256"]} in [
        {"name": m["name"], "sha256": m["sha256"]} for m in summary["models"]]
    from SpineLabelLib.core.discs import discs_between

    rows = (tmp_path / "run" / "case" / "case.discs.csv").read_text().splitlines()
    named = discs_between([v["level"] for v in summary["vertebrae"] if v.get("level")])
    assert len(named) == 3 and [r.split(",")[0] for r in rows[1:]] == named     # the blob detector names by geometry


def test_tampered_weights_are_refused(tuned, dataset, tmp_path, capsys):
    from conftest import flip_a_byte

    from SpineLabelLib.core.errors import ModelError

    tampered = tmp_path / "tampered"
    shutil.copytree(tuned[2], tampered, ignore=shutil.ignore_patterns("work"))
    flip_a_byte(tampered / "model.safetensors", offset=-5)
    with pytest.raises(ModelError, match="sha256 does not match"):
        load_model(tampered)
    status = cli.main(["train", "--dataset", str(dataset), "--init", str(tampered), "--out", str(tmp_path / "m"),
                       "--iterations", "1"])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1 and "sha256 does not match" in err
    assert not (tmp_path / "m").exists()


def test_a_dataset_without_discs_is_one_error_line(tiny_init, tmp_path, capsys):
    folder = tmp_path / "no-discs"
    export_result(folder, _phantom(5).to_result("p5", with_discs=False))
    status = cli.main(["train", "--dataset", str(folder), "--init", str(tiny_init), "--out", str(tmp_path / "m"),
                       "--iterations", "1"])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("spinelabel: error: no case of the dataset has disc labels on MRI")
    assert not (tmp_path / "m" / CARD_FILE).exists() and not (tmp_path / "m").exists()


def test_disc_model_from_scratch_is_a_kind(dataset, tmp_path):
    card = finetune.train(dataset, tmp_path / "scratch", finetune.TrainOptions(
        kind="disc-segmenter", config=TINY, iterations=1, batch=2, threads=1, progress=False, holdout_fraction=0.0))
    assert card["architecture"]["family"] == "disc-unet" and card["base_model"] is None
    assert card["task"] == DISC_TASK and card["held_out_metrics"]["model"] is None
