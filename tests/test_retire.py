"""`audience-sync retire`, through the real command in child processes: an activation's files leave its
location (a local outbox, a real SFTP server on loopback) and its members the Actito sandbox's table, and
nothing else does — not a neighbour's files in the same directory, not a renamed successor's, not while a
run of it holds the lock; a dry run removes nothing; history stays and the retirement joins it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from etl.runtime.ledger import RunRecord, StateStore, runs
from etl.testing.actito.server import ActitoSandbox

pytest_plugins = ["conftest_delivery"]

from conftest import emails_sql, sandbox_config, sandbox_state, sftp_files  # noqa: E402
from servers import PASSWORD, SftpBehaviour, SftpServer  # noqa: E402

#: two activations sharing one directory with names that look alike but never meet, and a membership one
ACTIVATIONS = {
    "vip": 'sql = "vip.sql"\ndestination = "d"\nidentifier = "email"\nfile = { name = "vip_$yyyyMMdd.csv" }',
    "vip_all": 'sql = "all.sql"\ndestination = "d"\nidentifier = "email"\nfile = { name = "vip_$yyyyMM.csv" }',
    "tracked": 'sql = "vip.sql"\ndestination = "d"\nidentifier = "email"\ndelivery = "membership"',
    "kept": 'sql = "all.sql"\ndestination = "d"\nidentifier = "email"\ndelivery = "membership"',
}


class Project:
    def __init__(self, root: Path, files: str = '{ type = "local", path = "outbox" }') -> None:
        self.root, self.files, self.env = root, files, dict(os.environ)
        root.mkdir(exist_ok=True)
        (root / "wh.db").touch()
        (root / "vip.sql").write_text(emails_sql(1, 30))
        (root / "all.sql").write_text(emails_sql(20, 60))
        self.configure(*ACTIVATIONS)

    def configure(self, *names: str) -> None:
        """The configuration with only these activations: the others were removed from it."""
        tables = "".join(f"\n[activations.{name}]\n{ACTIVATIONS[name]}\n" for name in names)
        (self.root / "schedules.toml").write_text(sandbox_config(self.files, activations=tables))

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "etl", "--config", str(self.root / "schedules.toml"), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def __call__(self, *args: str) -> tuple[int, str, str]:
        process = self.start(*args)
        out, err = process.communicate(timeout=120)
        assert "Traceback" not in err, err
        return process.returncode, out, err

    def runs(self, activation: str) -> list[RunRecord]:
        store = StateStore.in_directory(self.root / "state")
        try:
            return store.runs(activation)
        finally:
            store.close()

    def state(self, activation: str) -> list[Path]:
        return [path for path in (self.root / "state" / "activations" / activation,
                                  self.root / "state" / "runs" / activation) if path.exists()]

    def sandbox(self) -> ActitoSandbox:
        return sandbox_state(self.root)


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def removed_lines(out: str) -> list[str]:
    """The lines a retire lists under 'removed' / 'would remove'."""
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "project")


def test_a_removed_activation_is_retired_from_a_shared_outbox_and_nothing_else_goes(project: Project) -> None:
    code, out, err = project("run", "vip", "vip_all")
    assert code == 0, out + err
    outbox = project.root / "outbox"
    # what an earlier run of vip left (an older date, a temporary file) and what is not ours
    for name in ("vip_20240101.csv", ".audience-sync-20240101T000000Z-abcdef-vip_20240101.csv.part",
                 "vip_2024.csv", "vip_notes.txt", "vip_all.csv"):
        (outbox / name).write_text("x")
    theirs = {name for name in listing(outbox) if not re.fullmatch(r"(\.audience-sync-.*-)?vip_\d{8}\..*", name)}
    assert len(theirs) == 5  # vip_all's file and manifest, three of another sender
    project.configure("vip_all", "tracked", "kept")  # vip left the configuration

    code, out, err = project("validate")
    assert code == 0 and "[activations.vip] is no longer in the configuration" in err
    assert "`audience-sync retire vip`" in err

    before, runs = listing(outbox), len(project.runs("vip"))
    code, out, err = project("retire", "vip", "--dry-run")
    assert code == 0, out + err
    planned = removed_lines(out)
    assert listing(outbox) == before and len(project.runs("vip")) == runs and project.state("vip")  # nothing removed
    assert "dry run, nothing removed" in out

    code, out, err = project("retire", "vip")
    assert code == 0, out + err
    assert removed_lines(out) == planned  # the dry run listed exactly what went
    assert set(listing(outbox)) == theirs
    assert project.state("vip") == []
    last, *history = project.runs("vip")
    assert (last.kind, last.status, len(history)) == ("retire", "succeeded", runs)
    assert "retired" in project("history", "vip")[1] and "note       retired:" in project("show", last.run_id)[1]

    code, out, err = project("retire", "vip")  # a second retire: a no-op that says so
    assert code == 0 and "already retired" in out and len(project.runs("vip")) == runs + 1
    assert "no longer in the configuration" not in project("validate")[2]


def test_a_renamed_activation_keeps_the_file_its_successor_writes(project: Project) -> None:
    ACTIVATIONS["vip2"] = ACTIVATIONS["vip"]  # renamed, same file name
    try:
        assert project("run", "vip")[0] == 0
        project.configure("vip2", "vip_all")
        assert project("validate")[0] == 0  # the two are never checked against each other: vip left
        code, out, err = project("run", "vip2")
        assert code == 0, out + err
        delivered = listing(project.root / "outbox")
        code, out, err = project("retire", "vip")
        assert code == 0, out + err
        assert listing(project.root / "outbox") == delivered
        assert "[activations.vip2] ('vip_$yyyyMMdd.csv') can also write" in out
    finally:
        del ACTIVATIONS["vip2"]


def test_retire_waits_for_no_run_it_refuses_while_one_holds_the_lock(project: Project) -> None:
    assert project("run", "vip")[0] == 0
    before = listing(project.root / "outbox")
    project.env["AUDIENCE_SYNC_STALL_AT"] = "written"  # the run takes the lock, writes its file, then freezes
    stalled = project.start("run", "vip")
    del project.env["AUDIENCE_SYNC_STALL_AT"]
    try:
        deadline = time.monotonic() + 60
        while not any(r.status == "running" and r.details.get("checkpoint") == "written" for r in project.runs("vip")):
            assert time.monotonic() < deadline and stalled.poll() is None
            time.sleep(0.1)
        code, out, err = project("retire", "vip")
        assert code == 3 and "already running" in err, out + err
        assert listing(project.root / "outbox") == before and project.state("vip")
        assert [r.kind for r in project.runs("vip")] == ["audience", "audience"]  # no retirement recorded
    finally:
        stalled.send_signal(signal.SIGKILL)
        stalled.wait()


def test_an_unknown_name_is_a_clear_error(project: Project) -> None:
    code, out, err = project("retire", "nobody")
    assert code == 2 and "activation 'nobody'" in err and "nothing to retire" in err and "known: " in err
    code, out, err = project("retire", "../state")
    assert code == 2 and "not an activation name" in err
    assert not (project.root / "state" / "activations").exists()


def test_a_membership_activation_leaves_its_table_and_only_it(project: Project) -> None:
    code, out, err = project("run", "tracked", "kept")
    assert code == 0, out + err

    def members(audience: str) -> set[str]:
        return {r["memberKey"] for r in project.sandbox().records("demo", "audience_members")
                if r["audience"] == audience}

    assert len(members("tracked")) == 30 and len(members("kept")) == 41
    project.configure("vip", "vip_all", "kept")

    code, out, err = project("retire", "tracked", "--dry-run")
    assert code == 0 and "30 members deleted from Actito table 'audience_members' of entity demo" in out, out + err
    assert len(members("tracked")) == 30

    code, out, err = project("retire", "tracked")
    assert code == 0, out + err
    assert members("tracked") == set() and len(members("kept")) == 41
    last = project.runs("tracked")[0]
    assert (last.kind, last.details["left"], last.details["entered"]) == ("retire", 30, 0)

    # a new activation of the same name starts fresh: everyone enters again
    project.configure("tracked", "kept")
    code, out, err = project("run", "tracked")
    assert code == 0, out + err
    assert project.runs("tracked")[0].details["entered"] == 30 and len(members("tracked")) == 30


@pytest.fixture
def over_sftp(tmp_path: Path, make_sftp_server: Callable[..., SftpServer]) -> tuple[Project, SftpServer]:
    server = make_sftp_server(SftpBehaviour())
    files = sftp_files(server, tmp_path)
    project = Project(tmp_path / "project", files)
    project.env["TEST_SFTP_PASSWORD"] = PASSWORD
    return project, server


def test_a_removed_activation_is_retired_from_an_sftp_server(over_sftp: tuple[Project, SftpServer]) -> None:
    project, server = over_sftp
    code, out, err = project("run", "vip", "vip_all")
    assert code == 0, out + err
    remote = server.root / "in"
    (remote / "vip_20240101.csv").write_text("an older delivery")
    theirs = [name for name in listing(remote) if re.fullmatch(r"vip_\d{6}\..*", name)]
    assert len(theirs) == 2  # vip_all's file and manifest
    project.configure("vip_all")

    code, out, err = project("--log-format", "json", "retire", "vip", "--dry-run")
    assert code == 0, out + err
    planned = json.loads(out)["would_remove"]
    assert sorted(line.rsplit("/", 1)[1] for line in planned if "sftp://" in line) == sorted(
        set(listing(remote)) - set(theirs))

    code, out, err = project("retire", "vip")
    assert code == 0, out + err
    assert listing(remote) == sorted(theirs)
    assert project.runs("vip")[0].kind == "retire"


def test_a_location_no_destination_reaches_any_more_is_said_and_nothing_is_removed(
    over_sftp: tuple[Project, SftpServer]
) -> None:
    project, server = over_sftp
    assert project("run", "vip")[0] == 0
    before = listing(server.root / "in")
    project.files = '{ type = "local", path = "outbox" }'  # the SFTP server is no destination's any more
    project.configure("vip_all")
    code, out, err = project("retire", "vip", "--dry-run")
    assert code == 2 and "no destination reaches sftp://actito@127.0.0.1" in err, out + err
    code, out, err = project("retire", "vip")
    assert code == 2 and listing(server.root / "in") == before and project.state("vip")


def test_runs_that_recorded_no_target_are_retired_from_the_configuration_or_said(project: Project) -> None:
    """Runs of versions before targets were recorded: the configuration says where, or `retire` says it cannot."""
    assert project("run", "vip", "vip_all")[0] == 0
    store = StateStore.in_directory(project.root / "state")
    try:
        with store.engine.begin() as conn:
            for record in store.runs(limit=100):
                conn.execute(runs.update().where(runs.c.run_id == record.run_id).values(
                    details={key: value for key, value in record.details.items() if key != "target"}))
    finally:
        store.close()
    outbox = project.root / "outbox"
    code, out, err = project("retire", "vip")  # still configured: the configuration says where
    assert code == 0, out + err
    assert "still in the configuration" in out
    left = listing(outbox)  # vip_all's file and manifest only
    assert len(left) == 2 and all(re.fullmatch(r"vip_\d{6}\.(csv|manifest\.json)", name) for name in left)
    project.configure("tracked")  # vip_all leaves without a target recorded: said, its files stay
    code, out, err = project("retire", "vip_all")
    assert code == 0, out + err
    assert "delivered before deliveries recorded their target" in out and len(listing(outbox)) == 2
