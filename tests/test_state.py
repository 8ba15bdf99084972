"""Run ledger and activation locks, on the default SQLite file and on a shared PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl.errors import LockBusy, StateError
from etl.runtime.leases import hold
from etl.runtime.ledger import StateStore, leases, utcnow


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    from dbservers import postgres_url

    url = postgres_url()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # each test starts from an empty ledger
        conn.execute(sa.text("DROP TABLE IF EXISTS runs, leases"))
    engine.dispose()
    return url


def test_a_run_is_recorded_from_start_to_finish(store_url: str) -> None:
    store = StateStore(store_url)
    started = utcnow()
    store.start_run("r1", "vip", "audience", dry_run=False, started_at=started)
    assert store.get_run("r1").status == "running"
    store.finish_run("r1", "succeeded", rows_extracted=10, rows_delivered=8, details={"files": ["a.csv"]})
    record = store.get_run("r1")
    assert (record.status, record.rows_extracted, record.rows_delivered) == ("succeeded", 10, 8)
    assert record.details == {"files": ["a.csv"]}
    assert store.last_success("vip").run_id == "r1"
    store.close()


def test_a_second_process_cannot_take_a_held_lock(store_url: str) -> None:
    first, second = StateStore(store_url), StateStore(store_url)
    with hold(first, "vip", "r1", timedelta(minutes=5)):
        with pytest.raises(LockBusy, match="already running"):
            with hold(second, "vip", "r2", timedelta(minutes=5)):
                pass
        with hold(second, "other", "r3", timedelta(minutes=5)):
            pass  # other activations are not blocked
    with hold(second, "vip", "r4", timedelta(minutes=5)) as lease:
        assert lease.token == 2  # released at the end of the first block; the token grew
    first.close()
    second.close()


def test_an_expired_lease_of_a_crashed_holder_is_taken_over(store_url: str) -> None:
    store = StateStore(store_url)
    with store.engine.begin() as conn:
        conn.execute(leases.insert().values(activation="vip", token=7, owner="dead-host:1:1", run_id="old",
                                            acquired_at=utcnow(), expires_at=utcnow() - timedelta(seconds=1)))
    with hold(store, "vip", "new", timedelta(minutes=5)) as lease:
        assert (lease.owner != "dead-host:1:1", lease.token) == (True, 8)
    store.close()


def test_an_unreachable_state_store_is_a_clear_error() -> None:
    with pytest.raises(StateError, match="cannot open the state store") as caught:
        StateStore("postgresql+psycopg://user:pw-secret@127.0.0.1:1/nothing")
    assert "pw-secret" not in caught.value.message()
