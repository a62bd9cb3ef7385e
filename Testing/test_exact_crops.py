"""The crops that make detection fast keep what the whole grid gives: stage 1 of the dense detector on
the content box, its upsampling, the column band of stage 2, masks resampled to the input grid
around the bodies only, the segmenter's assignment on the bodies' box, centroids of labels."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from SpineLabelLib.core.volume import Volume, make_affine, resample, sub_grid

torch = pytest.importorskip("torch")


def _oblique(shape, spacing, angles, origin) -> Volume:
    """A grid with a non-trivial direction matrix and anisotropic spacing."""
    directions = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    return Volume(np.zeros(shape, np.int16), make_affine(spacing, directions, origin))


# --- geometry -----------------------------------------------------------------------------------
def test_sub_grid_voxels_are_the_whole_grids_voxels():
    whole = _oblique((30, 40, 50), (0.8, 1.1, 2.5), (9, -6, 14), (-20.0, 31.0, -47.0))
    part = sub_grid(whole, (4, 7, 11), (20, 33, 41))
    assert part.array.shape == (16, 26, 30)
    local = np.array([[0, 0, 0], [15, 25, 29], [3, 9, 17]], float)
    assert np.allclose(part.kji_to_ras(local), whole.kji_to_ras(local + [4, 7, 11]))
    assert np.allclose(part.spacing, whole.spacing)


@pytest.mark.parametrize("label", [False, True])
def test_resampling_the_covering_part_equals_the_whole_volume(label):
    from SpineLabelLib.core.volume import canonical_grid, covering_part

    whole = _oblique((40, 50, 60), (0.8, 1.1, 2.5), (9, -6, 14), (-20.0, 31.0, -47.0))
    rng = np.random.default_rng(5)
    whole.array[:] = rng.integers(1, 9, whole.array.shape) if label else rng.integers(-900, 1200, whole.array.shape)
    points = np.array([[5, 6, 7], [30, 20, 25]], float)
    for margin_mm in ((3.0, 10.0, 10.0), (60.0, 80.0, 80.0)):      # inside the volume, and past its edges
        grid = canonical_grid(whole, 1.3, points, margin_mm)
        part = covering_part(whole, grid)
        assert part.array.size < whole.array.size or margin_mm[0] > 50
        default = None if label else float(whole.array.min())      # as `CanonicalView.around` passes it
        got = resample(part, None, reference=grid, label=label, default_value=default).array
        assert np.array_equal(got, resample(whole, None, reference=grid, label=label).array)


def test_detector_masks_kept_where_the_segmenter_lost_a_body():
    from SpineLabelLib.core.result import SpineResult, Vertebra
    from SpineLabelLib.stages.refine import keep_detector_masks

    image = _oblique((30, 40, 50), (1.0, 1.0, 2.0), (0, 0, 0), (0.0, 0.0, 0.0))
    result = SpineResult("case", image=image)
    result.instances = np.zeros(image.array.shape, np.uint16)
    result.instances[5:10, 5:15, 5:15], result.instances[20:25, 20:30, 30:40] = 1, 2
    result.vertebrae = [Vertebra("L1", np.zeros(3), instance=1), Vertebra("L2", np.zeros(3), instance=2)]
    refined = np.zeros_like(result.instances)
    refined[6:10, 6:14, 6:14] = 1                    # body 1 redrawn; body 2 lost
    refined[21:22, 21:22, 31:32] = 2
    keep_detector_masks(result, refined, [1, 2])
    assert (refined == 2).sum() == (result.instances == 2).sum() and (refined == 1).sum() == 4 * 8 * 8
    assert any("body 2" in w for w in result.warnings) and not any("body 1" in w for w in result.warnings)


def _whole_grid_to_input(instances, probability, slab, reference):
    """`to_input_grid` as it was before the crop: the whole input grid resampled."""
    dilated = ndimage.grey_dilation(instances, size=(3, 3, 3))
    dilated = np.where(instances > 0, instances, dilated)
    labels = resample(slab.with_array(dilated), None, reference=reference, label=True).array
    prob = resample(slab.with_array(probability), None, reference=reference, default_value=0.0).array
    return np.where(prob >= 0.5, labels, 0).astype(np.uint16)


@pytest.mark.parametrize("where", ["inside", "at the slab's edge"])
def test_masks_resampled_around_the_bodies_equal_the_whole_grid(where):
    from SpineLabelLib.models.maskrcnn.infer import to_input_grid

    rng = np.random.default_rng(3)
    reference = _oblique((60, 90, 80), (0.9, 0.8, 2.1), (7, -5, 11), (-30.0, -40.0, -60.0))
    slab = Volume(np.zeros((40, 70, 60), np.uint8),
                  make_affine((1.25, 1.25, 1.25), np.eye(3)[:, ::-1] * [1, -1, -1], (-20.0, 30.0, 40.0)))
    instances = np.zeros(slab.array.shape, np.uint16)
    if where == "inside":
        instances[10:20, 20:35, 15:30] = 1
        instances[12:25, 38:50, 18:33] = 2
    else:
        instances[0:9, 50:70, 0:12] = 1                # touches three of the slab's faces
    # Probability above 0.5 also outside the bodies (Mask R-CNN's mean masks): only labels count there.
    probability = np.where(instances > 0, rng.uniform(0.4, 1.0, instances.shape),
                           rng.uniform(0.0, 0.7, instances.shape)).astype(np.float32)
    expected = _whole_grid_to_input(instances, probability, slab, reference)
    got = to_input_grid(instances, probability, slab, reference)
    assert (expected > 0).sum() > 100
    assert got.dtype == np.uint16 and np.array_equal(got, expected)


def test_label_centres_are_scipys_centres_of_mass():
    from SpineLabelLib.stages.refine import label_centres

    rng = np.random.default_rng(1)
    labels = np.zeros((50, 60, 40), np.uint16)
    for number in range(1, 6):
        corner = rng.integers(0, 30, 3)
        labels[corner[0]: corner[0] + 9, corner[1]: corner[1] + 14, corner[2]: corner[2] + 7] = number
    numbers = [1, 2, 3, 4, 5, 9]                       # 9 is absent: NaN, as scipy gives
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, numbers))
    got = label_centres(labels, numbers)
    assert np.isnan(got[-1]).all()
    assert np.allclose(got[:-1], expected[:-1])


def _whole_grid_assignment(foreground, detected, reach):
    distance, nearest = ndimage.distance_transform_edt(detected == 0, return_indices=True)
    from SpineLabelLib.models.body_unet.infer import keep_largest_pieces

    labels = np.where(foreground & (distance <= reach), detected[tuple(nearest)], 0).astype(np.uint16)
    return keep_largest_pieces(labels)          # the same piece rule: the test is about the box only


def test_segmenter_assignment_on_the_bodies_box_equals_the_whole_grid():
    from SpineLabelLib.models.body_unet.infer import assign_to_bodies

    rng = np.random.default_rng(2)
    detected = np.zeros((40, 160, 80), np.uint16)
    for number in range(1, 5):                         # bodies 10 voxels apart: ties between neighbours
        detected[12:30, 10 + 30 * number: 30 + 30 * number, 30:55] = number
    foreground = (ndimage.binary_dilation(detected > 0, iterations=3) & (rng.uniform(size=detected.shape) > 0.1)) \
        | (rng.uniform(size=detected.shape) > 0.99)    # and stray voxels far from every body
    got = assign_to_bodies(foreground, detected, 4.0)
    assert np.array_equal(got, _whole_grid_assignment(foreground, detected, 4.0))
    assert not assign_to_bodies(foreground, np.zeros_like(detected), 4.0).any()


def test_intensity_window_in_place_is_the_plain_formula_and_keeps_its_input():
    from SpineLabelLib.core.canonical import apply_window

    array = np.random.default_rng(4).normal(100, 600, (20, 30, 40)).astype(np.int16)
    before = array.copy()
    got = apply_window(array, (-250.0, 1000.0))
    assert got.dtype == np.float32 and np.array_equal(array, before)
    assert np.array_equal(got, np.clip((array.astype(np.float32) - -250.0) / 1250.0, 0.0, 1.0))
    floats = before.astype(np.float32)
    assert np.array_equal(apply_window(floats, (3.5, 800.0)), np.clip((floats - 3.5) / 796.5, 0.0, 1.0))
    assert np.array_equal(floats, before.astype(np.float32))


class BlurNetwork:
    """Stands in for the segmenter U-Net with context: 'body' where the middle slice's 9 x 9 mean
    is bright, so what it gives near a grid's edge depends on where the grid is cut."""

    def __init__(self, config) -> None:
        self.config = config
        self.pixels = 0                              # how much image it was shown

    def __call__(self, images):
        self.pixels += images[:, 1].numel()
        blurred = torch.nn.functional.avg_pool2d(images[:, 1:2], 9, stride=1, padding=4)[:, 0]
        return (blurred - 0.4) * 40.0


