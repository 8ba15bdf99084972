"""Fixtures for the delivery tests: real loopback servers and local files to send.

Test modules load it with ``pytest_plugins = ["conftest_delivery"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from servers import (
    FtpsBehaviour,
    FtpsServer,
    SftpBehaviour,
    SftpServer,
    TlsFiles,
    generate_ssh_key,
    make_tls_certificate,
)

# --------------------------------------------------------------------------- local files


@pytest.fixture
def outbox(tmp_path: Path) -> Callable[..., Path]:
    """Write a local file to deliver: ``outbox("audience.csv", b"...")`` or ``outbox("big.csv", size=...)``."""
    directory = tmp_path / "outbox"
    directory.mkdir()

    def write(name: str, content: bytes | None = None, *, size: int | None = None, fill: bytes = b"x") -> Path:
        path = directory / name
        if content is None:
            assert size is not None
            content = (fill * (size // len(fill) + 1))[:size]
        path.write_bytes(content)
        return path

    return write


# --------------------------------------------------------------------------- SFTP


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    return generate_ssh_key()


@pytest.fixture
def make_sftp_server(tmp_path: Path, client_key: asyncssh.SSHKey) -> Iterator[Callable[..., SftpServer]]:
    """Start an SFTP server (password and ``client_key`` accepted) serving a fresh directory with ``in/``."""
    started: list[SftpServer] = []

    def make(behaviour: SftpBehaviour | None = None, **kwargs: Any) -> SftpServer:
        root = tmp_path / f"sftp-root-{len(started)}"
        (root / "in").mkdir(parents=True)
        kwargs.setdefault("client_keys", [client_key])
        server = SftpServer(root, behaviour=behaviour, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def sftp_server(make_sftp_server: Callable[..., SftpServer]) -> SftpServer:
    return make_sftp_server()


@pytest.fixture
def known_hosts(tmp_path: Path, sftp_server: SftpServer) -> Path:
    return sftp_server.write_known_hosts(tmp_path / "known_hosts")


# --------------------------------------------------------------------------- FTPS


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def make_ftps_server(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Callable[..., FtpsServer]]:
    """Start an FTPS server serving a fresh directory with ``in/``."""
    started: list[FtpsServer] = []

    def make(behaviour: FtpsBehaviour | None = None, **kwargs: Any) -> FtpsServer:
        root = tmp_path / f"ftps-root-{len(started)}"
        (root / "in").mkdir(parents=True)
        server = FtpsServer(root, tls_files, behaviour=behaviour, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def ftps_server(make_ftps_server: Callable[..., FtpsServer]) -> FtpsServer:
    return make_ftps_server()
