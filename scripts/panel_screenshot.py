"""Render the SpineLabel panel for the README from the real .ui file with PySide6 (offscreen).

    QT_QPA_PLATFORM=offscreen python scripts/panel_screenshot.py [--out docs/panel.png] [--staged-warnings]

No Slicer is needed: the .ui is loaded by PySide6's QUiLoader, Slicer's CTK/MRML widgets drawn by small
stand-ins on the same Qt base classes (a collapsible header, a node combo showing a node name, a path
field). The contents come from the engine exactly as the module fills them: the model combos from the
registry (`app.panel.all_model_choices`), modality/input/level lists from core/options and anatomy, the
vertebra list from a real run of the bundled detector on the SampleData phantom (`app.demo.DEMO_PHANTOM`).
``--staged-warnings`` lowers one body's score below the threshold, marks the naming uncertain and writes
a batch summary line, so the picture shows the warning icon, the banner and the summary (on the sample itself every body scores >= 0.99 and the
naming is anchored by the last rib); the README's caption says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6 import QtCore, QtGui, QtWidgets, QtUiTools  # noqa: E402

UI_FILE = ROOT / "SpineLabel" / "Resources" / "UI" / "SpineLabel.ui"


def _property(kind, attribute, default):
    def getter(self):
        return getattr(self, attribute, default)

    def setter(self, value):
        setattr(self, attribute, value)

    return QtCore.Property(kind, getter, setter)


class qMRMLWidget(QtWidgets.QWidget):
    pass


class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    """Draws a header button like CTK's and folds its children away when collapsed."""

    HEADER = 26

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False
        self.setContentsMargins(4, self.HEADER + 2, 4, 4)

    def _get_collapsed(self):
        return self._collapsed

    def _set_collapsed(self, value):
        self._collapsed = bool(value)
        children = self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly)
        if self._collapsed:       # hide, remembering which were shown (a hidden progress bar stays hidden)
            self._folded = [c for c in children if not c.isHidden()]
            for child in self._folded:
                child.hide()
        else:
            for child in getattr(self, "_folded", []):
                child.show()
            self._folded = []
        self.setContentsMargins(4, self.HEADER + 2, 4, 0 if self._collapsed else 4)
        self.updateGeometry()

    collapsed = QtCore.Property(bool, _get_collapsed, _set_collapsed)

    def sizeHint(self):
        hint = super().sizeHint()
        return QtCore.QSize(hint.width(), self.HEADER + 4) if self._collapsed else hint

    def minimumSizeHint(self):
        return self.sizeHint() if self._collapsed else super().minimumSizeHint()

    def paintEvent(self, event):
        painter = QtWidgets.QStylePainter(self)
        option = QtWidgets.QStyleOptionButton()
        option.initFrom(self)
        option.rect = QtCore.QRect(0, 0, self.width(), self.HEADER)
        option.text = ("▸  " if self._collapsed else "▾  ") + self.text()
        painter.drawControl(QtWidgets.QStyle.CE_PushButton, option)
        if not self._collapsed:
            painter.setPen(self.palette().mid().color())
            painter.drawRect(0, self.HEADER, self.width() - 1, self.height() - self.HEADER - 1)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    nodeTypes = _property("QStringList", "_types", [])
    addEnabled = _property(bool, "_add", True)
    removeEnabled = _property(bool, "_remove", True)
    noneEnabled = _property(bool, "_none", False)
    renameEnabled = _property(bool, "_rename", False)


class ctkPathLineEdit(QtWidgets.QWidget):
    filters = _property(int, "_filters", 0)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = QtWidgets.QLineEdit()
        layout.addWidget(self.edit)
        layout.addWidget(QtWidgets.QToolButton(text="…"))


def load_panel():
    tree = ET.parse(UI_FILE)
    for connections in tree.getroot().findall("connections"):     # vtkMRMLScene* signals exist only in Slicer
        tree.getroot().remove(connections)
    loader = QtUiTools.QUiLoader()
    for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit):
        loader.registerCustomWidget(cls)
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(ET.tostring(tree.getroot())))
    buffer.open(QtCore.QIODevice.ReadOnly)
    panel = loader.load(buffer)
    if panel is None:
        raise SystemExit(f"could not load {UI_FILE}: {loader.errorString()}")
    return panel


