"""Segmentation files: written by SpineLabel, read back by Slicer's own storage node and by slicerio."""
from __future__ import annotations

import numpy as np
import pytest

from SpineLabelLib.core import anatomy
from SpineLabelLib.io import segfile
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.core.result import Vertebra
from SpineLabelLib.core.volume import LPS_TO_RAS, Volume, make_affine

import slicer
import slicerio


# --- Slicer helpers -----------------------------------------------------------------------
def slicer_scene():
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)          # registers the segmentation converter rules
    return scene, logic


def slicer_read_segmentation(path):
    scene, logic = slicer_scene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return scene, logic, node, storage


def slicer_export_labels(scene, logic, node, segment_ids):
    """Slicer's own export on the reference geometry; label n = segment_ids[n-1]."""
    import vtk
    from slicer import util

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    full_grid = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    assert logic.ExportSegmentsToLabelmapNode(node, ids, labelmap, None, full_grid)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetIJKToRASMatrix(matrix)
    return util.arrayFromVolume(labelmap).copy(), util.arrayFromVTKMatrix(matrix)


# --- writing: read back by Slicer and slicerio --------------------------------------------
def test_seg_nrrd_read_by_slicer_storage_node(spine_result, tmp_path):
    path = segfile.write_seg_nrrd(spine_result, tmp_path / "case.seg.nrrd")
    scene, logic, node, _ = slicer_read_segmentation(path)
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    assert ids == ["L1", "L2", "L3"]
    for level in ids:
        segment = segmentation.GetSegment(level)
        assert segment.GetName() == level
        assert segment.GetLabelValue() == anatomy.code_of(level)
        assert segmentation.GetLayerIndex(level) == 0
        assert segment.GetTerminology() == anatomy.terminology_entry(level)
        assert np.allclose(segment.GetColor(), anatomy.COLOUR_BY_NAME[level], atol=1e-4)
    labels, ijk_to_ras = slicer_export_labels(scene, logic, node, ids)
    # Full input grid (oblique, anisotropic) and voxel-for-voxel identical labels.
    assert np.allclose(ijk_to_ras, spine_result.image.ijk_to_ras, atol=1e-6)
    assert labels.shape == spine_result.image.array.shape
    codes = np.array([0] + [anatomy.code_of(level) for level in ids])
    assert np.array_equal(codes[labels], spine_result.level_map())


