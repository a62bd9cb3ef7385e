"""The panel's new parts (issue 17): model combos from the registry, batch in the background, confidence
in sight, sample data. The module file runs under `slicer-core` (real MRML) with the Qt parts it touches
stood in for by small PythonQt-like fakes (property assignment, ``connect("signal(int)", slot)``), so the
widget's own code fills the combos and the logic's own code runs the batches."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import slicer

from test_correction import lumbar_result
from test_module_logic import MODULE, _stub_modules

from SpineLabelLib.app import panel
from SpineLabelLib.app.background import CANCELLED, DONE, FAILED
from SpineLabelLib.core.errors import ModelError
from SpineLabelLib.core.discs import is_disc_name
from SpineLabelLib.core.options import ENSEMBLE, RunOptions
from SpineLabelLib.models import families
from SpineLabelLib.models.registry import DEFAULT_SEGMENTER, ENVIRONMENT_VARIABLE
from SpineLabelLib.slicer_adapter import scene


# --- PythonQt-like stand-ins for the few Qt classes the widget code creates --------------------
class FakeComboBox:
    def __init__(self):
        self.items, self.data, self._index, self._blocked, self._slots = [], {}, -1, False, []
        self.objectName, self.enabled = "", True

    def connect(self, signal, slot):
        assert signal == "currentIndexChanged(int)"
        self._slots.append(slot)

    def blockSignals(self, blocked):
        self._blocked = blocked

    def clear(self):
        self.items, self.data = [], {}
        self.currentIndex = -1

    def addItem(self, *args):
        self.items.append(args[-1])
        if self._index < 0:
            self.currentIndex = 0

    def setItemData(self, index, value, role):
        self.data[(index, role)] = value

    @property
    def count(self):
        return len(self.items)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):         # Qt emits currentIndexChanged unless signals are blocked
        changed = index != self._index
        self._index = index
        if changed and not self._blocked:
            for slot in self._slots:
                slot(index)


class FakeFormLayout:
    def __init__(self):
        self.rows = []

    def addRow(self, label, widget):
        self.rows.append((label, widget))


class FakeSettings:
    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


@pytest.fixture
def module(monkeypatch):
    import importlib.util

    _stub_modules(monkeypatch)
    qt = sys.modules["qt"]
    qt.QComboBox = FakeComboBox
    qt.Qt = SimpleNamespace(ToolTipRole=3)
    FakeSettings.store = {}
    qt.QSettings = FakeSettings
    spec = importlib.util.spec_from_file_location("SpineLabel", MODULE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def widget_with(module, **parameters):
    """The module's widget class with just the state `_fillModelCombos` and `runOptions` use."""
    widget = module.SpineLabelWidget.__new__(module.SpineLabelWidget)
    layout = FakeFormLayout()
    widget.ui = SimpleNamespace(modelChoicesWidget=SimpleNamespace(layout=lambda: layout))
    widget._parameterNode = SimpleNamespace(**{"modelChoices": {}, "userModelFolders": [], "modality": "ct",
                                               "inputMode": "slices", **parameters})
    widget._modelCombos, widget._modelChoices = {}, {}
    return widget, layout


