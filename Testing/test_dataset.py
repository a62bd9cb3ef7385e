"""Training-set export (SpineLabelLib.dataset): layout, read-back, locking, crash safety, privacy."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SpineLabelLib import dataset as ds
from SpineLabelLib.dataset import lock
from SpineLabelLib.dataset.corrections import _sanitised_actions
from SpineLabelLib.io.summary import sha256_file
from SpineLabelLib.core.errors import InputError, SpineLabelError
from SpineLabelLib.core.result import SpineResult, Vertebra
from SpineLabelLib.core.volume import Volume, load_volume, make_affine, save_volume

WORKER = Path(__file__).with_name("dataset_export_worker.py")
SHAPE_KJI = (9, 12, 10)
L1, L2, L3, T12 = 20, 21, 22, 19


def oblique_affine(origin=(-12.3, 40.1, -7.7)) -> np.ndarray:
    rotation = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    return make_affine((0.9, 1.3, 2.1), rotation, origin)


def make_case(seed: int = 0, affine: np.ndarray | None = None) -> tuple[Volume, Volume]:
    """A tiny oblique, anisotropic image and a level-code label map with L1 and L2 on its grid."""
    rng = np.random.default_rng(seed)
    image = Volume(rng.integers(0, 900, SHAPE_KJI).astype(np.int16), oblique_affine() if affine is None else affine)
    labels = np.zeros(SHAPE_KJI, np.uint8)
    labels[1:4, 2:6, 3:7] = L1
    labels[5:8, 6:10, 3:7] = L2
    return image, image.with_array(labels)


def write_case(folder: Path, seed: int = 0) -> tuple[Path, Path, Volume, Volume]:
    image, labels = make_case(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return (save_volume(image, folder / f"img{seed}.nii.gz"), save_volume(labels, folder / f"seg{seed}.nii.gz"),
            image, labels)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a dataset (except the lock file) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ds.LOCK_NAME}


def run_worker(*args: str, env: dict | None = None, wait: bool = True):
    process = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    return process.communicate(timeout=120) + (process.returncode,) if wait else process


# --- export and read back ------------------------------------------------------------------
def test_export_reads_back_equal(tmp_path):
    image_path, label_path, image, labels = write_case(tmp_path / "in")
    points = [Vertebra("L1", [1.25, -3.5, 20.125]), Vertebra("L2", [2.0, -4.0, -6.5]), Vertebra("", [0, 0, 0])]
    record = ds.export_case(tmp_path / "set", image_path, label_path, centroids=points,
                            model={"name": "detector", "version": "1.2", "sha256": "ab" * 32, "path": "/secret"})
    assert record.case_id == "spl_0001"
    read_image = load_volume(record.paths["image"])
    np.testing.assert_array_equal(read_image.array, image.array)
    np.testing.assert_allclose(read_image.ijk_to_ras, image.ijk_to_ras, atol=1e-4)
    read_labels = load_volume(record.paths["label"], check_values=False)
    assert read_labels.array.dtype == np.uint8
    np.testing.assert_array_equal(read_labels.array, labels.array)
    np.testing.assert_array_equal(read_labels.ijk_to_ras, read_image.ijk_to_ras)   # nnU-Net wants identical headers
    centroids = ds.read_centroids(record.paths["centroids"])
    assert [level for level, _ in centroids] == ["L1", "L2"]                       # the unlabelled point is dropped
    np.testing.assert_allclose([ras for _, ras in centroids], [[1.25, -3.5, 20.125], [2.0, -4.0, -6.5]], atol=1e-3)

    dataset_json = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 1 and dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["labels"]["L1"] == 20 and dataset_json["labels"]["T13"] == 28
    assert sorted(dataset_json["labels"].values()) == list(range(129))             # consecutive, as nnU-Net requires (discs: 102-128)
    assert dataset_json["spinelabel"]["levels_present"] == {"L1": 1, "L2": 1}
    entry = record.manifest_entry
    assert entry["source_sha256"] == sha256_file(image_path) and entry["source_hashed"] == "file"
    assert entry["models"] == [{"name": "detector", "version": "1.2", "sha256": "ab" * 32}]
    assert entry["levels"] == ["L1", "L2"] and entry["replaced_previous"] is None
    assert "img0" not in (tmp_path / "set" / "manifest.jsonl").read_text()         # the input name is not recorded
    [case] = list(ds.iter_dataset_cases(tmp_path / "set"))
    assert (case.case_id, case.image_path, case.label_path) == ("spl_0001", record.paths["image"], record.paths["label"])
    assert case.original_path is None and case.manifest_entry["export_id"] == entry["export_id"]
    assert ds.validate_dataset(tmp_path / "set") == []


def test_centroids_default_to_label_map_centres_and_original_is_kept(tmp_path):
    image, labels = make_case()
    original = labels.array.copy()
    original[original == L1] = T12                                        # the model called L1 "T12"
    original[0, 0:2, 0:2] = L3                                            # and found a spurious L3
    record = ds.export_case(tmp_path / "set", image, labels, original=image.with_array(original))
    [(level, centre), _] = ds.read_centroids(record.paths["centroids"])
    expected = image.kji_to_ras(np.argwhere(labels.array == L1).mean(axis=0))[0]
    assert level == "L1" and np.allclose(centre, expected, atol=1e-3)
    np.testing.assert_array_equal(load_volume(record.paths["original"], check_values=False).array, original)
    corrections = record.manifest_entry["corrections"]
    assert corrections["relabelled"] == [{"from": "T12", "to": "L1"}]
    assert corrections["deleted"] == ["L3"] and corrections["added"] == []
    assert corrections["voxels_changed"] == {"T12": 48, "L1": 48, "L3": 4}
    assert corrections["voxels_changed_total"] == 52
    assert record.manifest_entry["source_hashed"] == "voxels"


def test_corrections_from_maps_swap_and_addition():
    original = np.zeros((4, 4, 4), np.uint8)
    original[0], original[1] = L1, L2
    corrected = np.zeros_like(original)
    corrected[0], corrected[1], corrected[3] = L2, L1, L3
    summary = ds.corrections_from_maps(original, corrected)
    assert summary["relabelled"] == [{"from": "L1", "to": "L2"}, {"from": "L2", "to": "L1"}]
    assert summary["added"] == ["L3"] and summary["deleted"] == []


def test_correction_record_is_summarised_without_free_text():
    record = [{"action": "relabel", "from": "L1", "to": "L2", "note": "DOE JOHN asked"},
              {"action": "delete", "level": "S1", "voxels": 120}, {"action": "add", "level": "T12"}]
    summary = ds.corrections_from_record(record)
    assert summary["relabelled"] == [{"from": "L1", "to": "L2"}]
    assert (summary["deleted"], summary["added"], summary["voxels_changed"]) == (["S1"], ["T12"], {"S1": 120})
    assert "DOE" not in json.dumps(_sanitised_actions(record))


def test_export_result_records_relabel_and_modality(tmp_path):
    image, labels = make_case()
    corrected = SpineResult.from_level_map("whatever", image, labels.array, modality="mr")
    before = labels.array.copy()
    before[before == L2] = L3
    original = SpineResult.from_level_map("whatever", image, before)
    corrected.record("relabel", **{"from": "L3", "to": "L2"})
    record = ds.export_result(tmp_path / "set", corrected, original)
    entry = record.manifest_entry
    assert entry["modality"] == "mr" and entry["corrections"]["relabelled"] == [{"from": "L3", "to": "L2"}]
    assert entry["corrections"]["actions"] == [{"action": "relabel", "from": "L3", "to": "L2"}]
    assert json.loads((tmp_path / "set" / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}
    assert [level for level, _ in ds.read_centroids(record.paths["centroids"])] == ["L1", "L2"]


def test_seg_nrrd_label_input(tmp_path):
    import slicerio

    from SpineLabelLib.core.volume import LPS_TO_RAS
    image, labels = make_case()
    segmentation = slicerio.create_segmentation(image.shape_ijk, LPS_TO_RAS @ image.ijk_to_ras)
    for name, code in (("L1", L1), ("L2", L2)):
        slicerio.add_segment(segmentation, (labels.array == code).transpose(2, 1, 0), {"name": name, "id": name})
    slicerio.write_segmentation(str(tmp_path / "case.seg.nrrd"), segmentation)
    record = ds.export_case(tmp_path / "set", image, tmp_path / "case.seg.nrrd")
    np.testing.assert_array_equal(load_volume(record.paths["label"], check_values=False).array, labels.array)


# --- refusals -------------------------------------------------------------------------------
def test_duplicate_refused_with_one_line_and_replace_keeps_history(tmp_path):
    image_path, label_path, image, labels = write_case(tmp_path / "in")
    first = ds.export_case(tmp_path / "set", image_path, label_path)
    before = snapshot(tmp_path / "set")
    with pytest.raises(InputError) as refused:
        ds.export_case(tmp_path / "set", image_path, label_path)
    assert "\n" not in str(refused.value) and "spl_0001" in str(refused.value) and "--replace" in str(refused.value)
    assert snapshot(tmp_path / "set") == before

    relabelled = labels.array.copy()
    relabelled[relabelled == L2] = L3
    second = ds.export_case(tmp_path / "set", image_path, image.with_array(relabelled), replace=True)
    assert second.case_id == first.case_id
    np.testing.assert_array_equal(load_volume(second.paths["label"], check_values=False).array, relabelled)
    history = second.manifest_entry["replaced_previous"]["history"]
    assert history.startswith("history/spl_0001/")
    for rel in ("imagesTr/spl_0001_0000.nii.gz", "labelsTr/spl_0001.nii.gz", "centroids/spl_0001.mrk.json"):
        assert (tmp_path / "set" / history / rel).read_bytes() == before[rel]
    assert len(ds.read_manifest(tmp_path / "set")) == 2
    assert [c.case_id for c in ds.iter_dataset_cases(tmp_path / "set")] == ["spl_0001"]
    assert ds.validate_dataset(tmp_path / "set") == []
    third = ds.export_case(tmp_path / "set", *write_case(tmp_path / "in", seed=1)[:2])
    assert third.case_id == "spl_0002"


@pytest.mark.parametrize("change", ["origin", "shape", "direction"])
def test_mismatched_geometry_refused_with_one_line_and_nothing_written(tmp_path, change):
    image, labels = make_case()
    if change == "origin":
        wrong = Volume(labels.array, labels.ijk_to_ras + np.pad(np.full((3, 1), 0.01), ((0, 1), (3, 0))))
    elif change == "shape":
        wrong = Volume(labels.array[:-1], labels.ijk_to_ras)
    else:
        wrong = Volume(labels.array, oblique_affine() @ np.diag([1, 1, -1, 1]))
    with pytest.raises(InputError) as refused:
        ds.export_case(tmp_path / "new", image, wrong)
    assert "\n" not in str(refused.value) and "geometry does not match" in str(refused.value)
    assert not (tmp_path / "new").exists()
    ds.export_case(tmp_path / "set", *make_case(seed=3))
    before = snapshot(tmp_path / "set")
    with pytest.raises(InputError):
        ds.export_case(tmp_path / "set", image, wrong)
    assert snapshot(tmp_path / "set") == before


@pytest.mark.parametrize("bad", [27, 30, 255, 20.5, -1, "empty"])
def test_label_values_that_are_not_level_codes_refused(tmp_path, bad):
    image, labels = make_case()
    array = labels.array.astype(np.float32 if bad == 20.5 else np.int16)
    if bad == "empty":
        array[:] = 0
    else:
        array[0, 0, 0] = bad
    with pytest.raises(InputError) as refused:
        ds.export_case(tmp_path / "set", image, image.with_array(array))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "set").exists()


# --- locking and concurrency ------------------------------------------------------------------
@pytest.mark.parametrize("portable", [False, True])
def test_lock_excludes_a_second_holder(tmp_path, monkeypatch, portable):
    if portable:
        monkeypatch.setattr(lock, "fcntl", None)        # the O_EXCL fallback used where fcntl is absent
    with ds.dataset_lock(tmp_path):
        with pytest.raises(ds.DatasetLockedError):
            with ds.dataset_lock(tmp_path, timeout=0.1):
                pass
    with ds.dataset_lock(tmp_path, timeout=0.1):     # released on exit
        pass
    assert not (tmp_path / ".lock.excl").exists()


def test_two_concurrent_exports_in_two_processes_both_land_intact(tmp_path):
    cases = [write_case(tmp_path / "in", seed) for seed in (1, 2)]
    start = tmp_path / "go"
    workers = [run_worker(tmp_path / "set", image, labels, "--wait-for", start, wait=False)
               for image, labels, _, _ in cases]
    start.touch()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    ids = sorted(out.strip() for out, _ in outputs)
    assert ids == ["spl_0001", "spl_0002"]
    assert ds.validate_dataset(tmp_path / "set") == []
    by_source = {c.manifest_entry["source_sha256"]: c for c in ds.iter_dataset_cases(tmp_path / "set")}
    for image_path, _, image, labels in cases:
        case = by_source[sha256_file(image_path)]
        np.testing.assert_array_equal(load_volume(case.image_path).array, image.array)
        np.testing.assert_array_equal(load_volume(case.label_path, check_values=False).array, labels.array)
    assert json.loads((tmp_path / "set" / "dataset.json").read_text())["numTraining"] == 2


# --- crashes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("point,replace", [("staged", False), ("placed-1", False), ("placed", False),
                                           ("history", True), ("placed-1", True), ("placed", True)])
def test_process_killed_mid_export_leaves_dataset_as_it_was(tmp_path, point, replace):
    first_image, first_labels, _, _ = write_case(tmp_path / "in", seed=1)
    ds.export_case(tmp_path / "set", first_image, first_labels)
    image, labels = (first_image, first_labels) if replace else write_case(tmp_path / "in", seed=2)[:2]
    before = snapshot(tmp_path / "set")
    _, _, code = run_worker(tmp_path / "set", image, labels, *(["--replace"] if replace else []), "--crash-at", point)
    assert code == 97                                                  # died at the crash point
    assert ds.validate_dataset(tmp_path / "set", recover=False) != []   # the interruption is detected ...
    assert ds.validate_dataset(tmp_path / "set") == []                 # ... and rolled back
    assert snapshot(tmp_path / "set") == before
    assert not list((tmp_path / "set").glob(".staging-*"))
    assert ds.export_case(tmp_path / "set", image, labels, replace=replace).case_id == ("spl_0001" if replace else "spl_0002")
    assert ds.validate_dataset(tmp_path / "set") == []


def test_process_killed_after_commit_keeps_the_case(tmp_path):
    image, labels, _, _ = write_case(tmp_path / "in")
    _, _, code = run_worker(tmp_path / "set", image, labels, "--crash-at", "manifest")
    assert code == 97
    assert ds.validate_dataset(tmp_path / "set") == []                 # recovery finishes dataset.json
    assert [c.case_id for c in ds.iter_dataset_cases(tmp_path / "set")] == ["spl_0001"]


def test_torn_manifest_line_is_cut_and_never_counts(tmp_path):
    image, labels = make_case()
    ds.export_case(tmp_path / "set", image, labels)
    with open(tmp_path / "set" / "manifest.jsonl", "ab") as stream:
        stream.write(b'{"case_id": "spl_0002", "export_')
    assert ds.validate_dataset(tmp_path / "set", recover=False) == ["manifest.jsonl ends with a torn line"]
    assert ds.validate_dataset(tmp_path / "set") == []
    assert ds.export_case(tmp_path / "set", *make_case(seed=5)).case_id == "spl_0002"
    assert len(ds.read_manifest(tmp_path / "set")) == 2


@pytest.mark.parametrize("replace", [False, True])
def test_failing_rename_rolls_back_in_process(tmp_path, monkeypatch, replace):
    image_path, label_path, image, labels = write_case(tmp_path / "in")
    ds.export_case(tmp_path / "set", image_path, label_path)
    if not replace:
        image_path, label_path = write_case(tmp_path / "in", seed=1)[:2]
    before = snapshot(tmp_path / "set")
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target).parent.name == ds.LABELS:   # the second file placed: the image is already in
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(SpineLabelError) as failed:
        ds.export_case(tmp_path / "set", image_path, label_path, replace=replace)
    assert "left as it was" in str(failed.value)
    monkeypatch.setattr(os, "replace", real_replace)
    assert snapshot(tmp_path / "set") == before
    assert ds.validate_dataset(tmp_path / "set") == []


def test_validate_reports_damage(tmp_path):
    image, labels = make_case()
    record = ds.export_case(tmp_path / "set", image, labels)
    (tmp_path / "set" / "labelsTr" / "stray.nii.gz").write_bytes(b"x")
    record.paths["centroids"].write_text("{}")
    problems = ds.validate_dataset(tmp_path / "set")
    assert any("centroids" in p and "SHA-256" in p for p in problems)
    assert any("stray.nii.gz" in p for p in problems)


# --- privacy ------------------------------------------------------------------------------------
IDENTIFIERS = {"PatientName": "DOE^JOHN", "PatientID": "12345", "StudyDate": "20190412"}


def write_dicom_series(folder: Path, image: Volume) -> None:
    """One DICOM file per k slice, carrying a patient name, id and dates."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    volume = image.to_sitk()
    direction = np.array(volume.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {"0010|0010": "DOE^JOHN", "0010|0020": "12345", "0008|0020": "20190412", "0008|0021": "20190412",
            "0010|0030": "19500101", "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2", "0020|0037": orientation}
    for k in range(volume.GetSize()[2]):
        slice_image = volume[:, :, k]
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{k + 1}")
        writer.SetFileName(str(folder / f"DOE_JOHN_12345_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_input_never_leaks_patient_name_id_or_date(tmp_path):
    image, labels = make_case()
    folder = tmp_path / "DOE_JOHN_12345_20190412"
    write_dicom_series(folder, image)
    loaded = load_volume(folder)
    np.testing.assert_array_equal(loaded.array, image.array)            # the series is the image we meant
    np.testing.assert_allclose(loaded.ijk_to_ras, image.ijk_to_ras, atol=1e-3)
    from SpineLabelLib.io.markups import write_markups
    points = write_markups([Vertebra("L1", [1.0, 2.0, 3.0], source="manual")], tmp_path / "p.mrk.json",
                           name="DOE^JOHN 12345 20190412")                 # a point list named after the patient
    record = ds.export_case(tmp_path / "set", folder, labels, centroids=points, model={"name": "m"},
                            corrections=[{"action": "relabel", "from": "L1", "to": "L2", "note": "DOE^JOHN"}])
    assert record.manifest_entry["source_hashed"] == "dicom-series"
    np.testing.assert_array_equal(load_volume(record.paths["image"]).array, image.array)

    forbidden = [b"DOE", b"JOHN", b"12345", b"20190412", b"19500101"]
    written = [p for p in (tmp_path / "set").rglob("*")]
    assert len([p for p in written if p.is_file()]) >= 5
    for path in written:
        name = str(path.relative_to(tmp_path / "set")).upper().encode()
        assert not any(token in name for token in forbidden), path
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):   # 3 bytes may occur by chance in compressed noise: check "DOE" unpacked
                assert not any(token in data for token in forbidden[1:]), path
                data = gzip.decompress(data)
            assert not any(token in data.upper() for token in forbidden), path


def test_cli_export_and_one_line_refusal(tmp_path, capsys):
    from SpineLabelLib.app.cli import main

    image_path, label_path, _, _ = write_case(tmp_path / "in")
    arguments = ["export", "--image", str(image_path), "--seg", str(label_path), "--dataset", str(tmp_path / "set")]
    assert main(arguments) == 0
    assert "spl_0001" in capsys.readouterr().out
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already in the dataset as spl_0001" in error
    assert main(arguments + ["--replace"]) == 0
    assert ds.validate_dataset(tmp_path / "set") == []
