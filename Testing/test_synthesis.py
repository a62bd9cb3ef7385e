"""Synthesis for training (SpineLabelLib.synthesis): the body-from-vertebra rule on shapes with a
known answer, bodies fixed by discs, and label map -> synthetic image with the labels' geometry,
reproducible by seed. Grids are oblique and anisotropic on purpose."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.synthesis.bodies import bodies_between_discs, body_masks
from SpineLabelLib.core.volume import Volume, make_affine


def rotation(degrees_about_r: float, degrees_about_s: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_about_r), np.deg2rad(degrees_about_s)
    about_r = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_s = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return about_r @ about_s


def oblique_grid(shape_kji=(70, 90, 60), spacing=(1.1, 0.9, 1.7)) -> Volume:
    directions = rotation(17.0, -11.0)
    extent = np.array(shape_kji[::-1]) * np.array(spacing)
    origin = -directions @ (extent / 2)
    return Volume(np.zeros(shape_kji, np.uint8), make_affine(spacing, directions, origin))


def world_points(grid: Volume) -> np.ndarray:
    kji = np.indices(grid.array.shape).reshape(3, -1).T
    return grid.kji_to_ras(kji).reshape(*grid.array.shape, 3)


def spine_frame(points: np.ndarray, tilt_deg: float = 12.0) -> np.ndarray:
    """World RAS -> the spine's own frame (x right, y anterior, z superior), tilted in the
    sagittal plane like a lordotic segment."""
    return points @ rotation(tilt_deg, 0.0)


def vertebra_parts(local: np.ndarray, centre_z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(body, arch+processes) masks of one idealised vertebra at height ``centre_z`` (mm): a body
    cylinder (radius 16, height 22) with the arch ring (canal radius 7) behind it and a spinous
    process further back."""
    x, y, z = local[..., 0], local[..., 1], local[..., 2] - centre_z
    body = (x ** 2 + y ** 2 <= 16 ** 2) & (np.abs(z) <= 11)
    canal_y = -16 - 7                                   # canal's front touches the body's back
    ring_r = np.hypot(x, y - canal_y)
    arch = (ring_r > 7) & (ring_r <= 12) & (y < -16 + 3) & (np.abs(z) <= 7)
    spinous = (np.abs(x) <= 3) & (y < canal_y - 10) & (y > canal_y - 35) & (np.abs(z) <= 6)
    return body, (arch | spinous) & ~body


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_body_rule_recovers_the_body_of_a_tilted_vertebra_on_an_oblique_grid():
    grid = oblique_grid()
    local = spine_frame(world_points(grid))
    body, arch = vertebra_parts(local)
    code = anatomy.code_of("L3")
    whole = grid.with_array(np.where(body | arch, code, 0).astype(np.uint8))
    result = body_masks(whole).array == code
    assert dice(result, body) > 0.95
    # The arch is not body; the ring's roots beside the canal's front (3 mm of it lie in front of
    # the canal wall, where the rule's cut is) are the only part of it allowed in.
    assert np.logical_and(result, arch).sum() < 0.05 * arch.sum()
    assert result.sum() <= (body | arch).sum()


def test_body_rule_without_a_closed_arch_falls_back_to_the_front_of_the_vertebra():
    grid = oblique_grid()
    local = spine_frame(world_points(grid))
    body, arch = vertebra_parts(local)
    open_arch = arch & (local[..., 0] > 2)              # arch cut on one side: no foramen anywhere
    spinous = arch & (local[..., 1] < -33)
    whole = grid.with_array(np.where(body | open_arch, 20, 0).astype(np.uint8))
    result = body_masks(whole).array == 20
    assert not np.logical_and(result, spinous & open_arch).any()
    assert np.logical_and(result, body).sum() > 0.6 * body.sum()


def test_body_rule_on_thick_slices_with_an_arch_closed_at_one_end_and_a_hole_in_the_body():
    """Automatic masks on 2.5 mm axial slices (lidc-0001, issue 12): the arch is closed in the top
    planes of a vertebra only, and the body has a hole. The canal-to-centroid direction then points
    largely downwards and the hole sits in front of the canal; the column's direction (from the
    neighbours' centroids) and the largest hole as the canal keep the whole body."""
    grid = oblique_grid((48, 90, 60), (1.0, 0.9, 2.5))
    local = spine_frame(world_points(grid), tilt_deg=20.0)
    array = np.zeros(grid.array.shape, np.uint8)
    z = local[..., 2]
    for n, name in enumerate(("T6", "T7", "T8")):
        centre = 28 - 28 * n
        body, arch = vertebra_parts(local, centre_z=centre)
        if name == "T7":
            arch &= ~((local[..., 0] > 2) & (z - centre < 2))            # closed in its top 5 mm only
            hole = np.linalg.norm(local - np.array([0.0, 6.0, centre]), axis=-1) < 5
            array[(body & ~hole) | arch] = anatomy.code_of(name)
            t7_body = body & ~hole
        else:
            array[body | arch] = anatomy.code_of(name)
    result = body_masks(grid.with_array(array)).array == anatomy.code_of("T7")
    assert dice(result, t7_body) > 0.85
    assert np.logical_and(result, array == anatomy.code_of("T7")).sum() == result.sum()


