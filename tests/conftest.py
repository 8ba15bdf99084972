"""Shared fixtures: a project directory with its own configuration, SQL and state, per test."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Callable[[str], Path]:
    """Write a schedules.toml (dedented) into a fresh directory holding a copy of sql/; return its path."""
    shutil.copytree(REPO / "sql", tmp_path / "sql")

    def write(toml: str) -> Path:
        path = tmp_path / "schedules.toml"
        path.write_text(textwrap.dedent(toml), encoding="utf-8")
        return path

    return write


@pytest.fixture
def demo_project(tmp_path: Path) -> Path:
    """The shipped schedules.toml and SQL, copied so that runs write under tmp_path."""
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    shutil.copy(REPO / "schedules.toml", tmp_path / "schedules.toml")
    return tmp_path / "schedules.toml"
