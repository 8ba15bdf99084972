"""SIGKILL a real run at every checkpoint, run again, and the result converges.

Each test runs the real CLI in a child process; ``AUDIENCE_SYNC_KILL_AT`` makes that process SIGKILL
itself at one named point (etl/runtime/runs.py, a fault-injection hook for tests), and the SFTP mid-upload
case is killed from outside while a slow server is still receiving the file. After the rerun:
exactly the expected file is delivered (sha256 as in its manifest), no temporary or partial file is
left anywhere, the previous file stayed in place until the new one replaced it, the ledger marks
the dead run and records one successful run, and Actito (the in-process sandbox, whose state
outlives the killed process) holds exactly one execution per import and the expected rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from etl.destinations.actito.client import ActitoClient
from etl.errors import ActitoImportError, LockBusy
from etl.destinations.actito.recovery import Landed, part_reference, recover_earlier_runs, stage_sent, upload_name
from etl.config import load_config
from etl.destinations.filedrop.base import is_temp_name, temp_name
from etl.files import WrittenFile
from etl.ops.history import runs_table, show_run
from etl.runtime.runs import RunContext
from etl.runtime.leases import hold
from etl.runtime.ledger import NOT_SENT, RunRecord, StateStore, leases, utcnow
from etl.testing.actito.server import ActitoSandbox

pytest_plugins = ["conftest_delivery"]

from conftest import emails_sql, sandbox_config, sandbox_state, sftp_files  # noqa: E402
from servers import PASSWORD, Location, SftpBehaviour, SftpServer  # noqa: E402

KILLED = -signal.SIGKILL

ACTIVATIONS = """
[activations.members]
sql = "members.sql"
destination = "d"
identifier = "email"
max_shrink = 1

[activations.people]
kind = "profiles"
sql = "people.sql"
destination = "d"
table = "customers"

[activations.tracked]
sql = "members.sql"
destination = "d"
identifier = "email"
delivery = "membership"
max_shrink = 1
"""


def people_sql(count: int, renamed_below: int) -> str:
    """``count`` profiles; those numbered below ``renamed_below`` carry a changed first name."""
    return (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
            f"SELECT 'person' || i || '@example.com' AS emailAddress, "
            f"CASE WHEN i < {renamed_below} THEN 'New' || i ELSE 'Old' || i END AS firstName FROM n")


class Project:
    """A directory with a configuration, the SQL of its activations, its ledger and its outbox."""

    def __init__(self, root: Path, files: str = '{ type = "local", path = "outbox" }', chunk: int = 100) -> None:
        self.root = root
        (root / "wh.db").touch()
        self.config = root / "schedules.toml"
        self.config.write_text(sandbox_config(files, f"chunk_size = {chunk}", activations=ACTIVATIONS))
        self.env: dict[str, str] = {}
        self.sql("members", emails_sql(1, 10))
        self.sql("people", people_sql(10, 0))

    def copy(self, root: Path) -> Project:
        """A copy of this project, ledger, snapshots and sandbox state included: a baseline is made once."""
        shutil.copytree(self.root, root)
        copied = Project.__new__(Project)
        copied.root, copied.config, copied.env = root, root / "schedules.toml", dict(self.env)
        return copied

    def sql(self, name: str, text: str) -> None:
        (self.root / f"{name}.sql").write_text(text)

    def environment(self, kill_at: str | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "AUDIENCE_SYNC_KILL_AT"}
        env.update(self.env)
        if kill_at:
            env["AUDIENCE_SYNC_KILL_AT"] = kill_at
        return env

    def start(self, activation: str, kill_at: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "etl", "--config", str(self.config), "run", activation],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.environment(kill_at))

    def run(self, activation: str, kill_at: str | None = None) -> tuple[int, str]:
        process = self.start(activation, kill_at)
        out, err = process.communicate(timeout=120)
        assert "Traceback" not in err, err
        return process.returncode, out + err

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "etl", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=60, env=self.environment())
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def store(self) -> StateStore:
        return StateStore.in_directory(self.root / "state")

    def runs(self, activation: str) -> list[RunRecord]:
        """The activation's ledger rows, newest first."""
        store = self.store()
        try:
            return store.runs(activation)
        finally:
            store.close()

    def leftovers(self, *directories: Path) -> list[Path]:
        """Partial local files and temporary remote names: what a crash must never leave behind."""
        found = [p for p in (self.root / "state" / "runs").rglob("*") if p.name.endswith((".partial", ".tmp"))]
        for directory in directories:
            found += [p for p in directory.iterdir() if is_temp_name(p.name)] if directory.exists() else []
        return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_consistent(directory: Path) -> None:
    """Whatever the moment of the kill, the manifest in place describes the file in place."""
    manifest = json.loads((directory / "members.manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == sha256(directory / "members.csv")


def assert_delivered(directory: Path, rows: int) -> None:
    """Exactly the audience file and its manifest, the file as its manifest describes it."""
    assert sorted(p.name for p in directory.iterdir()) == ["members.csv", "members.manifest.json"]
    manifest = json.loads((directory / "members.manifest.json").read_text())
    assert manifest["rows"] == rows
    assert manifest["files"][0]["sha256"] == sha256(directory / "members.csv")
    assert len((directory / "members.csv").read_text().splitlines()) == rows + 1


def assert_recovered(project: Project, activation: str, kill_at: str) -> None:
    """The dead run is marked with where it stopped (the last checkpoint before ``kill_at``); the
    last run succeeded and says what it recovered."""
    last, *earlier = project.runs(activation)
    assert last.status == "succeeded"
    if kill_at == "recorded":  # killed after its own row was final: nothing to recover
        assert [r.status for r in earlier] == ["succeeded", "succeeded"]
        return
    dead = earlier[0]
    assert dead.status == "interrupted"
    stopped = {"chunk": "starting", "posted": "written", "mid-upload": "written"}.get(kill_at, kill_at)
    assert f"died after '{stopped}'" in (dead.error or ""), dead.error
    assert last.details["recovered"] == [dead.run_id]
    assert f"recovered  by run {last.run_id}" in show_run(dead)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, str], Project]:
    """A project after one successful run of an activation, made once per module and copied per test."""
    made: dict[str, Project] = {}

    def copy_for(activation: str, sql_name: str, sql: str, *, into: Path) -> Project:
        if activation not in made:
            project = Project(tmp_path_factory.mktemp(f"baseline-{activation}"))
            project.sql(sql_name, sql)
            code, output = project.run(activation)
            assert code == 0, output
            made[activation] = project
        return made[activation].copy(into)

    return copy_for  # type: ignore[return-value]


