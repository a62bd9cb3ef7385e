"""The dense detector family (paper 002): dense labels, aggregation, losses, networks, weights."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.models.dense import aggregate as agg
from SpineLabelLib.models.dense import targets

torch = pytest.importorskip("torch")


def _straight_column(names, spacing=1.0, step_mm=30.0, x=20.0, col=25.0, top_mm=20.0):
    """Centroids (voxel indices) on a vertical line, one every step_mm."""
    return [(n, np.array([x, (top_mm + k * step_mm) / spacing, col])) for k, n in enumerate(names)]


# --- dense labels from sparse centroids -------------------------------------------------------
def test_disc_radius_follows_body_size_and_grows_down_the_column():
    assert targets.disc_radius_mm("C4") < targets.disc_radius_mm("T6") < targets.disc_radius_mm("L3")
    size = anatomy.body_size("L3")
    assert targets.disc_radius_mm("L3") == pytest.approx((size.width + size.depth) / 4)


def test_level_axis_places_transitional_vertebrae_between_neighbours():
    axis = targets.AXIS
    assert axis["C1"] == 1 and axis["T12"] == 19 and axis["L1"] == 20 and axis["L5"] == 24
    assert axis["T12"] < axis["T13"] < axis["L1"] and axis["L5"] < axis["L6"] < axis["S1"]
    # Rounding to the nearest axis value gives back every level.
    for name in anatomy.ORDER:
        assert targets.BIN_NAMES[int(targets.nearest_bin(np.array([axis[name]]))[0])] == name


def test_dense_labels_are_discs_of_level_radius_along_the_centroid_line():
    names = ["T12", "L1", "L2"]
    column = _straight_column(names)
    labels = targets.dense_labels((40, 120, 50), 1.0, column)
    middle_row = int(column[1][1][1])                   # L1's centroid row
    plane = labels[:, middle_row, :]
    assert set(np.unique(plane)) == {0.0, targets.AXIS["L1"]}
    # The disc is round with L1's radius around the line (x=20, col=25).
    xs, cs = np.nonzero(plane)
    distance = np.hypot(xs - 20, cs - 25)
    radius = targets.disc_radius_mm("L1")
    assert distance.max() <= radius + 1e-6 and distance.max() > radius - 1.5
    # Along the line the level changes at the midpoints between centroids.
    along = labels[20, :, 25]
    boundary = 35                                       # midpoint between T12 (row 20) and L1 (row 50)
    assert along[boundary - 2] == targets.AXIS["T12"] and along[boundary + 2] == targets.AXIS["L1"]
    # The end segments are as long as the neighbouring half-distances: L2 ends 15 mm below its centroid.
    assert along[80 + 13] == targets.AXIS["L2"] and along[80 + 17] == 0


def test_dense_labels_use_the_grid_spacing():
    column_1mm = _straight_column(["L1", "L2"], spacing=1.0)
    column_2mm = _straight_column(["L1", "L2"], spacing=2.0, x=10.0, col=12.5)
    coarse = targets.dense_labels((20, 60, 25), 2.0, [(n, p) for n, p in column_2mm])
    fine = targets.dense_labels((40, 120, 50), 1.0, column_1mm)
    assert abs((coarse > 0).sum() * 8 - (fine > 0).sum()) / (fine > 0).sum() < 0.1


def test_s1_ends_l5_segment_but_labels_nothing():
    labels = targets.dense_labels((40, 130, 50), 1.0, _straight_column(["L4", "L5", "S1"]))
    assert targets.AXIS["S1"] not in np.unique(labels)
    along = labels[20, :, 25]
    assert along[50 + 13] == targets.AXIS["L5"] and along[50 + 17] == 0    # L5-S1 midpoint at row 65


def test_unlabelled_above_marks_rows_above_the_first_segment():
    column = _straight_column(["L1", "L2", "L3"], top_mm=60.0)
    ignore = targets.unlabelled_above((40, 160, 50), 1.0, column, margin_mm=2.0)
    assert ignore[:, :40].all() and not ignore[:, 45:].any()          # L1's segment starts at row 45
    both = targets.unlabelled_above((40, 160, 50), 1.0, column, margin_mm=2.0, below=True)
    assert both[:, 140:].all() and not both[:, 60:130].any()          # L3's segment ends at row 135


# --- dense to sparse --------------------------------------------------------------------------
def _maps(names, drop_votes_of=None, keep_votes=None):
    column = _straight_column(names)
    labels = targets.dense_labels((40, 20 + 30 * len(names) + 20, 50), 1.0, column)
    detection = (labels > 0).astype(np.float32)
    index = labels.copy()
    if drop_votes_of is not None:
        # Keep only `keep_votes` voxels voting for that level; the rest of its tube is background.
        voxels = np.argwhere(labels == targets.AXIS[drop_votes_of])
        detection[tuple(voxels[keep_votes:].T)] = 0.0
    return column, detection, index


def test_aggregation_finds_each_level_at_its_centroid():
    column, detection, index = _maps(["T11", "T12", "L1", "L2"])
    bodies, instances = agg.aggregate(detection, index, 1.0)
    assert [b.level for b in bodies] == ["T11", "T12", "L1", "L2"]
    for body, (_, truth) in zip(bodies, column):
        assert np.linalg.norm(body.centroid - truth) <= 1.0           # median of a symmetric tube
        assert max(body.level_probs, key=body.level_probs.get) == body.level
        assert sum(body.level_probs.values()) == pytest.approx(1.0)
    assert set(np.unique(instances)) == {0, 1, 2, 3, 4}


def test_vote_threshold_drops_levels_with_too_few_votes():
    threshold = agg.vote_threshold_mm3("T12")
    assert threshold == max(agg.MIN_VOTES_MM3, 0.4 * targets.disc_radius_mm("T12") ** 3)
    few = int(threshold) - 10
    _, detection, index = _maps(["T11", "T12", "L1"], drop_votes_of="T12", keep_votes=few)
    assert [b.level for b in agg.aggregate(detection, index, 1.0)[0]] == ["T11", "L1"]
    _, detection, index = _maps(["T11", "T12", "L1"], drop_votes_of="T12", keep_votes=int(threshold) + 10)
    assert [b.level for b in agg.aggregate(detection, index, 1.0)[0]] == ["T11", "T12", "L1"]
    # The threshold is in mm^3: the same votes on a 2 mm grid count eight times as much.
    assert [b.level for b in agg.aggregate(detection, index, 2.0)[0]][1] == "T12"


def test_level_probabilities_come_from_the_vote_distribution():
    split = np.concatenate([np.full(600, targets.AXIS["L4"]), np.full(400, targets.AXIS["L5"])])
    probs = agg.level_distribution(split)
    assert probs["L4"] > probs["L5"] > 0.2 > probs["L3"]
    assert agg.level_distribution(np.full(500, 20.0))["L1"] > 0.9


# --- losses -----------------------------------------------------------------------------------
def test_identification_l1_ignores_background():
    from SpineLabelLib.training.dense import identification_loss

    target = torch.tensor([[0.0, 20.0, 21.0, 0.0]])
    predicted = torch.tensor([[99.0, 21.0, 19.0, -50.0]], requires_grad=True)
    loss = identification_loss(predicted, target)
    assert loss.item() == pytest.approx((1.0 + 2.0) / 2)
    loss.backward()
    assert predicted.grad[0, 0] == 0 and predicted.grad[0, 3] == 0 and predicted.grad[0, 1] != 0


def test_detection_loss_weights_column_and_skips_invalid_voxels():
    from SpineLabelLib.training.dense import detection_loss

    logits = torch.zeros(1, 4)
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    changed = logits.clone()
    changed[0, 3] = 50.0                                           # a wrong answer where nothing counts
    assert detection_loss(changed, target, valid).item() == pytest.approx(detection_loss(logits, target, valid).item())


# --- networks ---------------------------------------------------------------------------------
def _tiny_config():
    from SpineLabelLib.models.dense import DenseConfig

    return DenseConfig(detect_widths=(2, 4), detect_patch=(4, 4, 4), identify_widths=(2, 4, 4),
                       identify_slices=8, identify_crop=(16, 8), bottom_kernel=(5, 3))


def test_both_networks_forward_and_backward_on_tiny_inputs():
    from SpineLabelLib.models.dense import build_network

    torch.manual_seed(0)
    network = build_network(_tiny_config())
    volume = torch.randn(2, 1, 4, 8, 4)
    stacks = torch.randn(2, 8, 16, 8)
    column = network.detection(volume)
    index = network.identification(stacks)
    assert column.shape == (2, 4, 8, 4) and index.shape == (2, 16, 8)
    (column.mean() + index.mean()).backward()
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_lowest_level_kernels_are_large_and_anisotropic():
    from SpineLabelLib.models.dense import DenseConfig, build_network

    network = build_network(DenseConfig())
    bottom = network.identification.down[-1][0]
    assert tuple(bottom.kernel_size) == DenseConfig().bottom_kernel
    assert bottom.kernel_size[0] > 3 * bottom.kernel_size[1]          # long along the column


# --- weights ----------------------------------------------------------------------------------
def test_tampered_dense_weights_are_refused(tmp_path):
    from SpineLabelLib.models.dense import build_network
    from SpineLabelLib.models.cards import export_weights, load_network
    from SpineLabelLib.core.errors import ModelError

    config = _tiny_config()
    card = export_weights(build_network(config).state_dict(), config, tmp_path, {"name": "tiny", "version": "0",
                          "task": "t", "modality": ["ct"], "levels": []})
    assert card["architecture"]["family"] == "dense-two-stage"
    loaded = load_network(tmp_path)
    assert loaded.config.identify_widths == config.identify_widths
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_network(tmp_path)


# --- end to end (bundled weights) -------------------------------------------------------------
def _bundled_dense_installed() -> bool:
    from SpineLabelLib.models.registry import list_models

    return "vertebra-dense-detector" in {card["name"] for card in list_models()}


@pytest.fixture(scope="module")
def lumbar_ct_phantom(tmp_path_factory):
    from SpineLabelLib.phantom import generate_phantom
    from SpineLabelLib.core.volume import save_volume

    folder = tmp_path_factory.mktemp("dense_input")
    phantom = generate_phantom(["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"], "ct", spacing=(1.0, 1.0, 2.0),
                               seed=21, rotation_deg=(4.0, 0.0, -3.0), crop_to_spine=True)
    return save_volume(phantom.image, folder / "dense_case.nii.gz"), phantom


@pytest.mark.skipif(not _bundled_dense_installed(), reason="vertebra-dense-detector not bundled")
@pytest.mark.parametrize("model", ["vertebra-dense-detector", "ensemble"])
def test_run_with_dense_or_ensemble_model_names_the_phantom_bodies(lumbar_ct_phantom, tmp_path, model):
    import json
    import subprocess
    import sys

    path, phantom = lumbar_ct_phantom
    proc = subprocess.run([sys.executable, "-m", "SpineLabelLib", "run", str(path), "--out", str(tmp_path),
                           "--model", model, "-q"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "dense_case" / "dense_case.json").read_text())
    names = [m["name"] for m in summary["models"]]
    assert "vertebra-dense-detector" in names
    if model == "ensemble":
        assert "vertebra-detector" in names and all(m["sha256"] for m in summary["models"])
    found = [(v["level"], np.array(v["centroid_ras"])) for v in summary["vertebrae"]]
    truth = {v["level"]: np.array(v["centroid_ras"]) for v in phantom.truth["vertebrae"] if v["level"] != "S1"}
    # Bodies are found where the vertebrae are; naming accuracy is the bench's business
    # (bench/families.py), except that the ensemble must keep Mask R-CNN's naming of this easy case.
    located = [level for level, centre in truth.items()
               if any(np.linalg.norm(point - centre) < 20 for _, point in found)]
    assert len(located) >= len(truth) - 1, ([n for n, _ in found], sorted(truth))
    if model == "ensemble":
        named = [level for level, centre in truth.items()
                 if any(n == level and np.linalg.norm(point - centre) < 20 for n, point in found)]
        assert len(named) >= len(truth) - 1, ([n for n, _ in found], sorted(truth))
    assert (tmp_path / "dense_case" / "dense_case.seg.nrrd").is_file()


@pytest.mark.skipif(not _bundled_dense_installed(), reason="vertebra-dense-detector not bundled")
def test_bodies_without_masks_are_the_same_bodies(lumbar_ct_phantom):
    """The ensemble asks for the dense bodies only (no map on the input grid): same bodies."""
    from SpineLabelLib.core.canonical import CanonicalView
    from SpineLabelLib.models.dense.infer import detect_dense
    from SpineLabelLib.models.registry import load_model

    _, phantom = lumbar_ct_phantom
    network = load_model("vertebra-dense-detector").network
    view = CanonicalView(phantom.image, "ct")
    full, bare = detect_dense(view, "ct", network), detect_dense(view, "ct", network, masks=False)
    assert full.instances.any() and not bare.instances.any()
    assert len(full.bodies) == len(bare.bodies) > 3
    for a, b in zip(full.bodies, bare.bodies):
        assert np.allclose(a["centroid_ras"], b["centroid_ras"]) and a["level_probs"] == b["level_probs"]


def test_ensemble_fuses_level_evidence_of_matched_bodies_only():
    from SpineLabelLib.models.dense.ensemble import fuse_level_evidence
    from SpineLabelLib.core.result import Vertebra

    even = {"L1": 0.5, "L2": 0.5}
    vertebrae = [Vertebra("L1", np.array([0.0, 0.0, 100.0]), instance=1, level_scores=dict(even)),
                 Vertebra("L2", np.array([0.0, 0.0, 65.0]), instance=2, level_scores=dict(even))]
    dense = [{"centroid_ras": np.array([0.0, 2.0, 101.0]), "level_probs": {"L1": 0.1, "L2": 0.9}}]
    assert fuse_level_evidence(vertebrae, dense) == 1
    assert vertebrae[0].level == "L2" and vertebrae[0].level_scores["L2"] == pytest.approx(0.75)   # sqrt pooled
    assert vertebrae[1].level_scores == even                   # 36 mm away: not the same vertebra


def test_ensemble_asks_the_dense_family_about_mask_rcnn_bodies_only():
    """The fuse stage hands the dense family Mask R-CNN's centroids as its focus and pools the
    evidence it returns (a recording family stands in for the dense detector)."""
    from pathlib import Path

    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.core.result import SpineResult, Vertebra
    from SpineLabelLib.core.volume import Volume
    from SpineLabelLib.models.families import ModelFamily, register_family
    from SpineLabelLib.models.maskrcnn.infer import DetectionOutput
    from SpineLabelLib.models.registry import LoadedModel
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.fuse import FuseDenseEvidence

    asked = {}

    def run(view, network, options, progress=None, cancel=None, masks=True, focus_ras=None):
        asked.update(masks=masks, focus=np.array(focus_ras))
        body = {"instance": 1, "centroid_ras": np.array([1.0, 0.0, 99.0]), "score": 0.9,
                "level_probs": {"L1": 0.1, "L2": 0.9}}
        return DetectionOutput(np.zeros(view.volume.array.shape, np.uint16), [body], {})

    register_family(ModelFamily(name="test-focus-recorder", role="detector", build_network=lambda a: None, run=run))
    dense = LoadedModel("recorder", "0", Path("."), {"architecture": {"family": "test-focus-recorder"},
                                                     "sha256": "0" * 64}, None)
    result = SpineResult("case", image=Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 1.0, 1.5, 1.0])))
    result.modality = "ct"
    even = {"L1": 0.5, "L2": 0.5}
    result.vertebrae = [Vertebra("L1", np.array([0.0, 0.0, 100.0]), instance=1, level_scores=dict(even)),
                        Vertebra("L2", np.array([-3.0, 0.0, 65.0]), instance=2, level_scores=dict(even))]
    FuseDenseEvidence(dense).run(result, RunContext(RunOptions(model="ensemble")))
    assert asked["masks"] is False
    assert np.allclose(asked["focus"], [[0.0, 0.0, 100.0], [-3.0, 0.0, 65.0]])
    assert result.notes["fuse"]["matched"] == 1 and result.vertebrae[0].level == "L2"
    assert "recorder" in [m["name"] for m in result.models]


@pytest.mark.parametrize("with_t13", [False, True])
def test_transitional_level_needs_a_whole_segment_of_votes(with_t13):
    names = ["T11", "T12", "T13", "L1", "L2"] if with_t13 else ["T11", "T12", "L1", "L2"]
    column = [(n, np.array([30.0, 20 + 16 * k, 40.0])) for k, n in enumerate(names)]
    labels = targets.dense_labels((60, 20 + 16 * len(names) + 20, 80), 2.0, column)
    # Index errors of a quarter level: the T12/L1 boundary spills votes into T13's half-width bin.
    noisy = labels + np.random.default_rng(0).normal(0, 0.25, labels.shape).astype(np.float32)
    bodies, _ = agg.aggregate((labels > 0).astype(np.float32), noisy, 2.0)
    assert [b.level for b in bodies] == names


def test_scattered_votes_do_not_move_a_level_centroid_or_make_a_second_body():
    column, detection, index = _maps(["T11", "T12", "L1", "L2"])
    # An island of stray "L1" votes inside T11's tube (index noise): L1 stays at its centroid.
    t11_row = int(column[0][1][1])
    island = (slice(10, 30), slice(t11_row - 10, t11_row + 10), slice(15, 35))
    index[island] = targets.AXIS["L1"]
    bodies, _ = agg.aggregate(detection, index, 1.0)
    assert [b.level for b in bodies] == ["T11", "T12", "L1", "L2"]
    l1 = bodies[2]
    assert np.linalg.norm(l1.centroid - column[2][1]) <= 1.0


# --- training on the shared loop ----------------------------------------------------------------
@pytest.fixture(scope="module")
def dense_training_data(tmp_path_factory):
    """Two prepared 2 mm phantom cases, one of them held out (val_*), as `training.dense prepare` writes."""
    from SpineLabelLib.phantom import generate_phantom
    from SpineLabelLib.training.dense import prepare_case

    folder = tmp_path_factory.mktemp("dense_data")
    for seed, name in ((3, "phantom_0003.npz"), (4, "val_phantom.npz")):
        phantom = generate_phantom(["L1", "L2", "L3"], "ct", spacing=(2.0, 2.0, 2.0), seed=seed, crop_to_spine=True)
        centroids = {v["level"]: np.array(v["centroid_ras"]) for v in phantom.truth["vertebrae"]}
        prepare_case(phantom.image, centroids, folder / name, "phantom", "ct", top_unlabelled=False)
    return folder


def test_dense_recipe_trains_both_stages_on_the_shared_loop_and_resumes(dense_training_data, tmp_path):
    from SpineLabelLib.training.dense import DenseCase, _validation_batches, export
    from SpineLabelLib.training.loop import LoopOptions, fit, load_checkpoint
    from SpineLabelLib.training.recipes import DenseRecipe

    config = _tiny_config()
    cases = [DenseCase(p) for p in sorted(dense_training_data.glob("phantom_*.npz"))]
    recipe = DenseRecipe(cases, [1.0], _validation_batches(dense_training_data, config, count=4),
                         detect_batch=2, identify_batch=2)
    batch = recipe.batch(recipe.sampler(config, 0), size=99)        # the stages' own batch sizes
    assert batch[0][0].shape[0] == 2 and batch[1][0].shape[:2] == (2, config.identify_slices)
    parts = recipe.loss(recipe.build(config), batch)
    assert set(parts) == {"detection", "identification"} and all(torch.isfinite(v) for v in parts.values())

    checkpoint = tmp_path / "last.pt"
    options = LoopOptions(iterations=3, lr=1e-2, weight_decay=0.0, eval_every=3, log_every=1)
    torch.manual_seed(0)
    before = recipe.build(config).state_dict()
    run = fit(recipe, options, checkpoint, config=config)
    after = run.model.state_dict()
    for stage in ("detection", "identification"):                   # one step trains both stages
        key = next(k for k in after if k.startswith(f"{stage}.") and k.endswith("weight"))
        assert not torch.equal(before[key], after[key]), stage
    saved = load_checkpoint(checkpoint)
    assert saved.state.iteration == 3 and saved.state.family == "dense-two-stage"
    assert any("validation_level_accuracy" in h for h in saved.state.history)
    resumed = fit(recipe, LoopOptions(iterations=5, lr=1e-2, weight_decay=0.0, eval_every=5), checkpoint)
    assert resumed.state.iteration == 5                              # continued, not restarted
    card = export(checkpoint, tmp_path / "model", "tiny-dense", "0", None)
    assert card["training"]["iterations"] == 5 and list(card["architecture"]["identify_widths"]) == [2, 4, 4]


def test_spinelabel_train_fine_tunes_the_dense_detector_from_a_dataset(tmp_path):
    """`spinelabel train --init <dense model>`: the registry's dense recipe, the dataset's body centroids
    (disc labels ignored), both stages trained, held-out detection metrics in the card."""
    from SpineLabelLib.dataset import export_result
    from SpineLabelLib.models.cards import export_weights, read_card
    from SpineLabelLib.models.dense import build_network
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.phantom import generate_phantom
    from SpineLabelLib.training import finetune, recipes

    for seed in (5, 6):
        phantom = generate_phantom(["L1", "L2", "L3", "L4"], "t2", spacing=(2.0, 1.8, 2.2), seed=seed,
                                   crop_to_spine=True, rotation_deg=(5.0, -3.0, 2.0))
        export_result(tmp_path / "dataset", phantom.to_result(f"d{seed}", with_discs=True))
    config = _tiny_config()
    torch.manual_seed(0)
    init = tmp_path / "tiny-dense"
    export_weights(build_network(config).state_dict(), config, init,
                   {"name": "tiny-dense", "version": "0", "task": "dense test", "modality": ["ct", "mr"], "levels": []})
    steps = []
    original = recipes.DenseRecipe.loss
    recipes.DenseRecipe.loss = lambda *a: steps.append(1) or original(*a)
    try:
        card = finetune.train(tmp_path / "dataset", tmp_path / "tuned", finetune.TrainOptions(
            init=str(init), iterations=2, batch=2, eval_every=2, threads=1, progress=False, evaluate_init=False))
    finally:
        recipes.DenseRecipe.loss = original
    assert len(steps) == 2 and card["architecture"]["family"] == "dense-two-stage"
    assert card["base_model"]["name"] == "tiny-dense" and card["training"]["kind"] == "fine-tuned"
    assert "validation_level_accuracy" in card["training"]["validation_history"][-1]
    data = card["training_data"]["dataset"]
    assert len(data["trained_on"]) == 1 and len(data["held_out"]) == 1 and data["skipped"] == []
    held = card["held_out_metrics"]["model"]
    assert held["cases"] == 1 and held["bodies"] == 4
    tuned, initial = load_model(tmp_path / "tuned").network.state_dict(), load_model(init).network.state_dict()
    for stage in ("detection", "identification"):
        assert any(not torch.equal(tuned[k], initial[k]) for k in tuned if k.startswith(stage) and k.endswith("weight"))
    assert read_card(tmp_path / "tuned")["sha256"] == card["sha256"]


def _column_one_level_apart(sacrum_discs: float = 0.6):
    """Six lumbosacral bodies 32 mm apart; Mask R-CNN's evidence names them L1..S1 (right, and the
    discs' sign says the lowest is the sacrum), the dense detector's sees them one level higher
    (T12..L5: it missed the sacrum), as on the disc MRI; the discs' sign of the sacrum is weak."""
    from SpineLabelLib.core.result import SpineResult, Vertebra
    from SpineLabelLib.models.dense.ensemble import DENSE, MASK_RCNN

    right, off = ["L1", "L2", "L3", "L4", "L5", "S1"], ["T12", "L1", "L2", "L3", "L4", "L5"]

    def peaked(level, neighbour, p):
        return {level: p, neighbour: 1.0 - p}

    result = SpineResult("column")
    rows = []
    for k, (a, b) in enumerate(zip(right, off)):
        mask = peaked(a, off[k], 0.8)
        dense = peaked(b, a, 0.95)           # the dense family is the more confident, and wrong
        v = Vertebra(a, np.array([0.0, 20.0, 90.0 - 32.0 * k]), instance=k + 1, level_scores=dict(mask))
        v.evidence = {"rib": None, "sacrum": None, "c2": None}
        if k == len(right) - 1:
            v.evidence.update(sacrum=sacrum_discs, sacrum_discs=sacrum_discs)
        result.vertebrae.append(v)
        rows.append({"instance": k + 1, MASK_RCNN: mask, DENSE: dense})
    return result, rows


