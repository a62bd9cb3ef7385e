"""The panel's .ui file loaded by a real Qt (PySide6's QUiLoader, offscreen), checked against the code.

Slicer is not run here, so its CTK/MRML widgets are stood in for by Python classes derived from the
real Qt base class of each (ctkCollapsibleButton is a QAbstractButton, qMRMLNodeComboBox, qMRMLWidget
and ctkPathLineEdit are QWidgets) declaring the properties the .ui sets on them. Every widget the
module reaches through ``self.ui.<name>`` (found by reading SpineLabel.py's syntax tree, aliases
included) must exist and offer the Qt properties, signals and methods the code uses on it: a
renamed widget or a changed class then fails here instead of in a user's Slicer.
"""
from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")     # no display on a test machine
QtCore = pytest.importorskip("PySide6.QtCore")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")
QtUiTools = pytest.importorskip("PySide6.QtUiTools")

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SpineLabel" / "SpineLabel.py"
UI_FILE = ROOT / "SpineLabel" / "Resources" / "UI" / "SpineLabel.ui"


# --- what the module code uses ------------------------------------------------------------------
@dataclass
class Usage:
    """What the code does with one widget: Qt properties read or set, signals connected, methods called."""

    properties: set[str] = field(default_factory=set)
    signals: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)


def _ui_name(node: ast.AST) -> str | None:
    """'applyButton' for the expression ``self.ui.applyButton``, else None."""
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
        return node.attr
    return None


def _aliases(function: ast.AST) -> dict[str, set[str]]:
    """Local names standing for ui widgets: ``combo = self.ui.x`` and ``for b in (self.ui.x, self.ui.y)``."""
    aliases: dict[str, set[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = _ui_name(node.value)
            if name:
                aliases.setdefault(node.targets[0].id, set()).add(name)
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) \
                and isinstance(node.iter, (ast.Tuple, ast.List)):
            names = {_ui_name(e) for e in node.iter.elts} - {None}
            if names:
                aliases.setdefault(node.target.id, set()).update(names)
    return aliases


def _record(usage: Usage, attribute: ast.Attribute, parents: dict[ast.AST, ast.AST]) -> None:
    parent = parents.get(attribute)
    if isinstance(parent, ast.Call) and parent.func is attribute:
        if attribute.attr == "connect":     # PythonQt: widget.connect("clicked(bool)", slot)
            if parent.args and isinstance(parent.args[0], ast.Constant):
                usage.signals.add(parent.args[0].value)
        else:
            usage.methods.add(attribute.attr)
    else:
        usage.properties.add(attribute.attr)


def widget_usage(source: str) -> dict[str, Usage]:
    """Widget name -> what the module's code does with it (``self.ui.<name>`` and local aliases of it)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses: dict[str, Usage] = {}
    for node in ast.walk(tree):
        name = _ui_name(node)
        if name:
            usage = uses.setdefault(name, Usage())
            outer = parents.get(node)
            if isinstance(outer, ast.Attribute) and outer.value is node:
                _record(usage, outer, parents)
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for local, names in _aliases(function).items():
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == local:
                    for name in names:
                        _record(uses.setdefault(name, Usage()), node, parents)
    return uses


# --- Slicer's widgets as their Qt base classes --------------------------------------------------
def _bool_property(attribute: str, default: bool = False):
    def getter(self):
        return getattr(self, attribute, default)

    def setter(self, value):
        setattr(self, attribute, bool(value))

    return QtCore.Property(bool, getter, setter)


def _value_property(kind, attribute: str, default):
    def getter(self):
        return getattr(self, attribute, default)

    def setter(self, value):
        setattr(self, attribute, value)

    return QtCore.Property(kind, getter, setter)


class qMRMLWidget(QtWidgets.QWidget):
    """Slicer's qMRMLWidget: a QWidget that forwards the scene (signals with vtk types are Slicer-only)."""


class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    """CTK's collapsible group: a QAbstractButton (checkable) whose children fold away."""

    collapsed = _bool_property("_collapsed")

    def paintEvent(self, event):  # QAbstractButton is abstract in C++: it must paint itself
        pass


class qMRMLNodeComboBox(QtWidgets.QWidget):
    """Slicer's node selector: a QWidget with the node-type and editing properties the .ui sets."""

    nodeTypes = _value_property("QStringList", "_node_types", [])
    addEnabled = _bool_property("_add", True)
    removeEnabled = _bool_property("_remove", True)
    noneEnabled = _bool_property("_none")
    renameEnabled = _bool_property("_rename")


class ctkPathLineEdit(QtWidgets.QWidget):
    """CTK's path field: a QWidget with a current path and file-dialog filters."""

    currentPath = _value_property(str, "_path", "")
    filters = _value_property(int, "_filters", 0)


STAND_INS = (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit)


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def without_connections(ui_text: str) -> tuple[str, list[tuple[str, str]]]:
    """The .ui without its Designer connections (their vtkMRMLScene* signatures exist only in Slicer),
    and (sender, receiver) of each, so their names can still be checked."""
    tree = ET.ElementTree(ET.fromstring(ui_text))
    ends = []
    for connections in tree.getroot().findall("connections"):
        ends += [(c.findtext("sender"), c.findtext("receiver")) for c in connections.findall("connection")]
        tree.getroot().remove(connections)
    return ET.tostring(tree.getroot(), encoding="unicode"), ends


def load_panel(ui_text: str):
    """The .ui's top-level widget built by QUiLoader with the stand-ins registered."""
    loader = QtUiTools.QUiLoader()
    for stand_in in STAND_INS:
        loader.registerCustomWidget(stand_in)
    text, _ = without_connections(ui_text)
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(text.encode("utf-8")))
    buffer.open(QtCore.QIODevice.ReadOnly)
    widget = loader.load(buffer)
    assert widget is not None, f"QUiLoader could not load the .ui: {loader.errorString()}"
    return widget