def _column_with_a_stray():
    """Three stacked bodies and a stray detection 90 mm beside them, oblique anisotropic grid."""
    affine = make_affine((0.9, 1.1, 2.0), Rotation.from_euler("xyz", (6, -4, 3), degrees=True).as_matrix(),
                         (-60.0, 40.0, -90.0))
    truth = np.zeros((40, 110, 150), np.uint16)
    for number in (1, 2, 3):
        truth[14:26, 10 + 30 * number: 30 + 30 * number, 20:45] = number
    image = Volume(np.where(truth > 0, 200.0, 10.0).astype(np.float32), affine)
    truth[14:20, 60:75, 125:140] = 4                   # i 125-140: ~90 mm beside the column
    image.array[truth == 4] = 200.0
    return image, ndimage.grey_dilation(truth, size=(3, 5, 5))


def test_bodies_far_apart_are_redrawn_on_grids_of_their_own():
    from SpineLabelLib.models.body_unet.infer import body_groups, refine_instances
    from SpineLabelLib.models.body_unet.network import SegmenterConfig

    image, coarse = _column_with_a_stray()
    assert body_groups(image, coarse, (6.0, 40.0, 40.0)) == [[1, 2, 3], [4]]
    together = BlurNetwork(SegmenterConfig(spacing_mm=1.0))
    refined = refine_instances(image, coarse, together, "mr")
    alone = BlurNetwork(SegmenterConfig(spacing_mm=1.0))
    column_only = refine_instances(image, np.where(coarse == 4, 0, coarse), alone, "mr")
    # The column's masks are what it gives without the stray, and the stray keeps its own.
    assert np.array_equal(np.where(refined == 4, 0, refined), column_only)
    stray = image.array[:, :, 100:] > 100                # the stray's bright voxels (6 x 15 x 15)
    assert 0.8 * stray.sum() < ((refined[:, :, 100:] == 4) & stray).sum() <= (refined == 4).sum() < 1.3 * stray.sum()
    # One grid over both would have shown the network several times the image; two grids do not.
    assert together.pixels < 1.6 * alone.pixels


