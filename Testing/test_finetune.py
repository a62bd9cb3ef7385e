"""`spinelabel train` / finetune: a tiny dataset of two exported phantom cases and a tiny network.

A model folder comes out with a valid card (dataset manifest hash, initial model's hash, held-out
metrics) whose weights load and detect; a second call continues from the checkpoint; an
incompatible work folder and bad datasets are refused with one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

import torch
import torchvision  # noqa: F401
import safetensors  # noqa: F401
from SpineLabelLib.core import anatomy
from SpineLabelLib.app import cli
from SpineLabelLib.training import finetune, recipes  # noqa: E402
from SpineLabelLib.dataset import MANIFEST, export_case  # noqa: E402
from SpineLabelLib.models.maskrcnn.network import DetectorConfig, build_model  # noqa: E402
from SpineLabelLib.models.cards import CARD_FILE, export_weights, read_card, sha256_of  # noqa: E402
from SpineLabelLib.core.errors import InputError  # noqa: E402
from SpineLabelLib.models.registry import load_model  # noqa: E402
from SpineLabelLib.io.summary import sha256_file  # noqa: E402

TINY = DetectorConfig(widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), fpn_channels=16, box_head_dim=32,
                      mask_head_channels=8, train_size=64, spacing_mm=2.0, rpn_pre_nms_test=50,
                      rpn_post_nms_test=20, box_score_thresh=0.0)


def quick(**overrides) -> finetune.TrainOptions:
    options = dict(iterations=2, batch=1, progress=False, eval_every=1, threads=1, evaluate_init=True)
    return finetune.TrainOptions(**{**options, **overrides})


@pytest.fixture(scope="module")
def phantoms():
    from SpineLabelLib.phantom import generate_phantom

    # Oblique, anisotropic grids; small crops around the spine keep everything fast.
    return [generate_phantom(["T12", "L1", "L2"], "t2", spacing=(2.0, 2.2, 2.5), seed=seed, crop_to_spine=True,
                             rotation_deg=(6.0, -4.0, 3.0)) for seed in (1, 2)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, phantoms):
    folder = tmp_path_factory.mktemp("ds") / "dataset"
    for phantom in phantoms:
        export_case(folder, phantom.image, phantom.labels, modality="mr")
    return folder


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("init") / "tiny-init"
    card = {"name": "tiny-init", "version": "0.0.1", "task": "test", "modality": ["ct", "mr"],
            "levels": list(anatomy.ORDER), "training": {"iterations": 99}}
    export_weights(build_model(TINY).state_dict(), TINY, folder, card)
    return folder


def test_split_is_deterministic_and_keeps_training_cases():
    ids = [f"spl_{n:04d}" for n in range(1, 11)]
    held = finetune.split_held_out(ids, 0.2)
    assert len(held) == 2 and held == finetune.split_held_out(list(reversed(ids)), 0.2)
    assert finetune.split_held_out(ids[:2], 0.2) != [] and len(finetune.split_held_out(ids[:2], 0.9)) == 1
    assert finetune.split_held_out(ids[:1], 0.5) == [] and finetune.split_held_out(ids, 0.0) == []


def test_draw_weights_follow_shares_and_skip_empty_or_zero_groups():
    weights = finetune.draw_weights({"site": 2, "old": 3, "phantoms": 5}, {"site": 0.5, "old": 0.3, "phantoms": 0.2})
    assert np.isclose(sum(weights), 1) and np.allclose(weights[:2], 0.25) and np.allclose(weights[2:5], 0.1)
    control = finetune.draw_weights({"site": 2, "old": 3, "phantoms": 5}, {"site": 0.0, "old": 0.3, "phantoms": 0.2})
    assert control[:2] == [0.0, 0.0] and np.isclose(sum(control[2:5]), 0.6)
    no_old = finetune.draw_weights({"site": 2, "old": 0, "phantoms": 1}, {"site": 0.5, "old": 0.3, "phantoms": 0.2})
    assert np.isclose(sum(no_old[:2]), 0.5 / 0.7)
    with pytest.raises(InputError):
        finetune.draw_weights({"site": 0, "old": 0, "phantoms": 0}, {"site": 0.5})


def test_training_from_scratch_writes_a_loadable_model_folder(dataset, tmp_path, phantoms):
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.models.maskrcnn.data import prepare_case
    from SpineLabelLib.core.result import SpineResult

    old = tmp_path / "old"
    old.mkdir()
    prepare_case(phantoms[0].image, phantoms[0].labels, TINY.spacing_mm, old / "real_old-1.npz", "real")
    out = tmp_path / "site-model"
    card = finetune.train(dataset, out, quick(config=TINY, phantoms=1, old_data=old,
                                              phantom_options={"crop_to_spine": True, "lateral_fov_mm": None}))
    on_disk = read_card(out)
    assert on_disk == json.loads((out / CARD_FILE).read_text()) and on_disk["sha256"] == card["sha256"]
    assert on_disk["sha256"] == sha256_of(out / on_disk["weights"]) and on_disk["name"] == "site-model"
    data = on_disk["training_data"]
    assert data["dataset"]["manifest_sha256"] == sha256_file(dataset / MANIFEST)
    assert len(data["dataset"]["held_out"]) == 1 and len(data["dataset"]["trained_on"]) == 1
    assert data["phantoms"]["count"] == 1 and data["old_data"] == {"folder": "old", "real_cases": 1}
    assert on_disk["base_model"] is None and on_disk["training"]["iterations"] == 2
    assert on_disk["training"]["draw_shares"] == {"site": 0.5, "old": 0.3, "phantoms": 0.2}
    assert on_disk["architecture"] == json.loads(json.dumps(TINY.to_dict()))
    held = on_disk["held_out_metrics"]
    assert held["cases"] == data["dataset"]["held_out"] and held["model"]["bodies"] == 3
    assert 0 <= held["model"]["id_rate"] <= held["model"]["recall"] + 1e-9 or held["model"]["recall"] == 0
    assert [h["iteration"] for h in on_disk["training"]["validation_history"]] == [1, 2]
    loaded = load_model(out)
    result = find_bodies(SpineResult("check", image=phantoms[1].image), RunOptions(modality="mr"), detector=loaded)
    assert result.instances.shape == phantoms[1].image.array.shape
    assert loaded.summary()["sha256"] == on_disk["sha256"]


def test_fine_tuning_records_the_initial_model_and_resumes(dataset, init_dir, tmp_path, monkeypatch):
    out = tmp_path / "tuned"
    card = finetune.train(dataset, out, quick(init=str(init_dir)))
    init_card = read_card(init_dir)
    assert card["base_model"]["sha256"] == init_card["sha256"] and card["base_model"]["name"] == "tiny-init"
    assert card["training"]["kind"] == "fine-tuned" and "iterations" not in card.get("training_data", {})
    assert card["architecture"] == init_card["architecture"] and card["task"] == "test"
    assert set(card["held_out_metrics"]) == {"cases", "model", "base_model"}
    tuned = load_model(out).network.state_dict()
    initial = load_model(init_dir).network.state_dict()
    assert any(not torch.equal(tuned[k], initial[k]) for k in tuned if tuned[k].is_floating_point())

    steps = []
    original_loss = recipes.DetectorRecipe.loss
    monkeypatch.setattr(recipes.DetectorRecipe, "loss", lambda *a: steps.append(1) or original_loss(*a))
    again = finetune.train(dataset, out, quick(init=str(init_dir), iterations=5, evaluate_init=False))
    assert len(steps) == 3 and again["training"]["iterations"] == 5      # continued at 2, not from 0
    assert again["training_data"]["dataset"]["held_out"] == card["training_data"]["dataset"]["held_out"]
    steps.clear()
    finetune.train(dataset, out, quick(init=str(init_dir), iterations=5, evaluate_init=False))
    assert steps == []                                                  # already done: export only

    with pytest.raises(InputError, match="another initial model"):
        finetune.train(dataset, out, quick())                           # same work folder, no init


def test_cli_train_fine_tunes_and_prints_held_out_metrics(dataset, init_dir, tmp_path, capsys):
    out = tmp_path / "cli-model"
    status = cli.main(["train", "--dataset", str(dataset), "--init", str(init_dir), "--out", str(out),
                       "--iterations", "1", "--threads", "1"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "written to" in captured.out and "held-out 1 cases, model:" in captured.out
    assert load_model(out).card["base_model"]["name"] == "tiny-init"


def _damaged_dataset(dataset, tmp_path):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(dataset, copy)
    label = sorted((copy / "labelsTr").glob("*.nii.gz"))[0]
    label.write_bytes(label.read_bytes()[:-20])
    return copy


@pytest.mark.parametrize("kind", ["missing", "empty", "damaged", "not-a-model", "old-data-spacing"])
def test_bad_input_gives_one_line(dataset, init_dir, phantoms, tmp_path, capsys, kind):
    target, extra = tmp_path / "missing", []
    if kind == "empty":
        (tmp_path / "empty").mkdir()
        target = tmp_path / "empty"
    elif kind == "damaged":
        target = _damaged_dataset(dataset, tmp_path)
    elif kind == "not-a-model":
        target, extra = dataset, ["--init", str(tmp_path)]
    elif kind == "old-data-spacing":         # prepared at 1.5 mm, the model works at 2 mm
        from SpineLabelLib.models.maskrcnn.data import prepare_case

        (tmp_path / "old").mkdir()
        prepare_case(phantoms[0].image, phantoms[0].labels, 1.5, tmp_path / "old" / "real_a.npz", "real")
        target, extra = dataset, ["--init", str(init_dir), "--old-data", str(tmp_path / "old")]
    status = cli.main(["train", "--dataset", str(target), "--out", str(tmp_path / "m"), "--iterations", "1", *extra])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1 and err.startswith("spinelabel: error:")
    assert not (tmp_path / "m" / CARD_FILE).exists()


def test_control_run_without_site_cases_records_none_trained_on(dataset, init_dir, phantoms, tmp_path):
    from SpineLabelLib.models.maskrcnn.data import prepare_case

    old = tmp_path / "old"
    old.mkdir()
    prepare_case(phantoms[1].image, phantoms[1].labels, TINY.spacing_mm, old / "phantom_0001.npz", "phantom")
    card = finetune.train(dataset, tmp_path / "control", quick(init=str(init_dir), old_data=old, site_share=0.0,
                                                               evaluate_init=False))
    assert card["training"]["draw_shares"] == {"site": 0.0, "old": 0.0, "phantoms": 1.0}
    assert card["training_data"]["dataset"]["trained_on"] == [] and "base_model" not in card["held_out_metrics"]


def test_the_body_segmenter_fine_tunes_from_its_own_model(dataset, tmp_path, monkeypatch):
    """--init with a segmenter folder trains the segmenter (its sampler, loss and card); its held-out
    metrics come from the bundled detector with the new segmenter behind it."""
    from SpineLabelLib.models.body_unet.network import SegmenterConfig, build_model as build_segmenter

    config = SegmenterConfig(widths=(4, 8, 8), train_size=32, spacing_mm=2.0)
    init = tmp_path / "tiny-segmenter"
    card = {"name": "tiny-segmenter", "version": "0.0.1", "task": "body test", "modality": ["ct", "mr"], "levels": []}
    torch.manual_seed(0)
    export_weights(build_segmenter(config).state_dict(), config, init, card)
    steps = []
    original = recipes.SegmenterRecipe.loss
    monkeypatch.setattr(recipes.SegmenterRecipe, "loss", lambda *a: steps.append(1) or original(*a))
    out = tmp_path / "site-segmenter"
    tuned = finetune.train(dataset, out, quick(init=str(init), evaluate_init=False))
    assert len(steps) == 2
    assert tuned["architecture"]["family"] == "body-unet" and tuned["task"] == "body test"
    assert tuned["base_model"]["name"] == "tiny-segmenter"
    assert "validation_slice_dice" in tuned["training"]["validation_history"][-1]
    held = tuned["held_out_metrics"]["model"]
    assert held["cases"] == 1 and held["bodies"] == 3 and 0 <= held["recall"] <= 1
    assert load_model(out).network.config.widths == config.widths
    with pytest.raises(InputError, match="kind"):
        finetune.train(dataset, tmp_path / "other", quick(kind="classifier"))
    assert not (tmp_path / "other").exists()
