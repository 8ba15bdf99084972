"""The fault matrix: each fault a run can meet, with real servers, and what the user sees.

Every fault ends either in success within the retry budget, or in one clear failure — one message
naming where and what to do, exit code 1, no traceback — with nothing delivered: the previous
file stays in place, no temporary file is left at the location, no snapshot moves, nothing is
half-imported. Runs go through the CLI (``etl.cli.main``, in this process so that retry pauses
can be shortened) or through ``execute()``, the path the scheduler takes.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Shown
from servers import (
    PASSWORD,
    Cuts,
    FtpsBehaviour,
    FtpsServer,
    SftpBehaviour,
    SftpServer,
    leftovers,
    tls_breaking_server,
    with_actito_sandbox,
)

import dbservers
from etl.config import load_config
from etl.destinations.filedrop.base import Deliverer
from etl.runtime.runs import RunContext, RunOutcome, execute
from etl.runtime.ledger import RunRecord, open_store
from etl.testing.actito.server import ActitoSandbox
from jobs import job_for

pytest_plugins = ["conftest_delivery"]

AUDIENCE = "vip_customers"
DELIVERED = (f"{AUDIENCE}.csv", f"{AUDIENCE}.manifest.json")
#: what the location held before the run: a failed run must leave exactly this
PREVIOUS = b"profileId\n1\n2\n3\n"
LOCAL_FILES = '[destinations.actito_demo.files]\ntype = "local"\npath = "var/outbox"'
SANDBOX_KEY = "sandbox-demo-key"


# --------------------------------------------------------------------------- what the user sees


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The delivery retry budget as shipped (3 attempts), without its pauses."""
    monkeypatch.setattr(Deliverer, "retry", replace(Deliverer.retry, sleep=lambda seconds: None))


def one_clear_failure(shown: Shown, *words: str) -> None:
    """Exit 1, no traceback, and the run's error line saying ``words``."""
    assert shown.code == 1, shown.said
    assert "Traceback" not in shown.said
    (line,) = [line for line in shown.out.splitlines() if line.startswith("✗ ")]
    for word in words:
        assert word in line, (word, line)


def last_run(config_path: Path, name: str = AUDIENCE) -> RunRecord:
    config = load_config(config_path)
    store = open_store(config)
    try:
        return store.runs(name, limit=1)[0]
    finally:
        store.close()


def last_status(config_path: Path, name: str = AUDIENCE) -> str:
    return last_run(config_path, name).status


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
    return with_files(demo_project, f'type = "sftp"\nhost = "127.0.0.1"\nport = {server.port}\nusername = "actito"\n'
                                    f'password = "${{TEST_SFTP_PASSWORD}}"\nknown_hosts = "{known_hosts}"\n'
                                    'remote_dir = "/in"\ntimeout = 5')


def ftps_project(demo_project: Path, port: int, monkeypatch: pytest.MonkeyPatch, *, ca_file: Path | None) -> Path:
    monkeypatch.setenv("TEST_FTPS_PASSWORD", PASSWORD)
    trust = f'ca_file = "{ca_file}"\n' if ca_file else ""
    return with_files(demo_project, f'type = "ftps"\nhost = "127.0.0.1"\nport = {port}\nusername = "actito"\n'
                                    f'password = "${{TEST_FTPS_PASSWORD}}"\n{trust}remote_dir = "/in"\ntimeout = 5')


# --------------------------------------------------------------------------- SFTP and FTPS: connection cut mid-upload


@dataclass
class CutLocation:
    config: Path
    inbox: Path
    address: str
    cuts: Cuts


