"""`<case>.seg.dcm`: a DICOM Segmentation object written for a DICOM series input (issue 17, item 4).

The series is generated here from a phantom on an oblique, anisotropic grid; the tests' blob detector
finds its bright bodies. The SEG is read back with highdicom and pydicom and compared with the
source slices and with the pipeline's own result, never with numbers typed into the test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from dicom_series import write_dicom_series as series_files  # noqa: E402

from SpineLabelLib.app import pipeline  # noqa: E402
from SpineLabelLib.app.cli import main  # noqa: E402
from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402
from SpineLabelLib.core.volume import LPS_TO_RAS, Volume, save_volume  # noqa: E402
from SpineLabelLib.io.outputs import case_files  # noqa: E402
from SpineLabelLib.phantom import generate_phantom  # noqa: E402

PATIENT = {"PatientName": "DOE^JANE", "PatientID": "PID-4711", "StudyDate": "20240229"}
STUDY_UID = "1.2.826.0.1.3680043.2.1125.17.1"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.17.2"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.2.1125.17.3"


def phantom_image() -> Volume:
    """A lumbar phantom on an oblique grid with three different spacings; bodies bright, the rest
    below the blob detector's threshold (so what it finds is exactly the phantom's bodies)."""
    phantom = generate_phantom(["T12", "L1", "L2", "L3", "L4"], "ct", spacing=(0.9, 1.3, 2.0), seed=3,
                               rotation_deg=(8.0, -5.0, 12.0), crop_to_spine=True, ribs=False)
    array = np.minimum(phantom.image.array, 300.0)
    array[phantom.labels.array > 0] = 1000.0
    return phantom.image.with_array(array.astype(np.int16))


def write_dicom_series(image: Volume, folder: Path) -> list[Path]:
    """One CT slice per file (k order) with the patient, study and geometry tags in LPS."""
    assert not folder.exists()
    patient = {"0010|0010": PATIENT["PatientName"], "0010|0020": PATIENT["PatientID"],
               "0008|0020": PATIENT["StudyDate"], "0020|0052": FRAME_OF_REFERENCE_UID}
    # Shuffled file names: the SEG must follow the series' geometry, not the directory listing.
    return series_files(image, folder, series_uid=SERIES_UID, study_uid=STUDY_UID, tags=patient,
                        file_name=lambda k: f"im{(k * 7919) % 10007:05d}.dcm")   # 10007 is prime: no clashes


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory, blob_model_dir):
    """(series folder, source files in k order, pipeline result, output folder) of one run."""
    root = tmp_path_factory.mktemp("dicom")
    image = phantom_image()
    files = write_dicom_series(image, root / "series 1")
    result = pipeline.run_case(root / "series 1", root / "out",
                               RunOptions(model=str(blob_model_dir), segmenter="none", dicom_seg=True))
    return root / "series 1", files, result, root / "out" / result.case_id


def read_seg(dicom_case) -> hd.seg.Segmentation:
    _, _, result, folder = dicom_case
    return hd.seg.segread(folder / case_files(result.case_id, dicom_seg=True)["dicom_seg"])


def test_seg_is_written_beside_the_contract_and_named_from_the_case_not_the_patient(dicom_case):
    _, _, result, folder = dicom_case
    assert sorted(p.name for p in folder.iterdir()) == sorted(case_files(result.case_id, dicom_seg=True).values())
    for name in (p.name for p in folder.iterdir()):
        assert PATIENT["PatientID"] not in name and "DOE" not in name.upper()


def test_one_segment_per_labelled_body_with_the_level_name_and_its_snomed_codes(dicom_case):
    _, _, result, _ = dicom_case
    seg = read_seg(dicom_case)
    # Segmentation Storage, BINARY: what Slicer's DICOMSegmentationPlugin (dcmqi) loads.
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.Modality == "SEG" and seg.SeriesDescription
    levels = [v.level for v in result.vertebrae if v.level and v.instance]
    assert len(levels) >= 3
    described = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [d.segment_label for d in described] == sorted(levels, key=anatomy.order_index)
    for description in described:
        category = description.SegmentedPropertyCategoryCodeSequence[0]
        kind = description.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", anatomy.ANATOMICAL_STRUCTURE)
        assert (kind.CodingSchemeDesignator, kind.CodeValue) == \
            ("SCT", anatomy.SNOMED_BY_NAME.get(description.segment_label, anatomy.VERTEBRA_SNOMED))


def test_frames_lie_on_the_source_slices_and_hold_the_body_masks(dicom_case):
    _, files, result, _ = dicom_case
    seg = read_seg(dicom_case)
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(str(f), stop_before_pixels=True) for f in files)}
    shared = seg.SharedFunctionalGroupsSequence[0]
    first = next(iter(sources.values()))
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, first.ImageOrientationPatient)
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing)
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose(position, sources[source_uid].ImagePositionPatient, atol=1e-4)
    # Every body voxel comes back in its segment, at the right place on the source grid.
    level_map = result.level_map()
    by_uid = {uid: k for k, uid in enumerate(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID
                                              for f in files)}
    uids = [uid for uid, _ in sorted(by_uid.items(), key=lambda item: item[1])]
    for number in seg.segment_numbers:
        code = anatomy.code_of(seg.get_segment_description(number).segment_label)
        mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[number], ignore_spatial_locations=True)
        assert np.array_equal(mask[..., 0] > 0, level_map == code)


def test_seg_references_the_source_series_and_copies_patient_and_study(dicom_case):
    _, files, _, _ = dicom_case
    seg = read_seg(dicom_case)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == SERIES_UID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in files}
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    assert seg.PatientID == PATIENT["PatientID"] and str(seg.PatientName) == PATIENT["PatientName"]
    assert seg.StudyDate == PATIENT["StudyDate"]
    assert seg.SeriesInstanceUID != SERIES_UID


def test_non_dicom_input_with_dicom_seg_is_one_line_exit_1_and_writes_nothing(tmp_path, capsys, blob_model_dir):
    path = save_volume(phantom_image(), tmp_path / "scan.nii.gz")
    status = main(["run", str(path), "--out", str(tmp_path / "out"), "--model", str(blob_model_dir),
                   "--segmenter", "none", "--dicom-seg", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert status == 1
    assert len(error.splitlines()) == 1 and "DICOM" in error and str(path) in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_without_the_option_no_seg_is_written_and_the_option_reaches_the_cli():
    import argparse

    from SpineLabelLib.core.options import add_run_arguments

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    assert RunOptions.from_args(parser.parse_args(["--dicom-seg"])).dicom_seg is True
    assert RunOptions.from_args(parser.parse_args([])).dicom_seg is False
    assert "dicom_seg" not in case_files("c")


def test_seg_volume_geometry_is_the_source_grid(dicom_case):
    """highdicom's volume of the SEG (axes: slice, row, column; LPS) lies on the source's oblique,
    anisotropic grid: rows along j, columns along i, slices along +-k at the source's spacing."""
    _, _, result, _ = dicom_case
    affine = read_seg(dicom_case).get_volume().affine
    ijk_to_lps = LPS_TO_RAS @ result.image.ijk_to_ras
    assert np.allclose(affine[:3, 2], ijk_to_lps[:3, 0], atol=1e-4)      # column step = i step
    assert np.allclose(affine[:3, 1], ijk_to_lps[:3, 1], atol=1e-4)      # row step = j step
    assert np.allclose(np.abs(affine[:3, 0]), np.abs(ijk_to_lps[:3, 2]), atol=1e-4)
    # The first frame's corner is a voxel of the source grid (an integer index).
    index = np.linalg.solve(ijk_to_lps, affine[:, 3])[:3]
    assert np.allclose(index, np.round(index), atol=1e-3)