def test_discs_fix_the_levels_of_the_bodies_between_them_and_s1_below_the_last():
    shape = (30, 150, 40)                               # canonical: x, superior->inferior, a-p
    discs = np.zeros(shape, np.uint8)
    rows = {"L3": 40, "L4": 70, "L5": 100}             # disc below each level
    for name, row in rows.items():
        discs[5:25, row:row + 6, 8:32] = 100 + anatomy.code_of(name)
    bodies = bodies_between_discs(discs, 1.0)
    assert set(np.unique(bodies)) == {0, anatomy.code_of("L3"), anatomy.code_of("L4"),
                                      anatomy.code_of("L5"), anatomy.code_of("S1")}
    rows_of = {name: np.flatnonzero((bodies == anatomy.code_of(name)).any(axis=(0, 2)))
               for name in ("L3", "L4", "L5", "S1")}
    assert rows_of["L4"].min() >= 46 and rows_of["L4"].max() <= 69     # between the L3-L4 and L4-L5 discs
    assert rows_of["L5"].min() >= 76 and rows_of["L5"].max() <= 99
    assert rows_of["S1"].min() >= 106 and rows_of["S1"].size < rows_of["L5"].size   # below L5-S1, shorter
    assert rows_of["L3"].max() <= 39 and rows_of["L3"].size >= 20                  # above the top disc
    assert not np.logical_and(bodies > 0, discs > 0).any()


# --- synthesis (TorchIO: the `train` extra) ---------------------------------------------------------
def spine_labels(levels=("T12", "L1", "L2", "L3")) -> tuple[Volume, dict]:
    """Whole-vertebra label map of a short tilted column on an oblique anisotropic grid, and each
    level's true body centroid (RAS mm)."""
    grid = oblique_grid((80, 150, 60), (1.4, 1.2, 2.0))
    local = spine_frame(world_points(grid), tilt_deg=8.0)
    array = np.zeros(grid.array.shape, np.uint8)
    centroids = {}
    points = world_points(grid)
    for n, name in enumerate(levels):
        body, arch = vertebra_parts(local, centre_z=45 - 30 * n)
        array[body | arch] = anatomy.code_of(name)
        centroids[name] = points[body].mean(axis=0)
    return grid.with_array(array), centroids


def body_centroids(labels: Volume) -> dict:
    out = {}
    for code in (int(c) for c in np.unique(labels.array) if c):
        out[anatomy.name_of(code)] = labels.kji_to_ras(np.argwhere(labels.array == code)).mean(axis=0)
    return out


def test_synthetic_ct_keeps_the_labels_geometry_and_is_in_hounsfield_units():
    pytest.importorskip("torchio")
    from SpineLabelLib.synthesis import synthesise

    labels, truth = spine_labels()
    case = synthesise(labels, "ct", seed=4, spacing=2.0, geometry=False, crop=False)
    assert case.modality == "ct" and case.image.same_grid(case.labels)
    found = body_centroids(case.labels)
    assert set(found) == set(truth)
    for name in truth:
        assert np.linalg.norm(found[name] - truth[name]) < 3.0
    image, bodies = case.image.array, case.labels.array > 0
    assert 50 < image[bodies].mean() < 1200      # bone in HU (real cancellous bone can be ~70 HU)
    assert image.min() < -700                                         # air outside the body
    from scipy import ndimage

    around = ndimage.binary_dilation(bodies, iterations=4) & ~ndimage.binary_dilation(bodies, iterations=2)
    assert image[bodies].mean() > image[around].mean()               # bodies stand out of their surroundings


