"""Two scheduler replicas on one shared PostgreSQL ledger: each slot runs exactly once.

Two real scheduler processes run concurrently on the same configuration (a ``* * * * *`` cron) and
the same state store, in a schema of their own. Both fire every slot: the one started within the
current minute at start-up (the catch-up of a slot within the misfire grace), then the next minute
boundary, where both fire within milliseconds of each other. The ledger must hold one claim and one
run per slot, and each replica must have logged its decision for the same slots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbservers import postgres_url
from etl.runtime.ledger import StateStore

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parent.parent
GENERATOR_SQL = """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
SELECT 'user' || i || '@example.com' AS email FROM n
"""
DRIVER = """
import logging, sys
from pathlib import Path
from etl.logs import configure_logging
from etl.runtime.scheduler import main
from jobs import job_for
configure_logging("json", logging.INFO)
sys.exit(main(Path(sys.argv[1]), job_for, preview=False))
"""
#: start the replicas only this early in a minute, so the start-up slot and the runs are over
#: long before the next boundary (a run still going then would make the other replica's next slot "locked")
LATEST_START_SECOND = 45


@pytest.fixture
def shared_ledger() -> Iterator[str]:
    """A state_url whose tables live in a fresh schema (other tests drop tables in ``public``)."""
    base = postgres_url()
    schema = f"sched_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def write_config(root: Path, state_url: str) -> Path:
    (root / "warehouse.db").touch()
    (root / "sql").mkdir()
    (root / "sql" / "gen.sql").write_text(GENERATOR_SQL, encoding="utf-8")
    path = root / "schedules.toml"
    path.write_text(f"""
[settings]
state_dir = "state"
state_url = "{state_url}"

[warehouses.w]
url = "sqlite:///warehouse.db"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {{ type = "local", path = "outbox" }}

[activations.minutely]
sql = "sql/gen.sql"
destination = "d"
identifier = "email"
params = {{ rows = 1000 }}
schedule = {{ cron = "* * * * *", timezone = "Europe/Brussels" }}
""", encoding="utf-8")
    return path


def decisions(log_path: Path) -> dict[str, str]:
    """slot -> "claimed" or "already claimed", from one replica's JSON log lines."""
    found: dict[str, str] = {}
    for line in log_path.read_text().splitlines():
        try:
            event: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            continue
        message, slot = str(event.get("message", "")), event.get("slot")
        if slot and message.endswith("already claimed: nothing to do"):
            found[slot] = "already claimed"
        elif slot and message.endswith("claimed: running"):
            found[slot] = "claimed"
    return found


def test_two_replicas_run_each_slot_exactly_once(tmp_path: Path, shared_ledger: str) -> None:
    config = write_config(tmp_path, shared_ledger)
    second = datetime.now().second
    if second > LATEST_START_SECOND:  # bounded: at most ~15 s
        time.sleep(61 - second)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    logs = [tmp_path / f"replica{i}.log" for i in (1, 2)]
    handles = [path.open("w") for path in logs]
    replicas = [
        subprocess.Popen([sys.executable, "-c", DRIVER, str(config)], cwd=tmp_path, stdout=h, stderr=h, env=env)
        for h in handles
    ]
    try:
        deadline = time.monotonic() + 75  # the next minute boundary is at most ~60 s away
        common: set[str] = set()
        while time.monotonic() < deadline and len(common) < 2:
            assert all(p.poll() is None for p in replicas), [path.read_text() for path in logs]
            seen = [decisions(path) for path in logs]
            common = set(seen[0]) & set(seen[1])
            time.sleep(0.2)
        assert len(common) >= 2, f"both replicas fired only {sorted(common)}"
        time.sleep(1)  # let the winner's run of the last slot finish before stopping

        for process in replicas:
            process.send_signal(signal.SIGTERM)
        for process in replicas:
            assert process.wait(timeout=15) == 0
    finally:
        for process in replicas:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for handle in handles:
            handle.close()

    seen = [decisions(path) for path in logs]
    for slot in common:  # both really fired it; exactly one of them ran it
        assert sorted([seen[0][slot], seen[1][slot]]) == ["already claimed", "claimed"], slot

    store = StateStore(shared_ledger)
    try:
        with store.engine.connect() as conn:
            claims = conn.execute(sa.text("SELECT slot, claimed_by FROM slots WHERE activation = 'minutely'")).all()
        runs = store.runs("minutely", limit=100)
    finally:
        store.close()
    claimed = {slot for slot, _ in claims}
    assert common <= claimed
    assert len(claims) == len(claimed)  # one claim per slot (the primary key)
    assert len(runs) == len(claimed), (claims, runs)  # one run per slot, none skipped, none doubled
    assert {run.status for run in runs} == {"succeeded"}
    claimers = {claimed_by.split(":")[1] for _, claimed_by in claims}
    assert claimers <= {str(p.pid) for p in replicas}
