"""Issue 2's must-show: `spinelabel phantom` files load in Slicer's storage nodes with centroids inside their segments."""
import json

import numpy as np
import pytest

from SpineLabelLib.app.cli import main

import slicer


def _read(scene, node_class, storage_class, path):
    node = scene.AddNewNodeByClass(node_class)
    storage = getattr(slicer, storage_class)()
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"Slicer could not read {path}"
    return node


def test_phantom_command_files_load_in_slicer_with_centroids_inside(tmp_path):
    argv = ["phantom", "--out", str(tmp_path), "--levels", "T11-L3", "--modality", "ct", "--spacing", "0.8,0.8,2",
            "--fracture", "L1:wedge:30", "--case", "ph"]
    assert main(argv) == 0
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    slicer.vtkSlicerMarkupsLogic().SetMRMLScene(scene)
    volume = _read(scene, "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", tmp_path / "ph.nii.gz")
    segmentation = _read(scene, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", tmp_path / "ph.seg.nrrd")
    points = _read(scene, "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsJsonStorageNode", tmp_path / "ph.mrk.json")
    truth = json.loads((tmp_path / "ph_truth.json").read_text())

    assert volume.GetImageData().GetDimensions()[2] > 1
    assert np.allclose(volume.GetSpacing(), (0.8, 0.8, 2.0), atol=1e-4)
    ras_to_ijk = slicer.vtkMatrix4x4() if hasattr(slicer, "vtkMatrix4x4") else __import__("vtk").vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    ras_to_ijk = np.array([[ras_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)])

    labels = [points.GetNthControlPointLabel(n) for n in range(points.GetNumberOfControlPoints())]
    assert labels == ["T11", "T12", "L1", "L2", "L3"]
    seg_ids = [segmentation.GetSegmentation().GetNthSegmentID(n)
               for n in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert sorted(seg_ids) == sorted(labels)
    l1 = next(v for v in truth["vertebrae"] if v["level"] == "L1")
    assert l1["fracture_type"] == "wedge" and l1["genant_grade"] == 2
    assert l1["height_anterior_mm"] == pytest.approx(0.7 * l1["height_posterior_mm"])
    truth_centroids = np.array([v["centroid_ras"] for v in truth["vertebrae"]])
    marked = np.array([points.GetNthControlPointPositionVector(n) for n in range(len(labels))])
    assert np.allclose(marked, truth_centroids, atol=1e-3)

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = __import__("vtk").vtkStringArray()
    for name in seg_ids:
        ids.InsertNextValue(name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, ids, labelmap, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    from vtk.util.numpy_support import vtk_to_numpy

    dims = labelmap.GetImageData().GetDimensions()
    array = vtk_to_numpy(labelmap.GetImageData().GetPointData().GetScalars()).reshape(dims[::-1])
    for n, label in enumerate(labels):
        ras = np.array(points.GetNthControlPointPositionVector(n))
        i, j, k = np.rint(ras_to_ijk @ np.append(ras, 1.0))[:3].astype(int)
        assert array[k, j, i] == seg_ids.index(label) + 1, f"{label} centroid is not inside its segment"


def test_phantom_command_slip_is_in_the_truth_and_measured_back(tmp_path):
    """`--listhesis L4:6`: the truth records the 6 mm anterior slip (and its analytic corner-to-corner
    value), and `spinelabel measure` on the phantom's own segmentation finds it within a millimetre."""
    from SpineLabelLib.io.tables import read_csv_rows

    argv = ["phantom", "--out", str(tmp_path), "--levels", "L2-S1", "--modality", "ct", "--spacing", "1,1,1",
            "--rotation", "6,0,-4", "--listhesis", "L4:6", "--case", "slip"]
    assert main(argv) == 0
    truth = json.loads((tmp_path / "slip_truth.json").read_text())
    assert truth["parameters"]["listhesis"] == {"L4": 6.0}
    slips = truth["alignment"]["listhesis"]            # analytic, corner to corner as measured
    assert slips["L4-L5"]["applied_mm"] == 6.0 and slips["L3-L4"]["applied_mm"] == 0.0
    assert main(["measure", "--image", str(tmp_path / "slip.nii.gz"), "--seg", str(tmp_path / "slip.seg.nrrd"),
                 "--out", str(tmp_path / "tables")]) == 0
    rows = {r["name"]: r for r in read_csv_rows(tmp_path / "tables" / "slip.alignment.csv") if r["unit"] == "mm"}
    assert rows["listhesis:L4-L5"]["value"] == pytest.approx(slips["L4-L5"]["mm"], abs=1.0)
    assert rows["listhesis:L3-L4"]["value"] == pytest.approx(slips["L3-L4"]["mm"], abs=1.0)
    assert rows["listhesis:L4-L5"]["value"] > 4.0 > abs(rows["listhesis:L3-L4"]["value"])


def test_phantom_command_refuses_a_bad_slip(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--levels", "L2-L5", "--listhesis", "L5:6"]) == 1
    assert "listhesis level L5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["phantom", "--out", str(tmp_path), "--listhesis", "L4:far"])