def test_ensemble_weighs_down_the_family_whose_levels_contradict_the_anchors():
    """At equal weights (S1 pooled like any level) the dense family's confident shift wins and the
    column is named one level high; weighed by fit, Mask R-CNN's anchored evidence counts more and
    it is named L1..S1."""
    import copy

    from SpineLabelLib.models.dense.ensemble import DENSE, MASK_RCNN, pool, weigh_families
    from SpineLabelLib.naming.labelling import relabel_result

    result, rows = _column_one_level_apart()
    even = copy.deepcopy(result)
    for v, row in zip(even.vertebrae, rows):
        v.level_scores = pool(row[MASK_RCNN], row[DENSE], silent=())
    relabel_result(even)
    assert [v.level for v in even.vertebrae] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    result.notes["fuse"] = {"family_scores": rows}
    summary = weigh_families(result)
    assert summary["fit_nll"][DENSE] > summary["fit_nll"][MASK_RCNN]
    assert summary["mask_rcnn_weight"] > 0.55
    relabel_result(result)
    assert [v.level for v in result.vertebrae] == ["L1", "L2", "L3", "L4", "L5", "S1"]
    weigh_families(result)       # re-derived from the record: weighing again changes nothing
    for v, row in zip(result.vertebrae, rows):
        assert v.level_scores == pytest.approx(pool(row[MASK_RCNN], row[DENSE], summary["mask_rcnn_weight"]), abs=1e-3)


