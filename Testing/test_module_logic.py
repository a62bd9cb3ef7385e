"""The module's logic facade and its self-test, run under `slicer-core` with the Qt-only parts stubbed.

Real Slicer is not available here; `slicer-core` gives the real MRML classes. Stubs stand in only for
what needs the application (qt, the ScriptedLoadableModule base classes, parameter-node wrapper,
slice-viewer layout). So the facade's calls into the engine and the scene adapter are really executed.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest

import slicer

from SpineLabelLib.slicer_adapter import scene  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "SpineLabel" / "SpineLabel.py"


def _stub_modules(monkeypatch) -> None:
    qt = types.ModuleType("qt")
    qt.QTimer = object
    monkeypatch.setitem(sys.modules, "qt", qt)

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: None
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class Logic:
        def __init__(self, parent=None):
            pass

    class Test(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    base.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    base.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    base.ScriptedLoadableModuleLogic = Logic
    base.ScriptedLoadableModuleTest = Test
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    if not hasattr(slicer.util, "VTKObservationMixin"):
        monkeypatch.setattr(slicer.util, "VTKObservationMixin", type("VTKObservationMixin", (), {}), raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kwargs: None, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene.new_scene(), raising=False)


@pytest.fixture
def module(monkeypatch):
    _stub_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location("SpineLabel", MODULE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_self_test_runs_load_detect_correct_measure_export(module, monkeypatch):
    import SpineLabelLib.models.registry as registry
    from SpineLabelLib.core.errors import ModelError

    def no_weights(*args, **kwargs):
        raise ModelError("no bundled model")

    # Keep this test fast and independent of weights: the self-test's no-model path.
    monkeypatch.setattr(registry, "load_model", no_weights)
    outcome = unittest.TestResult()
    module.SpineLabelTest("test_load_detect_correct_measure_export").run(outcome)
    assert outcome.wasSuccessful(), outcome.errors + outcome.failures
    assert not outcome.skipped


def test_logic_records_scene_edits_before_a_correction(module):
    from SpineLabelLib import phantom
    from SpineLabelLib.app import pipeline

    truth = phantom.generate_phantom(["L1", "L2", "L3"], spacing=(2.0, 2.0, 2.0), crop_to_spine=True)
    volume_node = scene.volume_to_node(slicer.mrmlScene, truth.image, "phantom")
    result = pipeline.measure(truth.to_result("phantom"))
    logic = module.SpineLabelLogic()
    nodes = logic.show(result, volume_node)
    position = [0.0, 0.0, 0.0]
    nodes.points.GetNthControlPointPosition(0, position)
    nodes.points.SetNthControlPointPosition(0, position[0], position[1] + 2.0, position[2])   # a drag
    logic.recomputeCentroids()                       # the drag is recorded first, then undone by the masks
    actions = [c["action"] for c in logic.result.corrections]
    assert actions[-2:] == ["move", "recompute_centroid"]
    assert logic.result.corrections[-2]["origin"] == "scene"
    assert nodes.table.GetNumberOfRows() == 3
    assert scene.segment_id_of(nodes.segmentation, logic.result.vertebrae[2]) == "L3"


def _segment_names(nodes) -> list[str]:
    segmentation = nodes.segmentation.GetSegmentation()
    return [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]


def test_blocking_process_and_background_finish_show_results(module, blob_model_dir, blob_plugin_path):
    from test_correction import lumbar_result

    from SpineLabelLib.app.background import BackgroundRun

    options = RunOptions(model=str(blob_model_dir), modality="ct", segmenter="none")
    image = lumbar_result().image
    first = scene.volume_to_node(slicer.mrmlScene, image, "first")
    logic = module.SpineLabelLogic()
    nodes = logic.process(first, options)
    assert _segment_names(nodes) == ["L1", "L2", "L3", "L4", "L5", "L1-L2", "L2-L3", "L3-L4", "L4-L5"]  # bodies, then discs
    assert nodes.table.GetNumberOfRows() == 5 and nodes.disc_table.GetNumberOfRows() == 4

    second = scene.volume_to_node(slicer.mrmlScene, image, "second")
    job = BackgroundRun(image, "second", options)
    job.volumeNodeID = second.GetID()
    job.start()
    job.wait(timeout=120)
    chosen_table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    shown = logic.finishProcess(job, scene.SceneNodes(None, None, None, chosen_table))
    assert shown.volume is second and shown.table is chosen_table
    assert shown.segmentation is not nodes.segmentation                  # the first case keeps its nodes
    assert len(_segment_names(nodes)) == 9
    assert chosen_table.GetNumberOfRows() == 5
    assert not job.folder.exists()
