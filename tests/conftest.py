"""Shared fixtures: a project directory with its own configuration, SQL and state, per test, and the CLI
run in this process as a user would see it."""

from __future__ import annotations

import logging
import shutil
import signal
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etl.cli import main as cli_main

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


@dataclass
class Shown:
    """What a user sees of one command: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    @property
    def said(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Shown]]:
    """``cli(CONFIG, ARGS…)``: ``audience-sync --config CONFIG ARGS…`` in this process (so tests can
    shorten pauses); the logging and SIGTERM handlers the CLI installs are put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigterm = signal.getsignal(signal.SIGTERM)

    def run(config: Path, *args: str) -> Shown:
        capsys.readouterr()
        code = cli_main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return Shown(code, out, err)

    yield run
    signal.signal(signal.SIGTERM, sigterm)
    root.handlers[:] = handlers
    root.setLevel(level)
