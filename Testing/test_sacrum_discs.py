"""The sacrum seen by its discs on MRI (`naming.sacrum`, `stages.disc_map`): a disc above the lowest body,
none below it although the image goes on, is the first sacral segment; a clear disc below says it is not."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.core.result import SpineResult, Vertebra
from SpineLabelLib.naming import sacrum
from SpineLabelLib.naming.anchors import AnchorEvidence
from SpineLabelLib.naming.labelling import assign_levels, relabel_result
from SpineLabelLib.naming.sacrum import DiscFindings, combine, sacrum_evidence
from conftest import oblique_image
from test_labelling import levels_between, spine_points

LUMBAR_DISCS = [5000.0, 6000.0, 6500.0, 7000.0, 6200.0]      # mm3, L1-L2 ... L5-S1 of a young adult


# --- the evidence from disc volumes ------------------------------------------------------------------
def test_lowest_body_with_a_disc_above_and_none_below_is_the_sacrum():
    p = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [300.0]), room_below_mm=60.0, bone_below=1.0))
    assert p[-1] >= 0.9
    assert np.all(p[:-1] < 0.2)                          # every body with a clear disc below is not S1


def test_a_fused_remnant_below_still_counts_as_no_disc_but_a_real_disc_does_not():
    remnant = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [600.0]), 60.0, 1.0))
    disc = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [4500.0]), 60.0, 1.0))
    assert remnant[-1] >= 0.9
    assert disc[-1] < 0.2                                # L5 with its L5-S1 disc below


def test_no_information_where_the_field_of_view_ends_below_the_lowest_body():
    p = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [0.0]), room_below_mm=sacrum.ROOM_MM - 5, bone_below=1.0))
    assert np.isnan(p[-1])                               # nothing seen below is not "no disc below"
    assert np.all(p[:-1] < 0.2)


def test_tissue_unlike_bone_below_weakens_the_sign():
    bone = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [0.0]), 60.0, 1.0))
    gut = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [0.0]), 60.0, 0.1))
    assert bone[-1] > 0.9 and np.isnan(gut[-1])


def test_a_disc_the_model_missed_between_two_bodies_is_not_a_sacrum():
    volumes = np.array([5000.0, 6000.0, 0.0, 7000.0, 6200.0, 5800.0])   # nothing drawn below body 3
    p = sacrum_evidence(DiscFindings(volumes, 60.0, 1.0))
    assert not np.any(np.nan_to_num(p, nan=0.0) >= 0.5)
    assert np.isnan(p[2])


def test_no_disc_seen_anywhere_says_nothing():
    assert np.all(np.isnan(sacrum_evidence(DiscFindings(np.zeros(6), 60.0, 1.0))))


def test_combined_with_the_detector_s1_score():
    assert combine(0.0, np.nan) is None                  # a detector that never scores S1: no information
    assert combine(0.0, 0.9) == pytest.approx(0.9)
    assert combine(0.8, np.nan) == pytest.approx(0.8)
    assert combine(0.8, 0.9) > 0.9                       # two sightings agree
    assert 0.2 < combine(0.8, 0.1) < 0.5                 # a clear disc below outweighs a fair detector score


# --- in the level assignment --------------------------------------------------------------------------
def _shifted_detector_scores(names: list[str], sure: float = 0.8) -> np.ndarray:
    """Scores of a detector that never learnt the sacrum: it calls S1 L5 and counts up from there
    (each body one level too high, the true level second), and scores S1 zero everywhere."""
    scores = np.full((len(names), len(anatomy.ORDER)), 0.01)
    for row, name in enumerate(names):
        true = anatomy.order_index(name) if name != "S1" else anatomy.order_index("L5")
        above = true - 1 if name != "S1" else true
        scores[row, above] = sure
        if name != "S1":
            scores[row, true] = 1.0 - sure - 0.1
    scores[:, anatomy.order_index("S1")] = 0.0
    return scores / scores.sum(axis=1, keepdims=True)


def test_disc_sign_of_the_sacrum_outweighs_a_detector_that_took_it_for_l5():
    names = levels_between("L1", "L5") + ["S1"]
    points = spine_points(names, curve_mm=10)
    scores = _shifted_detector_scores(names)
    assert assign_levels(points, scores)[-1] == "L5"    # the detector alone: everything one level up
    # (this sure, the anchor wins only because a seen sacrum frees the detector's zero S1 score)
    evidence = AnchorEvidence.empty(len(names))
    evidence.sacrum[:] = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [250.0]), 60.0, 1.0))
    assert assign_levels(points, scores, evidence=evidence) == names


def test_a_naming_the_disc_sign_alone_decided_is_flagged():
    names = levels_between("L1", "L5") + ["S1"]
    points = spine_points(names, curve_mm=10)
    scores = _shifted_detector_scores(names)
    discs = sacrum_evidence(DiscFindings(np.array(LUMBAR_DISCS + [250.0]), 60.0, 1.0))
    vertebrae = [Vertebra("", p, instance=n + 1, level_scores=dict(zip(anatomy.ORDER, map(float, s))),
                          evidence={"rib": None, "sacrum": combine(0.0, d), "c2": None, "sacrum_discs": float(d)})
                 for n, (p, s, d) in enumerate(zip(points, scores, discs))]
    result = relabel_result(SpineResult("flag", vertebrae=vertebrae))
    assert result.levels == names
    assert sacrum.disc_decided(result)
    for v in result.vertebrae:                            # without the disc sign the detector's count wins
        v.evidence = {"rib": None, "sacrum": None, "c2": None}
    assert not sacrum.disc_decided(relabel_result(result))


# --- geometry on an oblique, anisotropic grid ----------------------------------------------------------
def test_room_below_follows_the_column_on_an_oblique_grid():
    image = oblique_image(shape_kji=(40, 30, 30), spacing=(1.3, 0.9, 2.1))
    centre = image.kji_to_ras(np.array([[20.0, 15.0, 15.0]]))[0]
    axis = image.ijk_to_ras[:3, 2] / np.linalg.norm(image.ijk_to_ras[:3, 2])     # along k (2.1 mm steps)
    room = sacrum.room_below_mm(image, centre, axis)
    assert room == pytest.approx(19.5 * np.linalg.norm(image.ijk_to_ras[:3, 2]), abs=1.0)
    assert sacrum.room_below_mm(image, centre + 200 * axis, axis) == 0.0


# --- on a phantom MRI with the bundled disc model ------------------------------------------------------
def _as_detected(result: SpineResult) -> list[str]:
    """Clear the phantom's names and give its bodies a sacrum-blind detector's scores; the true names."""
    truth = result.levels
    for v, row in zip(result.vertebrae, _shifted_detector_scores(truth)):
        v.level, v.level_scores = "", dict(zip(anatomy.ORDER, map(float, row)))
    return truth


@pytest.fixture(scope="module")
def sacral_phantom():
    from SpineLabelLib.phantom.generate import generate_phantom

    return generate_phantom(["T12", "L1", "L2", "L3", "L4", "L5", "S1"], "t2", spacing=(1.1, 0.9, 1.3), seed=3,
                            lordosis_deg=30, rotation_deg=(5, -4, 8), crop_to_spine=True)


def test_phantom_sacrum_found_as_the_lowest_body_is_named_s1_by_its_discs(sacral_phantom, tmp_path):
    from SpineLabelLib.app.pipeline import Pipeline, naming_stages
    from SpineLabelLib.core.disc_layer import result_discs
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.io import markups, outputs, segfile, tables
    from SpineLabelLib.measurement.bodies import measure_result
    from SpineLabelLib.measurement.discs import measure_discs
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.discs import SegmentDiscs

    result = sacral_phantom.to_result("sacral")
    truth = _as_detected(result)
    context = RunContext(RunOptions(modality="mr"))
    Pipeline(naming_stages()).run(result, context)
    assert result.notes["disc_map"]["sacrum"][-1] >= 0.9
    assert result.levels == truth and result.levels[-1] == "S1"
    assert "sacrum" in result.naming["anchors"]
    SegmentDiscs().run(result, context)
    assert [d.name for d in result_discs(result)][-1] == "L5-S1"
    assert result.notes["discs"]["reused"] == len(truth) - 1       # the map's discs, not a second model run
    measure_result(result)
    measure_discs(result)
    folder = outputs.write_case_outputs(result, tmp_path)
    _, codes = segfile.read_seg_nrrd(folder / "sacral.seg.nrrd")
    assert codes["S1"] == anatomy.code_of("S1") == 26
    assert markups.read_markups(folder / "sacral.mrk.json")[-1].level == "S1"
    assert tables.read_csv_rows(folder / "sacral.measurements.csv")[-1]["level"] == "S1"
    assert tables.read_csv_rows(folder / "sacral.discs.csv")[-1]["name"] == "L5-S1"


def test_phantom_field_of_view_ending_below_l5_gives_no_sacrum():
    from SpineLabelLib.app.pipeline import Pipeline, naming_stages
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.phantom.generate import generate_phantom
    from SpineLabelLib.stages.base import RunContext

    # flat end plates (a grid rotated about S only), so that a cut just below L5 leaves none of its disc in view
    phantom = generate_phantom(["T12", "L1", "L2", "L3", "L4", "L5", "S1"], "t2", spacing=(1.1, 0.9, 1.3), seed=3,
                               rotation_deg=(0, 0, 10), crop_to_spine=True)
    result = phantom.to_result("cut")
    l5 = result.by_level("L5")
    voxels = result.image.kji_to_ras(np.argwhere(result.mask(l5)))
    bottom = voxels[np.argmin(voxels[:, 2])] - np.array([0.0, 0.0, 2.0])     # the image ends 2 mm below L5
    result = _cut_below(result, result.image.ras_to_kji(bottom[None])[0])
    assert result.levels[-1] == "L5"
    _as_detected(result)
    Pipeline(naming_stages()).run(result, RunContext(RunOptions(modality="mr")))
    assert result.notes["disc_map"]["sacrum"][-1] is None
    assert "S1" not in result.levels and "sacrum" not in result.naming["anchors"]
    assert "no sacrum" in result.naming["reason"]


def _cut_below(result: SpineResult, cut_kji: np.ndarray) -> SpineResult:
    """The phantom with its image ending at ``cut_kji`` along the grid axis closest to inferior."""
    axis = int(np.argmax(np.abs(result.image.ijk_to_ras[2, :3])))     # i, j or k nearest to S
    k_axis = 2 - axis
    sign = np.sign(result.image.ijk_to_ras[2, axis])
    keep = [slice(None)] * 3
    edge = int(round(cut_kji[k_axis]))
    keep[k_axis] = slice(0, edge) if sign < 0 else slice(edge, None)   # drop what lies below the cut
    start = np.array([s.start or 0 for s in keep], float)
    from SpineLabelLib.core.volume import Volume

    origin = result.image.kji_to_ras(start[None])[0]
    affine = result.image.ijk_to_ras.copy()
    affine[:3, 3] = origin
    image = Volume(result.image.array[tuple(keep)].copy(), affine)
    levels = result.level_map()[tuple(keep)]
    kept = {int(c) for c in np.unique(levels) if c}
    full = {int(c): int((result.level_map() == c).sum()) for c in kept}
    whole = [c for c in kept if (levels == c).sum() == full[c]]          # bodies the cut leaves whole
    levels = np.where(np.isin(levels, whole), levels, 0)
    return SpineResult.from_level_map(result.case_id, image, levels, source="phantom", modality="mr")


# --- the stage in the pipeline --------------------------------------------------------------------------
def test_the_disc_map_runs_before_naming_and_the_disc_stage_after_it():
    from SpineLabelLib.app.pipeline import analysis_stages, detection_stages

    names = [stage.name for stage in analysis_stages()]
    assert names.index("disc_map") < names.index("name") < names.index("discs")
    assert [stage.name for stage in detection_stages()][-2:] == ["disc_map", "name"]


def test_the_disc_map_does_nothing_on_ct(sacral_phantom):
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.disc_map import MapDiscs

    result = sacral_phantom.to_result("ct")
    result.modality = "ct"
    MapDiscs().run(result, RunContext(RunOptions()))
    assert "discs" not in result.layers and "disc_map" not in result.notes
