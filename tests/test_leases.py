"""Runs that overlap in time, tried as an adversary would, with real processes.

* Six processes loop on one activation's lease: no two may ever hold it at once. Each holder
  creates a marker file with O_EXCL while it holds the lease, so an overlap is seen by the file
  system, not by the code under test.
* A replica whose clock runs six hours ahead (``faketime``) cannot take a live lease: expiry is
  judged on the ledger database's clock.
* A run that stalls (SIGSTOP: every thread, its heartbeat too) past its lease is taken over; when it
  wakes it must deliver nothing over its successor's audience, leave no temporary file, leave the
  members snapshot alone and never be recorded as succeeded — on a local directory and over SFTP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dbservers import faketime, postgres_url
from etl.errors import LockBusy
from etl.runtime.leases import hold
from etl.runtime.ledger import StateStore
from conftest import emails_sql, stopped_itself
from test_kill_recovery import Project, assert_delivered

pytest_plugins = ["conftest_delivery"]

from servers import PASSWORD, SftpBehaviour, SftpServer  # noqa: E402

HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from datetime import timedelta
    from etl.errors import LockBusy
    from etl.runtime.leases import acquire
    from etl.runtime.ledger import StateStore

    url, activation, marker, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    store = StateStore(url)
    holds = overlaps = busy = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lease = acquire(store, activation, f"run-{os.getpid()}-{holds}", timedelta(minutes=5))
        except LockBusy:
            busy += 1
            continue
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
        else:
            os.close(fd)
            time.sleep(0.002)
            os.unlink(marker)
        lease.release()
        holds += 1
    print(json.dumps({"holds": holds, "overlaps": overlaps, "busy": busy}))
""")


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else postgres_url()


def test_six_processes_looping_on_one_lease_never_hold_it_together(ledger_url: str, tmp_path: Path) -> None:
    StateStore(ledger_url).close()  # the tables exist before the race on them starts
    activation = f"race-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "held"
    children = [
        subprocess.Popen([sys.executable, "-c", HOLDER, ledger_url, activation, str(marker), "6"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["overlaps"] for r in results) == 0, results
    assert sum(r["holds"] for r in results) >= 100, results  # the race really was run
    assert sum(1 for r in results if r["holds"]) >= 3, results  # and by several processes


SKEWED = textwrap.dedent("""
    import sys
    from datetime import timedelta
    from etl.errors import LockBusy
    from etl.runtime.leases import acquire
    from etl.runtime.ledger import StateStore

    try:
        acquire(StateStore(sys.argv[1]), sys.argv[2], "skewed-run", timedelta(minutes=5))
    except LockBusy as busy:
        print("busy:", busy.message())
    else:
        print("taken")
""")


def _faketime() -> str:
    return faketime("a skewed clock cannot be simulated")


def test_a_replica_whose_clock_runs_six_hours_ahead_cannot_take_a_live_lease() -> None:
    faketime = _faketime()
    url = postgres_url()
    activation = f"skew-{uuid.uuid4().hex[:8]}"
    store = StateStore(url)
    try:
        with hold(store, activation, "live-run", timedelta(minutes=5)):
            done = subprocess.run([faketime, "-f", "+6h", sys.executable, "-c", SKEWED, url, activation],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("busy:"), done.stdout
            assert "run live-run" in done.stdout
    finally:
        store.close()


# --------------------------------------------------------------------------- a stalled run taken over


def _short_lease(project: Project) -> None:
    """A lease of six seconds (renewed every two while the run lives), so a stall outlives it quickly."""
    text = project.config.read_text()
    project.config.write_text(text.replace("[settings]\n", "[settings]\nlock_ttl_minutes = 0.1\n", 1))


def _stall_then_take_over(project: Project, location: Path) -> None:
    _short_lease(project)
    project.sql("members", emails_sql(1, 100))
    assert project.run("members")[0] == 0
    project.sql("members", emails_sql(1, 120))
    project.env["AUDIENCE_SYNC_STALL_AT"] = "written"  # A writes its 120 rows, then freezes
    stalled = project.start("members")
    del project.env["AUDIENCE_SYNC_STALL_AT"]
    try:
        assert stopped_itself(stalled), "the run never reached 'written'"
        project.sql("members", emails_sql(1, 150))
        time.sleep(7)  # A's lease (6 s) runs out while it is frozen
        code, output = project.run("members")  # B takes over and delivers 150 rows
        assert code == 0, output
    finally:
        stalled.send_signal(signal.SIGCONT)
    out, err = stalled.communicate(timeout=120)
    runs = project.runs("members")
    taker, frozen = runs[0], runs[1]
    assert stalled.returncode == 1, out + err
    assert f"lost the lock to run {taker.run_id}; nothing more delivered" in out + err
    assert "Traceback" not in err

    assert_delivered(location, 150)  # B's audience, not A's 120 rows delivered over it
    assert project.leftovers(location) == []
    snapshot = project.root / "state" / "activations" / "members" / "members.parquet"
    members = set(pq.read_table(snapshot).column("member").to_pylist())
    assert len(members) == 150  # the members snapshot is B's
    assert (taker.status, frozen.status) == ("succeeded", "failed")
    assert "lost the lock" in (frozen.error or "")
    assert [r.status for r in project.runs("members")].count("succeeded") == 2  # the first run and B


def test_a_local_run_that_stalls_past_its_lease_delivers_nothing_after_the_take_over(tmp_path: Path) -> None:
    project = Project(tmp_path)
    _stall_then_take_over(project, tmp_path / "outbox")


def test_an_sftp_run_that_stalls_past_its_lease_delivers_nothing_after_the_take_over(
    tmp_path: Path, make_sftp_server: Callable[..., SftpServer]
) -> None:
    server = make_sftp_server(SftpBehaviour())
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    files = (f'{{ type = "sftp", host = "127.0.0.1", port = {server.port}, username = "actito", '
             f'password = "${{TEST_SFTP_PASSWORD}}", known_hosts = "{known_hosts}", remote_dir = "in" }}')
    (tmp_path / "project").mkdir()
    project = Project(tmp_path / "project", files=files)
    project.env["TEST_SFTP_PASSWORD"] = PASSWORD
    _stall_then_take_over(project, server.root / "in")


def test_a_lease_is_renewed_while_its_run_lives(tmp_path: Path) -> None:
    """A run longer than its lease keeps it: the heartbeat renews it, and nobody can take it over."""
    store = StateStore.in_directory(tmp_path)
    other = StateStore.in_directory(tmp_path)
    try:
        with hold(store, "long", "long-run", timedelta(seconds=1.5)) as lease:
            time.sleep(3)  # twice the lease
            with pytest.raises(LockBusy, match="already running"):
                with hold(other, "long", "intruder", timedelta(seconds=1.5)):
                    pass
            lease.fence()  # still ours
    finally:
        store.close()
        other.close()
