"""Volume reading: bad inputs give one InputError line; good inputs keep oblique, anisotropic geometry."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SpineLabelLib.core.errors import InputError
from SpineLabelLib.core.volume import LPS_TO_RAS, Volume, load_volume, save_volume

from conftest import oblique_image


def one_line_error(path, match: str | None = None) -> str:
    with pytest.raises(InputError, match=match) as error:
        load_volume(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def float_image(shape=(5, 6, 7)) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(1).random(shape).astype(np.float32))


# --- bad inputs ---------------------------------------------------------------------------
def test_missing_path(tmp_path):
    one_line_error(tmp_path / "absent.nii.gz", "no such file")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    one_line_error(tmp_path / "empty.nii.gz", "empty")


@pytest.mark.parametrize("name", ["notes.nii.gz", "notes.nrrd", "notes.mha", "notes.nii"])
def test_text_file_with_image_name(tmp_path, name):
    (tmp_path / name).write_text("patient list, not an image\n")
    one_line_error(tmp_path / name, "gzip|not a readable image")


def test_truncated_gzip(tmp_path):
    sitk.WriteImage(float_image((20, 20, 20)), str(tmp_path / "whole.nii.gz"), True)
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "cut.nii.gz", "truncated gzip")


def test_two_dimensional_image(tmp_path):
    sitk.WriteImage(float_image((5, 6)), str(tmp_path / "slice.nii.gz"))
    one_line_error(tmp_path / "slice.nii.gz", "3-D volume, got 2-D")


def test_single_slice_volume(tmp_path):
    sitk.WriteImage(float_image((1, 6, 7)), str(tmp_path / "flat.nrrd"))
    one_line_error(tmp_path / "flat.nrrd", "at least 2 voxels")


def test_four_dimensional_image(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(2).random((3, 5, 6, 7)).astype(np.float32), isVector=False)
    sitk.WriteImage(image, str(tmp_path / "series.nii.gz"))
    one_line_error(tmp_path / "series.nii.gz", "3-D volume, got 4-D")


def test_vector_image(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(3).random((5, 6, 7, 3)).astype(np.float32), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    one_line_error(tmp_path / "rgb.nrrd", "scalar volume")


def test_nan_voxels(tmp_path):
    array = np.random.default_rng(4).random((5, 6, 7)).astype(np.float32)
    array[2, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    one_line_error(tmp_path / "nan.nrrd", "NaN")


def test_constant_image(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7), np.int16)), str(tmp_path / "zero.nrrd"))
    one_line_error(tmp_path / "zero.nrrd", "same value")


def test_zero_spacing(tmp_path):
    sitk.WriteImage(float_image(), str(tmp_path / "ok.mha"), False)
    header = (tmp_path / "ok.mha").read_bytes()
    assert b"ElementSpacing = 1 1 1" in header
    (tmp_path / "zero.mha").write_bytes(header.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 0 1 1"))
    one_line_error(tmp_path / "zero.mha", "spacing")


def test_absurd_spacing(tmp_path):
    image = float_image()
    image.SetSpacing([0.001, 1.0, 1.0])
    sitk.WriteImage(image, str(tmp_path / "tiny.nrrd"))
    one_line_error(tmp_path / "tiny.nrrd", "spacing")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    one_line_error(tmp_path / "notes", "no DICOM series")


def test_bad_inputs_print_no_traceback_or_itk_noise(tmp_path):
    """In a fresh interpreter: the user sees exactly the one line, no ITK/GDCM warning on stderr."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "text.nrrd").write_text("hello")
    code = ("import sys\n"
            "from SpineLabelLib.core.volume import load_volume\n"
            "from SpineLabelLib.core.errors import SpineLabelError\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n        load_volume(p)\n"
            "    except SpineLabelError as e:\n        print(e, file=sys.stderr)\n")
    paths = [str(tmp_path / "notes"), str(tmp_path / "text.nrrd"), str(tmp_path / "absent.nii")]
    run = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 0 and len(lines) == 3, run.stderr
    assert all(line.startswith(p) for line, p in zip(lines, paths))
    assert "Traceback" not in run.stderr and "WARNING" not in run.stderr