def unknown_ui_properties(panel, ui_text: str) -> list[str]:
    """Properties the .ui sets that the widget's class lacks. QUiLoader silently turns those into
    dynamic properties, so a typo or a wrong class would go unnoticed; ``stdset="0"`` ones (the
    parameter bindings) are meant to be dynamic."""
    found = []
    for element in ET.fromstring(ui_text).iter("widget"):
        name = element.get("name")
        widget = panel if name == panel.objectName() else panel.findChild(QtCore.QObject, name or "")
        if not name or widget is None:
            continue
        for prop in element.findall("property"):
            if prop.get("stdset") != "0" and widget.metaObject().indexOfProperty(prop.get("name")) < 0:
                found.append(f"{name} ({type(widget).__name__}): the .ui sets unknown property {prop.get('name')!r}")
    return found


def _has_signal(widget, signature: str) -> bool:
    normalised = QtCore.QMetaObject.normalizedSignature(signature)
    return widget.metaObject().indexOfSignal(normalised.data().decode()) >= 0


def problems(panel, uses: dict[str, Usage]) -> list[str]:
    """One line per widget the code uses that is missing or lacks what the code uses on it."""
    found = []
    for name, usage in sorted(uses.items()):
        widget = panel.findChild(QtCore.QObject, name)
        if widget is None:
            found.append(f"{name}: used by the module, missing from the .ui")
            continue
        cls = type(widget).__name__
        meta = widget.metaObject()
        found += [f"{name} ({cls}): no property {p!r}" for p in sorted(usage.properties)
                  if meta.indexOfProperty(p) < 0]
        found += [f"{name} ({cls}): no signal {s!r}" for s in sorted(usage.signals) if not _has_signal(widget, s)]
        found += [f"{name} ({cls}): no method {m!r}" for m in sorted(usage.methods) if not hasattr(widget, m)]
    return found


# --- tests --------------------------------------------------------------------------------------
def test_the_code_reaches_widgets_through_self_ui():
    """The AST reading sees the module's widgets, including those only used through a local alias."""
    uses = widget_usage(MODULE.read_text(encoding="utf-8"))
    assert len(uses) >= 5
    assert any(u.signals for u in uses.values()) and any(u.properties for u in uses.values())
    alias_only = widget_usage("def f(self):\n    combo = self.ui.box\n    combo.addItems([])\n    n = combo.count\n")
    assert alias_only["box"].methods == {"addItems"} and alias_only["box"].properties == {"count"}


def test_every_widget_the_module_uses_exists_with_a_compatible_class(app):
    panel = load_panel(UI_FILE.read_text(encoding="utf-8"))
    assert type(panel).__name__ == "qMRMLWidget"
    assert problems(panel, widget_usage(MODULE.read_text(encoding="utf-8"))) == []


