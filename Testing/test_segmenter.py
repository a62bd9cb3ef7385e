"""Body segmenter: U-Net forward/backward, the training target (ignored region, sacrum), the loss
ignoring what is unlabelled, splitting foreground into detected bodies, redrawing masks on an
oblique anisotropic grid, and model folders (dispatch by card, hash check, use inside `detect`)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from SpineLabelLib.core import anatomy
from SpineLabelLib.models.maskrcnn.data import Case
from SpineLabelLib.models.cards import CARD_FILE, export_weights
from SpineLabelLib.core.errors import ModelError
from SpineLabelLib.models.body_unet.data import IGNORE, BodySliceSampler, body_target
from SpineLabelLib.models.body_unet.infer import assign_to_bodies, predict_probability, refine_instances
from SpineLabelLib.models.body_unet.network import SegmenterConfig, build_model
from SpineLabelLib.training.recipes import loss_function
from SpineLabelLib.core.volume import Volume, make_affine

from conftest import flip_a_byte, oblique_directions

TINY = SegmenterConfig(widths=(4, 8, 8), train_size=32, spacing_mm=2.0)


def test_unet_keeps_the_slice_size_and_learns(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY)
    image = torch.rand(2, 3, 32, 32)
    target = torch.zeros(2, 32, 32, dtype=torch.int64)
    target[:, 8:20, 10:22] = 1
    image[:, 1][target == 1] += 2.0
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = loss_function(model(image), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    odd = np.random.default_rng(0).random((3, 3, 37, 29)).astype(np.float32)
    with torch.no_grad():
        plain = torch.sigmoid(model(torch.from_numpy(np.pad(odd, ((0, 0), (0, 0), (0, 3), (0, 3))))))
    probability = predict_probability(model, odd)              # padded to the divisor and cropped back
    assert probability.shape == (3, 37, 29) and 0 <= probability.min() <= probability.max() <= 1
    assert np.allclose(probability, plain[:, :37, :29].numpy(), atol=1e-5)   # channels-last: same numbers


def test_loss_ignores_unlabelled_pixels():
    logits = torch.zeros(1, 8, 8)
    target = torch.zeros(1, 8, 8, dtype=torch.int64)
    target[0, 4:, 2:6] = 1
    target[0, :2] = IGNORE
    changed = logits.clone()
    changed[0, :2] = 25.0                                      # confident "body" where nobody labelled
    assert loss_function(changed, target).item() == pytest.approx(loss_function(logits, target).item())
    changed[0, 6, 0] = 25.0                                    # ... but not on a labelled background pixel
    assert loss_function(changed, target).item() > loss_function(logits, target).item()


def test_target_drops_the_sacrum_and_ignores_above_the_labelled_bodies():
    codes = np.zeros((6, 60, 30), np.uint8)
    codes[:, 20:28, 5:20] = anatomy.code_of("L1")
    codes[:, 32:40, 5:20] = anatomy.code_of("L2")
    codes[:, 44:52, 5:20] = anatomy.code_of("S1")
    assert set(np.unique(body_target(codes[3]))) == {0, 1}
    assert body_target(codes[3])[48, 10] == 0                  # the sacrum is background
    image = np.ones(codes.shape, np.float16)
    case = Case(image, codes, True, "real")
    sampler = BodySliceSampler([case], 60, 1, augment=False, disc_margin_px=3)
    _, target = sampler.slice_target(0, 3)
    assert (target[:17] == IGNORE).all()                       # above L1 less a 3-pixel disc margin
    assert not (target[17:] == IGNORE).any()
    assert target[24, 10] == 1 and target[36, 10] == 1 and target[48, 10] == 0
    phantom = BodySliceSampler([Case(image, codes, False, "phantom")], 60, 1, augment=False)
    assert not (phantom.slice_target(0, 3)[1] == IGNORE).any()  # phantoms label every body
    image_out, target_out = phantom.sample()
    assert image_out.shape == (3, 60, 60) and set(np.unique(target_out)) <= {0, 1}


def test_foreground_is_split_between_the_nearest_bodies():
    detected = np.zeros((10, 40, 20), np.uint16)
    detected[2:8, 5:15, 5:15] = 1
    detected[2:8, 20:30, 5:15] = 2
    foreground = np.zeros(detected.shape, bool)
    foreground[2:8, 4:31, 4:16] = True                         # one slab over both bodies and the gap
    foreground[2:8, 36:39, 5:8] = True                         # far away: belongs to nobody
    labels = assign_to_bodies(foreground, detected, reach_voxels=3.0)
    assert labels[5, 16, 10] == 1 and labels[5, 19, 10] == 2   # the gap is split by distance
    assert (labels[:, 36:] == 0).all()
    # An island of body 1's label cut off from its main piece goes.
    foreground2 = foreground.copy()
    foreground2[:, 17:19] = False
    detected2 = detected.copy()
    detected2[4, 19, 10] = 1
    labels2 = assign_to_bodies(foreground2, detected2, reach_voxels=3.0)
    pieces = [np.unique(np.nonzero(labels2 == n)[1]) for n in (1, 2)]
    assert pieces[0].max() < 17 and pieces[1].min() > 18


class ThresholdNetwork:
    """Stands in for the U-Net: 'body' wherever the middle slice is bright."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config

    def __call__(self, images):
        return (images[:, 1] - 0.5) * 40.0


