"""Endplates on the image's edge (SpineLabelLib.alignment.image_edges): a mask whose plate is tilted
off the image's plate is pulled back to the image; thick slices and contrast-free images keep the mask."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import oblique_directions
from test_alignment import body_axes, degrees_between, make_grid, paint_body, plate_normal

from SpineLabelLib.alignment.endplates import fit_body
from SpineLabelLib.alignment.image_edges import refine_surface
from SpineLabelLib.core.volume import Volume

LPS = np.diag([-1.0, -1.0, 1.0])
CENTRE = np.array([3.0, -2.0, 5.0])


def _body_and_image(spacing, directions, image_tilt, mask_tilt, contrast=True, seed=0):
    shape, affine = make_grid(spacing, directions, (40.0, 40.0, 30.0))
    axes = body_axes(sagittal_deg=6.0, coronal_deg=-4.0)
    truth = paint_body(np.zeros(shape, np.uint8), affine, CENTRE, axes, 1, image_tilt, -3.0)
    mask = paint_body(np.zeros(shape, np.uint8), affine, CENTRE, axes, 1, mask_tilt, -3.0) > 0
    rng = np.random.default_rng(seed)
    values = np.where(truth > 0, 200.0, 80.0) if contrast else np.full(shape, 120.0)
    image = Volume((values + rng.normal(0, 4.0, shape)).astype(np.float32), affine)
    return mask, Volume(mask.astype(np.uint8), affine), image, axes


@pytest.mark.parametrize("directions", [LPS, oblique_directions(20) @ LPS], ids=["lps", "oblique_lps"])
def test_a_mask_tilted_off_the_image_plate_is_pulled_onto_the_image(directions):
    mask, grid, image, axes = _body_and_image((1.0, 1.0, 1.0), directions, image_tilt=8.0, mask_tilt=12.0)
    from_mask = fit_body("L3", mask, grid).superior
    from_image = fit_body("L3", mask, grid, image=image).superior
    expected = plate_normal(axes, 8.0)
    assert degrees_between(from_mask.normal, expected) > 2.5          # the mask alone follows its own tilt
    assert degrees_between(from_image.normal, expected) < 0.8
    assert from_image.usable


def test_thick_slices_along_the_plate_normal_keep_the_mask():
    mask, grid, image, _ = _body_and_image((0.8, 0.8, 2.0), np.eye(3), image_tilt=8.0, mask_tilt=12.0)
    from_mask = fit_body("L3", mask, grid).superior
    from_image = fit_body("L3", mask, grid, image=image).superior
    np.testing.assert_allclose(from_image.normal, from_mask.normal, atol=1e-9)


def test_an_image_without_contrast_keeps_the_mask():
    mask, grid, image, _ = _body_and_image((1.0, 1.0, 1.0), LPS, image_tilt=8.0, mask_tilt=12.0, contrast=False)
    image.array[:] = 120.0
    from_mask = fit_body("L3", mask, grid).superior
    from_image = fit_body("L3", mask, grid, image=image).superior
    np.testing.assert_allclose(from_image.normal, from_mask.normal, atol=1e-9)


@pytest.mark.parametrize("body_brighter", [True, False])
def test_the_edge_is_found_for_either_contrast_and_only_within_reach(body_brighter):
    s = np.arange(-10.0, 10.0, 0.5)
    edges = np.array([1.3, -0.7, 6.0])           # true plate positions; the last is out of reach
    inside, outside = (200.0, 80.0) if body_brighter else (80.0, 200.0)
    profile = np.where(s[None, :] <= edges[:, None], inside, outside)   # body below (superior plate)
    mask_surface = np.array([0.0, 0.5, 0.0])
    refined = refine_surface(profile, s, mask_surface, "superior", 120.0)
    between_samples = np.floor(edges[:2] / 0.5) * 0.5 + 0.25      # the step lies between two samples
    np.testing.assert_allclose(refined[:2], between_samples, atol=0.1)
    assert abs(refined[2] - mask_surface[2]) <= 2.5                        # never beyond the search