@pytest.fixture(params=["sftp", "ftps"])
def cut_location(
    request: pytest.FixtureRequest, demo_project: Path, make_sftp_server: Callable[..., SftpServer],
    make_ftps_server: Callable[..., FtpsServer], monkeypatch: pytest.MonkeyPatch,
) -> Callable[[int], CutLocation]:
    """``cut_location(times)``: the demo delivering to a server that cuts the connection during the
    first ``times`` uploads (1 kB in), its directory holding a previous file."""

    def make(times: int) -> CutLocation:
        cuts = Cuts(after=1000, times=times)
        if request.param == "sftp":
            sftp = make_sftp_server(SftpBehaviour(cut=cuts))
            config, root, port = sftp_project(demo_project, sftp, monkeypatch), sftp.root, sftp.port
        else:
            ftps = make_ftps_server(FtpsBehaviour(cut=cuts))
            config = ftps_project(demo_project, ftps.port, monkeypatch, ca_file=ftps.tls.cert)
            root, port = ftps.root, ftps.port
        (root / "in" / f"{AUDIENCE}.csv").write_bytes(PREVIOUS)
        return CutLocation(config, root / "in", f"{request.param}://actito@127.0.0.1:{port}/in/{AUDIENCE}.csv", cuts)

    return make


def test_an_upload_cut_once_is_retried_to_success(
    cut_location: Callable[[int], CutLocation], cli: Callable[..., Shown], quick_retries: None,
) -> None:
    location = cut_location(1)

    shown = cli(location.config, "run", AUDIENCE)

    assert shown.code == 0, shown.said
    assert location.cuts.count == 1
    assert "delivery interrupted, reconnecting" in shown.err and "connection to the server broke" in shown.err
    delivered(location.inbox, location.config)


def test_an_upload_cut_every_time_is_one_clear_failure(
    cut_location: Callable[[int], CutLocation], cli: Callable[..., Shown], quick_retries: None,
) -> None:
    location = cut_location(1_000_000)

    shown = cli(location.config, "run", AUDIENCE)

    one_clear_failure(shown, location.address, "the connection to the server broke", "gave up after 3 attempts",
                      "previous files are still in place")
    assert location.cuts.count == 3  # the budget, then no more
    nothing_delivered(location.inbox)  # the cut temporary file was removed over a new connection
    assert last_status(location.config) == "failed"


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


# --------------------------------------------------------------------------- Actito: 429s, 500s, time-outs, tokens

PROFILES = "qualifio_profiles"
SNAPSHOT = Path("var/state/activations") / PROFILES / "rows.parquet"


@pytest.fixture
def sandbox() -> Iterator[ActitoSandbox]:
    # a withheld answer lasts 0.3 s, as if the network lost it
    with ActitoSandbox(processing_seconds=0.05, fault_delay_seconds=0.3) as server:
        yield server