# --- dense detector, stage 1 ---------------------------------------------------------------------
def test_upsampling_on_the_box_equals_the_whole_map():
    import torch.nn.functional as F

    from SpineLabelLib.models.dense.infer import upsample_probability

    rng = np.random.default_rng(4)
    small = np.zeros((21, 30, 17), np.float32)
    for box in [(slice(3, 11), slice(5, 20), slice(4, 13)), (slice(0, 21), slice(0, 9), slice(10, 17))]:
        small[:] = 0
        small[box] = rng.uniform(0, 1, small[box].shape)
        shape = (41, 60, 33)                               # odd sides: the 2 mm grid is one shorter
        whole = F.interpolate(torch.from_numpy(small)[None, None], scale_factor=2, mode="trilinear",
                              align_corners=False)[0, 0].numpy()[: shape[0], : shape[1], : shape[2]]
        assert np.allclose(upsample_probability(small, box, shape), whole, atol=1e-6)


def test_receptive_radius_bounds_what_a_voxel_changes():
    from SpineLabelLib.models.dense.infer import receptive_radius
    from SpineLabelLib.models.dense.networks import DenseConfig, build_network

    torch.manual_seed(0)
    detection = build_network(DenseConfig()).detection.eval()
    radius = receptive_radius(len(DenseConfig().detect_widths))
    image = torch.rand(1, 1, 64, 64, 64)
    changed = image.clone()
    changed[0, 0, 32, 32, 32] += 5.0
    with torch.inference_mode():
        difference = (detection(changed) - detection(image))[0].abs().numpy()
    moved = np.argwhere(difference > 1e-5)
    assert len(moved)                                       # the voxel matters near itself ...
    assert np.abs(moved - 32).max() <= radius               # ... and nowhere beyond the radius


@pytest.fixture(scope="module")
def air_padded_case():
    """A rotated lumbar CT phantom on its canonical 2 mm grid, with 150 mm of air added on the
    left, in front and below (as a wide field of view has): the content box must cut it."""
    from SpineLabelLib.core.volume import resample_to_canonical
    from SpineLabelLib.models.maskrcnn.data import normalise_intensity
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.phantom import generate_phantom

    phantom = generate_phantom(["T12", "L1", "L2", "L3"], "ct", spacing=(1.0, 1.0, 2.0), seed=5,
                               rotation_deg=(5.0, -3.0, 4.0), crop_to_spine=True)
    image = normalise_intensity(resample_to_canonical(phantom.image, 2.0).array, "ct")
    image = np.pad(image, ((75, 0), (0, 75), (75, 0)))
    return load_model("vertebra-dense-detector").network, image