# --- 1. model combo boxes from the registry ------------------------------------------------------
def test_model_combos_are_filled_from_the_registry_and_set_the_run_options(module, blob_model_dir, tmp_path,
                                                                              monkeypatch):
    import blob_family

    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(blob_model_dir.parent))     # a registered user model
    trained = blob_family.write_model(tmp_path / "my-trained", name="my-trained-detector")   # an added folder
    widget, layout = widget_with(module, userModelFolders=[str(trained)], modelChoices={"detector": "blob-detector"})
    widget._fillModelCombos()

    combos = dict(widget._modelCombos)
    assert set(combos) == set(families.ROLES)
    assert [label for label, _ in layout.rows] == [f"{panel.role_title(r)}:" for r in families.ROLES]
    detector, segmenter = combos["detector"], combos["segmenter"]
    assert "blob-detector 0" in detector.items and "blob-detector 0" not in segmenter.items
    assert "my-trained-detector 0 (folder)" in detector.items
    assert any(item.startswith("ensemble") for item in detector.items)
    assert any(item.startswith(DEFAULT_SEGMENTER) for item in segmenter.items)          # the bundled one
    assert not any(item.startswith(DEFAULT_SEGMENTER) for item in detector.items)
    assert detector.items[detector.currentIndex] == "blob-detector 0"        # the stored choice is shown
    assert detector.data[(detector.currentIndex, 3)].endswith(f"({blob_model_dir})")   # tooltip says where

    # A person picks entries: the parameter node, then the run options, follow.
    detector.currentIndex = detector.items.index(next(i for i in detector.items if i.startswith("ensemble")))
    segmenter.currentIndex = segmenter.items.index("none (the detector's own masks)")
    assert widget._parameterNode.modelChoices == {"detector": ENSEMBLE, "segmenter": "none"}
    assert widget.runOptions() == RunOptions(model=ENSEMBLE, modality="ct", segmenter="none", input_mode="slices")
    detector.currentIndex = detector.items.index("my-trained-detector 0 (folder)")
    assert widget.runOptions().model == str(trained)
    detector.currentIndex = 0                                       # "default": RunOptions' own default
    assert widget.runOptions().model is None


def test_a_new_model_role_appears_as_its_own_combo(module, tmp_path, monkeypatch):
    """A family of a role the panel has never heard of (a disc model, say) gets a combo box of its own;
    it stays disabled until RunOptions has a field for it."""
    import blob_family

    monkeypatch.setattr(families, "ROLES", (*families.ROLES, "disc"))
    disc = families.ModelFamily(name="test-disc", role="disc", build_network=blob_family.build_network,
                                run=blob_family.run)
    monkeypatch.setitem(families._FAMILIES, disc.name, disc)
    folder = blob_family.write_model(tmp_path / "models" / "disc-model", name="disc-model")
    card = json.loads((folder / "model_card.json").read_text())
    card["architecture"]["family"] = "test-disc"
    (folder / "model_card.json").write_text(json.dumps(card))
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(folder.parent))

    widget, layout = widget_with(module)
    widget._fillModelCombos()
    assert "disc" in widget._modelCombos and layout.rows[-1][0] == "Disc model:"
    combo = widget._modelCombos["disc"]
    assert combo.items == ["none", "disc-model 0"] and not combo.enabled
    assert "disc-model 0" not in widget._modelCombos["detector"].items
    assert panel.option_field("disc") is None and panel.option_field("detector") == "model"
    assert panel.option_field("disc-segmenter") == "disc_segmenter"          # the bundled disc role is wired


def test_add_model_folder_is_remembered_and_refuses_a_plain_folder(module, blob_model_dir, tmp_path):
    logic = module.SpineLabelLogic()
    role, folders = logic.addModelFolder(blob_model_dir, ["/somewhere/else"])
    assert role == "detector" and folders == ["/somewhere/else", str(blob_model_dir.resolve())]
    assert module.SpineLabelLogic().rememberedModelFolders() == folders           # next session
    (tmp_path / "photos").mkdir()
    with pytest.raises(ModelError, match="no model_card.json") as error:
        logic.addModelFolder(tmp_path / "photos")
    assert "\n" not in str(error.value)


# --- 2. batch ------------------------------------------------------------------------------------
def blob_options(model_dir) -> RunOptions:
    return RunOptions(model=str(model_dir), modality="ct", segmenter="none")


