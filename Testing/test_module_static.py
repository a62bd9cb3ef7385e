"""The Slicer-facing files stay glue: they compile, import only the engine's facade, and hold no
measurement, labelling or file I/O logic; the catalog entry is valid. (Real Slicer is not run here.)"""
from __future__ import annotations

import ast
import json
import py_compile
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SpineLabel" / "SpineLabel.py"
BATCH = ROOT / "SpineLabel" / "Scripts" / "batch.py"

STDLIB_OK = {"__future__", "enum", "os", "sys", "pathlib", "typing", "copy", "tempfile", "argparse", "unittest"}
SLICER_OK = {"qt", "ctk", "vtk", "slicer", "PyTorchUtils", "SampleData"}   # SampleData: a Slicer core module
ENGINE_FACADE = {"app", "slicer_adapter", "correction", "dataset", "core", "io", "phantom"}
#: engine modules the panel imports at load for its lists of choices; they must stay stdlib-only
CHOICE_MODULES = {"SpineLabelLib.core.options", "SpineLabelLib.core.anatomy"}
FORBIDDEN_CALLS = {"open", "measure_result", "assign_levels", "relabel_result", "write_seg_nrrd",
                   "write_markups", "write_case_outputs", "savez", "load", "dump", "read_text", "write_text"}


def imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", [alias.name for alias in node.names]))
    return out


@pytest.mark.parametrize("path", [MODULE, BATCH], ids=["SpineLabel.py", "batch.py"])
def test_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.parametrize("path", [MODULE, BATCH], ids=["SpineLabel.py", "batch.py"])
def test_imports_only_slicer_and_the_engine_facade(path):
    for module, names in imports(ast.parse(path.read_text(encoding="utf-8"))):
        top = module.split(".")[0]
        if top == "SpineLabelLib":
            used = [module.split(".")[1]] if "." in module else [n for n in names if n != "*"]
            assert set(used) <= ENGINE_FACADE, f"{path.name} reaches into the engine: {module} {names}"
        else:
            assert top in STDLIB_OK | SLICER_OK, f"{path.name} imports {module}: logic belongs in SpineLabelLib"


def test_module_imports_nothing_heavy_at_load():
    """Module-level imports: Slicer/Qt/stdlib, and the engine's stdlib-only lists of choices; the rest
    of the engine comes in lazily inside methods."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in top_level}
    engine = {m for m in modules if m.startswith("SpineLabelLib")}
    assert engine <= CHOICE_MODULES
    assert {m.split(".")[0] for m in modules - engine} <= STDLIB_OK | {"qt", "vtk", "slicer"}
    for name in engine:
        source = ROOT / (name.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
                top = (node.names[0].name if isinstance(node, ast.Import) else node.module).split(".")[0]
                assert top in sys.stdlib_module_names, f"{name} imports {top}: the panel would load it at start"


@pytest.mark.parametrize("path", [MODULE, BATCH], ids=["SpineLabel.py", "batch.py"])
def test_no_measurement_labelling_or_io_logic(path):
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not called & FORBIDDEN_CALLS, f"{path.name} does engine work itself: {called & FORBIDDEN_CALLS}"
    assert "numpy" not in text and "np." not in text          # arrays are the engine's business


def test_module_declares_metadata_and_the_four_classes():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"SpineLabel", "SpineLabelWidget", "SpineLabelLogic", "SpineLabelTest"} <= classes
    text = MODULE.read_text(encoding="utf-8")
    for field in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{field} =" in text
    assert '_("Segmentation")' in text


def test_catalog_entry_is_valid():
    import jsonschema

    raw = (ROOT / "SpineLabel.json").read_bytes()
    assert b"\r" not in raw                                    # ExtensionsIndex requires LF line endings
    entry = json.loads(raw)
    schema = json.loads((FIXTURES / "slicer-extension-catalog-entry-schema-v1.0.1.json").read_text())
    assert entry["$schema"] == schema["$id"]
    jsonschema.validate(entry, schema)
    assert entry["category"] in {"Segmentation", "Quantification", "Training", "Utilities", "Examples"}
    assert entry["build_dependencies"] == ["PyTorch"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**entry, "colour": "red"}, schema)


def test_s4ext_has_the_required_keys_one_line_each():
    pairs = [line.split(" ", 1) for line in (ROOT / "SpineLabel.s4ext").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    keys = {p[0] for p in pairs}
    assert {"scm", "scmurl", "scmrevision", "homepage", "category", "depends"} <= keys
    assert dict(pairs)["depends"] == "PyTorch"


def test_ui_binds_parameters_that_the_wrapper_declares():
    import re

    ui = (ROOT / "SpineLabel" / "Resources" / "UI" / "SpineLabel.ui").read_text(encoding="utf-8")
    bound = set(re.findall(r'name="SlicerParameterName" stdset="0"><string>(\w+)</string>', ui))
    declared = set(re.findall(r"^    (\w+): ", MODULE.read_text(encoding="utf-8"), re.M))
    assert bound and bound <= declared
    for button in ("applyButton", "setLevelButton", "addButton", "deleteButton", "recomputeButton",
                   "segmentEditorButton", "exportButton", "progressBar"):
        assert f'name="{button}"' in ui


#: the one call the module makes at import: putting the unbuilt checkout's engine on sys.path
IMPORT_TIME_CALLS = {"_make_engine_importable"}


def test_module_runs_nothing_at_import_but_the_engine_path_setup():
    """Extensions Index review: loading the module must not compute, download or install anything;
    file scope holds the docstring, imports, definitions and the guarded sys.path set-up only."""
    for node in ast.parse(MODULE.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):        # docstring
            continue
        is_setup_call = (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                         and isinstance(node.value.func, ast.Name) and node.value.func.id in IMPORT_TIME_CALLS)
        assert is_setup_call, f"SpineLabel.py line {node.lineno} runs at import: {ast.unparse(node)[:60]}"


def test_module_reaches_torch_only_through_the_pytorch_extension():
    """Extensions Index review: torch is installed by the PyTorch extension (PyTorchUtils), never imported
    or pip-installed by the module itself."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    for module, _ in imports(tree):
        assert module.split(".")[0] not in {"torch", "torchvision"}, f"SpineLabel.py imports {module}"
    assert "PyTorchUtils" in {module for module, _ in imports(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert "pip install torch" not in node.value and "pip_install(\"torch" not in node.value
