"""Fixtures for the delivery tests: real loopback servers, locations to deliver to, and local files to send.

Test modules load it with ``pytest_plugins = ["conftest_delivery"]``. The ``location`` fixture
runs a test once per protocol (local directory, SFTP, FTPS), for what every Deliverer must do.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncssh
import pytest
from servers import (
    DiskFull,
    FtpsBehaviour,
    FtpsServer,
    Location,
    SftpBehaviour,
    SftpServer,
    TlsFiles,
    ftps_deliverer,
    generate_ssh_key,
    make_tls_certificate,
    sftp_deliverer,
)

from etl.destinations.filedrop.local import LocalDeliverer

PROTOCOLS = ("local", "sftp", "ftps")

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


# --------------------------------------------------------------------------- servers


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_Server = TypeVar("_Server", bound=_Stoppable)


@pytest.fixture
def stop_after_test() -> Iterator[Callable[[_Server], _Server]]:
    """Register a started server to be stopped when the test ends; returns it."""
    started: list[_Stoppable] = []

    def register(server: _Server) -> _Server:
        started.append(server)
        return server

    yield register
    for server in reversed(started):
        server.stop()


def _fresh_root(tmp_path: Path, protocol: str) -> Path:
    """A new directory for one more server of ``protocol``, holding the ``in/`` directory clients write to."""
    root = tmp_path / f"{protocol}-root-{len(list(tmp_path.glob(f'{protocol}-root-*')))}"
    (root / "in").mkdir(parents=True)
    return root


# --------------------------------------------------------------------------- SFTP


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    return generate_ssh_key()


@pytest.fixture
def make_sftp_server(
    tmp_path: Path, client_key: asyncssh.SSHKey, stop_after_test: Callable[[SftpServer], SftpServer]
) -> Callable[..., SftpServer]:
    """Start an SFTP server (password and ``client_key`` accepted) serving a fresh directory with ``in/``."""

    def make(behaviour: SftpBehaviour | None = None, **kwargs: Any) -> SftpServer:
        kwargs.setdefault("client_keys", [client_key])
        return stop_after_test(SftpServer(_fresh_root(tmp_path, "sftp"), behaviour=behaviour, **kwargs).start())

    return make


@pytest.fixture
def sftp_server(make_sftp_server: Callable[..., SftpServer]) -> SftpServer:
    return make_sftp_server()


# --------------------------------------------------------------------------- FTPS


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def make_ftps_server(
    tmp_path: Path, tls_files: TlsFiles, stop_after_test: Callable[[FtpsServer], FtpsServer]
) -> Callable[..., FtpsServer]:
    """Start an FTPS server serving a fresh directory with ``in/``."""

    def make(behaviour: FtpsBehaviour | None = None, **kwargs: Any) -> FtpsServer:
        server = FtpsServer(_fresh_root(tmp_path, "ftps"), tls_files, behaviour=behaviour, **kwargs)
        return stop_after_test(server.start())

    return make


@pytest.fixture
def ftps_server(make_ftps_server: Callable[..., FtpsServer]) -> FtpsServer:
    return make_ftps_server()


# --------------------------------------------------------------------------- every protocol in turn


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location_server(
    protocol: str, make_sftp_server: Callable[..., SftpServer], make_ftps_server: Callable[..., FtpsServer]
) -> SftpServer | FtpsServer | None:
    """The server behind the location under test (None for a local directory), as slow as a real link
    so that a reader polling the directory overlaps an upload."""
    if protocol == "sftp":
        return make_sftp_server(SftpBehaviour(write_delay=0.002))
    if protocol == "ftps":
        return make_ftps_server(FtpsBehaviour(write_delay=0.001))
    return None


@pytest.fixture
def location(location_server: SftpServer | FtpsServer | None, tmp_path: Path) -> Location:
    """(connect, directory) for a local directory, then an SFTP server, then an FTPS server."""
    if isinstance(location_server, SftpServer):
        sftp = location_server
        return (lambda: sftp_deliverer(sftp)), sftp.root / "in"
    if isinstance(location_server, FtpsServer):
        ftps = location_server
        return (lambda: ftps_deliverer(ftps)), ftps.root / "in"
    directory = tmp_path / "transfer" / "in"
    directory.mkdir(parents=True)
    return (lambda: LocalDeliverer(directory)), directory


@pytest.fixture
def disk_full(location_server: SftpServer | FtpsServer | None) -> DiskFull:
    """``with disk_full(after=n):`` writing more than n bytes to one file of the location fails,
    the way a full disk or an exhausted quota makes it fail."""
    if location_server is None:
        return _file_size_limit
    behaviour = location_server.behaviour

    @contextmanager
    def write_limit(*, after: int) -> Iterator[None]:
        behaviour.write_limit = after
        try:
            yield
        finally:
            behaviour.write_limit = None

    return write_limit


@contextmanager
def _file_size_limit(*, after: int) -> Iterator[None]:
    """The process may not write past ``after`` bytes of any file (Python ignores SIGXFSZ, so such a
    write fails with EFBIG). Only for the few statements that deliver: it applies to every file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (after, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