def sample_result(staged: bool):
    import torch

    from SpineLabelLib.app import pipeline
    from SpineLabelLib.app.demo import DEMO_CASE, DEMO_PHANTOM
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.naming.confidence import LOW_VERTEBRA_CONFIDENCE
    from SpineLabelLib.phantom import generate_phantom

    torch.set_num_threads(1)
    result = pipeline.case_from_volume(generate_phantom(**DEMO_PHANTOM).image, DEMO_CASE)
    pipeline.detect(result, RunOptions(modality="ct"))
    if staged:
        result.vertebrae[2].score = round(LOW_VERTEBRA_CONFIDENCE - 0.08, 2)
        result.naming = {**result.naming, "confidence": 0.81, "uncertain": True,
                         "reason": "levels uncertain: the naming with vertebrae all one level lower is nearly "
                                   "as likely — check one level and use Set level"}
    return result


def fill(panel, result, staged: bool) -> None:
    """What SpineLabelWidget puts into the widgets, from the same engine functions."""
    from SpineLabelLib.app import panel as choices
    from SpineLabelLib.app.pipeline import naming_status
    from SpineLabelLib.core.anatomy import ORDER
    from SpineLabelLib.core.options import INPUT_MODES, MODALITIES

    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QtWidgets.QComboBox, "modalityComboBox").addItems(list(MODALITIES))
    find(QtWidgets.QComboBox, "modalityComboBox").setCurrentText("ct")
    find(QtWidgets.QComboBox, "inputModeComboBox").addItems(list(INPUT_MODES))
    layout = find(QtWidgets.QWidget, "modelChoicesWidget").layout()
    for role, entries in choices.all_model_choices().items():
        combo = QtWidgets.QComboBox()
        combo.addItems([c.label for c in entries])
        combo.setEnabled(choices.option_field(role) is not None)
        layout.addRow(f"{choices.role_title(role)}:", combo)
    for name, node in (("inputVolumeSelector", result.case_id), ("segmentationSelector", f"{result.case_id} vertebrae"),
                       ("pointsSelector", f"{result.case_id} centroids"), ("tableSelector", f"{result.case_id} measurements")):
        find(QtWidgets.QComboBox, name).addItem(node)
    find(QtWidgets.QLabel, "statusLabel").setText(f"{len(result.vertebrae)} vertebrae found. {naming_status(result)}")
    vertebrae = find(QtWidgets.QComboBox, "vertebraComboBox")
    warning = panel.style().standardIcon(QtWidgets.QStyle.SP_MessageBoxWarning)
    rows = choices.vertebra_rows(result)
    for row in rows:
        vertebrae.addItem(warning, row.text) if row.low else vertebrae.addItem(row.text)
    vertebrae.setCurrentIndex(next((i for i, r in enumerate(rows) if r.low), 0))
    levels = find(QtWidgets.QComboBox, "levelComboBox")
    levels.addItems(list(ORDER))
    levels.setCurrentText(result.vertebrae[vertebrae.currentIndex()].level or "L1")
    banner = choices.naming_banner(result)
    find(QtWidgets.QWidget, "namingBanner").setVisible(banner is not None)
    find(QtWidgets.QLabel, "namingBannerLabel").setText(banner or "")
    if staged:      # the wording BatchRun.summary() gives, for the picture
        find(QtWidgets.QLabel, "batchSummaryLabel").setText("3 cases: 2 done, 1 failed\n  case_b: file is empty")
    find(QtWidgets.QAbstractButton, "batchCollapsibleButton").setProperty("collapsed", False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "panel.png"))
    parser.add_argument("--width", type=int, default=440)
    parser.add_argument("--staged-warnings", action="store_true",
                        help="show the low-confidence icon and the naming banner (values staged, see the docstring)")
    args = parser.parse_args(argv)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")
    panel = load_panel()
    fill(panel, sample_result(args.staged_warnings), args.staged_warnings)
    panel.resize(args.width, panel.sizeHint().height())
    panel.adjustSize()
    panel.resize(args.width, panel.sizeHint().height())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(args.out):
        raise SystemExit(f"could not write {args.out}")
    print(f"{args.out}: {panel.width()}x{panel.height()}, {Path(args.out).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
