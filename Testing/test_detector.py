"""Detector: network forward/backward, slice linking and fusion, geometry back to the input grid,
model folders (hash check, missing files), the registry, and `detect` end to end on a tiny phantom."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import torch
import torchvision  # noqa: F401
import safetensors  # noqa: F401
from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.models.maskrcnn import data, infer  # noqa: E402
from SpineLabelLib.models.maskrcnn.network import CLASS_NAMES, DetectorConfig, build_model  # noqa: E402
from SpineLabelLib.models.cards import CARD_FILE, export_weights  # noqa: E402
from SpineLabelLib.core.errors import ModelError, SpineLabelError  # noqa: E402
from SpineLabelLib.core.result import SpineResult  # noqa: E402
from SpineLabelLib.core.volume import Volume, make_affine, resample_to_canonical  # noqa: E402
from conftest import flip_a_byte  # noqa: E402

TINY = DetectorConfig(widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), fpn_channels=16, box_head_dim=32,
                      mask_head_channels=8, train_size=64, spacing_mm=2.0, rpn_pre_nms_test=50,
                      rpn_post_nms_test=20, box_score_thresh=0.0)


def oblique_directions(degrees: float = 20.0) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return rotation @ np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def tiny_phantom():
    from SpineLabelLib.phantom import generate_phantom

    return generate_phantom(["L1", "L2", "L3"], "t2", spacing=(2.0, 2.0, 2.0), seed=3, crop_to_spine=True)


@pytest.fixture()
def tiny_model_dir(tmp_path):
    torch.manual_seed(0)
    network = build_model(TINY)
    card = {"name": "tiny-test", "version": "0.0.1", "task": "test", "modality": ["ct", "mr"],
            "levels": list(anatomy.ORDER)}
    export_weights(network.state_dict(), TINY, tmp_path / "tiny", card)
    return tmp_path / "tiny"


def test_class_codes_cover_order_and_drop_sacrum():
    assert CLASS_NAMES[1:] == anatomy.ORDER
    assert data.CLASS_OF_CODE[anatomy.code_of("L1")] == anatomy.ORDER.index("L1") + 1
    assert data.CLASS_OF_CODE[anatomy.code_of("T13")] == anatomy.ORDER.index("T13") + 1
    assert data.CLASS_OF_CODE[anatomy.code_of("S1")] == 0


def test_forward_backward_on_phantom_slice(tiny_phantom):
    canonical = resample_to_canonical(tiny_phantom.image, TINY.spacing_mm)
    labels = resample_to_canonical(tiny_phantom.labels, TINY.spacing_mm, label=True).array
    image = data.normalise_intensity(canonical.array)
    x = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(axis=1)))
    target = data.make_target(labels[x])
    assert set(target["labels"].tolist()) == {anatomy.ORDER.index(n) + 1 for n in ("L1", "L2", "L3")}
    model = build_model(TINY)
    model.train()
    stack = torch.from_numpy(infer.slice_stack(image, x, TINY.slice_offset).astype(np.float32))
    losses = model([stack], [target])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert {"loss_classifier", "loss_mask", "loss_objectness"} <= set(losses)
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_sampler_blanks_unlabelled_vertebrae_above():
    labels = np.zeros((5, 60, 40), np.uint8)
    labels[:, 30:40, 10:30] = anatomy.code_of("L1")
    image = np.ones(labels.shape, np.float16)
    case = data.Case(image, labels, blank_top=True, name="synthetic")
    sampler = data.SliceSampler([case], size=48, slice_offset=1, seed=0, augment=False)
    blanked, kept = sampler._blank_above(image[:3].astype(np.float32), labels[2], sampler.tops[0][0])
    assert blanked[:, :20].max() == 0          # well above the labelled body: blank
    assert blanked[:, 30:].min() == 1          # the labelled body and below: untouched
    assert (kept == labels[2]).all()


def test_sampler_can_cut_above_a_lower_level():
    labels = np.zeros((5, 80, 40), np.uint8)
    labels[:, 20:30, 10:30] = anatomy.code_of("L1")
    labels[:, 40:50, 10:30] = anatomy.code_of("L2")
    labels[:, 60:70, 10:30] = anatomy.code_of("L3")
    case = data.Case(np.ones(labels.shape, np.float16), labels, blank_top=True, name="synthetic")
    sampler = data.SliceSampler([case], size=48, slice_offset=1, seed=0, augment=False)
    assert [int(cut[20]) for cut in sampler.tops[0]] == [20, 40, 60]
    _, kept = sampler._blank_above(np.ones((3, 80, 40), np.float32), labels[2], sampler.tops[0][1])
    assert set(np.unique(kept)) == {0, anatomy.code_of("L2"), anatomy.code_of("L3")}


def test_sampler_can_end_the_field_of_view_below_a_random_body():
    labels = np.zeros((80, 40), np.uint8)
    labels[20:30, 10:30] = anatomy.code_of("L4")
    labels[40:50, 10:30] = anatomy.code_of("L5")
    labels[60:70, 10:30] = anatomy.code_of("S1")
    case = data.Case(np.ones((3, *labels.shape), np.float16), labels[None].repeat(3, 0), False, "synthetic")
    sampler = data.SliceSampler([case], size=48, slice_offset=1, seed=0, bottom_cut=1.0)
    seen = set()
    for _ in range(12):
        image, kept = sampler._cut_below(np.ones((3, *labels.shape), np.float32), labels)
        last_row = np.flatnonzero(kept.any(axis=1)).max()
        assert image[:, last_row + 6:].max() == 0 and image[:, : last_row + 1].min() == 1
        cut_code = int(kept[last_row].max())
        assert (kept[labels == cut_code] == cut_code).all()   # the last body is whole, not clipped
        seen.add(cut_code)
    assert len(seen) >= 2                                      # not always the same level at the edge


def test_bias_field_changes_gain_smoothly():
    case = data.Case(np.ones((3, 40, 40), np.float16), np.zeros((3, 40, 40), np.uint8), False, "flat")
    sampler = data.SliceSampler([case], size=40, slice_offset=1, seed=1, bias_field=1.0)
    ratios = []
    for _ in range(10):
        out = sampler._bias_field(np.full((3, 40, 40), 0.5, np.float32))
        assert np.abs(np.diff(out, axis=1)).max() < 0.02 and np.abs(np.diff(out, axis=2)).max() < 0.02
        assert np.allclose(out[0], out[2])                    # the same gain on every channel
        ratios.append(out[1, -1].mean() / out[1, 0].mean())
    assert max(ratios) > 1.15 and min(ratios) < 1 / 1.15     # brighter or darker towards the feet


def _detection(x, box, level, score=0.9):
    probs = np.full(len(anatomy.ORDER), 0.01)
    probs[anatomy.ORDER.index(level)] = 1.0
    col0, row0, col1, row1 = box
    return infer.SliceDetection(x, np.array(box), score, probs / probs.sum(),
                                np.full((row1 - row0, col1 - col0), 0.9, np.float32))


def test_linking_and_fusion_of_synthetic_slices():
    per_slice = {}
    for x in range(10, 18):
        shift = x - 10                                   # bodies drift slowly across slices
        per_slice[x] = [_detection(x, (20 + shift // 3, 10, 50, 30), "L1"),
                        _detection(x, (22, 40, 52, 62), "L2" if x != 13 else "L3")]
    del per_slice[14][1]                                 # a slice where the lower body was missed
    per_slice[12].append(_detection(12, (80, 80, 90, 90), "L5"))   # a one-slice flicker
    bodies = infer.keep_bodies(infer.link_detections(per_slice), spacing=2.0)
    assert len(bodies) == 2
    upper, lower = sorted(bodies, key=lambda b: b.detections[0].box[1])
    assert len(upper.detections) == 8 and len(lower.detections) == 7
    assert anatomy.ORDER[int(np.argmax(lower.level_probs))] == "L2"
    instances, probability = infer.fuse_masks(bodies, (8, 20), (100, 100))
    number_lower = bodies.index(lower) + 1
    assert (instances[14 - 8, 50, 30] == number_lower)   # the missed slice is filled from a neighbour
    assert instances[12 - 8, 85, 85] == 0                # the flicker left no mask
    assert set(np.unique(instances)) == {0, 1, 2}
    assert probability.max() == pytest.approx(0.9)


def test_canonical_instances_map_back_onto_oblique_anisotropic_grid():
    affine = make_affine((0.9, 1.3, 3.0), oblique_directions(25.0), (-40.0, 60.0, -30.0))
    reference = Volume(np.zeros((30, 90, 80), np.float32), affine)
    canonical = resample_to_canonical(reference, 1.5)
    low, high = 5, canonical.array.shape[0] - 5
    slab = infer.slab_volume(canonical, low, high)
    instances = np.zeros(slab.array.shape, np.uint16)
    probability = np.zeros(slab.array.shape, np.float32)
    centre = np.array(instances.shape) // 2
    block = tuple(slice(c - 8, c + 8) for c in centre)
    instances[block], probability[block] = 1, 0.9
    on_input = infer.to_input_grid(instances, probability, slab, reference)
    assert on_input.shape == reference.array.shape and on_input.dtype == np.uint16
    expected = slab.kji_to_ras(centre - 0.5)[0]
    found = reference.kji_to_ras(np.argwhere(on_input == 1).mean(axis=0))[0]
    assert np.linalg.norm(found - expected) < 2.0
    volume_mm3 = (on_input == 1).sum() * reference.voxel_volume_mm3
    assert volume_mm3 == pytest.approx((16 * 1.5) ** 3, rel=0.2)


def test_detect_end_to_end_gives_well_formed_result(tiny_phantom, tiny_model_dir):
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.models.registry import load_model

    loaded = load_model(tiny_model_dir)
    result = SpineResult("tiny", image=tiny_phantom.image)
    steps = []
    find_bodies(result, progress=lambda fraction, message: steps.append(fraction), detector=loaded)
    assert result.instances.shape == tiny_phantom.image.array.shape
    assert result.instances.dtype == np.uint16
    assert result.modality == "mr"
    assert loaded.card["sha256"] in [m["sha256"] for m in result.models]
    assert steps and steps[-1] == 1.0 and np.all(np.diff(steps) >= -1e-9)
    for vertebra in result.vertebrae:
        assert vertebra.level in anatomy.ORDER
        assert sum(vertebra.level_scores.values()) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= vertebra.score <= 1.0
    assert "most_bodies_slice" in result.notes["locate"] or result.notes["locate"]["slab"] is None


def test_cancel_stops_detection(tiny_phantom, tiny_model_dir):
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.models.registry import load_model

    result = SpineResult("tiny", image=tiny_phantom.image)
    with pytest.raises(SpineLabelError, match="cancelled"):
        find_bodies(result, cancel=lambda: True, detector=load_model(tiny_model_dir))


def test_tampered_weights_are_refused(tiny_model_dir):
    from SpineLabelLib.models.registry import load_model

    weights = tiny_model_dir / "model.safetensors"
    flip_a_byte(weights, -1)
    with pytest.raises(ModelError, match="sha256"):
        load_model(tiny_model_dir)


def test_missing_weights_and_bad_card_are_refused(tiny_model_dir, tmp_path):
    from SpineLabelLib.models.registry import load_model

    (tiny_model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(tiny_model_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CARD_FILE).write_text(json.dumps({"name": "broken"}))
    with pytest.raises(ModelError, match="lacks"):
        load_model(broken)


def test_weights_that_do_not_fit_the_card_are_refused(tiny_model_dir):
    from SpineLabelLib.models.cards import sha256_of
    from SpineLabelLib.models.registry import load_model

    card_path = tiny_model_dir / CARD_FILE
    card = json.loads(card_path.read_text())
    card["architecture"]["fpn_channels"] = 24
    card["sha256"] = sha256_of(tiny_model_dir / "model.safetensors")
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="architecture"):
        load_model(tiny_model_dir)


def test_registry_finds_models_through_the_environment(tiny_model_dir, monkeypatch):
    from SpineLabelLib.models import registry as models

    monkeypatch.setenv(models.ENVIRONMENT_VARIABLE, str(tiny_model_dir.parent))
    names = [card["name"] for card in models.list_models()]
    assert "tiny-test" in names
    assert models.load_model("tiny-test").card["name"] == "tiny-test"
    with pytest.raises(ModelError, match="not found"):
        models.load_model("no-such-model")


def test_bundled_model_matches_the_hash_pinned_in_code():
    from SpineLabelLib.models.cards import sha256_of
    from SpineLabelLib.models.registry import BUNDLED_SHA256, bundled_root, list_models

    bundled = [c for c in list_models() if Path(c["directory"]).parent == bundled_root()]
    assert {c["name"] for c in bundled} == set(BUNDLED_SHA256)
    for card in bundled:
        weights = Path(card["directory"]) / card["weights"]
        assert sha256_of(weights) == card["sha256"] == BUNDLED_SHA256[card["name"]]


def test_bundled_model_with_edited_card_and_weights_is_refused(tmp_path, monkeypatch):
    import shutil

    from SpineLabelLib.models import registry as models
    from SpineLabelLib.models.cards import sha256_of

    fake_root = tmp_path / "Resources" / "Models"
    source = models.bundled_root() / models.DEFAULT_MODEL
    shutil.copytree(source, fake_root / models.DEFAULT_MODEL)
    weights = fake_root / models.DEFAULT_MODEL / "model.safetensors"
    with open(weights, "r+b") as stream:       # flip one byte in the stored tensors, then "fix" the card
        stream.seek(-1, 2)
        last = stream.read(1)
        stream.seek(-1, 2)
        stream.write(bytes([last[0] ^ 1]))
    card_path = fake_root / models.DEFAULT_MODEL / CARD_FILE
    card = json.loads(card_path.read_text())
    card["sha256"] = sha256_of(weights)
    card_path.write_text(json.dumps(card))
    monkeypatch.setattr(models, "bundled_root", lambda: fake_root)
    with pytest.raises(ModelError, match="hash this SpineLabel release shipped"):
        models.load_model(fake_root / models.DEFAULT_MODEL)


def test_mip_stack_projects_image_and_labels_over_the_slab():
    image = np.zeros((9, 20, 20), np.float16)
    labels = np.zeros((9, 20, 20), np.uint8)
    image[2, 5, 5], image[6, 5, 6] = 0.8, 0.6
    labels[3, 10:12, 10:12] = anatomy.code_of("L1")
    labels[7, 14:16, 10:12] = anatomy.code_of("L2")
    case = data.Case(image, labels, False, "ct phantom", ct=True)
    stack, projected = data.SliceSampler.mip_stack(case, 4, 2)          # slices 2..6
    assert stack.shape == (3, 20, 20) and np.allclose(stack[0], stack[2])
    assert stack[1, 5, 5] == pytest.approx(0.8, abs=1e-3) and stack[1, 5, 6] == pytest.approx(0.6, abs=1e-3)
    assert (projected[10:12, 10:12] == anatomy.code_of("L1")).all()
    assert (projected[14:16] == 0).all()                                 # slice 7 is outside the slab


def test_mip_mode_builds_3d_bodies_from_one_projection(monkeypatch):
    """With a detector that outlines the projected bodies exactly, the 3-D masks follow the bone
    across the slab and land on the true bodies of an oblique, anisotropic CT."""
    from SpineLabelLib.phantom import generate_phantom

    phantom = generate_phantom(["L1", "L2", "L3"], "ct", spacing=(1.2, 1.6, 2.4), seed=4, crop_to_spine=True,
                               rotation_deg=(5.0, -4.0, 3.0))
    config = TINY
    canonical_truth = resample_to_canonical(phantom.labels, config.spacing_mm, label=True).array
    xs = np.flatnonzero(canonical_truth.reshape(canonical_truth.shape[0], -1).max(axis=1))
    low, high = int(xs.min()), int(xs.max())
    projected = canonical_truth[low: high + 1].max(axis=0)

    def outline_projection(model, stack, nms_iou=0.5):
        assert stack.shape[0] == 1 and np.allclose(stack[0, 0], stack[0, 1])   # one MIP, three equal channels
        found = []
        for code in (c for c in np.unique(projected) if c and data.CLASS_OF_CODE[c]):
            rows, cols = np.nonzero(projected == code)
            box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            mask = (projected == code)[box[1]:box[3], box[0]:box[2]].astype(np.float32)
            probs = np.full(len(anatomy.ORDER), 1e-3)
            probs[anatomy.ORDER.index(anatomy.name_of(int(code)))] = 1.0
            found.append(infer.SliceDetection(0, box, 0.95, probs / probs.sum(), mask))
        return [found]

    monkeypatch.setattr(infer, "find_slab", lambda *a, **k: (low, high, {}))
    monkeypatch.setattr(infer, "predict_slices", outline_projection)
    model = build_model(config)
    output = infer.detect_volume(phantom.image, model, "ct", input_mode="mip")
    assert output.extras["input_mode"] == "mip" and len(output.bodies) == 3
    truth = phantom.labels.array
    for body in output.bodies:
        level = max(body["level_probs"], key=body["level_probs"].get)
        mine, true = output.instances == body["instance"], truth == anatomy.code_of(level)
        assert 2 * (mine & true).sum() / (mine.sum() + true.sum()) > 0.7
        centre = phantom.image.kji_to_ras(np.argwhere(true).mean(axis=0))[0]
        assert np.linalg.norm(body["centroid_ras"] - centre) < 4.0
    with pytest.raises(SpineLabelError, match="CT"):
        infer.detect_volume(phantom.image, model, "mr", input_mode="mip")


def test_padding_above_and_below_keeps_every_voxel_where_it_was():
    affine = make_affine((0.9, 1.3, 3.0), oblique_directions(25.0), (-40.0, 60.0, -30.0))
    canonical = resample_to_canonical(Volume(np.random.default_rng(2).random((12, 30, 20)).astype(np.float32),
                                             affine), 1.5)
    padded = infer.pad_head_and_feet(canonical, 15.0)
    rows = 10                                                   # 15 mm at 1.5 mm
    assert padded.array.shape == (canonical.array.shape[0], canonical.array.shape[1] + 2 * rows,
                                  canonical.array.shape[2])
    assert np.array_equal(padded.array[:, rows:-rows], canonical.array)
    assert padded.array[:, :rows].max() == canonical.array.min() == padded.array[:, -rows:].min()
    voxel = np.array([[3, 7, 5]])
    assert np.allclose(padded.kji_to_ras(voxel + [0, rows, 0]), canonical.kji_to_ras(voxel))
    # The padded rows lie beyond the head and the feet: superior first (canonical rows run S -> I).
    top, bottom = padded.kji_to_ras(np.array([[0, 0, 0], [0, padded.array.shape[1] - 1, 0]]))
    assert top[2] > canonical.kji_to_ras(np.array([[0, 0, 0]]))[0][2] > bottom[2]
    assert infer.pad_head_and_feet(canonical, 0.0) is canonical
