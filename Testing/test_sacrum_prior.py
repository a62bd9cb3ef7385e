"""The S1 shape prior for real training volumes whose masks stop at L5 (synthesis.sacrum_prior):
on a lordotic chain of box bodies with a known S1, on a field of view that cuts the sacrum, and on
a folder of prepared training files (written in place, other files untouched)."""
from __future__ import annotations

import numpy as np

from SpineLabelLib.core import anatomy
from SpineLabelLib.synthesis.sacrum_prior import add_sacral_priors, sacral_prior

SHAPE = (40, 200, 140)          # left-right, superior->inferior, anterior->posterior


def lordotic_chain(turn_deg: float = 9.0, rows: int = SHAPE[1]):
    """Box bodies L3, L4, L5, S1 (12 voxels half-height, 17 half-depth) along a curve that turns by
    ``turn_deg`` per segment in the sagittal plane; discs between them bright. Returns (image,
    labels with S1, the true S1 mask)."""
    grid = np.indices((SHAPE[0], rows, SHAPE[2])).astype(float)
    image = np.full(grid.shape[1:], 0.15)
    labels = np.zeros(grid.shape[1:], np.uint8)
    centre = np.array([40.0, 50.0])                  # row, column of L3
    angle = np.radians(-10.0)
    for name in ("L3", "L4", "L5", "S1"):
        down = np.array([np.cos(angle), np.sin(angle)])     # along the column
        front = np.array([-np.sin(angle), np.cos(angle)])   # along the body's depth
        rel = np.stack([grid[1] - centre[0], grid[2] - centre[1]], axis=-1)
        along, depth = rel @ down, rel @ front
        body = (np.abs(along) <= 12) & (np.abs(depth) <= 17) & (np.abs(grid[0] - 20) <= 14)
        disc = (along > 12) & (along <= 19) & (np.abs(depth) <= 15) & (np.abs(grid[0] - 20) <= 12)
        image[body] = 0.5
        if name != "S1":
            image[disc & (labels == 0)] = 0.95
        labels[body] = anatomy.code_of(name)
        centre = centre + 31 * down
        angle += np.radians(turn_deg)
    image += np.random.default_rng(0).normal(0, 0.02, image.shape)
    s1 = labels == anatomy.code_of("S1")
    return image.astype(np.float32), np.where(s1, 0, labels).astype(np.uint8), s1


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_s1_is_drawn_below_l5_where_the_curve_continues():
    image, labels, truth = lordotic_chain()
    s1, why = sacral_prior(image, labels)
    assert s1 is not None, why
    assert dice(s1, truth) > 0.75
    assert np.linalg.norm(np.argwhere(s1).mean(0) - np.argwhere(truth).mean(0)) < 3.0
    assert not (s1 & (labels > 0)).any()                      # never over a labelled body


def test_a_straight_extrapolation_would_miss_the_turned_sacrum():
    """The prior follows the L4->L5 turn: against L5 merely shifted by the L4->L5 step, it is closer."""
    image, labels, truth = lordotic_chain(turn_deg=14.0)
    s1, _ = sacral_prior(image, labels)
    l4, l5 = np.argwhere(labels == anatomy.code_of("L4")), np.argwhere(labels == anatomy.code_of("L5"))
    shifted = np.rint(l5 + (l5.mean(0) - l4.mean(0))).astype(int)
    shifted = shifted[np.all((shifted >= 0) & (shifted < np.array(labels.shape)), axis=1)]
    straight = np.zeros_like(truth)
    straight[tuple(shifted.T)] = True
    assert dice(s1, truth) > dice(straight, truth) + 0.05


def test_bright_disc_tissue_is_left_out():
    image, labels, truth = lordotic_chain()
    bright = image > 0.8
    s1, _ = sacral_prior(image, labels)
    assert not (s1 & bright).any()


def test_a_field_of_view_ending_below_l5_gives_no_s1():
    image, labels, _ = lordotic_chain()
    last_l5_row = np.argwhere(labels == anatomy.code_of("L5"))[:, 1].max()
    s1, why = sacral_prior(image[:, : last_l5_row + 6], labels[:, : last_l5_row + 6])
    assert s1 is None and "out of view" in why


def test_missing_l4_gives_no_s1_and_says_why():
    image, labels, _ = lordotic_chain()
    labels[labels == anatomy.code_of("L4")] = 0
    s1, why = sacral_prior(image, labels)
    assert s1 is None and "L4" in why


def test_a_prepared_folder_gets_s1_in_its_real_files_only(tmp_path):
    image, labels, truth = lordotic_chain()
    for name in ("real_a", "val_b", "synth_c"):
        np.savez_compressed(tmp_path / f"{name}.npz", image=image.astype(np.float16), labels=labels,
                            kind=np.array("real"), spacing=np.array(1.25))
    report = add_sacral_priors(tmp_path)
    assert set(report) == {"real_a", "val_b"}
    s1 = anatomy.code_of("S1")
    for name in ("real_a", "val_b"):
        with np.load(tmp_path / f"{name}.npz") as stored:
            assert dice(stored["labels"] == s1, truth) > 0.75
            assert stored["kind"] == "real" and float(stored["spacing"]) == 1.25
    with np.load(tmp_path / "synth_c.npz") as stored:
        assert not (stored["labels"] == s1).any()
    again = add_sacral_priors(tmp_path)                       # idempotent: S1 now labelled
    assert all("already" in why for why in again.values())