def test_ensemble_weights_are_even_when_both_families_fit_alike():
    from SpineLabelLib.models.dense.ensemble import DENSE, MASK_RCNN, weigh_families

    result, rows = _column_one_level_apart()
    for row in rows:
        row[DENSE] = dict(row[MASK_RCNN])
    result.notes["fuse"] = {"family_scores": rows}
    assert weigh_families(result)["mask_rcnn_weight"] == pytest.approx(0.5)


def test_ensemble_weighing_needs_the_fuse_record():
    from SpineLabelLib.models.dense.ensemble import weigh_families

    result, _ = _column_one_level_apart()
    before = [dict(v.level_scores) for v in result.vertebrae]
    assert weigh_families(result) is None
    assert [v.level_scores for v in result.vertebrae] == before


def test_pooling_keeps_mask_rcnns_s1_where_the_dense_family_is_silent():
    """S1 is no target of the dense family: its near-zero S1 must not veto Mask R-CNN's sacrum."""
    from SpineLabelLib.models.dense.ensemble import pool

    ours = {"L5": 0.1, "S1": 0.9}
    theirs = {"L4": 0.3, "L5": 0.7, "S1": 0.0}
    pooled = pool(ours, theirs)
    assert pooled["S1"] == pytest.approx(0.9)
    assert pooled["L5"] == pytest.approx(0.1)
    assert sum(pooled.values()) == pytest.approx(1.0)
    assert pool(ours, theirs, silent=())["S1"] == pytest.approx(0.0)     # pooled as a level, S1 is vetoed
    mixed = pool({"L4": 0.5, "L5": 0.3, "S1": 0.2}, {"L4": 0.1, "L5": 0.9})
    assert mixed["S1"] == pytest.approx(0.2) and mixed["L5"] > mixed["L4"]