# --------------------------------------------------------------------------- audience files, local

AUDIENCE_KILL_POINTS = ["chunk", "extracted", "written", "delivered", "confirmed", "recorded"]


@pytest.mark.parametrize("kill_at", AUDIENCE_KILL_POINTS)
def test_a_local_audience_killed_at_each_step_converges_on_the_rerun(
    baseline: Callable[..., Project], tmp_path: Path, kill_at: str
) -> None:
    project = baseline("members", "members", emails_sql(1, 500), into=tmp_path / "p")
    outbox = project.root / "outbox"
    previous = sha256(outbox / "members.csv")

    project.sql("members", emails_sql(1, 600))
    code, output = project.run("members", kill_at)
    assert code == KILLED, output
    replaced = kill_at in ("confirmed", "recorded")
    assert (sha256(outbox / "members.csv") == previous) is not replaced  # the old file until the new is complete
    assert_consistent(outbox)
    if kill_at == "delivered":  # uploaded under temporary names, not renamed yet
        assert any(is_temp_name(p.name) for p in outbox.iterdir())
    if kill_at != "recorded":
        dead = project.runs("members")[0]
        assert dead.status == "running"
        if kill_at != "chunk":
            assert dead.details["checkpoint"] == kill_at
            assert f"[{kill_at}]" in project.cli("show", dead.run_id)  # where the dead run stopped
            assert f"running at {kill_at}" in runs_table([dead])  # as `history` lists it

    code, output = project.run("members")
    assert code == 0, output
    assert_delivered(outbox, 600)
    assert project.leftovers(outbox) == []
    assert_recovered(project, "members", kill_at)


# --------------------------------------------------------------------------- audience files, SFTP


@pytest.fixture
def sftp(tmp_path: Path, make_sftp_server: Callable[..., SftpServer]) -> tuple[Project, SftpServer]:
    server = make_sftp_server(SftpBehaviour())
    files = sftp_files(server, tmp_path)
    (tmp_path / "project").mkdir()
    project = Project(tmp_path / "project", files=files, chunk=5000)
    project.env["TEST_SFTP_PASSWORD"] = PASSWORD
    return project, server