# --- good inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["case.nii.gz", "case.nii", "case.nrrd", "case.mha"])
def test_round_trip_keeps_oblique_anisotropic_geometry(tmp_path, name):
    image = oblique_image()
    loaded = load_volume(save_volume(image, tmp_path / name))
    assert loaded.same_grid(image, 1e-4)
    assert np.array_equal(loaded.array, image.array) and loaded.array.dtype == image.array.dtype


def test_nifti_written_by_nibabel_is_read_in_ras(tmp_path):
    import nibabel
    image = oblique_image()
    nibabel.save(nibabel.Nifti1Image(image.array.transpose(2, 1, 0), image.ijk_to_ras), str(tmp_path / "nb.nii.gz"))
    loaded = load_volume(tmp_path / "nb.nii.gz")
    assert np.allclose(loaded.ijk_to_ras, image.ijk_to_ras, atol=1e-4)      # NIfTI affine is RAS
    assert np.array_equal(loaded.array, image.array)


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_written_by_pynrrd_in_lps_or_ras(tmp_path, space):
    import nrrd
    image = oblique_image()
    to_space = LPS_TO_RAS @ image.ijk_to_ras if space.startswith("left") else image.ijk_to_ras
    header = {"space": space, "space directions": to_space[:3, :3].T, "space origin": to_space[:3, 3],
              "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "p.nrrd"), image.array.transpose(2, 1, 0), header)
    loaded = load_volume(tmp_path / "p.nrrd")
    assert np.allclose(loaded.ijk_to_ras, image.ijk_to_ras, atol=1e-6)
    assert np.array_equal(loaded.array, image.array)


def test_saved_nrrd_is_lps_on_disk(tmp_path):
    import nrrd
    image = oblique_image()
    header = nrrd.read_header(str(save_volume(image, tmp_path / "s.nrrd")))
    expected = LPS_TO_RAS @ image.ijk_to_ras
    assert header["space"] == "left-posterior-superior"
    assert np.allclose(np.asarray(header["space directions"]).T, expected[:3, :3])
    assert np.allclose(header["space origin"], expected[:3, 3])


def write_dicom_series(image: Volume, folder, patient_name: str = "Spine^Test") -> None:
    """One CT slice per file with the geometry tags GDCM needs (positions and orientation in LPS)."""
    folder.mkdir()
    ijk_to_lps = LPS_TO_RAS @ image.ijk_to_ras
    direction_lps = ijk_to_lps[:3, :3] / image.spacing
    orientation = "\\".join(f"{v:.10f}" for v in np.concatenate([direction_lps[:, 0], direction_lps[:, 1]]))
    study, series = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.1.2"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.array.shape[0]):
        slice_ = sitk.GetImageFromArray(image.array[k][np.newaxis])
        position = ijk_to_lps @ np.array([0.0, 0.0, k, 1.0])
        # The writer takes PixelSpacing from the image itself, so the slice carries the geometry too.
        slice_.SetSpacing([float(image.spacing[0]), float(image.spacing[1]), float(image.spacing[2])])
        slice_.SetOrigin([float(v) for v in position[:3]])
        slice_.SetDirection([float(v) for v in direction_lps.ravel()])
        tags = {
            "0010|0010": patient_name, "0010|0020": "SL-TEST", "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series}.{k + 1}",
            "0020|000d": study, "0020|000e": series, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position[:3]), "0020|0037": orientation,
            "0028|0030": f"{image.spacing[1]:.10f}\\{image.spacing[0]:.10f}",   # row spacing (j), column spacing (i)
            "0018|0050": f"{image.spacing[2]:.10f}", "0028|1052": "0", "0028|1053": "1",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder_keeps_geometry(tmp_path):
    import pydicom
    image = oblique_image(shape_kji=(6, 10, 8))
    write_dicom_series(image, tmp_path / "series")
    assert str(pydicom.dcmread(str(tmp_path / "series" / "slice000.dcm")).PatientName) == "Spine^Test"
    loaded = load_volume(tmp_path / "series")
    assert loaded.array.shape == image.array.shape
    assert np.allclose(loaded.ijk_to_ras, image.ijk_to_ras, atol=1e-4)
    assert np.array_equal(loaded.array.astype(np.int16), image.array)


def test_dicom_single_slice_is_refused(tmp_path):
    image = oblique_image(shape_kji=(1, 10, 8))
    write_dicom_series(image, tmp_path / "one")
    one_line_error(tmp_path / "one", "single slice")