def test_batch_script_writes_the_seg_for_a_dicom_folder_and_refuses_a_file(monkeypatch, tmp_path, capsys,
                                                                          blob_model_dir):
    """The headless Slicer script shares the option; its volume node forgets the source files, so the
    script must hand them to the writer itself."""
    pytest.importorskip("slicer")
    from test_batch import run_batch

    write_dicom_series(phantom_image(), tmp_path / "ct")
    nifti = save_volume(phantom_image(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    assert run_batch(monkeypatch, str(tmp_path / "ct"), str(nifti), "--dicom-seg", "--out", str(out),
                     model=blob_model_dir) == 1
    seg = hd.seg.segread(out / "ct" / case_files("ct", dicom_seg=True)["dicom_seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID and len(seg.segment_numbers) >= 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["ct"]   # nothing for the file
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(nifti) in errors[0] and "DICOM" in errors[0]


def test_missing_highdicom_is_one_line_naming_the_extra_before_any_case_runs(dicom_case, tmp_path, capsys,
                                                                             monkeypatch, blob_model_dir):
    folder, _, _, _ = dicom_case
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)     # import highdicom -> ModuleNotFoundError
    status = main(["run", str(folder), "--out", str(tmp_path / "out"), "--model", str(blob_model_dir),
                   "--segmenter", "none", "--dicom-seg", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert status == 1 and len(error.splitlines()) == 1 and "spinelabel[dicom]" in error
    assert not (tmp_path / "out").exists()
