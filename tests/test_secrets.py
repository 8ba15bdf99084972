"""Security: a failing run never shows a secret (terminal, JSON logs, ledger, history, report, files);
what a run writes is private to its user; SQL parameters reach the database as values; TLS is
verified; the sandbox never listens beyond loopback. (SFTP host keys and FTPS certificates are
checked by default: tests/test_delivery_sftp.py and tests/test_delivery_ftps.py.)"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa

import dbservers
from etl.extract import create_warehouse_engine, stream_batches
from etl.testing.actito.server import ActitoSandbox
from servers import HOST, make_tls_certificate

REPO = Path(__file__).resolve().parent.parent

WAREHOUSE_PASSWORD = "wh-pass-4f9c2e"
API_KEY = "actito-key-7d1b3a"
SFTP_PASSWORD = "sftp-pass-a83c55"

CONFIG = """
[settings]
state_dir = "state"

[warehouses.dwh]
url = "postgresql+psycopg://etl:${DWH_PASSWORD}@127.0.0.1:1/nowhere"

[destinations.d]
environment = "ENV-0"
entity = "acme"
api_key = "${ACTITO_API_KEY}"
files = { type = "sftp", host = "127.0.0.1", port = 1, username = "u", password = "${SFTP_PASSWORD}" }

[activations.audience]
sql = "audience.sql"
destination = "d"
identifier = "email"
"""


def test_no_output_of_a_failing_run_holds_a_secret(tmp_path: Path) -> None:
    (tmp_path / "audience.sql").write_text("SELECT email FROM customers")
    (tmp_path / "schedules.toml").write_text(CONFIG)
    env = {**os.environ, "DWH_PASSWORD": WAREHOUSE_PASSWORD, "ACTITO_API_KEY": API_KEY,
           "SFTP_PASSWORD": SFTP_PASSWORD}
    outputs = []
    for args in (["run", "audience"], ["--log-format", "json", "-v", "run", "audience"], ["history"],
                 ["--log-format", "json", "history"], ["report", "-o", str(tmp_path / "report.html")], ["show"]):
        if args == ["show"]:  # the last run in full, as `show RUN_ID` prints it
            args = ["show", json.loads(outputs[6].splitlines()[0])["run_id"]]
        done = subprocess.run([sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"), *args],
                              capture_output=True, text=True, env=env, timeout=120)
        outputs += [done.stdout, done.stderr]
    assert "127.0.0.1" in outputs[-2]  # show printed the error
    assert "failed" in outputs[0]  # the run did fail, and said why
    assert "127.0.0.1" in outputs[0] + outputs[1]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".sql", ".toml")]
    assert any(p.name == "state.db" for p in files) and any(p.name == "report.html" for p in files)
    texts = outputs + [p.read_bytes().decode("utf-8", "replace") for p in files]
    for secret in (WAREHOUSE_PASSWORD, API_KEY, SFTP_PASSWORD):
        assert not [t for t in texts if secret in t], f"{secret} leaked"


# --------------------------------------------------------------------------- private files


def test_every_file_a_run_writes_is_private(tmp_path: Path) -> None:
    """Audience files, rejects, manifests, snapshots, the ledger, the sandbox's state: 0600 in 0700
    directories, whatever the umask (the demo warehouse is the user's data, not ours)."""
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    shutil.copy(REPO / "schedules.toml", tmp_path / "schedules.toml")
    done = subprocess.run(
        [sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"), "run",
         "vip_customers", "lapsed_buyers", "vip_members", "didomi_consents"],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    written = [path for top in ("state", "outbox") for path in (tmp_path / "var" / top).rglob("*")]
    kinds = {path.suffix for path in written if path.is_file()}
    assert {".csv", ".zip", ".json", ".parquet", ".db"} <= kinds
    assert (tmp_path / "var" / "state" / "sandbox" / "state.json").is_file()
    for path in [tmp_path / "var" / "state", tmp_path / "var" / "outbox", *written]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


# --------------------------------------------------------------------------- bound parameters

INJECTION = "x'; DROP TABLE {table}; --"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_a_parameter_reaches_the_database_as_a_value(tmp_path: Path, dialect: str) -> None:
    url = {"sqlite": lambda: f"sqlite:///{tmp_path / 'wh.db'}", "postgresql": dbservers.postgres_url,
           "mariadb": dbservers.mariadb_url}[dialect]()
    (tmp_path / "wh.db").touch()
    table = dbservers.unique_name("injection")
    segment = INJECTION.format(table=table)
    engine = create_warehouse_engine(url, where="test")
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {table} (email varchar(64), segment varchar(200))"))
        connection.execute(sa.text(f"INSERT INTO {table} VALUES ('hit@x.com', :s), ('miss@x.com', 'x')"),
                           {"s": segment})
    try:
        batches = stream_batches(engine, f"SELECT email FROM {table} WHERE segment = :segment",
                                 {"segment": segment}, chunk_size=100, where="a.sql")
        with closing(batches):
            emails = [email for batch in batches for email in batch.column("email").to_pylist()]
        assert emails == ["hit@x.com"]  # matched as a value, not run as SQL
        with engine.connect() as connection:
            assert connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 2
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()


# --------------------------------------------------------------------------- TLS and the sandbox


@pytest.fixture
def untrusted_https(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on loopback whose self-signed certificate nobody trusts."""
    files = make_tls_certificate(tmp_path / "tls")
    server = http.server.ThreadingHTTPServer((HOST, 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://{HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_actito_over_an_untrusted_certificate_is_refused(tmp_path: Path, untrusted_https: str) -> None:
    (tmp_path / "schedules.toml").write_text(f"""
[warehouses.w]
url = "sqlite:///wh.db"
[destinations.d]
base_url = "{untrusted_https}"
entity = "acme"
api_key = "${{ACTITO_API_KEY}}"
[activations.a]
kind = "profiles"
sql = "a.sql"
destination = "d"
table = "customers"
""")
    (tmp_path / "a.sql").write_text("SELECT 1 AS emailAddress")
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    done = subprocess.run([sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"),
                           "actito", "check", "d"], capture_output=True, text=True, timeout=120,
                          env={**env, "ACTITO_API_KEY": API_KEY})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is not trusted (self-signed certificate)" in done.stdout and "Traceback" not in done.stderr, done.stdout
    assert API_KEY not in done.stdout + done.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com", "::"])
def test_the_sandbox_refuses_to_listen_beyond_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        ActitoSandbox(host=host)
    done = subprocess.run([sys.executable, "-m", "etl.testing.actito", "--host", host, "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "listens on loopback only" in done.stderr and "Traceback" not in done.stderr


def test_the_sandbox_listens_on_loopback() -> None:
    with ActitoSandbox(host="localhost") as sandbox:
        assert sandbox.url.startswith("http://127.0.0.1:")
