"""The fault matrix: each fault a run can meet, with real servers, and what the user sees.

Every fault ends either in success within the retry budget, or in one clear failure — one message
naming where and what to do, exit code 1, no traceback — with nothing delivered: the previous
file stays in place, no temporary file is left at the location, no snapshot moves, nothing is
half-imported. Runs go through the CLI (``etl.cli.main``, in this process so that retry pauses
can be shortened) or through ``execute()``, the path the scheduler takes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from servers import (
    PASSWORD,
    FtpsServer,
    SftpBehaviour,
    SftpServer,
    leftovers,
    tls_breaking_server,
)

import dbservers
from etl.actito.sandbox import ActitoSandbox
from etl.cli import main as cli_main
from etl.config import Config, load_config
from etl.delivery import base as delivery_base
from etl.runs import RunOutcome, execute, open_store
from jobs import job_for

pytest_plugins = ["conftest_delivery"]

AUDIENCE = "vip_customers"
DELIVERED = (f"{AUDIENCE}.csv", f"{AUDIENCE}.manifest.json")
#: what the location held before the run: a failed run must leave exactly this
PREVIOUS = b"profileId\n1\n2\n3\n"
LOCAL_FILES = '[destinations.actito_demo.files]\ntype = "local"\npath = "var/outbox"'
SANDBOX_KEY = "sandbox-demo-key"


# --------------------------------------------------------------------------- what the user sees


@dataclass
class Shown:
    code: int
    out: str
    err: str

    @property
    def said(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Shown]]:
    """``audience-sync --config CONFIG ARGS…`` in this process; its exit code, stdout and stderr."""
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


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The delivery retry budget as shipped (3 attempts), with pauses short enough for a test."""
    monkeypatch.setattr(delivery_base, "RETRY", delivery_base.RetryPolicy(attempts=3, first_pause=0.05))


def one_clear_failure(shown: Shown, *words: str) -> None:
    """Exit 1, no traceback, and the run's error line saying ``words``."""
    assert shown.code == 1, shown.said
    assert "Traceback" not in shown.said
    (line,) = [line for line in shown.out.splitlines() if line.startswith("✗ ")]
    for word in words:
        assert word in line, (word, line)


def last_status(config_path: Path, name: str = AUDIENCE) -> str:
    config = load_config(config_path)
    store = open_store(config)
    try:
        return store.runs(name, limit=1)[0].status
    finally:
        store.close()


def nothing_delivered(inbox: Path) -> None:
    assert (inbox / f"{AUDIENCE}.csv").read_bytes() == PREVIOUS
    assert not (inbox / f"{AUDIENCE}.manifest.json").exists()
    assert leftovers(inbox) == []


def delivered(inbox: Path, config_path: Path) -> None:
    """The run's own files are in place, byte for byte, and nothing else of ours."""
    run_dir = max((config_path.parent / "var" / "state" / "runs" / AUDIENCE).iterdir())
    for name in DELIVERED:
        assert (inbox / name).read_bytes() == (run_dir / name).read_bytes()
    assert leftovers(inbox) == []


# --------------------------------------------------------------------------- projects


def with_files(config_path: Path, files_table: str) -> Path:
    """The shipped configuration with the demo destination's file location replaced."""
    text = config_path.read_text()
    assert LOCAL_FILES in text
    config_path.write_text(text.replace(LOCAL_FILES, f"[destinations.actito_demo.files]\n{files_table}"))
    return config_path


def sftp_project(demo_project: Path, server: SftpServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_SFTP_PASSWORD", PASSWORD)
    known_hosts = server.write_known_hosts(demo_project.parent / "known_hosts")
    (server.root / "in" / f"{AUDIENCE}.csv").write_bytes(PREVIOUS)
    return with_files(demo_project, f'type = "sftp"\nhost = "127.0.0.1"\nport = {server.port}\nusername = "actito"\n'
                                    f'password = "${{TEST_SFTP_PASSWORD}}"\nknown_hosts = "{known_hosts}"\n'
                                    'remote_dir = "/in"\ntimeout = 5')


def ftps_project(demo_project: Path, port: int, monkeypatch: pytest.MonkeyPatch, *, ca_file: Path | None) -> Path:
    monkeypatch.setenv("TEST_FTPS_PASSWORD", PASSWORD)
    trust = f'ca_file = "{ca_file}"\n' if ca_file else ""
    return with_files(demo_project, f'type = "ftps"\nhost = "127.0.0.1"\nport = {port}\nusername = "actito"\n'
                                    f'password = "${{TEST_FTPS_PASSWORD}}"\n{trust}remote_dir = "/in"\ntimeout = 5')


# --------------------------------------------------------------------------- SFTP: connection cut mid-upload


def test_an_sftp_upload_cut_once_is_retried_to_success(
    demo_project: Path, make_sftp_server: Callable[..., SftpServer], monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Shown], quick_retries: None,
) -> None:
    server = make_sftp_server(SftpBehaviour(cut_after=1000, cuts=1))
    config = sftp_project(demo_project, server, monkeypatch)

    shown = cli(config, "run", AUDIENCE)

    assert shown.code == 0, shown.said
    assert server.behaviour.cut_count == 1
    assert "delivery interrupted, reconnecting" in shown.err and "connection to the server broke" in shown.err
    delivered(server.root / "in", config)


def test_an_sftp_upload_cut_every_time_is_one_clear_failure(
    demo_project: Path, make_sftp_server: Callable[..., SftpServer], monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Shown], quick_retries: None,
) -> None:
    server = make_sftp_server(SftpBehaviour(cut_after=1000))
    config = sftp_project(demo_project, server, monkeypatch)

    shown = cli(config, "run", AUDIENCE)

    one_clear_failure(shown, f"sftp://actito@127.0.0.1:{server.port}/in/{AUDIENCE}.csv",
                      "the connection to the server broke", "gave up after 3 attempts", "previous files are still in place")
    assert server.behaviour.cut_count == 3  # the budget, then no more
    nothing_delivered(server.root / "in")  # the cut temporary file was removed over a new connection
    assert last_status(config) == "failed"


# --------------------------------------------------------------------------- FTPS: TLS failures are not retried


def test_an_untrusted_ftps_certificate_fails_at_once_with_what_to_do(
    demo_project: Path, ftps_server: FtpsServer, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Shown],
) -> None:
    (ftps_server.root / "in" / f"{AUDIENCE}.csv").write_bytes(PREVIOUS)
    config = ftps_project(demo_project, ftps_server.port, monkeypatch, ca_file=None)  # system CAs only

    shown = cli(config, "run", AUDIENCE)

    one_clear_failure(shown, "TLS certificate could not be verified", "set ca_file")
    assert "reconnecting" not in shown.err
    nothing_delivered(ftps_server.root / "in")


def test_an_ftps_server_that_breaks_the_handshake_fails_at_once(
    demo_project: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Shown], tmp_path: Path,
) -> None:
    with tls_breaking_server() as server:
        config = ftps_project(demo_project, server.port, monkeypatch, ca_file=None)
        shown = cli(config, "run", AUDIENCE)
    one_clear_failure(shown, f"ftps://actito@127.0.0.1:{server.port}", "TLS handshake failed", "not retried")
    assert server.connections == 1
    assert last_status(config) == "failed"
