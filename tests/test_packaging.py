"""pyproject says what the code needs (issue 19): the Python floor, every runtime import, the
mlx-lm series it is tested on, and optional extras that fail with the install command."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO
from mlxtune.errors import UsageError

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Imported only behind a check that names its install command (mlx-lm's `evaluate` extra).
GUARDED = {"lm_eval"}


def _requirements() -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


def _top_level_imports() -> set[str]:
    found = set()
    for path in (REPO / "src" / "mlxtune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"mlxtune", "__future__"}


def test_python_floor_agrees_everywhere() -> None:
    floor = PYPROJECT["project"]["requires-python"]
    assert floor == ">=3.11"  # datetime.UTC and friends: 3.10 cannot import mlxtune
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"


def test_every_runtime_import_is_declared() -> None:
    declared = _requirements()
    dists = packages_distributions()
    missing = []
    for module in sorted(_top_level_imports() - GUARDED):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & set(declared):
            missing.append(f"{module} ({', '.join(sorted(names))})")
    assert not missing, f"imported by src/ but not in pyproject: {missing}"


def test_mlx_lm_is_pinned_to_the_tested_minor_series() -> None:
    spec = _requirements()["mlx-lm"].specifier
    assert any(s.operator == "<" for s in spec), "mlx-lm needs an upper bound"
    assert version("mlx-lm") in spec  # the venv the suite runs in is inside the pin
    major, minor = map(int, version("mlx-lm").split(".")[:2])
    assert f"{major}.{minor + 1}" not in spec


def test_datasets_matplotlib_and_pyarrow_are_extras() -> None:
    core = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not {"datasets", "matplotlib", "pyarrow"} & core
    assert [Requirement(r).name for r in extras["datasets"]] == ["datasets"]
    assert [Requirement(r).name for r in extras["report"]] == ["matplotlib"]
    assert [Requirement(r).name for r in extras["parquet"]] == ["pyarrow"]
    dev = {Requirement(r).name for r in extras["dev"]}
    assert {"datasets", "matplotlib", "pyarrow"} <= dev  # so the tests run


def _without(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `module` and its submodules unimportable, however they are imported."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_extras_name_their_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxtune.config import SourceConfig
    from mlxtune.data.sources import read_source
    from mlxtune.report import _loss_plot

    (tmp_path / "saved").mkdir()
    _without(monkeypatch, "datasets")
    with pytest.raises(UsageError, match=re.escape("pip install 'mlxtune[datasets]'")):
        list(read_source(SourceConfig(path=str(tmp_path / "saved"))))
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    _without(monkeypatch, "pyarrow")
    with pytest.raises(UsageError, match=re.escape("pip install 'mlxtune[parquet]'")):
        list(read_source(SourceConfig(path=str(tmp_path / "rows.parquet"))))
    _without(monkeypatch, "matplotlib")
    with pytest.raises(UsageError, match=re.escape("pip install 'mlxtune[report]'")):
        _loss_plot([(1, 2.0)], [])