def test_stage_one_on_the_content_box_keeps_every_content_voxel(air_padded_case, monkeypatch):
    from SpineLabelLib.models.dense import infer

    network, image = air_padded_case
    small = infer.downsample_mean(image)
    box = infer.content_box(small, infer.receptive_radius(len(network.config.detect_widths)),
                            network.config.detect_divisor)
    assert np.prod([b.stop - b.start for b in box]) < 0.8 * small.size      # the air is skipped
    cropped = infer.column_probability(network, image)
    monkeypatch.setattr(infer, "content_box", lambda array, *_: tuple(slice(0, n) for n in array.shape))
    whole = infer.column_probability(network, image)
    content = image > 0
    assert (whole >= 0.5).sum() > 1000
    assert np.allclose(cropped[content], whole[content], atol=1e-4)
    assert np.array_equal(cropped >= 0.5, whole >= 0.5)                    # every voting voxel kept


def test_stage_one_tiles_cover_every_row_once():
    from SpineLabelLib.models.dense.infer import TILE_CONTEXT, tile_starts

    for rows, plane in [(173, 7000), (40, 100), (300, 60000)]:
        kept, starts = tile_starts(rows, plane)
        covered = np.concatenate([np.arange(s, min(rows, s + kept)) for s in starts])
        assert np.array_equal(covered, np.arange(rows))
        assert all(s % 4 == 0 and (s - TILE_CONTEXT) % 4 == 0 for s in starts)   # poolings pair alike
        assert (kept + 2 * TILE_CONTEXT) * plane <= max(1_000_000, (32 + 2 * TILE_CONTEXT) * plane)


# --- dense detector, stage 2 ---------------------------------------------------------------------
def test_stage_two_computes_the_index_on_every_vote_and_skips_slices_without(air_padded_case):
    from SpineLabelLib.models.dense import infer

    network, image = air_padded_case
    column = infer.column_probability(network, image)
    voting = column >= 0.5
    assert voting.sum() > 1000
    index, computed = infer.level_index(network, image, column)
    assert computed[voting].all()                              # every voting voxel gets an index
    without = ~voting.any(axis=(1, 2))
    assert without.any() and not computed[without].any()     # the air's slices are skipped
    spine = voting & (index > 0)
    assert np.isfinite(index[computed]).all() and (index[voting] > 10).mean() > 0.9 and spine.any()


# --- the ensemble's focus: the dense pass around Mask R-CNN's bodies only -------------------------
def test_focus_slices_cover_the_points_left_right_extent_plus_the_margin():
    from SpineLabelLib.core.volume import canonical_grid
    from SpineLabelLib.models.dense.infer import focus_slices

    volume = _oblique((40, 60, 50), (0.9, 1.3, 2.5), (7, -5, 12), (-30.0, 20.0, -40.0))
    grid = canonical_grid(volume, 2.0)
    points = volume.kji_to_ras(np.array([[10, 20, 25], [30, 40, 20]], float))
    x = grid.ras_to_kji(points)[:, 0]
    focus = focus_slices(grid, points, margin_mm=10.0)
    assert focus.start <= x.min() - 5 + 1 and focus.stop - 1 >= x.max() + 5 - 1     # 10 mm = 5 slices
    assert focus.stop - focus.start <= x.max() - x.min() + 10 + 3                  # and not much more
    assert focus_slices(grid, np.zeros((0, 3))) is None and focus_slices(grid, None) is None


def test_stage_one_with_a_focus_votes_only_there_and_as_the_whole_grid_does(air_padded_case):
    from SpineLabelLib.models.dense import infer

    network, image = air_padded_case
    whole = infer.column_probability(network, image)
    spine = np.flatnonzero((whole >= 0.5).any(axis=(1, 2)))
    focus = slice(int(spine.min()) + 4, int(spine.max()) - 4)        # narrower than the column: a real cut
    focused = infer.column_probability(network, image, focus=focus)
    outside = np.ones(image.shape[0], bool)
    outside[focus] = False
    assert not focused[outside].any()                                # nothing votes beyond the focus
    inside, inside_whole = focused[focus] >= 0.5, whole[focus] >= 0.5
    assert inside_whole.sum() > 1000
    # The focus keeps TILE_CONTEXT voxels of context each side: the votes there are the whole grid's
    # but for the few voxels whose view reached the cut.
    assert (inside == inside_whole).mean() > 0.999
    assert (inside & inside_whole).sum() >= 0.98 * inside_whole.sum()
    box = infer.focus_box((slice(0, 40), slice(0, 9), slice(2, 7)), slice(50, 70), divisor=4)
    assert box[0] == slice(16, 40) and box[1:] == (slice(0, 9), slice(2, 7))       # start on the poolings
    assert infer.focus_box((slice(0, 10), slice(0, 9), slice(0, 9)), slice(60, 70), divisor=4) is None
