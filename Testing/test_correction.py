"""Guided correction: each operation changes the result as a person meant and says so in the record."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import box_result, oblique_directions

from SpineLabelLib.correction import edits as correction
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.core.result import SpineResult, Vertebra
from SpineLabelLib.core.volume import Volume, make_affine

LUMBAR = ("L1", "L2", "L3", "L4", "L5")


def lumbar_result() -> SpineResult:
    """Five lumbar-sized boxes ~36 mm apart along the grid's k axis (oblique, anisotropic), unlocked."""
    affine = make_affine((1.3, 0.9, 2.1), oblique_directions(), origin=(-10.0, 20.0, -150.0))
    image = Volume(np.zeros((90, 26, 22), np.int16), affine)
    instances = np.zeros(image.array.shape, np.uint16)
    vertebrae = []
    for n, level in enumerate(LUMBAR, start=1):
        k0 = 90 - 17 * n                        # higher k is more cranial for this direction matrix
        box = (slice(k0, k0 + 11), slice(4, 22), slice(3, 19))
        instances[box] = n
        image.array[box] = 800
        centre = image.kji_to_ras(np.array([(s.start + s.stop - 1) / 2 for s in box]))[0]
        vertebrae.append(Vertebra(level, centre, instance=n, score=0.9))
    result = SpineResult("lumbar", image, vertebrae, instances, modality="ct")
    result.sort_cranio_caudal()
    return result


def test_lumbar_fixture_is_cranio_caudal():
    result = lumbar_result()
    assert result.levels == list(LUMBAR)
    assert np.all(np.diff([v.centroid_ras[2] for v in result.vertebrae]) < 0)


def test_move_records_distance():
    result = box_result()
    target = result.vertebrae[0].centroid_ras + [3.0, 4.0, 0.0]
    correction.move_centroid(result, "L1", target)
    assert np.allclose(result.by_level("L1").centroid_ras, target)
    assert result.corrections[-1]["action"] == "move"
    assert result.corrections[-1]["distance_mm"] == pytest.approx(5.0)


def test_set_level_anchors_and_the_others_follow():
    result = lumbar_result()
    second = result.vertebrae[1]
    correction.set_level(result, second, "L3")
    assert second.level == "L3" and second.locked
    assert result.levels[:3] == ["L2", "L3", "L4"]
    assert result.corrections[0] == {"action": "set_level", "instance": 2, "previous": "L2", "level": "L3"}
    relabel = result.corrections[-1]
    assert relabel["action"] == "relabel" and {"from": "L1", "to": "L2"}.items() <= relabel["changes"][0].items()


def test_delete_removes_point_and_mask():
    result = box_result()
    voxels = int((result.instances == 3).sum())
    correction.delete_vertebra(result, "L3")
    assert result.levels == ["L1", "L2"]
    assert not np.any(result.instances == 3)
    assert result.corrections[-1] == {"action": "delete", "level": "L3", "instance": 3,
                                      "centroid_ras": pytest.approx(result.corrections[-1]["centroid_ras"]),
                                      "voxels": voxels}


def test_add_with_and_without_a_level():
    result = lumbar_result()
    top = result.vertebrae[0].centroid_ras + (result.vertebrae[0].centroid_ras - result.vertebrae[1].centroid_ras)
    added = correction.add_vertebra(result, top)
    assert result.vertebrae[0] is added and added.source == "manual" and not added.locked
    assert added.level == "T12" and result.levels[1:] == list(LUMBAR)
    with pytest.raises(InputError):
        correction.add_vertebra(result, top, level="L9")
    named = correction.add_vertebra(lumbar_result(), top, level="T12")
    assert named.locked and named.instance == 0


def test_replace_mask_counts_voxels_and_takes_over_other_bodies():
    result = box_result()
    l1 = result.by_level("L1")
    old = result.instances == l1.instance
    new = old.copy()
    new[old.nonzero()[0].min()] = False                    # erase the first slab
    new[9, 6, 5] = True                                    # and paint one voxel of L2's body
    correction.replace_mask(result, "L1", new)
    record = result.corrections[-1]
    assert record["voxels_removed"] == int((old & ~new).sum()) > 0
    assert record["voxels_added"] == 1
    assert np.array_equal(result.instances == l1.instance, new)
    with pytest.raises(InputError):
        correction.replace_mask(result, "L1", new[:-1])


