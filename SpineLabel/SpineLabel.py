"""SpineLabel: find, name, segment and measure vertebrae in spine CT and MRI, then correct them.

This file is Slicer glue only: panel, parameter node, events, progress. Every decision (detection,
labelling, measurement, file formats, correction records) is made in the `SpineLabelLib` engine and
its scene adapter (`SpineLabelLib.slicer_adapter.scene`); the logic class below is a thin facade over them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _make_engine_importable() -> None:
    """Unbuilt checkout ("add module path" = SpineLabel/): the engine is one folder up."""
    try:
        import SpineLabelLib  # noqa: F401
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        if (root / "SpineLabelLib" / "__init__.py").exists() and str(root) not in sys.path:
            sys.path.insert(0, str(root))


_make_engine_importable()

# The engine's lists of choices (stdlib-only modules): the panel offers exactly what the CLI accepts.
from SpineLabelLib.core.anatomy import ORDER as LEVELS  # noqa: E402
from SpineLabelLib.core.options import INPUT_MODES, MODALITIES, RunOptions  # noqa: E402


class SpineLabel(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SpineLabel")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SpineLabel contributors"]
        self.parent.helpText = _(
            "Finds the vertebrae in a spine CT or MRI volume, names them (C1 ... L5, S1), segments their "
            "bodies and measures them (heights, wedge/biconcave/crush ratios, Genant grade, volume).<br>"
            "Select a volume and click <b>Apply</b>. Correct a level with <b>Set level</b> (the other "
            "vertebrae follow anatomical order), add or delete vertebrae, drag points or edit segments: "
            "measurements update. <b>Export</b> adds the corrected case to a training set.")
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Methods follow published Mask R-CNN and dense-detection vertebra labelling work and "
            "rule-based vertebral height measurement; see the extension's README for references.")


@parameterNodeWrapper
class SpineLabelParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(MODALITIES)] = RunOptions.modality
    inputMode: Annotated[str, Choice(INPUT_MODES)] = RunOptions.input_mode
    model: str = ""
    segmenter: str = RunOptions.segmenter
    segmentation: vtkMRMLSegmentationNode
    points: vtkMRMLMarkupsFiducialNode
    table: vtkMRMLTableNode
    level: Annotated[str, Choice(LEVELS)] = "L1"
    exportFolder: Path
    replaceExport: bool = False


class SpineLabelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: reads controls, calls the logic, shows progress. No engine decisions here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._syncTimer = None
        self._observedPoints = None
        self._observedSegmentation = None

    # --- lifecycle ------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineLabel.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpineLabelLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPollJob)
        self._syncTimer = qt.QTimer()        # segment edits arrive per brush stroke: measure once they pause
        self._syncTimer.setSingleShot(True)
        self._syncTimer.setInterval(1000)
        self._syncTimer.timeout.connect(self.onSceneEdited)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.setLevelButton.connect("clicked(bool)", self.onSetLevel)
        self.ui.addButton.connect("clicked(bool)", self.onAddAtClick)
        self.ui.deleteButton.connect("clicked(bool)", self.onDelete)
        self.ui.recomputeButton.connect("clicked(bool)", self.onRecompute)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditor)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelJob()
        self.setParameterNode(None)
        self.logic.reset()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        params = self._parameterNode
        running = self._job is not None
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = running or bool(params and params.inputVolume)
        corrigible = not running and self.logic.result is not None
        for button in (self.ui.setLevelButton, self.ui.addButton, self.ui.deleteButton, self.ui.recomputeButton,
                       self.ui.segmentEditorButton, self.ui.exportButton):
            button.enabled = corrigible
        self._observeOutputs()
        self._fillVertebraList()

    # --- detection (background process) ---------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job is not None:
            self._cancelJob()
            self.ui.statusLabel.text = _("Cancelled.")
            return
        with slicer.util.tryWithErrorDisplay(_("SpineLabel could not start."), waitCursor=True):
            params = self._parameterNode
            if not self.logic.ensureDependencies(interactive=True):
                return
            self._job = self.logic.startProcess(params.inputVolume, self.runOptions())
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self._timer.start()
            self._updateButtons()

    def runOptions(self) -> RunOptions:
        params = self._parameterNode
        return RunOptions(model=params.model or None, modality=params.modality, segmenter=params.segmenter or "auto",
                          input_mode=params.inputMode)

    def onPollJob(self) -> None:
        from SpineLabelLib.app.background import RUNNING

        status = self._job.poll()
        self.ui.progressBar.value = int(100 * status.fraction)
        self.ui.statusLabel.text = status.message
        if status.state == RUNNING:
            return
        self._timer.stop()
        job, self._job = self._job, None
        self.ui.progressBar.visible = False
        with slicer.util.tryWithErrorDisplay(_("SpineLabel failed."), waitCursor=True):
            try:
                nodes = self.logic.finishProcess(job, self._outputNodes())
            finally:
                self._updateButtons()
            self._parameterNode.segmentation = nodes.segmentation
            self._parameterNode.points = nodes.points
            self._parameterNode.table = nodes.table
            self.ui.statusLabel.text = _("{count} vertebrae found.").format(count=len(self.logic.result.vertebrae)) \
                + " " + self.logic.namingStatus()
        self._updateButtons()

    def _outputNodes(self):
        """The output nodes chosen in the panel (empty selectors: the logic creates nodes)."""
        from SpineLabelLib.slicer_adapter.scene import SceneNodes

        params = self._parameterNode
        return SceneNodes(None, params.segmentation, params.points, params.table)

    def _cancelJob(self) -> None:
        if self._timer:
            self._timer.stop()
        if self._job is not None:
            self._job.cleanup()
            self._job = None
            self.ui.progressBar.visible = False
            self._updateButtons()

    # --- following a person's edits in the views -----------------------------------------
    def _observeOutputs(self) -> None:
        nodes = self.logic.nodes
        points = nodes.points if nodes else None
        segmentation = nodes.segmentation if nodes else None
        if points is not self._observedPoints:
            for event, method in self._pointEvents():
                if self._observedPoints is not None:
                    self.removeObserver(self._observedPoints, event, method)
                if points is not None:
                    self.addObserver(points, event, method)
            self._observedPoints = points
        if segmentation is not self._observedSegmentation:
            event = slicer.vtkSegmentation.SegmentModified
            if self._observedSegmentation is not None:
                self.removeObserver(self._observedSegmentation.GetSegmentation(), event, self.onSegmentEdited)
            if segmentation is not None:
                self.addObserver(segmentation.GetSegmentation(), event, self.onSegmentEdited)
            self._observedSegmentation = segmentation

    def _pointEvents(self):
        """One handler per markups event (their call data is the point index; never branch on the event)."""
        markups = slicer.vtkMRMLMarkupsNode
        return ((markups.PointEndInteractionEvent, self.onPointDropped),
                (markups.PointStartInteractionEvent, self.onPointClicked),
                (markups.PointPositionDefinedEvent, self.onPointPlaced))

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointClicked(self, caller, event, index) -> None:
        if 0 <= index < self.ui.vertebraComboBox.count:
            self.ui.vertebraComboBox.currentIndex = index

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointDropped(self, caller, event, index) -> None:
        if not self.logic.writing:
            self._syncTimer.start()

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointPlaced(self, caller, event, index) -> None:
        if self.logic.writing or not self.ui.addButton.checkable or not self.ui.addButton.checked:
            return
        self.ui.addButton.checked = False
        self.ui.addButton.checkable = False
        with slicer.util.tryWithErrorDisplay(_("Could not add the vertebra."), waitCursor=True):
            self.logic.addVertebraFromPoint(index)
        self._fillVertebraList()

    def onSegmentEdited(self, caller=None, event=None) -> None:
        if not self.logic.writing:
            self._syncTimer.start()

    def onSceneEdited(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not update the measurements."), waitCursor=True):
            self.logic.syncFromScene()
        self._fillVertebraList()

    def _fillVertebraList(self) -> None:
        combo = self.ui.vertebraComboBox
        current = combo.currentIndex
        combo.clear()
        if self.logic.result is not None:
            combo.addItems([v.level or _("(unnamed)") for v in self.logic.result.vertebrae])
            combo.currentIndex = min(max(current, 0), combo.count - 1)

    # --- correction buttons ----------------------------------------------------------------
    def _selected(self) -> int:
        index = self.ui.vertebraComboBox.currentIndex
        if index < 0:
            raise ValueError(_("Select a vertebra first."))
        return index

    def onSetLevel(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not set the level."), waitCursor=True):
            self.logic.setLevel(self._selected(), self.ui.levelComboBox.currentText)
            self.ui.statusLabel.text = self.logic.namingStatus()
        self._fillVertebraList()

    def onAddAtClick(self) -> None:
        self.ui.addButton.checkable = True
        self.ui.addButton.checked = True
        self.logic.startPlacingPoint()

    def onDelete(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not delete the vertebra."), waitCursor=True):
            self.logic.deleteVertebra(self._selected())
        self._fillVertebraList()

    def onRecompute(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not recompute the centroids."), waitCursor=True):
            self.logic.recomputeCentroids()

    def onSegmentEditor(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not open the Segment Editor."), waitCursor=True):
            self.logic.openSegmentEditor(self._selected())

    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            params = self._parameterNode
            if not params.exportFolder or str(params.exportFolder) in ("", "."):
                raise ValueError(_("Choose a dataset folder first."))
            caseId = self.logic.exportCase(params.exportFolder, replace=params.replaceExport)
            self.ui.statusLabel.text = _("Exported as {case}.").format(case=caseId)


class SpineLabelLogic(ScriptedLoadableModuleLogic):
    """Thin facade over the engine (`SpineLabelLib`) and the scene adapter; usable without the panel.

    Console use (blocking):  ``nodes = SpineLabelLogic().process(volumeNode)``
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.reset()

    def reset(self) -> None:
        self.result = None          # the current SpineResult (after corrections)
        self.original = None        # what the detector said, for the training-set export
        self.nodes = None           # scene.SceneNodes showing self.result
        self.writing = False        # True while we write nodes (their events are ours, not a person's)

    def getParameterNode(self):
        return SpineLabelParameterNode(super().getParameterNode())

    # --- dependencies ------------------------------------------------------------------------
    def ensureDependencies(self, interactive: bool = True) -> bool:
        """torch through the PyTorch extension; other requirements installed only after the user agrees."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            if interactive:
                slicer.util.errorDisplay(_("SpineLabel needs the PyTorch extension: install it from the "
                                           "Extensions Manager and restart Slicer."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=interactive) is None:
            return False
        requirements = Path(__file__).parent / "Resources" / "requirements.txt"
        if requirements.exists() and hasattr(slicer, "packaging"):
            try:
                slicer.packaging.pip_ensure(slicer.packaging.load_requirements(str(requirements)),
                                            prompt_install=interactive, requester="SpineLabel")
            except RuntimeError:        # the user declined
                return False
        return True

    # --- detection -----------------------------------------------------------------------------
    def process(self, volumeNode, options: RunOptions | None = None):
        """Detect, name, segment and measure in this process (blocking; console and scripts).

        ``options``: ``RunOptions(model=..., modality=..., segmenter=..., input_mode=...)``."""
        from SpineLabelLib.app import pipeline
        from SpineLabelLib.slicer_adapter import scene

        result = pipeline.case_from_volume(scene.node_to_volume(volumeNode), volumeNode.GetName())
        pipeline.analyse(result, options)
        return self.show(result, volumeNode)

    def startProcess(self, volumeNode, options: RunOptions | None = None):
        """The same in a background process; poll the returned job, then call `finishProcess`."""
        from SpineLabelLib.slicer_adapter import scene
        from SpineLabelLib.app.background import BackgroundRun

        job = BackgroundRun(scene.node_to_volume(volumeNode), volumeNode.GetName(), options)
        job.volumeNodeID = volumeNode.GetID()      # results go onto this volume even if the selection changes
        job.start()
        return job

    def finishProcess(self, job, outputs=None):
        """Show a finished background job's result on the volume it was started for."""
        try:
            from SpineLabelLib.app.background import DONE

            status = job.poll()
            if status.state != DONE:
                raise RuntimeError(status.message)
            volumeNode = slicer.mrmlScene.GetNodeByID(job.volumeNodeID)
            if volumeNode is None:
                raise RuntimeError(_("The input volume was removed while SpineLabel was running."))
            return self.show(job.result(), volumeNode, outputs)
        finally:
            job.cleanup()

    def show(self, result, volumeNode, outputs=None):
        """Put a result into the scene and show it in 2-D and 3-D.

        ``outputs`` (scene.SceneNodes) names nodes to fill; missing ones are created.
        """
        import copy

        self.result, self.original = result, copy.deepcopy(result)
        if outputs is not None:
            outputs.volume = volumeNode
            self.nodes = outputs
        elif self.nodes is not None and self.nodes.volume is not volumeNode:
            self.nodes = None                   # another case: new nodes, the previous case's stay
        self._write(volumeNode)
        segmentation = self.nodes.segmentation
        segmentation.CreateClosedSurfaceRepresentation()
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        return self.nodes

    def _write(self, volumeNode=None, segments: bool = True) -> None:
        from SpineLabelLib.slicer_adapter import scene

        self.writing = True
        try:
            self.nodes = scene.result_to_nodes(slicer.mrmlScene, self.result, volumeNode or self.nodes.volume,
                                               nodes=self.nodes, segments=segments)
        finally:
            self.writing = False

    # --- correction ---------------------------------------------------------------------------
    def syncFromScene(self, remeasure: bool = True) -> None:
        """Take in what a person did in the views (recorded), then measure again."""
        from SpineLabelLib.app import pipeline
        from SpineLabelLib.slicer_adapter import scene

        self.result = scene.nodes_to_result(self.nodes, previous=self.result)
        if remeasure:
            pipeline.measure(self.result)
        self._write(segments=False)     # the segments already show what the person did

    def _correct(self, operation, *args) -> None:
        from SpineLabelLib.app import pipeline
        from SpineLabelLib.slicer_adapter import scene

        self.result = scene.nodes_to_result(self.nodes, previous=self.result)
        operation(self.result, *args)
        pipeline.measure(self.result)
        self._write()

    def namingStatus(self) -> str:
        """How sure the level naming is, for the status line ("levels uncertain: ..." when it is not)."""
        from SpineLabelLib.app import pipeline

        return pipeline.naming_status(self.result)

    def setLevel(self, index: int, level: str) -> None:
        from SpineLabelLib.correction import edits as correction

        self._correct(lambda result: correction.set_level(result, result.vertebrae[index], level))

    def deleteVertebra(self, index: int) -> None:
        from SpineLabelLib.correction import edits as correction

        self._correct(lambda result: correction.delete_vertebra(result, result.vertebrae[index]))

    def recomputeCentroids(self) -> None:
        from SpineLabelLib.correction import edits as correction

        self._correct(correction.recompute_centroids_from_masks)

    def startPlacingPoint(self) -> None:
        """Next click in a view places a point in this case's point list."""
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(self.nodes.points.GetID())
        slicer.app.applicationLogic().GetInteractionNode().SetCurrentInteractionMode(
            slicer.vtkMRMLInteractionNode.Place)

    def addVertebraFromPoint(self, index: int) -> None:
        """A person clicked where a vertebra was missed: it joins the result and levels are re-assigned."""
        from SpineLabelLib.correction import edits as correction

        position = self.nodes.points.GetNthControlPointPositionVector(index)
        self.writing = True
        try:
            self.nodes.points.RemoveNthControlPoint(index)
        finally:
            self.writing = False
        # The engine draws its body with the segmenter when one is installed.
        self._correct(lambda result: correction.draw_mask(result, correction.add_vertebra(result, list(position))))

    def openSegmentEditor(self, index: int) -> None:
        from SpineLabelLib.slicer_adapter import scene

        vertebra = self.result.vertebrae[index]
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(self.nodes.segmentation)
        editor.setSourceVolumeNode(self.nodes.volume)
        segmentId = scene.segment_id_of(self.nodes.segmentation, vertebra)
        if segmentId:
            editor.setCurrentSegmentID(segmentId)
        editor.setActiveEffectByName("Paint")

    # --- export ---------------------------------------------------------------------------------
    def exportCase(self, datasetFolder, replace: bool = False) -> str:
        """Add the corrected case (image, bodies, points, correction record) to a training-set folder."""
        from SpineLabelLib import dataset
        from SpineLabelLib.slicer_adapter import scene

        self.result = scene.nodes_to_result(self.nodes, previous=self.result)
        record = dataset.export_case(
            datasetFolder, self.result.image, self.result.level_volume(), centroids=self.result.vertebrae,
            original=self.original.level_volume() if self.original and self.original.instances is not None else None,
            model=self.result.models, corrections=self.result.corrections, replace=replace,
            modality=self.result.modality)
        return record.case_id


