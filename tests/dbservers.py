"""The PostgreSQL and MariaDB servers the tests use, or a skip (a failure under CI) when one is down;
and fakesnow's Snowflake server, which the tests start (``fakesnow_url``).

``postgres_url()`` and ``mariadb_url()`` return a SQLAlchemy URL for a server that answered a
``SELECT 1``. When it does not answer (or its driver is missing) the calling test is skipped with
the reason, so that the suite runs on a laptop without servers; with ``CI=true`` it fails instead,
because a CI run that silently skipped its database tests would prove nothing.

The defaults match the README; ``AUDIENCE_SYNC_TEST_POSTGRES_URL`` and
``AUDIENCE_SYNC_TEST_MARIADB_URL`` point the tests elsewhere. Each test creates and drops its own
uniquely named tables (``unique_name``), so tests may share a database and run in parallel.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import sys
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

POSTGRES_URL = os.environ.get(
    "AUDIENCE_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("AUDIENCE_SYNC_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

#: seconds to wait for a server before calling it unreachable
CONNECT_TIMEOUT = 3
#: the password in fakesnow URLs (it accepts any): tests check it is never shown
FAKESNOW_PASSWORD = "snow-Pa55"
_TESTS = Path(__file__).resolve().parent


def postgres_url() -> str:
    """The PostgreSQL test server's URL; skips (fails under CI) when it cannot be reached."""
    return _reachable("PostgreSQL", POSTGRES_URL)


def mariadb_url() -> str:
    """The MariaDB test server's URL; skips (fails under CI) when it cannot be reached."""
    return _reachable("MariaDB", MARIADB_URL)


def unique_name(prefix: str = "t") -> str:
    """A table name no other test (or run) uses: lower case, so no dialect needs it quoted."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def faketime(what: str) -> str:
    """The ``faketime`` command (libfaketime); skips (fails under CI, which installs it) when missing.
    ``what`` says what cannot be done without it."""
    found = shutil.which("faketime")
    if found is None:
        message = f"faketime is not installed (Debian package faketime): {what}"
        if in_ci():
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)
    return found


def _reachable(label: str, url: str) -> str:
    problem = _problem(url)
    if problem is None:
        return url
    safe = sa.make_url(url).render_as_string(hide_password=True)
    message = f"{label} test server not reachable at {safe}: {problem}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: database tests must not be skipped)", pytrace=False)
    pytest.skip(message)


@functools.cache
def _problem(url: str) -> str | None:
    """Why the server cannot be used, or None; asked once per process, not once per test."""
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT})
    except ImportError as exc:
        return f"driver not installed ({exc})"
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        original = getattr(exc, "orig", None) or exc
        lines = str(original).strip().splitlines()
        return lines[0] if lines else type(original).__name__
    finally:
        engine.dispose()
    return None


class PoolWatch:
    """Connections checked out of every SQLAlchemy pool of the process and not yet returned.

    Engines are created per run (and by the ledger), so watching one engine would miss the others:
    this listens on the Pool class itself while it is in use (a ``with`` block).
    """

    def __init__(self) -> None:
        self.checked_out = 0
        #: checkouts seen in all, so a test can tell the watch saw anything at all
        self.checkouts = 0
        self._lock = threading.Lock()

    def _out(self, *args: object) -> None:
        with self._lock:
            self.checked_out += 1
            self.checkouts += 1

    def _back(self, *args: object) -> None:
        with self._lock:
            self.checked_out -= 1

    def __enter__(self) -> PoolWatch:
        sa.event.listen(sa.pool.Pool, "checkout", self._out)
        sa.event.listen(sa.pool.Pool, "checkin", self._back)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(sa.pool.Pool, "checkout", self._out)
        sa.event.remove(sa.pool.Pool, "checkin", self._back)


@contextlib.contextmanager
def fakesnow_url(log: Path) -> Iterator[str]:
    """A snowflake:// URL to fakesnow's server, started here (``log`` gets its output) and stopped on exit,
    in the form a user writes: the account's server named by ``server_url`` (snowflake-sqlalchemy 2
    refuses ``host`` and ``protocol`` in a URL). Its database ``audiences`` is shared by every connection."""
    # connector 5 probes cloud metadata addresses (AWS, GCP, Azure) at connect, for its telemetry: no
    # test sends traffic off this machine, so the probes are off (CLI runs inherit the environment)
    os.environ["SNOWFLAKE_DISABLE_PLATFORM_DETECTION"] = "true"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    port = _free_port()
    with log.open("wb") as out:
        server = subprocess.Popen([_fakesnow_python(), str(_TESTS / "fakesnow_server.py"), str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(port, server, log)
        url = (f"snowflake://fake:{FAKESNOW_PASSWORD}@fakesnow/audiences/public"
               f"?server_url={quote(f'http://127.0.0.1:{port}')}")
        loader = sa.create_engine(url)
        with loader.begin() as connection:
            connection.exec_driver_sql("CREATE DATABASE IF NOT EXISTS audiences")
            connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS audiences.public")
        loader.dispose()
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


#: fakesnow's server and the connector it needs, in a venv of their own (the snowflake extra needs connector 5)
FAKESNOW_REQUIREMENTS = ("fakesnow[server]==0.12.1", "snowflake-connector-python>=4.8,<5")


def _fakesnow_python() -> str:
    """The Python of fakesnow's server: ``AUDIENCE_SYNC_FAKESNOW_PYTHON``, else ``.venv-fakesnow`` at the
    repository's top, built here on first use (about a minute), so the README's test command needs no
    other step."""
    python = os.environ.get("AUDIENCE_SYNC_FAKESNOW_PYTHON") or str(_TESTS.parent / ".venv-fakesnow" / "bin" / "python")
    if not Path(python).is_file() and "AUDIENCE_SYNC_FAKESNOW_PYTHON" not in os.environ:
        _build_fakesnow_venv(Path(python).parent.parent)
    if not Path(python).is_file():
        message = (f"no fakesnow server Python at {python}: python3 -m venv .venv-fakesnow && "
                   f".venv-fakesnow/bin/pip install {' '.join(repr(r) for r in FAKESNOW_REQUIREMENTS)}")
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return python


def _build_fakesnow_venv(venv: Path) -> None:
    """Leaves nothing half-built: a venv whose install failed is removed, and the reason is in the skip."""
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *FAKESNOW_REQUIREMENTS], check=True,
                       capture_output=True, timeout=900)
    except (subprocess.SubprocessError, OSError):
        shutil.rmtree(venv, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the fakesnow server did not come up on port {port}:\n{log.read_text()[-2000:]}", pytrace=False)