@pytest.mark.parametrize("kill_at", ["mid-upload", "delivered", "confirmed"])
def test_an_sftp_audience_killed_during_delivery_converges_on_the_rerun(
    sftp: tuple[Project, SftpServer], kill_at: str
) -> None:
    project, server = sftp
    remote = server.root / "in"
    project.sql("members", emails_sql(1, 500))
    assert project.run("members")[0] == 0
    previous = sha256(remote / "members.csv")

    project.sql("members", emails_sql(1, 30000))  # about 750 kB: many SFTP writes
    if kill_at == "mid-upload":
        server.behaviour.write_delay = 0.02
        process = project.start("members")
        assert _wait_for_partial_upload(remote, process), "the upload never started"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        server.behaviour.write_delay = 0.0
        code = process.returncode
    else:
        code, _ = project.run("members", kill_at)
    assert code == KILLED
    assert (sha256(remote / "members.csv") == previous) is (kill_at != "confirmed")
    assert_consistent(remote)
    if kill_at != "confirmed":
        assert any(is_temp_name(p.name) for p in remote.iterdir())  # what the dead run left

    code, output = project.run("members")
    assert code == 0, output
    assert_delivered(remote, 30000)
    assert project.leftovers(remote) == []
    if kill_at != "confirmed":
        assert "cleaned    temporary files of a dead run: .audience-sync-" in show_run(project.runs("members")[0])
    assert_recovered(project, "members", kill_at)