@pytest.mark.parametrize("contrast", ["t2", "random"])
def test_synthesis_is_reproducible_by_seed(contrast):
    pytest.importorskip("torchio")
    from SpineLabelLib.synthesis import synthesise

    labels, _ = spine_labels(("L1", "L2", "L3"))
    first = synthesise(labels, contrast, seed=7, spacing=2.5)
    again = synthesise(labels, contrast, seed=7, spacing=2.5)
    other = synthesise(labels, contrast, seed=8, spacing=2.5)
    assert np.array_equal(first.image.array, again.image.array)
    assert np.array_equal(first.labels.array, again.labels.array)
    assert np.allclose(first.image.ijk_to_ras, again.image.ijk_to_ras)
    assert not (first.image.array.shape == other.image.array.shape
                and np.allclose(first.image.array, other.image.array))


def test_augmented_synthesis_moves_image_and_labels_together():
    """With tilt, elastic deformation, crop and a random storage orientation, the returned labels
    still sit on the synthetic bone."""
    pytest.importorskip("torchio")
    from SpineLabelLib.synthesis import synthesise

    labels, _ = spine_labels()
    case = synthesise(labels, "ct", seed=11, spacing=2.0)
    bodies = case.labels.array > 0
    assert bodies.any()
    assert case.image.array[bodies].mean() > 90
    assert set(np.unique(case.labels.array)) - {0} <= {anatomy.code_of(n) for n in ("T12", "L1", "L2", "L3")}


def test_training_shares_override_named_groups_and_refuse_unknown_ones():
    from SpineLabelLib.synthesis.training import SHARES, parse_shares

    shares = parse_shares("ctreal=0.25, synth=0.3")
    assert shares["ctreal"] == 0.25 and shares["synth"] == 0.3
    assert shares["real"] == SHARES["real"]                          # the others keep their share
    assert parse_shares("") == SHARES
    with pytest.raises(ValueError, match="unknown group 'chest'"):
        parse_shares("chest=0.5")


def test_training_from_scratch_keeps_the_bundled_architecture_but_none_of_its_weights():
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.synthesis.training import SCRATCH, initial_state

    bundled = load_model("vertebra-detector")
    config, weights, origin = initial_state(SCRATCH)
    assert weights is None and "scratch" in origin
    assert config.to_dict() == bundled.network.config.to_dict()
    config, weights, origin = initial_state("vertebra-detector")
    assert weights is not None and set(weights) == set(bundled.network.state_dict())
    assert bundled.version in origin


def test_corrected_cases_from_the_export_join_the_mix_by_their_modality(tmp_path):
    """The product's loop feeds the synthesis trainer: an exported CT goes to the real-CT group (its
    thick-slice and bone draws), an exported MRI to the real-MRI group, named by the export's case id."""
    from SpineLabelLib.dataset import export_case
    from SpineLabelLib.models.maskrcnn.data import Case
    from SpineLabelLib.phantom import generate_phantom
    from SpineLabelLib.synthesis.cases import prepare_corrected
    from SpineLabelLib.synthesis.training import load_pool

    dataset, mix = tmp_path / "dataset", tmp_path / "mix"
    mix.mkdir()
    for modality, seed in (("ct", 3), ("t2", 4)):
        phantom = generate_phantom(["T12", "L1", "L2"], modality, spacing=(1.6, 1.3, 2.4), seed=seed,
                                   crop_to_spine=True, rotation_deg=(5.0, -3.0, 2.0))
        labels = phantom.labels.array.copy()
        labels[(labels == 0) & (np.indices(labels.shape)[0] == labels.shape[0] // 2)] = 100 + anatomy.code_of("L1")
        export_case(dataset, phantom.image, Volume(labels, phantom.labels.ijk_to_ras),  # with a "disc" label
                    modality="ct" if modality == "ct" else "mr")
    manifest = {}
    prepare_corrected(dataset, mix, manifest)

    ct, mr = mix / "ctreal_corrected-spl_0001.npz", mix / "real_corrected-spl_0002.npz"
    assert sorted(p.name for p in mix.iterdir()) == [ct.name, mr.name]      # no staging left behind
    assert Case.load(ct).ct and not Case.load(mr).ct
    assert Case.load(ct).blank_top                       # unlabelled vertebrae above may be in view
    assert set(np.unique(Case.load(ct).labels)) - {0} == {anatomy.code_of(n) for n in ("T12", "L1", "L2")}
    assert manifest["corrected"]["cases"]["spl_0001"] == {"modality": "ct", "levels": ["T12", "L1", "L2"],
                                                          "file": ct.name}
    cases, _, counts = load_pool(mix)
    assert {g: n for g, n in counts.items() if n} == {"ctreal": 1, "real": 1}
