"""Packaging: every engine and module file is in the CMake lists (files not listed are not shipped)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cmake_list(cmake_file: Path, variable: str) -> list[str]:
    """Entries of `set(VARIABLE ...)` with ${MODULE_NAME} expanded."""
    text = cmake_file.read_text(encoding="utf-8")
    name = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text).group(1)
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [entry.replace("${MODULE_NAME}", name) for entry in body.split() if not entry.startswith("#")]


def files_under(folder: Path, pattern: str = "*") -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob(pattern)
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}


@pytest.mark.parametrize("folder, variable, pattern, subfolders", [
    ("SpineLabelLib", "MODULE_PYTHON_SCRIPTS", "*.py", None),
    ("SpineLabelLib", "MODULE_PYTHON_RESOURCES", "*", ("resources",)),
    ("SpineLabel", "MODULE_PYTHON_SCRIPTS", "*.py", ("",)),
    ("SpineLabel", "MODULE_PYTHON_RESOURCES", "*", ("Resources", "Scripts")),
])
def test_every_file_is_listed_and_every_listed_file_exists(folder, variable, pattern, subfolders):
    base = ROOT / folder
    listed = cmake_list(base / "CMakeLists.txt", variable)
    assert not [e for e in listed if ".." in e], "paths with .. would be copied outside the module folder"
    missing = [e for e in listed if not (base / e).is_file()]
    assert not missing, f"listed in {folder}/CMakeLists.txt but absent (a configure-time error): {missing}"
    if subfolders == ("",):
        on_disk = {p.name for p in base.glob(pattern) if p.is_file()}
    elif subfolders:
        on_disk = {f"{s}/{f}" for s in subfolders if (base / s).is_dir() for f in files_under(base / s, pattern)}
    else:
        on_disk = files_under(base, pattern)
    unlisted = sorted(on_disk - set(listed))
    assert not unlisted, f"not in {folder}/CMakeLists.txt {variable}, so not packaged: {unlisted}"


def test_extension_cmake_declares_project_modules_and_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(SpineLabel\)", text, re.M)     # must equal the catalog JSON file name
    assert (ROOT / "SpineLabel.json").exists()
    assert text.index("add_subdirectory(SpineLabelLib)") < text.index("add_subdirectory(SpineLabel)")
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "DEPENDS"):
        assert f"set(EXTENSION_{key} " in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    module = (ROOT / "SpineLabel" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in module and "slicer_add_python_unittest" in module
    assert "WITH_SUBDIR" in (ROOT / "SpineLabelLib" / "CMakeLists.txt").read_text(encoding="utf-8")


def test_icon_is_a_128_pixel_png_and_licence_is_bsd3():
    from PIL import Image

    with Image.open(ROOT / "SpineLabel" / "Resources" / "Icons" / "SpineLabel.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "BSD 3-Clause" in licence and "SpineLabel contributors" in licence


def test_requirements_are_engine_dependencies():
    """What the module offers to pip-install is what the engine declares (names only)."""
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ]", d)[0].lower() for d in declared}
    lines = (ROOT / "SpineLabel" / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    wanted = {re.split(r"[<>=!~ ]", l)[0].lower() for l in lines if l.strip() and not l.startswith("#")}
    assert wanted and wanted <= names
    assert names - wanted <= {"numpy", "simpleitk"}        # bundled with Slicer


def test_wheel_data_files_carry_every_bundled_model():
    """`pip install` (not editable) finds models in <prefix>/share/spinelabel/Models only if
    pyproject lists each model folder there."""
    import fnmatch
    import tomllib

    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["data-files"]
    models = ROOT / "Resources" / "Models"
    for folder in sorted(p for p in models.iterdir() if p.is_dir()):
        target = f"share/spinelabel/Models/{folder.name}"
        assert target in data_files, f"{folder.name} is not installed by pip: add {target!r} to data-files"
        for file in folder.iterdir():
            relative = file.relative_to(ROOT).as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in data_files[target]), relative


def test_models_installed_under_the_prefix_are_found(tmp_path, monkeypatch):
    import sys

    from SpineLabelLib.models import registry as models

    installed = tmp_path / "share" / "spinelabel" / "Models"
    installed.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert models.installed_root() == installed
    assert installed.resolve() in [root.resolve() for root in models.model_roots()]