@pytest.mark.parametrize("directions", ["oblique", "lps"])
def test_refined_masks_hug_the_bodies_on_an_oblique_anisotropic_grid(directions):
    matrix = oblique_directions(25.0) if directions == "oblique" else np.diag([-1.0, -1.0, 1.0])
    affine = make_affine((0.8, 1.1, 2.5), matrix, (-30.0, 45.0, -60.0))
    shape = (30, 70, 60)
    truth = np.zeros(shape, np.uint16)
    boxes = [(slice(8, 20), slice(10, 25), slice(15, 40)), (slice(8, 20), slice(35, 50), slice(15, 40))]
    for number, box in enumerate(boxes, start=1):
        truth[box] = number
    image = Volume(np.where(truth > 0, 200.0, 10.0).astype(np.float32), affine)
    from scipy import ndimage

    coarse = ndimage.grey_dilation(truth, size=(3, 5, 5))       # blobby detector masks
    refined = refine_instances(image, coarse, ThresholdNetwork(SegmenterConfig(spacing_mm=1.0)), "mr")
    assert refined.shape == shape and refined.dtype == np.uint16
    for number in (1, 2):
        dice_before = 2 * ((coarse == number) & (truth == number)).sum() / ((coarse == number).sum() + (truth == number).sum())
        dice_after = 2 * ((refined == number) & (truth == number)).sum() / ((refined == number).sum() + (truth == number).sum())
        assert dice_after > 0.9 > dice_before


@pytest.fixture()
def tiny_segmenter_dir(tmp_path):
    torch.manual_seed(0)
    card = {"name": "tiny-segmenter", "version": "0.0.1", "task": "test", "modality": ["ct", "mr"], "levels": []}
    export_weights(build_model(TINY).state_dict(), TINY, tmp_path / "seg", card)
    return tmp_path / "seg"


def test_segmenter_folder_loads_by_family_and_refuses_tampering(tiny_segmenter_dir):
    from SpineLabelLib.models.registry import load_model

    loaded = load_model(tiny_segmenter_dir)
    assert loaded.card["architecture"]["family"] == "body-unet"
    assert loaded.network.config.widths == TINY.widths
    weights = tiny_segmenter_dir / "model.safetensors"
    flip_a_byte(weights, -2)
    with pytest.raises(ModelError, match="sha256"):
        load_model(tiny_segmenter_dir)


