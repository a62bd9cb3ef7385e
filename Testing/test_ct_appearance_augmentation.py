"""The training-time CT appearance augmentations: thicker axial slices and less dense bone."""
import numpy as np

from SpineLabelLib.models.maskrcnn.data import (SOFT_TISSUE_LEVEL, Case, SliceSampler,
                                                 scale_bone_contrast, thicken_axial_slices)


def _striped_slice(rows=120, columns=40, period=8):
    """Three channels of bright bodies and dark discs alternating along the rows (head to feet)."""
    profile = np.where((np.arange(rows) // (period // 2)) % 2 == 0, 0.6, 0.2).astype(np.float32)
    return np.repeat(profile[None, :, None], columns, axis=2).repeat(3, axis=0)


def test_thick_slices_blur_only_along_the_superior_inferior_axis():
    image = _striped_slice()
    thick = thicken_axial_slices(image, 4.0)
    assert thick.shape == image.shape and thick.dtype == np.float32
    # Discs 4 px apart at 4 px slices: the stripes lose most of their contrast...
    assert np.ptp(thick[0, 20:100, 5]) < 0.5 * np.ptp(image[0, 20:100, 5])
    # ...the mean intensity is kept, and nothing changes across the columns (anterior-posterior).
    assert abs(thick[0, 20:100].mean() - image[0, 20:100].mean()) < 0.02
    np.testing.assert_allclose(thick[:, :, 0], thick[:, :, -1], atol=1e-6)


def test_thin_factor_keeps_a_smooth_image():
    rows = np.linspace(0, 1, 100, dtype=np.float32)
    image = np.repeat(rows[None, :, None], 10, axis=2).repeat(3, axis=0)
    thick = thicken_axial_slices(image, 1.5)
    np.testing.assert_allclose(thick[:, 10:90], image[:, 10:90], atol=0.01)


def test_bone_contrast_scales_only_what_is_denser_than_soft_tissue():
    image = np.array([[[0.0, SOFT_TISSUE_LEVEL * 0.5, SOFT_TISSUE_LEVEL, 0.8]]] * 3, np.float32)
    out = scale_bone_contrast(image, 0.5)
    np.testing.assert_allclose(out[0, 0, :3], image[0, 0, :3])
    np.testing.assert_allclose(out[0, 0, 3], SOFT_TISSUE_LEVEL + 0.5 * (0.8 - SOFT_TISSUE_LEVEL), rtol=1e-6)


def _case(ct: bool) -> Case:
    rng = np.random.default_rng(0)
    image = rng.random((12, 96, 64)).astype(np.float32)
    labels = np.zeros((12, 96, 64), np.uint8)
    labels[:, 20:40, 20:44] = 20
    labels[:, 50:70, 20:44] = 21
    return Case(image=image, labels=labels, blank_top=False, name="case", ct=ct)


def test_sampler_applies_ct_appearance_to_ct_cases_only_and_reproducibly():
    kwargs = dict(size=64, slice_offset=1, thick_slices=1.0, bone_density=1.0)
    first = SliceSampler([_case(True)], seed=3, **kwargs).sample()
    again = SliceSampler([_case(True)], seed=3, **kwargs).sample()
    np.testing.assert_array_equal(first[0], again[0])
    plain = SliceSampler([_case(True)], seed=3, size=64, slice_offset=1).sample()
    assert not np.allclose(first[0], plain[0])
    mri = SliceSampler([_case(False)], seed=3, **kwargs).sample()
    mri_plain = SliceSampler([_case(False)], seed=3, size=64, slice_offset=1).sample()
    np.testing.assert_array_equal(mri[0], mri_plain[0])


def test_prepared_cases_remember_their_modality_so_fine_tuning_augments_real_ct(tmp_path):
    from SpineLabelLib.core.volume import Volume, make_affine
    from SpineLabelLib.models.maskrcnn.data import CT_APPEARANCE, prepare_case
    from SpineLabelLib.training.recipes import DetectorRecipe

    image = np.full((30, 40, 20), 40.0, np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[10:18, 10:30, 5:15] = 20
    affine = make_affine((1.0, 1.0, 2.0), np.eye(3))
    for modality in ("ct", "mr"):
        prepare_case(Volume(image, affine), Volume(labels, affine), 1.25, tmp_path / f"{modality}.npz", "real",
                     modality=modality)
    assert Case.load(tmp_path / "ct.npz").ct and not Case.load(tmp_path / "mr.npz").ct
    # `spinelabel train`'s detector recipe applies the same CT appearance draws as the synthesis mix,
    # unless its caller says otherwise.
    sampler = DetectorRecipe([Case.load(tmp_path / "ct.npz")]).sampler(_Config(), seed=0)
    assert (sampler.thick_slices, sampler.bone_density) == (CT_APPEARANCE["thick_slices"], CT_APPEARANCE["bone_density"])
    sampler = DetectorRecipe([Case.load(tmp_path / "ct.npz")], augment={"thick_slices": 0.0}).sampler(_Config(), seed=0)
    assert sampler.thick_slices == 0.0 and sampler.bone_density == CT_APPEARANCE["bone_density"]


class _Config:
    train_size = 64
    slice_offset = 1


def test_s1_is_a_detector_class_and_unlabelled_sacrum_below_real_labels_is_blanked():
    from SpineLabelLib.core import anatomy
    from SpineLabelLib.models.maskrcnn.data import make_target

    s1, l5 = anatomy.code_of("S1"), anatomy.code_of("L5")
    labels = np.zeros((96, 64), np.uint8)
    labels[20:40, 20:44], labels[50:70, 20:44] = l5, s1
    target = make_target(labels)
    assert sorted(target["labels"].tolist()) == [anatomy.ORDER.index("L5") + 1, anatomy.ORDER.index("S1") + 1]

    def real_case(with_s1: bool) -> Case:
        image = np.ones((12, 96, 64), np.float32)
        codes = np.zeros((12, 96, 64), np.uint8)
        codes[:, 20:40, 20:44] = l5
        if with_s1:
            codes[:, 50:70, 20:44] = s1
        return Case(image=image, labels=codes, blank_top=True, name="real")

    kwargs = dict(size=96, slice_offset=1, augment=False)
    without = SliceSampler([real_case(False)], seed=1, **kwargs)
    with_s1 = SliceSampler([real_case(True)], seed=1, **kwargs)
    image, _ = without._blank_below(*without.slice_stack(without.cases[0], 5), without.bottoms[0])
    assert image[:, 45:].max() == 0 and image[:, 25:40].min() == 1     # below L5: not shown
    assert with_s1.bottoms[0] is None                                    # the sacrum is a target there


def test_contrast_remap_changes_mri_draws_only_and_keeps_the_anatomy_edges():
    from SpineLabelLib.models.maskrcnn.data import remap_contrast

    image = _striped_slice()
    remapped = remap_contrast(image, np.random.default_rng(5))
    np.testing.assert_array_equal(remapped, remap_contrast(image, np.random.default_rng(5)))
    assert remapped.dtype == np.float32 and 0.0 <= remapped.min() and remapped.max() <= 1.0
    # One intensity in, one out: bodies and discs stay where they were, only their brightness changes.
    bright, dark = remapped[0, :4, 0], remapped[0, 4:8, 0]
    assert np.ptp(bright) == 0 and np.ptp(dark) == 0
    kwargs = dict(size=64, slice_offset=1, contrast_remap=1.0)
    plain = dict(size=64, slice_offset=1)
    assert not np.allclose(SliceSampler([_case(False)], seed=3, **kwargs).sample()[0],
                           SliceSampler([_case(False)], seed=3, **plain).sample()[0])
    np.testing.assert_array_equal(SliceSampler([_case(True)], seed=3, **kwargs).sample()[0],
                                  SliceSampler([_case(True)], seed=3, **plain).sample()[0])