def test_seg_nrrd_read_by_slicerio(spine_result, tmp_path):
    path = segfile.write_seg_nrrd(spine_result, tmp_path / "case.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    assert np.allclose(segmentation["ijkToLPS"], LPS_TO_RAS @ spine_result.image.ijk_to_ras, atol=1e-9)
    assert segmentation["referenceImageExtentOffset"] == [0, 0, 0]
    assert segmentation["voxels"].ndim == 3
    assert np.array_equal(segmentation["voxels"].transpose(2, 1, 0), spine_result.level_map())
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert sorted(by_name) == ["L1", "L2", "L3"]
    for level, segment in by_name.items():
        assert segment["id"] == level and segment["layer"] == 0
        assert segment["labelValue"] == anatomy.code_of(level)
        terminology = slicerio.segmentation.terminology_entry_to_string(segment["terminology"])
        assert terminology == anatomy.terminology_entry(level)
        mask_ijk = slicerio.segment_mask(segmentation, level)
        assert np.array_equal(mask_ijk.transpose(2, 1, 0), spine_result.mask(spine_result.by_level(level)))


def test_seg_nrrd_written_in_lps_on_disk(spine_result, tmp_path):
    import nrrd

    header = nrrd.read_header(str(segfile.write_seg_nrrd(spine_result, tmp_path / "case.seg.nrrd")))
    assert header["space"] == "left-posterior-superior"
    expected = LPS_TO_RAS @ spine_result.image.ijk_to_ras
    assert np.allclose(header["space origin"], expected[:3, 3])
    assert np.allclose(np.asarray(header["space directions"]).T, expected[:3, :3])


def test_unlabelled_and_maskless_vertebrae_get_no_segment(spine_result, tmp_path):
    spine_result.by_level("L2").level = ""
    spine_result.vertebrae.append(Vertebra("T12", [0.0, 0.0, 0.0], instance=0))
    segmentation = slicerio.read_segmentation(str(segfile.write_seg_nrrd(spine_result, tmp_path / "c.seg.nrrd")))
    assert [s["name"] for s in segmentation["segments"]] == ["L1", "L3"]
    assert not np.any(segmentation["voxels"] == anatomy.code_of("L2"))


# --- reading ------------------------------------------------------------------------------
def test_own_round_trip_and_result(spine_result, tmp_path):
    path = segfile.write_seg_nrrd(spine_result, tmp_path / "case.seg.nrrd")
    labels, codes = segfile.read_seg_nrrd(path)
    assert codes == {"L1": 20, "L2": 21, "L3": 22}
    assert labels.same_grid(spine_result.image, 1e-9)
    assert np.array_equal(labels.array, spine_result.level_map())
    again = segfile.read_segmentation_as_result(path, spine_result.image, "again")
    assert again.levels == spine_result.levels
    for old, new in zip(spine_result.vertebrae, again.vertebrae):
        assert np.allclose(old.centroid_ras, new.centroid_ras, atol=1e-6)
        assert new.source == "file"
    alone = segfile.read_segmentation_as_result(path, None, "alone")
    assert alone.image.same_grid(spine_result.image, 1e-9)


def _slicer_written_layers_cropped(spine_result, tmp_path):
    """A file Slicer itself writes: cropped to the segments (extent offset) and two layers."""
    from slicer import util
    import vtk

    path = segfile.write_seg_nrrd(spine_result, tmp_path / "ours.seg.nrrd")
    scene, logic, node, storage = slicer_read_segmentation(path)
    extra = np.zeros(spine_result.image.array.shape, np.uint8)
    extra[19:23, 6:12, 5:10] = 1                       # overlaps L1: forces a second layer
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    util.updateVolumeFromArray(labelmap, extra)
    labelmap.SetIJKToRASMatrix(util.vtkMatrixFromArray(spine_result.image.ijk_to_ras))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue("T12")
    assert logic.ImportLabelmapToSegmentationNode(labelmap, node, ids)
    storage.SetCropToMinimumExtent(True)
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert storage.WriteData(node) == 1
    expected = spine_result.level_map().copy()
    expected[extra > 0] = anatomy.code_of("T12")     # T12 is the later segment in the file
    return tmp_path / "slicer.seg.nrrd", expected


def test_slicer_written_multilayer_cropped_file_reads_onto_reference(spine_result, tmp_path):
    path, expected = _slicer_written_layers_cropped(spine_result, tmp_path)
    raw = slicerio.read_segmentation(str(path))
    assert raw["voxels"].ndim == 4 and raw["referenceImageExtentOffset"] != [0, 0, 0]    # the hard case
    labels, codes = segfile.read_seg_nrrd(path, reference=spine_result.image)
    assert codes == {"L1": 20, "L2": 21, "L3": 22, "T12": 19}
    assert labels.same_grid(spine_result.image, 1e-9)
    assert np.array_equal(labels.array, expected)
    # Without a reference: the file's own (cropped) grid, placed correctly in space.
    cropped, _ = segfile.read_seg_nrrd(path)
    assert cropped.array.shape != spine_result.image.array.shape
    assert np.array_equal(segfile.read_label_map(path, reference=spine_result.image).array, expected)
    voxels = np.argwhere(cropped.array == 22)
    assert np.allclose(np.sort(cropped.kji_to_ras(voxels), axis=0),
                       np.sort(spine_result.image.kji_to_ras(np.argwhere(expected == 22)), axis=0), atol=1e-6)


def test_reference_on_other_grid_is_resampled(spine_result, tmp_path):
    path = segfile.write_seg_nrrd(spine_result, tmp_path / "case.seg.nrrd")
    image = spine_result.image
    finer = Volume(np.zeros(tuple(2 * s for s in image.array.shape), np.int16),
                   make_affine(image.spacing / 2, image.directions, image.kji_to_ras([-0.25, -0.25, -0.25])[0]))
    labels, _ = segfile.read_seg_nrrd(path, reference=finer)
    assert labels.same_grid(finer)
    # Each coarse voxel becomes 8 fine ones: counts scale by 8 per level.
    for code in (20, 21, 22):
        assert (labels.array == code).sum() == 8 * (spine_result.level_map() == code).sum()


def test_segment_names_other_tools_use(spine_result, tmp_path):
    segmentation = segfile.segmentation_dict(spine_result)
    for segment, name in zip(segmentation["segments"], ["vertebrae_L1", "l2", "L3 vertebra"]):
        segment["name"] = name
    slicerio.write_segmentation(str(tmp_path / "other.seg.nrrd"), segmentation)
    _, codes = segfile.read_seg_nrrd(tmp_path / "other.seg.nrrd")
    assert codes == {"L1": 20, "L2": 21, "L3": 22}


def test_unknown_segment_name_is_one_line_error(spine_result, tmp_path):
    segmentation = segfile.segmentation_dict(spine_result)
    segmentation["segments"][1]["name"] = "Spinal cord"
    slicerio.write_segmentation(str(tmp_path / "bad.seg.nrrd"), segmentation)
    with pytest.raises(InputError, match="Spinal cord") as error:
        segfile.read_seg_nrrd(tmp_path / "bad.seg.nrrd")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"hello, not a segmentation\n"])