def test_batch_over_three_scene_volumes_with_one_failing(module, blob_model_dir, blob_plugin_path):
    image = lumbar_result().image
    flat = image.with_array(image.array * 0 + 7)               # every voxel the same: refused by the engine
    nodes = [scene.volume_to_node(slicer.mrmlScene, volume, name)
             for volume, name in ((image, "first"), (flat, "flat"), (image, "third"))]
    logic = module.SpineLabelLogic()
    batch = logic.startSceneBatch(blob_options(blob_model_dir))
    status = batch.wait(timeout=300)

    assert status.state == FAILED                                      # some failed, the others are complete
    assert [(o.name, o.state) for o in status.outcomes] == [("first", DONE), ("flat", FAILED), ("third", DONE)]
    lines = batch.summary().splitlines()
    assert lines[0] == "3 cases: 2 done, 1 failed"
    assert lines[1].startswith("  flat: ") and "empty" in lines[1] and len(lines) == 2
    segmentations = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
    shown = [segmentations.GetItemAsObject(i) for i in range(segmentations.GetNumberOfItems())]
    names = [[s.GetSegmentation().GetNthSegment(n).GetName() for n in range(s.GetSegmentation().GetNumberOfSegments())]
             for s in shown]
    assert len(shown) == 2
    for case in names:             # five bodies and the four discs between them, for each good case
        assert len([n for n in case if not is_disc_name(n)]) == 5 and len([n for n in case if is_disc_name(n)]) == 4
    assert logic.nodes.volume is nodes[2]                             # the last good case is the current one
    assert batch.report_path() is None


def test_folder_batch_writes_each_case_and_lists_the_failure(module, blob_model_dir, blob_plugin_path, tmp_path):
    from SpineLabelLib.core.volume import save_volume
    from SpineLabelLib.io.outputs import case_files

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = lumbar_result().image
    save_volume(image, inputs / "a.nii.gz")
    (inputs / "b.nii.gz").write_bytes(b"not an image")
    save_volume(image, inputs / "c.nrrd")
    (inputs / "notes.txt").write_text("not a case")
    batch = module.SpineLabelLogic().startFolderBatch(inputs, out, blob_options(blob_model_dir))
    status = batch.wait(timeout=300)

    assert [(o.name, o.state) for o in status.outcomes] == [("a", DONE), ("b", FAILED), ("c", DONE)]
    assert "b.nii.gz" in batch.failures()[0].message
    for case in ("a", "c"):
        assert sorted(p.name for p in (out / case).iterdir()) == sorted(case_files(case).values())
    assert not (out / "b").exists()
    (out / "report.html").write_text("<html></html>")      # what a cohort runner would leave: the hook sees it
    assert batch.report_path() == out / "report.html"


def test_batch_cancel_stops_the_running_case_and_skips_the_rest(module, blob_plugin_path, tmp_path):
    import time

    import blob_family

    slow = blob_family.write_model(tmp_path / "slow", pause_s=120)
    image = lumbar_result().image
    for name in ("one", "two"):
        scene.volume_to_node(slicer.mrmlScene, image, name)
    batch = module.SpineLabelLogic().startSceneBatch(blob_options(slow))
    deadline = time.monotonic() + 120
    while "thinking hard" not in batch.poll().message and time.monotonic() < deadline:
        time.sleep(0.05)
    process = batch.job.process
    batch.cancel()
    assert process.poll() is not None
    assert [(o.name, o.state) for o in batch.outcomes] == [("one", CANCELLED), ("two", CANCELLED)]
    assert batch.poll().state == CANCELLED and batch.summary() == "2 cases: 0 done, 0 failed, 2 cancelled"


def test_an_empty_folder_is_one_line(tmp_path):
    from SpineLabelLib.app.batch_job import folder_inputs
    from SpineLabelLib.core.errors import InputError

    with pytest.raises(InputError, match="no image files"):
        folder_inputs(tmp_path)