@pytest.fixture
def actito_project(demo_project: Path, sandbox: ActitoSandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped configuration talking to this test's sandbox."""
    monkeypatch.setenv("TEST_ACTITO_KEY", SANDBOX_KEY)
    text = with_actito_sandbox(demo_project.read_text(), sandbox.url)
    demo_project.write_text(text)
    return demo_project


def run_in_process(config_path: Path, name: str, progress: Callable[[str, dict[str, int]], None] | None = None
                   ) -> RunOutcome:
    """One run as the scheduler starts it (``execute``), with an optional hook between chunks."""
    config = load_config(config_path)
    store = open_store(config)
    try:
        kind = config.activations[name].kind
        return execute(config, store, name, kind, job_for(kind), progress=progress, stop=threading.Event())
    finally:
        store.close()


def once(action: Callable[[], None]) -> Callable[[str, dict[str, int]], None]:
    """A progress hook doing ``action`` at the first chunk, i.e. mid-run: after the pre-flight, before the import."""
    done: list[bool] = []

    def hook(activation: str, counts: dict[str, int]) -> None:
        if not done:
            done.append(True)
            action()

    return hook


def profiles_landed(sandbox: ActitoSandbox, outcome: RunOutcome) -> None:
    """The run succeeded and Actito holds its rows from exactly one import."""
    assert outcome.ok, outcome.error
    assert len(sandbox.executions("demo")) == 1
    assert len(sandbox.profiles("demo", "customers")) == outcome.results["rows_delivered"] > 0


@pytest.mark.parametrize(
    ("fault", "count", "path"),
    [
        (429, 3, "/etl-executions"),  # the upload refused for too many requests
        (500, 3, "/etl-executions/"),  # polling the import's status
        ("timeout", 1, "/etl-executions"),  # the upload's answer lost: the import is found by its reference
        ("disconnect", 1, "/etl-executions"),
    ],
)
def test_passing_actito_faults_mid_run_end_in_one_import(
    actito_project: Path, sandbox: ActitoSandbox, fault: Any, count: int, path: str, caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox.inject_faults(fault, count, path, retry_after=0 if fault == 429 else None)
    outcome = run_in_process(actito_project, PROFILES)
    profiles_landed(sandbox, outcome)
    assert "Actito call failed, retrying" in caplog.text
    assert (actito_project.parent / SNAPSHOT).exists()


def test_a_token_expiring_mid_run_is_renewed_and_the_import_goes_through(
    actito_project: Path, sandbox: ActitoSandbox
) -> None:
    outcome = run_in_process(actito_project, PROFILES, progress=once(lambda: sandbox.advance_clock(1000)))
    profiles_landed(sandbox, outcome)
    tokens = [status for method, path, status in sandbox.request_log if path.startswith("/auth/token")]
    assert tokens == [200, 200]  # the first, and one renewal after Actito answered 401
    assert any(status == 401 for method, path, status in sandbox.request_log)


def test_actito_failing_for_good_is_one_clear_failure_with_nothing_imported(
    actito_project: Path, sandbox: ActitoSandbox, cli: Callable[..., Shown]
) -> None:
    sandbox.inject_faults(500, 1000, "/etl-executions", retry_after=0)  # the upload, and every look-up of it
    shown = cli(actito_project, "run", PROFILES)
    one_clear_failure(shown, "Actito POST /mass-imports/v5/entities/{entity}/etl-executions",
                      "the import's outcome is unknown", "look for an execution with reference")
    assert sandbox.executions("demo") == [] and sandbox.profiles("demo", "customers") == []
    assert not (actito_project.parent / SNAPSHOT).exists()  # the next run sends everything again
    assert last_status(actito_project, PROFILES) == "failed"


def test_actito_rate_limiting_for_good_is_one_clear_failure_before_anything_is_sent(
    actito_project: Path, sandbox: ActitoSandbox, cli: Callable[..., Shown]
) -> None:
    sandbox.inject_faults(429, 1000, "profile-tables", retry_after=0)
    shown = cli(actito_project, "run", PROFILES)
    one_clear_failure(shown, "HTTP 429", "after 6 attempts", "another job may share the licence")
    assert sandbox.executions("demo") == []
    assert not (actito_project.parent / SNAPSHOT).exists()


# --------------------------------------------------------------------------- Actito: imports that fail


def test_an_import_actito_refuses_entirely_fails_and_is_sent_again_next_run(
    actito_project: Path, sandbox: ActitoSandbox
) -> None:
    """Pre-flight passed, then an administrator deleted a mapped attribute: Actito refuses the import.
    (An import accepted and then ended in ERROR is the client's test with a BOM file.)"""
    outcome = run_in_process(actito_project, PROFILES,
                             progress=once(lambda: sandbox.drop_attribute("demo", "customers", "firstName")))
    assert outcome.status == "failed"
    error = outcome.error or ""
    assert "HTTP 400" in error and "no attribute 'firstName'" in error and "not retried unchanged" in error
    assert sandbox.executions("demo") == [] and sandbox.profiles("demo", "customers") == []
    assert not (actito_project.parent / SNAPSHOT).exists()  # nothing counts as sent

    again = run_in_process(actito_project, PROFILES)  # now the pre-flight names the missing attribute
    assert again.status == "failed"
    assert "before sending anything" in (again.error or "") and "firstName" in (again.error or "")


def test_an_import_actito_refuses_in_part_succeeds_and_lists_each_refused_row(
    actito_project: Path, sandbox: ActitoSandbox, cli: Callable[..., Shown]
) -> None:
    """Consents for profiles Actito does not have (UPDATE_ONLY): the others are applied, the refused
    ones are in the reject file with their warehouse row; unchanged, only they are sent again (they wait
    for their profile: tests/test_dependency_retries.py), in one import, the applied ones not."""
    assert run_in_process(actito_project, PROFILES).ok
    shown = cli(actito_project, "run", "didomi_consents")
    assert shown.code == 0, shown.said
    assert "refused by Actito, listed in the rejects file" in shown.out
    outcome = last_run(actito_project, "didomi_consents")
    refused = outcome.details["refused_by_actito"]
    assert 0 < refused < outcome.details["to_send"]
    assert outcome.rows_delivered == outcome.details["to_send"] - refused
    with open(outcome.details["rejects_file"], newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["reason"].startswith("refused by Actito")]
    assert len(rows) == refused and all(row["row"].isdigit() and "@" in row["value"] for row in rows)

    second = run_in_process(actito_project, "didomi_consents")
    assert second.ok and second.details["to_send"] == second.details["retried"] == refused
    assert second.details["refused_by_actito"] == refused and second.results["rows_delivered"] == 0
    assert len(sandbox.executions("demo")) == 3


# --------------------------------------------------------------------------- the warehouse drops the connection mid-stream

BIG = "big_audience"
#: e-mails by the million, computed by the server as they stream: far more than one chunk
BIG_QUERIES = {
    "postgres": "SELECT 'user' || i || '@example.com' AS email FROM generate_series(1, 3000000) AS s(i) "
                "WHERE '{marker}' = '{marker}'",
    "mariadb": "SELECT CONCAT('user', seq, '@example.com') AS email FROM seq_1_to_3000000 WHERE '{marker}' = '{marker}'",
}
#: how to find the session running the query from another connection, and end it
KILLERS = {
    "postgres": ("SELECT pid FROM pg_stat_activity WHERE query LIKE :pattern AND pid <> pg_backend_pid()",
                 "SELECT pg_terminate_backend(:id)"),
    "mariadb": ("SELECT id FROM information_schema.processlist WHERE info LIKE :pattern AND id <> CONNECTION_ID()",
                "KILL :id"),
}
#: what each database's driver says when its session is ended under a running query
DATABASE_WORDS = {"postgres": ("terminating connection", "server closed the connection"), "mariadb": ("Lost connection",)}


def big_audience_project(demo_project: Path, url: str, sql: str) -> Path:
    (demo_project.parent / "sql" / f"{BIG}.sql").write_text(sql)
    outbox = demo_project.parent / "var" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / f"{BIG}.csv").write_bytes(PREVIOUS)
    text = demo_project.read_text().replace("chunk_size = 50000", "chunk_size = 1000")
    demo_project.write_text(text + f'\n[warehouses.big]\nurl = "{url}"\n\n[activations.{BIG}]\n'
                                   f'sql = "sql/{BIG}.sql"\nwarehouse = "big"\ndestination = "actito_demo"\n'
                                   'identifier = "email"\n')
    return demo_project


def sessions_running(url: str, marker: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(sa.text(KILLERS[database_of(url)][0]),
                                                         {"pattern": f"%{marker}%"})]
    finally:
        engine.dispose()


def database_of(url: str) -> str:
    return "postgres" if url.startswith("postgresql") else "mariadb"


def end_sessions(url: str, marker: str) -> None:
    """From another connection, end the session streaming the query, as a DBA or a failover would."""
    (session,) = sessions_running(url, marker)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(KILLERS[database_of(url)][1]), {"id": session})
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["postgres", "mariadb"])
def test_a_warehouse_connection_dropped_mid_stream_is_one_clear_failure_with_nothing_delivered(
    demo_project: Path, database: str
) -> None:
    url = dbservers.postgres_url() if database == "postgres" else dbservers.mariadb_url()
    marker = dbservers.unique_name("marker")
    config = big_audience_project(demo_project, url, BIG_QUERIES[database].format(marker=marker))

    with dbservers.PoolWatch() as pools:
        outcome = run_in_process(config, BIG, progress=once(lambda: end_sessions(url, marker)))
        assert pools.checkouts > 0 and pools.checked_out == 0  # the warehouse's connection (and the ledger's) went back

    assert outcome.status == "failed"
    error = outcome.error or ""
    assert error.startswith(f"{demo_project.parent / 'sql' / BIG}.sql: the connection to the warehouse broke off")
    assert any(words in error for words in DATABASE_WORDS[database]), error
    assert "\n" not in error and "run again once the warehouse is reachable" in error
    outbox = demo_project.parent / "var" / "outbox"
    assert (outbox / f"{BIG}.csv").read_bytes() == PREVIOUS and leftovers(outbox) == []
    assert not (outbox / f"{BIG}.manifest.json").exists()
    assert sessions_running(url, marker) == []


