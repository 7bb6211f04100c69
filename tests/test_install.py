"""What a fresh virtual environment needs: every import of the package (and of its tests and
benchmarks) is declared in pyproject.toml, and every module imports."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import pkgutil
import re
import sys
from pathlib import Path

import simformer_cli

ROOT = Path(__file__).resolve().parents[1]
# What the installed package declares (pyproject.toml as pip read it), split into runtime and test.
REQUIREMENTS = metadata.requires("simformer") or []


def _distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


RUNTIME = {_distribution_name(r) for r in REQUIREMENTS if "extra ==" not in r}
WITH_TESTS = {_distribution_name(r) for r in REQUIREMENTS if "extra ==" not in r or "'test'" in r or '"test"' in r}


def _top_level_imports(folder: Path) -> dict[str, str]:
    """Every top-level module name imported by the .py files under FOLDER -> one file that does."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(folder.parent)))
    return found


def _undeclared(folder: Path, declared: set[str]) -> list[str]:
    providers = metadata.packages_distributions()
    local = {"simformer_cli", "tests"} | {p.stem for where in ("tests", "benchmarks") for p in (ROOT / where).glob("*.py")} | {p.stem for p in folder.glob("*.py")}
    missing = []
    for module, where in sorted(_top_level_imports(folder).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        distributions = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not distributions & declared:
            missing.append(f"{module} (imported by {where}; installed from {sorted(distributions) or 'nothing'})")
    return missing


def test_every_import_of_the_package_is_a_declared_dependency():
    assert "torch" in RUNTIME and "typer" in RUNTIME
    assert _undeclared(ROOT / "simformer_cli", RUNTIME) == []


def test_every_import_of_the_tests_and_benchmarks_is_declared_with_the_test_extra():
    assert "pytest" in WITH_TESTS and "pytest" not in RUNTIME
    assert _undeclared(ROOT / "tests", WITH_TESTS) == []
    assert _undeclared(ROOT / "benchmarks", WITH_TESTS) == []


def test_the_import_check_sees_an_undeclared_module(tmp_path):
    (tmp_path / "uses_click.py").write_text("import json\nimport click\nfrom numpy import zeros\n")
    missing = _undeclared(tmp_path, {"numpy"})
    assert len(missing) == 1 and missing[0].startswith("click (imported by ")


def test_every_module_of_the_package_imports():
    names = [info.name for info in pkgutil.walk_packages(simformer_cli.__path__, "simformer_cli.")
             if not info.name.endswith(".__main__")]  # running it is what `python -m` is for
    assert len(names) > 50
    for name in names:
        importlib.import_module(name)