def test_damaged_seg_nrrd_is_input_error(tmp_path, content):
    path = tmp_path / "broken.seg.nrrd"
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        segfile.read_seg_nrrd(path)
    assert "\n" not in str(error.value)


# --- label maps ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["case_seg.nii.gz", "case_seg.nii", "case_seg.nrrd"])
def test_label_map_round_trip(spine_result, tmp_path, name):
    path = segfile.write_label_nifti(spine_result, tmp_path / name)
    labels = segfile.read_label_map(path)
    assert labels.array.dtype == np.uint8
    assert labels.same_grid(spine_result.image, 1e-4)
    assert np.array_equal(labels.array, spine_result.level_map())


def test_label_nifti_affine_is_ras(spine_result, tmp_path):
    import nibabel

    image = nibabel.load(str(segfile.write_label_nifti(spine_result, tmp_path / "case_seg.nii.gz")))
    assert np.allclose(image.affine, spine_result.image.ijk_to_ras, atol=1e-4)
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), spine_result.level_map())
    # slicerio (what Slicer users script with) sees the same labels and geometry.
    segmentation = slicerio.read_segmentation(str(tmp_path / "case_seg.nii.gz"))
    assert np.allclose(segmentation["ijkToLPS"], LPS_TO_RAS @ spine_result.image.ijk_to_ras, atol=1e-4)
    assert sorted(s["labelValue"] for s in segmentation["segments"]) == [20, 21, 22]


def test_read_label_map_dispatches_seg_nrrd(spine_result, tmp_path):
    segfile.write_seg_nrrd(spine_result, tmp_path / "a.seg.nrrd")
    (tmp_path / "a.seg.nrrd").rename(tmp_path / "renamed.nrrd")        # header, not name, decides
    assert np.array_equal(segfile.read_label_map(tmp_path / "renamed.nrrd").array, spine_result.level_map())


def test_label_map_with_unknown_code_is_rejected(spine_result, tmp_path):
    from SpineLabelLib.core.volume import save_volume

    array = spine_result.level_map().copy()
    array[0, 0, 0] = 99
    save_volume(spine_result.image.with_array(array), tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match="99"):
        segfile.read_label_map(tmp_path / "bad.nii.gz")
    float_labels = spine_result.level_map().astype(np.float32)
    float_labels[1, 1, 1] = 20.5
    save_volume(spine_result.image.with_array(float_labels), tmp_path / "float.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        segfile.read_label_map(tmp_path / "float.nii.gz")


def test_result_without_masks_writes_an_empty_segmentation_on_the_grid(spine_result, tmp_path):
    spine_result.instances = None
    path = segfile.write_seg_nrrd(spine_result, tmp_path / "empty.seg.nrrd")
    _, _, node, _ = slicer_read_segmentation(path)
    assert node.GetSegmentation().GetNumberOfSegments() == 0
    labels, codes = segfile.read_seg_nrrd(path)
    assert codes == {} and labels.same_grid(spine_result.image, 1e-9) and not labels.array.any()