# --- 3. confidence in sight -----------------------------------------------------------------------
def test_vertebra_rows_mark_low_confidence_and_the_banner_shows_an_uncertain_naming():
    from SpineLabelLib.io import point_description
    from SpineLabelLib.naming.confidence import LOW_VERTEBRA_CONFIDENCE

    result = lumbar_result()
    result.vertebrae[1].score = LOW_VERTEBRA_CONFIDENCE - 0.01
    result.vertebrae[3].score = LOW_VERTEBRA_CONFIDENCE            # at the threshold: not low
    rows = panel.vertebra_rows(result)
    assert [r.low for r in rows] == [False, True, False, False, False]
    assert rows[1].text.startswith(f"{result.vertebrae[1].level}  {result.vertebrae[1].score:.2f}")
    assert "check this body" in rows[1].tooltip and "check" not in rows[3].tooltip

    result.naming = {"confidence": 0.55, "uncertain": False, "reason": "levels anchored by S1"}
    assert panel.naming_banner(result) is None
    result.naming = {"confidence": 0.55, "uncertain": True, "reason": "levels uncertain: no sacrum in view"}
    assert panel.naming_banner(result) == "naming confidence 0.55 — levels uncertain: no sacrum in view"
    assert panel.vertebra_to_check(result) == 1                    # the least sure one
    result.vertebrae[1].locked = True                              # a person set it: the next least sure
    assert panel.vertebra_to_check(result) == 3

    described = [point_description.decode(point_description.encode(v, naming=result.naming))
                 for v in result.vertebrae]
    # Locked: its level is sure (no naming check), its body still the detector's doubtful one.
    assert described[1].checks == (point_description.LOW_CONFIDENCE_CHECK,)
    result.vertebrae[1].locked = False
    assert point_description.decode(point_description.encode(result.vertebrae[1], naming=result.naming)).checks \
        == (point_description.LOW_CONFIDENCE_CHECK, point_description.UNCERTAIN_NAMING_CHECK)
    assert described[0].checks == (point_description.UNCERTAIN_NAMING_CHECK,)
    assert point_description.encode(result.vertebrae[0]).count("check") == 0      # nothing to say: no field


def test_point_list_in_the_scene_carries_the_checks(module):
    from SpineLabelLib.io import point_description

    result = lumbar_result()
    result.vertebrae[2].score = 0.55
    result.naming = {"confidence": 0.5, "uncertain": True, "reason": "levels uncertain"}
    volume_node = scene.volume_to_node(slicer.mrmlScene, result.image, "case")
    nodes = module.SpineLabelLogic().show(result, volume_node)
    texts = [nodes.points.GetNthControlPointDescription(i) for i in range(nodes.points.GetNumberOfControlPoints())]
    assert all("levels uncertain" in t for t in texts)
    assert [point_description.LOW_CONFIDENCE_CHECK in t for t in texts] == [False, False, True, False, False]


# --- 5. sample data -------------------------------------------------------------------------------
def stub_sample_data(monkeypatch):
    """SampleData's registration API as in Slicer (Modules/Scripted/SampleData): same signature, the
    same length check SampleDataSource makes, the sources kept per category."""
    registered: dict[str, list] = {}

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileType="VolumeFile", loadFiles=None, loadFileProperties={},
                                           checksums=None):
            if not len(uris) == len(fileNames) == len(nodeNames):
                raise ValueError("All fields of sample data source must have the same length")
            source = SimpleNamespace(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                     customDownloader=customDownloader, thumbnailFileName=thumbnailFileName)
            registered.setdefault(category, []).append(source)

    stub = types.ModuleType("SampleData")
    stub.SampleDataLogic = SampleDataLogic
    monkeypatch.setitem(sys.modules, "SampleData", stub)
    return registered


class SceneWithCache:
    """A slicer-core scene plus the cache manager the application would give it."""

    def __init__(self, mrml, cache: Path):
        self._mrml, self._cache = mrml, cache

    def __getattr__(self, name):
        return getattr(self._mrml, name)

    def GetCacheManager(self):
        return SimpleNamespace(GetRemoteCacheDirectory=lambda: str(self._cache))