# --------------------------------------------------------------------------- the disk fills up

TMPFS_SIZE = "256k"


@pytest.fixture
def full_disk() -> Iterator[Callable[[Path], Path]]:
    """``full_disk(directory)``: a tmpfs of 256 kB mounted on ``directory`` and filled up, so that the
    next write there fails with a real ENOSPC; unmounted after the test. Needs root (skipped
    otherwise; under CI=true a failure, as a skipped fault would prove nothing)."""
    mounted: list[Path] = []

    def mount(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        problem = "needs root to mount a tmpfs" if os.geteuid() != 0 else None
        if problem is None:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(directory)],
                                  capture_output=True, text=True)
            problem = f"mount -t tmpfs failed: {done.stderr.strip()}" if done.returncode else None
        if problem is not None:
            if dbservers.in_ci():
                pytest.fail(f"{problem} (CI=true: the disk-full faults must not be skipped)", pytrace=False)
            pytest.skip(problem)
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=True)


def fill(directory: Path) -> None:
    """Take every free byte of the file system holding ``directory``."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        with pytest.raises(OSError) as full:
            while True:
                filler.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


@pytest.mark.parametrize(("full", "hint"), [("outbox", "the disk is full: free some space"),
                                            ("state", "check free space")])
def test_a_full_disk_is_one_clear_failure_with_the_previous_file_in_place(
    demo_project: Path, full_disk: Callable[[Path], Path], cli: Callable[..., Shown], full: str, hint: str
) -> None:
    """Delivering to the local outbox, or writing the run's own files (state_dir; the ledger is
    elsewhere, state_url), fails with ENOSPC."""
    root = demo_project.parent
    ledger = f'state_url = "sqlite:///{root / "ledger.db"}"'
    demo_project.write_text(demo_project.read_text().replace('state_dir = "var/state"', f'state_dir = "var/state"\n{ledger}'))
    full_disk(root / "var" / full)
    outbox = root / "var" / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / f"{AUDIENCE}.csv").write_bytes(PREVIOUS)
    fill(root / "var" / full)

    shown = cli(demo_project, "run", AUDIENCE)

    one_clear_failure(shown, "No space left on device", hint)
    nothing_delivered(outbox)
    assert last_status(demo_project) == "failed"


def test_a_full_disk_under_the_ledger_runs_nothing_and_says_so(
    demo_project: Path, full_disk: Callable[[Path], Path], cli: Callable[..., Shown]
) -> None:
    assert cli(demo_project, "run", AUDIENCE).code == 0  # the ledger exists, with a first delivery
    state = demo_project.parent / "var" / "state"
    kept = state.with_name("state.before")
    state.rename(kept)
    shutil.copytree(kept, full_disk(state), dirs_exist_ok=True)
    fill(state)
    outbox = demo_project.parent / "var" / "outbox"
    before = {path.name: path.read_bytes() for path in outbox.iterdir()}

    shown = cli(demo_project, "run", AUDIENCE)

    assert shown.code == 1 and "Traceback" not in shown.said
    assert "cannot take the lock: database or disk is full — nothing was run" in shown.err
    assert {path.name: path.read_bytes() for path in outbox.iterdir()} == before


def test_a_full_disk_anywhere_in_a_run_is_said_as_such(demo_project: Path, full_disk: Callable[[Path], Path]) -> None:
    """A write no layer wrapped (a job kind written later, a library's own temporary file) that fails
    with ENOSPC is the machine's state, not an internal error to report."""
    spool = full_disk(demo_project.parent / "spool")
    fill(spool)

    def body(context: RunContext) -> None:
        (spool / "more.bin").write_bytes(b"x" * 65536)

    config = load_config(demo_project)
    store = open_store(config)
    try:
        outcome = execute(config, store, AUDIENCE, "audience", body, stop=threading.Event())
    finally:
        store.close()

    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.startswith("the disk is full (No space left on device")
    assert "free some space" in outcome.error and "internal error" not in outcome.error
