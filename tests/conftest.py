"""Shared fixtures: a project directory with its own configuration, SQL and state, per test, and the CLI
run in this process as a user would see it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etl.cli import main as cli_main

if TYPE_CHECKING:
    from servers import SftpServer

    from etl.testing.actito.server import ActitoSandbox

REPO = Path(__file__).resolve().parent.parent

#: the head of a configuration the real CLI runs in a child process: the SQLite warehouse ``wh``
#: (wh.db, in the project's directory) and the sandbox destination ``d`` delivering to ``files``
SANDBOX_HEAD = """
[settings]
state_dir = "state"
{settings}
[warehouses.wh]
url = "{url}"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {files}
"""


def sandbox_config(files: str, *settings: str, activations: str = "", url: str = "sqlite:///wh.db") -> str:
    """A configuration over ``wh`` (``url``) and ``d`` (SANDBOX_HEAD): ``settings`` are more lines of
    [settings], ``activations`` the TOML of its activations."""
    return SANDBOX_HEAD.format(files=files, url=url, settings="".join(f"{line}\n" for line in settings)) + activations


def cli_process(config: Path, *args: str, stdin: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, in the configuration's directory, as a user runs it (``env``: more
    environment variables)."""
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, cwd=config.parent, input=stdin,
                          env=None if env is None else {**os.environ, **env})


def stopped_itself(process: subprocess.Popen[str], timeout: float = 60) -> bool:
    """True once ``process`` has stopped itself (state T in /proc: AUDIENCE_SYNC_STALL_AT reached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return True
        time.sleep(0.05)
    return False


def json_run(config: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The first run_finished line of a command that must succeed (``args`` after ``--log-format json``)."""
    done = cli_process(config, "--log-format", "json", *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    line: dict[str, Any] = json.loads(next(x for x in done.stdout.splitlines() if x.startswith('{"event"')))
    return line


def sandbox_state(root: Path) -> ActitoSandbox:
    """The Actito sandbox as the runs of the project in ``root`` left it (read from its state file)."""
    from etl.testing.actito.server import ActitoSandbox  # only the tests that run one pay for its import

    return ActitoSandbox(state_file=root / "state" / "sandbox" / "state.json")


def sftp_files(server: SftpServer, directory: Path) -> str:
    """The ``files`` of a destination delivering into ``in`` on the loopback SFTP ``server``, whose host key
    it trusts (known_hosts, written into ``directory``); the password is ``${TEST_SFTP_PASSWORD}``."""
    known_hosts = server.write_known_hosts(directory / "known_hosts")
    return (f'{{ type = "sftp", host = "127.0.0.1", port = {server.port}, username = "actito", '
            f'password = "${{TEST_SFTP_PASSWORD}}", known_hosts = "{known_hosts}", remote_dir = "in" }}')


def emails_sql(first: int, last: int) -> str:
    """A query of the people numbered ``first`` to ``last``, by e-mail (no warehouse table needed)."""
    return (f"WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n WHERE i < {last}) "
            "SELECT 'person' || i || '@example.com' AS email FROM n")


@pytest.fixture(scope="session")
def snowflake_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fakesnow's Snowflake server, one per session (skipped, under CI failed, without its venv)."""
    import dbservers

    with dbservers.fakesnow_url(tmp_path_factory.mktemp("fakesnow") / "server.log") as url:
        yield url


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