def test_sample_data_registers_the_phantom_and_generates_it_on_first_use(module, monkeypatch, tmp_path):
    from SpineLabelLib.app import sample_data

    registered = stub_sample_data(monkeypatch)
    mrml = slicer.mrmlScene
    monkeypatch.setattr(slicer, "mrmlScene", SceneWithCache(mrml, tmp_path / "cache"))
    monkeypatch.setattr(slicer.util, "loadVolume",
                        lambda path, properties: scene.read_volume_file(mrml, path, properties["name"]), raising=False)
    module.registerSampleData()

    (source,) = registered["SpineLabel"]
    assert source.sampleName == sample_data.SAMPLE_NAME and Path(source.thumbnailFileName).is_file()
    cached = tmp_path / "cache" / sample_data.FILE_NAME
    assert source.uris == [cached.resolve().as_uri()] and source.uris[0].startswith("file:")   # never the network
    assert not cached.exists()                                   # nothing is generated until it is asked for
    (node,) = source.customDownloader(source)                    # the SampleData button
    assert cached.is_file() and node.GetName() == sample_data.NODE_NAME
    assert node.GetImageData().GetDimensions()[2] > 20
    stamp = cached.stat().st_mtime_ns
    source.customDownloader(source)                              # second click: the cached file is reused
    assert cached.stat().st_mtime_ns == stamp


# --- 4. Export DICOM SEG --------------------------------------------------------------------------
def test_export_dicom_seg_for_a_volume_loaded_from_dicom(module, blob_model_dir, monkeypatch, tmp_path):
    """The volume node knows its instances only by UID (as Slicer's DICOM plugin leaves them, in its own
    order); the database gives the files; the SEG's frames follow the volume's slices."""
    hd = pytest.importorskip("highdicom")
    import pydicom

    from test_dicom_seg import phantom_image, write_dicom_series

    from SpineLabelLib.app import pipeline
    from SpineLabelLib.core import anatomy
    from SpineLabelLib.core.volume import load_volume

    files = write_dicom_series(phantom_image(), tmp_path / "series")       # k order
    volume = load_volume(tmp_path / "series")
    volume.metadata.clear()                                                # the node forgets the files
    node = scene.volume_to_node(slicer.mrmlScene, volume, "CT series")
    result = pipeline.case_from_volume(volume, "CT series")
    pipeline.detect(result, blob_options(blob_model_dir))
    logic = module.SpineLabelLogic()
    logic.show(result, node)

    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in files]
    database = SimpleNamespace(fileForInstance=dict(zip(uids, map(str, files))).get)
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(sorted(uids)))     # not the slice order
    path = logic.exportDicomSeg(tmp_path / "seg")

    assert path == tmp_path / "seg" / f"{logic.result.case_id}.seg.dcm"
    seg = hd.seg.segread(path)
    level_map = logic.result.level_map()
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels == sorted({v.level for v in logic.result.vertebrae if v.level}, key=anatomy.order_index)
    for number, level in zip(seg.segment_numbers, labels):
        mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[number], ignore_spatial_locations=True)
        assert np.array_equal(mask[..., 0] > 0, level_map == anatomy.code_of(level))


def test_export_dicom_seg_of_a_volume_not_from_dicom_says_so(module, monkeypatch, tmp_path):
    from SpineLabelLib.core.errors import InputError

    result = lumbar_result()
    logic = module.SpineLabelLogic()
    logic.show(result, scene.volume_to_node(slicer.mrmlScene, result.image, "from a NIfTI"))
    monkeypatch.setattr(slicer, "dicomDatabase", SimpleNamespace(fileForInstance=lambda uid: ""), raising=False)
    with pytest.raises(InputError, match="not loaded from a DICOM series") as error:
        logic.exportDicomSeg(tmp_path / "seg")
    assert "\n" not in str(error.value) and not (tmp_path / "seg").exists()


def test_what_the_module_installs_on_demand_is_the_declared_extra():
    import re
    import tomllib

    from SpineLabelLib.core.optional import SLICER_ON_DEMAND

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra, requirements in SLICER_ON_DEMAND.items():
        assert set(requirements) <= set(extras[extra])
        assert all(re.match(r"^[A-Za-z0-9_.-]+>=", r) for r in requirements)        # >= , never pinned