def test_recompute_centroids_skips_locked_vertebrae():
    result = box_result()
    for v in result.vertebrae:
        v.centroid_ras = v.centroid_ras + 2.0
    moved = correction.recompute_centroids_from_masks(result)
    assert [v.level for v in moved] == ["L1", "L3"]         # L2 is locked: a person's statement
    assert all(c["action"] == "recompute_centroid" for c in result.corrections)
    assert np.allclose(result.by_level("L1").centroid_ras, box_result().by_level("L1").centroid_ras)


def test_diff_results_names_every_change():
    before = box_result()
    after = box_result()
    after.vertebrae[0].centroid_ras = after.vertebrae[0].centroid_ras + [0, 0, 2.0]
    after.vertebrae[2].level = "L4"
    after.instances[after.instances == 2] = 0
    after.vertebrae = after.vertebrae[::2] + [Vertebra("L5", [0, 0, -200.0], source="manual")]
    after.instances[1, 5, 3] = 3                            # one voxel painted below L3
    changes = correction.diff_results(before, after)
    kinds = sorted((c["action"], c.get("level", c.get("to"))) for c in changes)
    assert kinds == [("add", "L5"), ("delete", "L2"), ("edit_mask", "L4"), ("move", "L1"), ("relabel", "L4")]
    edit = next(c for c in changes if c["action"] == "edit_mask")
    assert (edit["voxels_added"], edit["voxels_removed"]) == (1, 0)
    assert correction.diff_results(before, box_result()) == []


def test_scripted_session_gives_result_measurements_and_record():
    """Move, relabel with an anchor, delete, add, erase part of a mask, recompute, measure."""
    from SpineLabelLib.measurement.bodies import measure_result

    result = lumbar_result()
    correction.move_centroid(result, "L1", result.vertebrae[0].centroid_ras + [0, 3.0, 0])
    correction.set_level(result, result.vertebrae[1], "L3")
    correction.delete_vertebra(result, result.vertebrae[-1])
    l4 = result.by_level("L4")
    mask = result.instances == l4.instance
    erased = int(mask[mask.nonzero()[0].min()].sum())
    mask[mask.nonzero()[0].min()] = False
    correction.replace_mask(result, l4, mask)
    moved = correction.recompute_centroids_from_masks(result)
    measure_result(result)

    assert result.levels == ["L2", "L3", "L4", "L5"]
    assert [v.locked for v in result.vertebrae] == [False, True, False, False]
    assert l4 in moved and result.vertebrae[0] in moved          # mask centre wins over a moved point
    volumes = {m["level"]: m["volume_mm3"] for m in result.measurements}
    box_mm3 = 11 * 18 * 16 * result.image.voxel_volume_mm3
    assert volumes["L2"] == pytest.approx(box_mm3, rel=1e-3)
    assert volumes["L4"] == pytest.approx(box_mm3 - erased * result.image.voxel_volume_mm3, rel=1e-3)
    assert "S1" not in volumes
    actions = [c["action"] for c in result.corrections]
    assert actions == ["move", "set_level", "relabel", "delete", "edit_mask",
                       "recompute_centroid", "recompute_centroid"]
    assert result.corrections[4]["voxels_removed"] == erased


class _BrightIsBody:
    """Stands in for the body segmenter: 'body' wherever the middle slice is bright."""

    def __init__(self):
        from SpineLabelLib.models.body_unet.network import SegmenterConfig

        self.config = SegmenterConfig(spacing_mm=1.0)

    def __call__(self, images):
        return (images[:, 1] - 0.5) * 40.0


def test_an_added_vertebra_gets_its_body_drawn_and_the_others_keep_theirs():
    from SpineLabelLib.models.registry import LoadedModel

    result = lumbar_result()
    missed = result.by_level("L3")
    truth = result.instances == missed.instance
    result.instances[truth] = 0                                  # the detector missed L3
    result.vertebrae.remove(missed)
    others = result.instances.copy()
    added = correction.add_vertebra(result, missed.centroid_ras)
    assert added.instance == 0 and added.level == "L3"
    segmenter = LoadedModel("stub", "0", Path("."), {"sha256": "0"}, _BrightIsBody())
    correction.draw_mask(result, added, segmenter=segmenter)
    mask = result.instances == added.instance
    assert added.instance and 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85
    assert np.array_equal(result.instances[others > 0], others[others > 0])
    assert result.corrections[-1]["action"] == "draw_mask" and result.corrections[-1]["level"] == "L3"


def test_without_a_segmenter_an_added_vertebra_stays_maskless():
    result = lumbar_result()
    added = correction.add_vertebra(result, result.vertebrae[0].centroid_ras + [0, 0, 40.0])
    before = result.instances.copy()
    correction.draw_mask(result, added, segmenter="none")
    assert added.instance == 0 and np.array_equal(result.instances, before)