def test_detect_records_the_segmenter_and_keeps_every_body_a_mask(tiny_segmenter_dir, tmp_path, monkeypatch):
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.models.maskrcnn import infer as detector_infer
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.core.result import SpineResult

    shape = (20, 40, 30)
    image = Volume(np.random.default_rng(1).random(shape).astype(np.float32) * 100,
                   make_affine((1.5, 1.0, 2.0), oblique_directions(15.0), (0.0, 0.0, 0.0)))
    instances = np.zeros(shape, np.uint16)
    instances[5:15, 5:15, 5:25] = 1
    instances[5:15, 22:32, 5:25] = 2
    bodies = [{"instance": n, "centroid_ras": np.zeros(3), "score": 0.9,
               "level_probs": {name: float(name == level) for name in anatomy.ORDER}}
              for n, level in ((1, "L1"), (2, "L2"))]
    monkeypatch.setattr(detector_infer, "detect_volume",
                        lambda *a, **k: detector_infer.DetectionOutput(instances.copy(), bodies, {}))
    segmenter = load_model(tiny_segmenter_dir)
    result = find_bodies(SpineResult("case", image=image), detector=_tiny_detector(tmp_path), segmenter=segmenter)
    assert [m["name"] for m in result.models][-1] == "tiny-segmenter"
    for vertebra in result.vertebrae:                       # an untrained U-Net may see nothing:
        assert (result.instances == vertebra.instance).any()  # the detector's mask is kept then
        inside = result.image.ras_to_kji(vertebra.centroid_ras[None])[0]
        assert np.all(inside >= -1) and np.all(inside <= np.array(shape))
    plain = find_bodies(SpineResult("case", image=image), detector=_tiny_detector(tmp_path), segmenter=None)
    assert "tiny-segmenter" not in [m["name"] for m in plain.models]
    assert np.array_equal(plain.instances, instances)


def _tiny_detector(tmp_path):
    from SpineLabelLib.models.maskrcnn.network import DetectorConfig, build_model as build_detector
    from SpineLabelLib.models.registry import load_model

    config = DetectorConfig(widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), fpn_channels=8, box_head_dim=16,
                            mask_head_channels=8, train_size=64, spacing_mm=2.0)
    folder = tmp_path / "det"
    if not (folder / CARD_FILE).exists():
        card = {"name": "tiny-det", "version": "0.0.1", "task": "test", "modality": ["mr"], "levels": list(anatomy.ORDER)}
        export_weights(build_detector(config).state_dict(), config, folder, card)
    return load_model(folder)


def test_skipped_slices_are_interpolated_between_computed_ones():
    class SliceNumber:
        config = SegmenterConfig(widths=(4, 8), slice_offset=1)

        def __call__(self, images):                    # logit = the middle slice's value
            return torch.logit(images[:, 1].clamp(1e-4, 1 - 1e-4))

    image = np.zeros((12, 4, 4), np.float32)
    for x in range(12):
        image[x] = 0.05 + 0.07 * x
    from SpineLabelLib.models.body_unet.infer import slab_probability

    every = slab_probability(SliceNumber(), image, 2, 11, 1)
    skipping = slab_probability(SliceNumber(), image, 2, 11, 3)
    assert every.shape == skipping.shape == (9, 4, 4)
    assert np.allclose(every[:, 0, 0], image[2:11, 0, 0], atol=1e-3)
    assert np.allclose(skipping, every, atol=1e-3)     # linear in x, so interpolation is exact
    assert np.allclose(skipping[[0, 3, 6, 8], 0, 0], image[[2, 5, 8, 10], 0, 0], atol=1e-3)


def test_half_precision_weights_are_half_the_file_and_give_the_same_probabilities(tmp_path):
    from SpineLabelLib.models.registry import load_model

    torch.manual_seed(0)
    state = build_model(TINY).state_dict()
    base = {"name": "tiny-segmenter", "version": "0.0.1", "task": "test", "modality": ["ct", "mr"], "levels": []}
    full = export_weights(state, TINY, tmp_path / "full", base)
    half = export_weights(state, TINY, tmp_path / "half", {**base, "weights_dtype": "float16"})
    assert full["weights_dtype"] == "float32" and half["weights_dtype"] == "float16"
    assert half["weights_bytes"] < 0.6 * full["weights_bytes"]
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        outputs = [load_model(tmp_path / folder).network(image) for folder in ("full", "half")]
    assert next(load_model(tmp_path / "half").network.parameters()).dtype == torch.float32
    assert torch.allclose(outputs[0], outputs[1], atol=1e-2)
    assert not torch.equal(outputs[0], torch.zeros_like(outputs[0]))
    with pytest.raises(ModelError, match="weights_dtype 'int4'"):
        export_weights(state, TINY, tmp_path / "bad", {**base, "weights_dtype": "int4"})
    assert not (tmp_path / "bad").exists()