class SpineLabelTest(ScriptedLoadableModuleTest):
    """Offline, synthetic, seconds: load -> detect -> correct -> measure -> export."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_load_detect_correct_measure_export()

    def test_load_detect_correct_measure_export(self) -> None:
        import tempfile

        from SpineLabelLib import phantom
        from SpineLabelLib.app import pipeline
        from SpineLabelLib.slicer_adapter import scene
        from SpineLabelLib.core.errors import ModelError

        truth = phantom.generate_phantom(["T12", "L1", "L2", "L3"], spacing=(2.0, 2.0, 2.0), crop_to_spine=True)
        volumeNode = scene.volume_to_node(slicer.mrmlScene, truth.image, "SpineLabel phantom")
        logic = SpineLabelLogic()
        result = pipeline.case_from_volume(scene.node_to_volume(volumeNode), "phantom")
        try:
            pipeline.detect(result, RunOptions(modality="ct"))
        except ModelError:          # no bundled weights in this build: the phantom's truth stands in
            known = truth.to_result("phantom")
            result.vertebrae, result.instances = known.vertebrae, known.instances
        pipeline.measure(result)
        nodes = logic.show(result, volumeNode)
        count = len(logic.result.vertebrae)
        self.assertEqual(nodes.segmentation.GetSegmentation().GetNumberOfSegments(), count)
        logic.setLevel(1, "L1")
        self.assertEqual(logic.result.vertebrae[1].level, "L1")
        self.assertEqual(logic.result.vertebrae[0].level, "T12")
        logic.deleteVertebra(count - 1)
        self.assertEqual(len(logic.result.vertebrae), count - 1)
        self.assertEqual(nodes.table.GetNumberOfRows(), len(logic.result.measurements))
        self.assertIn("delete", [c["action"] for c in logic.result.corrections])
        with tempfile.TemporaryDirectory() as folder:
            self.assertTrue(logic.exportCase(os.path.join(folder, "dataset")))
        self.delayDisplay("SpineLabel self-test passed")
