"""What a user installs is what the engine imports: every third-party import is declared or optional."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:      # Python 3.10
    import tomli as tomllib

from SpineLabelLib.core.optional import INSTALL_HINT, OPTIONAL_MODULES, explain_missing

ROOT = Path(__file__).resolve().parents[1]
#: Slicer's own Python ships these; the module's requirements file need not list them.
SLICER_PROVIDES = {"numpy", "simpleitk"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[ ;<>=!~\[]", requirement.strip(), maxsplit=1)[0])


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def third_party_imports(package_dir: Path) -> dict[str, list[str]]:
    """Top-level module -> files importing it (absolute imports only; stdlib and the package itself left out)."""
    found: dict[str, list[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != package_dir.name and top != "__future__":
                    found.setdefault(top, []).append(path.relative_to(package_dir.parent).as_posix())
    return found


def provided_by(requirements: list[str]) -> set[str]:
    """Distributions the requirements install: themselves and, installed or not, what they require."""
    names = {_requirement_name(r) for r in requirements}
    for name in list(names):
        try:
            names |= {_requirement_name(r) for r in requires(name) or [] if "extra ==" not in r}
        except PackageNotFoundError:
            pass
    return names


def undeclared(package_dir: Path, dependencies: list[str], extras: dict[str, list[str]]) -> list[str]:
    """Imports that are neither a dependency nor an optional module whose extra provides them."""
    declared = {_requirement_name(r) for r in dependencies}
    distributions = packages_distributions()
    problems = []
    for module, files in third_party_imports(package_dir).items():
        dists = {_normalise(d) for d in distributions.get(module, [module])}
        if dists & declared:
            continue
        extra = OPTIONAL_MODULES.get(module)
        if extra is not None and dists & provided_by(extras.get(extra, [])):
            continue
        problems.append(f"{module} (imported by {files[0]})")
    return problems


def test_every_engine_import_is_declared_or_optional():
    meta = project()
    problems = undeclared(ROOT / "SpineLabelLib", meta["dependencies"], meta["optional-dependencies"])
    assert not problems, f"imported by the engine but not declared in pyproject.toml: {problems}"


def test_the_check_catches_an_undeclared_import(tmp_path):
    package = tmp_path / "SpineLabelLib"
    package.mkdir()
    (package / "qc.py").write_text("import numpy\nfrom . import anatomy\n\ndef f():\n    import yaml\n")
    meta = project()
    assert undeclared(package, meta["dependencies"], meta["optional-dependencies"]) == \
        ["yaml (imported by SpineLabelLib/qc.py)"]


def test_slicer_requirements_list_every_dependency_slicer_does_not_ship():
    listed = {_requirement_name(line) for line in
              (ROOT / "SpineLabel" / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")}
    needed = {_requirement_name(r) for r in project()["dependencies"]} - SLICER_PROVIDES
    assert needed <= listed, f"missing from SpineLabel/Resources/requirements.txt: {sorted(needed - listed)}"


def test_every_optional_module_names_an_extra_that_exists():
    extras = project()["optional-dependencies"]
    for module, extra in OPTIONAL_MODULES.items():
        assert extra in extras and extra in INSTALL_HINT, module


def test_a_missing_optional_module_is_one_line_naming_its_extra():
    message = explain_missing(ModuleNotFoundError("No module named 'torchio'", name="torchio"))
    assert "torchio" in message and "spinelabel[train]" in message and "\n" not in message
    assert explain_missing(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None