def _wait_for_partial_upload(remote: Path, process: subprocess.Popen[str]) -> bool:
    """True once a temporary file holds some bytes but not all of them (the upload is under way)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        for path in remote.iterdir():
            if is_temp_name(path.name) and path.name.endswith("members.csv.part") and 0 < path.stat().st_size < 500_000:
                return True
        time.sleep(0.01)
    return False


# --------------------------------------------------------------------------- imports into Actito

IMPORT_KILL_POINTS = ["chunk", "extracted", "written", "posted", "delivered", "confirmed", "recorded"]


@pytest.mark.parametrize("kill_at", IMPORT_KILL_POINTS)
def test_a_profiles_import_killed_at_each_step_is_never_sent_twice(
    baseline: Callable[..., Project], tmp_path: Path, kill_at: str
) -> None:
    project = baseline("people", "people", people_sql(50, 0), into=tmp_path / "p")

    project.sql("people", people_sql(60, 11))  # 10 renamed and 10 new: one import of 20 rows
    code, output = project.run("people", kill_at)
    assert code == KILLED, output
    code, output = project.run("people")
    assert code == 0, output

    sandbox = sandbox_state(project.root)
    executions = sandbox.executions("demo")
    assert len(executions) == 2, executions  # the first run's, and one for the changed rows: never twice
    assert all(e["status"] == "SUCCESS" for e in executions)
    profiles = {p["attributes"]["emailAddress"]: p["attributes"]["firstName"]
                for p in sandbox.profiles("demo", "customers")}
    assert profiles == {f"person{i}@example.com": ("New" if i < 11 else "Old") + str(i) for i in range(1, 61)}
    store = project.store()
    try:
        assert store.imports_on("demo", "customers", datetime.now(UTC).date()) == 2  # the daily budget's count
    finally:
        store.close()
    assert project.leftovers() == []
    assert not list((project.root / "state" / "runs").rglob("*sent.parquet"))
    assert_recovered(project, "people", kill_at)
    if kill_at in ("posted", "delivered", "confirmed"):  # Actito had the import: waited for, not sent again
        (last, *_) = project.runs("people")
        assert last.rows_delivered == 0
        assert ("recovered  import" in show_run(last)) is (kill_at != "confirmed")  # resolved in Actito


def test_a_crash_loop_converges_too(baseline: Callable[..., Project], tmp_path: Path) -> None:
    """Killed while Actito imports, then killed again while recovering-and-extracting: the third run
    still finds the import, sends nothing again, and the ledger tells each death apart."""
    project = baseline("people", "people", people_sql(50, 0), into=tmp_path / "p")
    project.sql("people", people_sql(60, 11))
    assert project.run("people", "posted")[0] == KILLED
    assert project.run("people", "chunk")[0] == KILLED
    assert project.run("people")[0] == 0
    assert len(sandbox_state(project.root).executions("demo")) == 2
    last, second, first, _ = project.runs("people")
    assert (last.status, second.status, first.status) == ("succeeded", "interrupted", "interrupted")
    assert "died after 'written'" in (first.error or "") and "died after 'starting'" in (second.error or "")
    assert last.rows_delivered == 0


@pytest.mark.parametrize("kill_at", ["posted", "confirmed"])
def test_a_membership_delivery_killed_mid_import_converges(
    baseline: Callable[..., Project], tmp_path: Path, kill_at: str
) -> None:
    project = baseline("tracked", "members", emails_sql(1, 40), into=tmp_path / "p")

    project.sql("members", emails_sql(11, 50))  # 10 left, 10 entered
    code, output = project.run("tracked", kill_at)
    assert code == KILLED, output
    code, output = project.run("tracked")
    assert code == 0, output

    sandbox = sandbox_state(project.root)
    references = sorted(e["reference"].split("-", 2)[2] for e in sandbox.executions("demo"))
    assert references == ["entered-1", "entered-1", "left-1"]  # the first run's, then once each
    members = sorted(r["memberKey"] for r in sandbox.records("demo", "audience_members"))
    assert members == sorted(f"tracked:person{i}@example.com" for i in range(11, 51))
    assert project.leftovers() == []
    assert_recovered(project, "tracked", kill_at)


# --------------------------------------------------------------------------- the ledger's part


def test_a_lock_left_by_a_killed_process_of_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now (and reaped: not a zombie)
    store = StateStore.in_directory(tmp_path)
    try:
        for activation, owner in (("a", f"{socket.gethostname()}:{dead.pid}:1"), ("b", "elsewhere:1:1")):
            with store.engine.begin() as conn:
                conn.execute(leases.insert().values(activation=activation, token=1, owner=owner, run_id="old",
                                                    acquired_at=utcnow(), expires_at=utcnow() + timedelta(hours=6)))
        with hold(store, "a", "new", timedelta(minutes=5)) as lease:
            assert lease.owner.split(":")[1] == str(os.getpid())
        with pytest.raises(LockBusy, match="elsewhere:1:1"), hold(store, "b", "new", timedelta(minutes=5)):
            pass  # another host's process cannot be checked: its lease must run out
    finally:
        store.close()


def test_an_import_actito_never_received_does_not_count_against_the_daily_budget(tmp_path: Path) -> None:
    store = StateStore.in_directory(tmp_path)
    today = datetime.now(UTC).date()
    try:
        store.intend_import("r-1", "r", "people", "demo", "customers", today)
        store.intend_import("r-2", "r", "people", "demo", "customers", today)
        assert store.imports_on("demo", "customers", today) == 2  # unknown outcome: counted, to be safe
        store.finish_import("r-2", NOT_SENT, {})
        assert store.imports_on("demo", "customers", today) == 1
        assert [i.reference for i in store.unfinished_imports("people", excluding_run="other")] == ["r-1"]
        assert store.unfinished_imports("people", excluding_run="r") == []
    finally:
        store.close()


def test_only_the_parts_that_reached_actito_go_into_the_snapshot(tmp_path: Path) -> None:
    """A dead run's three-part import: part 1 landed, part 2 never reached Actito, part 3 was never
    started. Its successor commits the rows of part 1 only, so parts 2 and 3 are sent again."""
    config = load_config(Project(tmp_path).config)
    dead_id, new_id, now = "20261201T000000Z-dead00", "20261201T010000Z-new000", datetime.now(UTC)
    dead = RunContext(config, "people", dead_id, now, False, tmp_path / "state" / "runs" / "people" / dead_id)
    dead.run_dir.mkdir(parents=True)
    rows = pa.table({"key": np.arange(1, 10, dtype=np.uint64), "row": np.arange(11, 20, dtype=np.uint64)})
    parts = [WrittenFile(tmp_path / f"part{n}.csv", n_rows, 0, "") for n, n_rows in ((1, 4), (2, 3), (3, 2))]
    stage_sent(dead, "", rows, parts, "the-mapping")
    store = StateStore.in_directory(tmp_path / "state")
    for number, status in ((1, "SUCCESS"), (2, NOT_SENT)):
        store.intend_import(part_reference(dead_id, "", number), dead_id, "people", "demo", "customers", now.date())
        store.finish_import(part_reference(dead_id, "", number), status, {})
    store.close()

    landed: list[Landed] = []
    successor = RunContext(config, "people", new_id, now, False, tmp_path / "state" / "runs" / "people" / new_id)
    with ActitoSandbox() as sandbox, ActitoClient(base_url=sandbox.url, entity="demo",
                                                  api_key="sandbox-demo-key") as client:
        recover_earlier_runs(successor, client, 5.0, landed.append)
    (only,) = landed
    assert (only.run_id, only.fingerprint) == (dead_id, "the-mapping")
    assert only.rows.column("key").to_pylist() == [1, 2, 3, 4]
    assert not list(dead.run_dir.glob("*sent.parquet"))  # committed once, not again by the next run


def test_an_import_still_running_in_actito_stops_the_successor_instead_of_being_sent_again(tmp_path: Path) -> None:
    config = load_config(Project(tmp_path).config)
    dead_id, new_id, now = "20261201T000000Z-dead00", "20261201T010000Z-new000", datetime.now(UTC)
    dead = RunContext(config, "people", dead_id, now, False, tmp_path / "state" / "runs" / "people" / dead_id)
    dead.run_dir.mkdir(parents=True)
    upload = tmp_path / "people.csv"
    upload.write_text("emailAddress,firstName\nperson1@example.com,Ann\n")
    stage_sent(dead, "", pa.table({"key": [1], "row": [2]}), [WrittenFile(upload, 1, 0, "")], "the-mapping")
    reference = part_reference(dead_id, "", 1)
    store = StateStore.in_directory(tmp_path / "state")
    store.intend_import(reference, dead_id, "people", "demo", "customers", now.date())
    successor = RunContext(config, "people", new_id, now, False, tmp_path / "state" / "runs" / "people" / new_id)
    try:
        with ActitoSandbox(processing_seconds=60) as sandbox, ActitoClient(
                base_url=sandbox.url, entity="demo", api_key="sandbox-demo-key") as client:
            definition = {"reference": reference, "target": {"type": "PROFILE_TABLE", "id": "customers"},
                          "mode": "CREATE_UPDATE", "keyColumn": "emailAddress"}
            execution = client.start_import(definition, upload)  # the dead run's POST, its answer never recorded
            with pytest.raises(ActitoImportError, match="still PENDING"):
                recover_earlier_runs(successor, client, 0.3, lambda landed: pytest.fail("committed too early"))
        (left,) = store.unfinished_imports("people", excluding_run=new_id)
        assert (left.status, left.execution_id) == ("SUBMITTED", execution.id)  # found by its reference
    finally:
        store.close()
    assert list(dead.run_dir.glob("*sent.parquet"))  # kept for the run that sees the import end


def test_a_triggered_import_of_a_dead_run_is_found_by_the_name_it_was_uploaded_under(tmp_path: Path) -> None:
    """A trigger-execution carries only the file: the successor finds the dead run's import by its file name
    (activation, reference, extension) and commits its rows instead of sending them again."""
    config = load_config(Project(tmp_path).config)
    dead_id, new_id, now = "20261201T000000Z-dead00", "20261201T010000Z-new000", datetime.now(UTC)
    dead = RunContext(config, "people", dead_id, now, False, tmp_path / "state" / "runs" / "people" / dead_id)
    dead.run_dir.mkdir(parents=True)
    upload = dead.run_dir / "people.csv.gz"
    upload.write_bytes(gzip.compress(b"emailAddress,firstName\nperson1@example.com,Ann\n"))
    stage_sent(dead, "", pa.table({"key": [1], "row": [2]}), [WrittenFile(upload, 1, 0, "")], "the-mapping")
    reference = part_reference(dead_id, "", 1)
    store = StateStore.in_directory(tmp_path / "state")
    store.intend_import(reference, dead_id, "people", "demo", "customers", now.date())
    landed: list[Landed] = []
    successor = RunContext(config, "people", new_id, now, False, tmp_path / "state" / "runs" / "people" / new_id)
    try:
        with ActitoSandbox(processing_seconds=0.05) as sandbox, ActitoClient(
                base_url=sandbox.url, entity="demo", api_key="sandbox-demo-key") as client:
            execution = client.start_import({}, upload, etl_id="customers-upsert",  # the dead run's POST
                                            upload_name=upload_name("people", reference, upload.name))
            recover_earlier_runs(successor, client, 5.0, landed.append)
            assert [e["id"] for e in sandbox.executions("demo")] == [execution.id]  # found, not sent again
    finally:
        store.close()
    (only,) = landed
    assert only.run_id == dead_id and only.rows.column("key").to_pylist() == [1]


def test_a_location_drops_only_the_temporary_files_of_our_dead_runs(location: Location) -> None:
    """Local, SFTP and FTPS alike: a dead run's temporary names of this activation's files go; this
    run's own, another activation's, and every delivered file stay."""
    connect, directory = location
    current = "20261201T010000Z-new000"
    ours_dead = temp_name("20261201T000000Z-dead00", "members.csv")
    keep = [temp_name("20261201T000000Z-dead00", "other.csv"), temp_name(current, "members.csv"), "members.csv"]
    for name in (ours_dead, *keep):
        (directory / name).write_bytes(b"email\n")
    with connect() as deliverer:
        removed = deliverer.discard_leftovers(lambda name: name.startswith("members"), current)
    assert removed == [ours_dead]
    assert sorted(p.name for p in directory.iterdir()) == sorted(keep)