def test_every_property_the_ui_sets_belongs_to_its_widget_class(app):
    text = UI_FILE.read_text(encoding="utf-8")
    assert unknown_ui_properties(load_panel(text), text) == []
    # The check sees a property no class has (QUiLoader alone would accept it as a dynamic one).
    typo = text.replace('<property name="collapsed">', '<property name="colapsed">', 1)
    assert len(unknown_ui_properties(load_panel(typo), typo)) == 1


def test_designer_connections_join_widgets_that_exist(app):
    panel = load_panel(UI_FILE.read_text(encoding="utf-8"))
    _, ends = without_connections(UI_FILE.read_text(encoding="utf-8"))
    names = {w.objectName() for w in panel.findChildren(QtCore.QObject)} | {panel.objectName()}
    assert ends and all(sender in names and receiver in names for sender, receiver in ends)


def test_the_check_fails_when_a_used_widget_is_missing_from_the_ui(app):
    uses = widget_usage(MODULE.read_text(encoding="utf-8"))
    name = sorted(uses)[0]
    text = UI_FILE.read_text(encoding="utf-8")
    assert text.count(f'name="{name}"') == 1
    renamed = text.replace(f'name="{name}"', f'name="{name}Renamed"')
    assert problems(load_panel(renamed), uses) == [f"{name}: used by the module, missing from the .ui"]


def test_the_check_fails_when_a_used_widget_changes_to_an_incompatible_class(app):
    uses = widget_usage(MODULE.read_text(encoding="utf-8"))
    panel = load_panel(UI_FILE.read_text(encoding="utf-8"))
    # A widget whose own properties the code uses (not just QWidget's) turned into a plain QWidget.
    plain = QtWidgets.QWidget().metaObject()
    name = next(n for n, u in sorted(uses.items())
                if any(plain.indexOfProperty(p) < 0 for p in u.properties))
    cls = type(panel.findChild(QtCore.QObject, name)).__name__
    tree = ET.fromstring(UI_FILE.read_text(encoding="utf-8"))
    element = next(w for w in tree.iter("widget") if w.get("name") == name)
    assert element.get("class") == cls
    element.set("class", "QWidget")
    found = problems(load_panel(ET.tostring(tree, encoding="unicode")), uses)
    assert found and all(line.startswith(f"{name} (QWidget): no ") for line in found)


#: the widgets issue 17's panel added (models, batch, confidence banner, DICOM SEG)
NEW_WIDGETS = ("modelChoicesWidget", "addModelFolderButton", "applyAllButton", "applyFolderButton",
               "batchCancelButton", "batchProgressBar", "batchSummaryLabel", "openReportButton", "namingBanner",
               "namingBannerLabel", "bannerSetLevelButton", "exportDicomSegButton")


@pytest.mark.parametrize("name", NEW_WIDGETS)
def test_each_new_widget_is_used_by_the_code_and_missing_it_fails_the_check(app, name):
    uses = widget_usage(MODULE.read_text(encoding="utf-8"))
    assert name in uses
    text = UI_FILE.read_text(encoding="utf-8")
    renamed = text.replace(f'name="{name}"', f'name="{name}Gone"')
    assert f"{name}: used by the module, missing from the .ui" in problems(load_panel(renamed), uses)


def test_new_path_fields_bind_to_parameters():
    """The batch and DICOM SEG folders are parameter-node bound ctkPathLineEdits (Path parameters)."""
    tree = ET.fromstring(UI_FILE.read_text(encoding="utf-8"))
    bound = {w.get("name"): w.find("property[@name='SlicerParameterName']/string").text
             for w in tree.iter("widget") if w.find("property[@name='SlicerParameterName']") is not None}
    assert {bound[n] for n in ("batchInputFolderPathLineEdit", "batchOutputFolderPathLineEdit",
                               "dicomSegFolderPathLineEdit")} == {"batchInputFolder", "batchOutputFolder",
                                                                  "dicomSegFolder"}
    source = MODULE.read_text(encoding="utf-8")
    for parameter in ("batchInputFolder", "batchOutputFolder", "dicomSegFolder"):
        assert f"    {parameter}: Path\n" in source
