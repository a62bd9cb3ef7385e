"""Canonical reorientation and resampling keep every voxel where it was in the world."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SpineLabelLib.core.volume import CANONICAL_AXES_RAS, Volume, make_affine, resample, resample_to_canonical, to_canonical, undo_reorientation

LPS_LIKE = np.diag([-1.0, -1.0, 1.0])                       # how most DICOM/NRRD axial scans map to RAS
SAGITTAL = np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]])  # i->A, j->-S, k->-R: a sagittal MRI stack


def oblique(angles=(20, -10, 35)):
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


@pytest.mark.parametrize("directions", [np.eye(3), LPS_LIKE, SAGITTAL, oblique(), oblique((170, 5, -80))])
def test_canonical_reorientation_is_exact_and_reversible(directions):
    rng = np.random.default_rng(1)
    array = rng.random((7, 9, 11)).astype(np.float32)
    volume = Volume(array, make_affine((0.8, 0.7, 2.0), directions, (10, -20, 5)))
    canonical, how = to_canonical(volume)
    # every voxel keeps its world position
    kji_orig = np.argwhere(np.ones_like(array, bool))
    world = volume.kji_to_ras(kji_orig)
    kji_canon = np.rint(canonical.ras_to_kji(world)).astype(int)
    assert np.array_equal(canonical.array[tuple(kji_canon.T)], array[tuple(kji_orig.T)])
    assert np.array_equal(undo_reorientation(canonical.array, how), array)
    # canonical array axes point along the canonical world directions (up to the residual obliquity)
    axis_dirs = canonical.directions[:, ::-1].T
    assert np.all(np.sum(axis_dirs * CANONICAL_AXES_RAS, axis=1) > 0.5)


def test_sagittal_stack_becomes_canonical_sagittal():
    volume = Volume(np.zeros((5, 6, 7), np.float32), make_affine((1.0, 1.0, 3.0), SAGITTAL))
    canonical, _ = to_canonical(volume)
    assert np.allclose(canonical.directions[:, ::-1].T, CANONICAL_AXES_RAS)
    assert canonical.array.shape == (5, 6, 7)


def test_resample_to_canonical_keeps_a_point_in_place():
    volume = Volume(np.zeros((20, 24, 28), np.float32), make_affine((0.8, 0.9, 2.0), oblique(), (3, 4, 5)))
    volume.array[10, 12, 14] = 1000.0
    target = volume.kji_to_ras([[10, 12, 14]])[0]
    canonical = resample_to_canonical(volume, 0.5)
    assert np.allclose(canonical.directions[:, ::-1].T, CANONICAL_AXES_RAS)
    peak = np.unravel_index(np.argmax(canonical.array), canonical.array.shape)
    assert np.linalg.norm(canonical.kji_to_ras([peak])[0] - target) < 1.0


def test_label_resampling_round_trip_onto_input_grid():
    volume = Volume(np.zeros((16, 18, 20), np.uint8), make_affine((1.2, 0.8, 2.5), oblique((5, 15, -10)), (0, 0, 0)))
    volume.array[5:11, 6:12, 7:14] = 20
    canonical = resample_to_canonical(volume, 0.4, label=True)
    back = resample(canonical, None, reference=volume, label=True)
    assert back.same_grid(volume)
    agreement = np.mean((back.array == 20) == (volume.array == 20))
    assert agreement > 0.98
    assert set(np.unique(back.array)) <= {0, 20}


def test_resample_to_spacing_keeps_physical_centre():
    volume = Volume(np.zeros((10, 10, 10), np.float32), make_affine((1.0, 1.0, 1.0), oblique(), (1, 2, 3)))
    coarse = resample(volume, (2.0, 2.0, 2.0))
    centre = lambda v: v.kji_to_ras([(np.array(v.array.shape) - 1) / 2.0])[0]
    assert coarse.array.shape == (5, 5, 5)
    assert np.allclose(centre(coarse), centre(volume), atol=1e-6)


def test_atomic_path_leaves_nothing_on_failure_and_normal_permissions(tmp_path):
    import os

    from SpineLabelLib.core.paths import atomic_path, atomic_write_text

    target = tmp_path / "a.nii.gz"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_result_snapshot_round_trip_without_pickle(tmp_path):
    from SpineLabelLib.core.result import SpineResult, Vertebra, load_snapshot, save_snapshot

    image = Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), make_affine((0.8, 0.9, 2.0), oblique()))
    instances = np.zeros((3, 4, 5), np.uint16)
    instances[1, 1:3, 1:4] = 1
    result = SpineResult("case", image, [Vertebra("L1", (1.5, 2, 3), instance=1, score=0.75, locked=True,
                                                  level_scores={"L1": 0.9, "T12": 0.1})], instances, modality="ct",
                         measurements=[{"level": "L1", "height_anterior_mm": np.float64(24.5), "flags": ""}],
                         timings={"detect": 1.25})
    save_snapshot(result, tmp_path / "r.npz")
    back = load_snapshot(tmp_path / "r.npz")
    assert back.image.same_grid(image) and np.array_equal(back.image.array, image.array)
    assert np.array_equal(back.instances, instances)
    v = back.vertebrae[0]
    assert (v.level, v.score, v.locked, v.level_scores) == ("L1", 0.75, True, {"L1": 0.9, "T12": 0.1})
    assert np.allclose(v.centroid_ras, (1.5, 2, 3))
    assert back.measurements == [{"level": "L1", "height_anterior_mm": 24.5, "flags": ""}]
    assert back.modality == "ct" and back.timings == {"detect": 1.25}


def test_sagittal_slab_and_mip_are_clipped_at_the_volume_edge():
    from SpineLabelLib.core.volume import sagittal_mip, sagittal_slices

    array = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    canonical = Volume(array, make_affine((1.0, 1.0, 1.0), CANONICAL_AXES_RAS[::-1].T))
    assert sagittal_slices(canonical).shape == (5, 3, 4)
    assert np.array_equal(sagittal_slices(canonical, 0, 2), array[0:3])
    assert np.array_equal(sagittal_mip(canonical, 4, 1), array[3:5].max(axis=0))
