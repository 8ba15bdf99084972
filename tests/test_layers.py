"""The layer rules of pyproject.toml's [tool.importlinter], and proof that they bite.

``lint-imports`` (run by .ci/run) keeps the layers in order (nothing imports upward), the test
doubles (etl.testing) out of the runtime but for its one lazy hook, and the destinations independent
of each other. A contract that always passes would prove nothing, so each exception a contract lists
is taken out of a copy of the configuration in turn and the linter must then fail, naming the
import; and a fresh interpreter that loads the whole runtime must have loaded no test double.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"


def _contracts() -> list[dict[str, Any]]:
    contracts: list[dict[str, Any]] = tomllib.loads(PYPROJECT.read_text("utf-8"))["tool"]["importlinter"]["contracts"]
    return contracts


def _exceptions() -> list[str]:
    """Every import a contract lets through, whichever contract: each must be needed."""
    return [hook for contract in _contracts() for hook in contract.get("ignore_imports", [])]


def lint_imports(config: Path, tree: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` of this interpreter's environment on ``config``, over the packages of ``tree``."""
    command = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(command), "--no-cache", str(config)], capture_output=True, text=True, timeout=300,
                          cwd=tree, env=env)


def test_the_shipped_contracts_are_kept() -> None:
    done = lint_imports(PYPROJECT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in done.stdout


@pytest.mark.parametrize("hook", _exceptions())
def test_without_an_exception_the_linter_fails_and_names_the_import(hook: str, tmp_path: Path) -> None:
    lines = PYPROJECT.read_text("utf-8").splitlines(keepends=True)
    kept = [line for line in lines if f'"{hook}"' not in line]
    assert len(kept) == len(lines) - 1, f"{hook} is not on one line of pyproject.toml"
    config = tmp_path / "pyproject.toml"
    config.write_text("".join(kept), "utf-8")
    done = lint_imports(config)
    assert done.returncode == 1, done.stdout + done.stderr
    importer, imported = (side.strip() for side in hook.split("->"))
    assert "BROKEN" in done.stdout
    assert f"{importer} -> {imported}" in done.stdout, done.stdout


@pytest.mark.parametrize(("module", "upward", "contract"), [
    ("etl/runtime/runs.py", "etl.ops.alerts", "Layers"),
    ("etl/extract/engine.py", "etl.testing.demo", "The runtime never imports the test doubles"),
    ("etl/destinations/openfield/client.py", "etl.destinations.actito.tables", "The destinations are independent"),
    ("jobs/audience.py", "etl.destinations.filedrop.factory", "Jobs reach a destination through its protocol"),
])
def test_an_import_against_the_rules_breaks_its_contract(module: str, upward: str, contract: str, tmp_path: Path) -> None:
    """The rules bite on the code too: one import against them, added to a copy of the tree, fails the linter."""
    for package in ("etl", "jobs"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text("utf-8") + f"\nimport {upward}  # noqa\n", "utf-8")
    done = lint_imports(tmp_path / "pyproject.toml", tree=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and upward in broken, done.stdout


def test_the_runtime_loads_no_test_double() -> None:
    """Every runtime module imported (the CLI, the scheduler, every job): nothing of etl.testing comes with them."""
    probe = ("import importlib, pkgutil, sys\n"
             "def load(name):\n"
             "    package = importlib.import_module(name)\n"
             "    for module in pkgutil.iter_modules(package.__path__, name + '.'):\n"
             "        if module.name not in ('etl.testing', 'etl.__main__'):\n"
             "            load(module.name) if module.ispkg else importlib.import_module(module.name)\n"
             "load('etl'); load('jobs')\n"
             "print(len(sys.modules), sorted(m for m in sys.modules if m.startswith('etl.testing')))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    loaded, doubles = done.stdout.split(" ", 1)
    assert int(loaded) > 100 and doubles.strip() == "[]"
