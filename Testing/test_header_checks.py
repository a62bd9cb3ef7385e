"""Inputs the image reader would silently repair: NaN voxels and zero/negative spacing get one line."""
from __future__ import annotations

import subprocess
import sys

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from SpineLabelLib.core.errors import InputError
from SpineLabelLib.io.header_checks import check_file_header
from SpineLabelLib.core.volume import load_volume


def spine_like(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-100, 900, (24, 20, 16)).astype(np.float32)


def nifti_with_pixdim(path, pixdim) -> None:
    """A NIfTI file whose stored pixdim is exactly `pixdim` (nibabel would otherwise fix it)."""
    image = nibabel.Nifti1Image(spine_like(), np.diag([0.8, 0.9, 2.0, 1.0]))
    image.update_header()
    header = image.header
    header["pixdim"][1:4] = pixdim
    header.set_sform(None, code=0)
    header.set_qform(None, code=0)
    header["pixdim"][1:4] = pixdim
    with open(path, "wb") as stream:
        header.write_to(stream)
        stream.write(b"\0" * (int(header["vox_offset"]) - stream.tell()))
        stream.write(np.asfortranarray(image.get_fdata(dtype=np.float32)).tobytes(order="F"))


def metaimage_with_spacing(path, spacing: str) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(spine_like()), str(path))
    text = path.read_bytes().replace(b"ElementSpacing = 1 1 1", f"ElementSpacing = {spacing}".encode())
    path.write_bytes(text)


def test_nan_voxels_in_nifti_are_refused_although_itk_reads_them_as_zero(tmp_path):
    array = spine_like()
    array[3, 4, 5] = np.nan
    array[7, 1, 2] = np.inf
    path = tmp_path / "nan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(array.T, np.diag([0.8, 0.9, 2.0, 1.0])), str(path))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()   # what ITK makes of it
    with pytest.raises(InputError, match="2 NaN or infinite voxel values"):
        load_volume(path)


@pytest.mark.parametrize("pixdim", [(0.8, 0.0, 2.0), (0.8, -0.9, 2.0)])
def test_zero_or_negative_nifti_pixdim_is_refused(tmp_path, pixdim):
    path = tmp_path / "bad.nii"
    nifti_with_pixdim(path, pixdim)
    with pytest.raises(InputError, match=r"voxel spacing \[0.8, -?0.(0|9), 2.0\] mm is zero, negative"):
        load_volume(path)


def test_a_good_nifti_passes_the_header_check(tmp_path):
    path = tmp_path / "good.nii"
    nifti_with_pixdim(path, (0.8, 0.9, 2.0))
    check_file_header(path)
    assert np.allclose(load_volume(path).spacing, (0.8, 0.9, 2.0))


@pytest.mark.parametrize("spacing", ["1 0 1", "1 -1 1"])
def test_zero_or_negative_metaimage_spacing_is_refused(tmp_path, spacing):
    path = tmp_path / "bad.mha"
    metaimage_with_spacing(path, spacing)
    with pytest.raises(InputError, match="zero, negative"):
        load_volume(path)


def test_run_on_nan_and_zero_spacing_volumes_is_one_line_exit_1_nothing_written(tmp_path):
    nan_path = tmp_path / "nan_ct.nii.gz"
    array = spine_like()
    array[0, 0, 0] = np.nan
    nibabel.save(nibabel.Nifti1Image(array.T, np.eye(4)), str(nan_path))
    zero_path = tmp_path / "zero_ct.nii"
    nifti_with_pixdim(zero_path, (1.0, 0.0, 1.0))
    out = tmp_path / "out"
    for path, problem in ((nan_path, "NaN"), (zero_path, "zero, negative")):
        proc = subprocess.run([sys.executable, "-m", "SpineLabelLib", "run", str(path), "--out", str(out), "-q"],
                              capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and problem in lines[0], proc.stderr
        assert lines[0].startswith(f"spinelabel: {path}")
    assert not out.exists() or not any(out.iterdir())
