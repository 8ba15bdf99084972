"""Actito's limits are per licence: 5 calls in flight, 100 a minute, whatever runs them.

Attacks, against real processes and the real sandbox over sockets: sixteen import activations of one
licence due at the same minute under `audience-sync schedule`, then the same split between two
scheduler processes sharing a ledger (PostgreSQL, or the SQLite file of one state_dir). The sandbox
counts, per licence, the peak of requests in flight (an attempt it refused included), its 429s and
its token requests. Before licence-wide limits every run had its own client: peak 6 (the 6th
refused), ~50 429s and one token per run. Then the ledger's slot leases themselves: taken, waited
for, expired on the database's clock, renewed, and a clear error when they stay taken.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from dbservers import postgres_url
from concurrent.futures import ThreadPoolExecutor

from etl.destinations.actito.connect import open_client
from etl.config import load_config
from etl.errors import LicenceBusy
from etl.destinations.licence import LedgerSlots, Licence, licence_name, licence_slots
from etl.destinations.openfield import connect as openfield
from etl.runtime.ledger import StateStore, database_now
from etl.testing.actito.server import ActitoSandbox
from etl.testing.openfield_sandbox import DEMO_APPLICATION, DEMO_PASSWORD, DEMO_TENANT, OpenFieldSandbox
from test_scheduler_replicas import shared_ledger  # noqa: F401  (a fixture: a fresh PostgreSQL schema)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from licence_limits import KEY_VARIABLE, SANDBOX_KEY, Case, run_case, write_project  # noqa: E402

#: long enough that the runs' calls overlap as they would against a real Actito
LATENCY = 0.3


@pytest.fixture
def sandbox() -> Iterator[ActitoSandbox]:
    with ActitoSandbox(latency_seconds=LATENCY, processing_seconds=0.05) as server:
        yield server


def assert_within_the_licence(case: Case, activations: int, tokens: int) -> None:
    assert case.statuses == {"succeeded": activations}, case.errors
    assert case.peak_in_flight <= 5, case
    assert case.refused == 0, case
    assert case.tokens == tokens, case  # one token per process, shared by all its runs


# --------------------------------------------------------------------------- attacks: whole processes


def test_sixteen_imports_of_one_licence_under_the_scheduler_stay_within_its_limits(
    tmp_path: Path, sandbox: ActitoSandbox
) -> None:
    case = run_case(tmp_path, sandbox, 16)
    assert_within_the_licence(case, 16, tokens=1)
    assert case.peak_in_flight == 5  # all of the licence is used: no slower than the limit needs


@pytest.mark.postgres
def test_two_schedulers_on_a_shared_postgresql_ledger_stay_within_the_licence_together(
    tmp_path: Path, sandbox: ActitoSandbox, shared_ledger: str  # noqa: F811
) -> None:
    case = run_case(tmp_path, sandbox, 16, replicas=2, state_url=shared_ledger)
    assert_within_the_licence(case, 16, tokens=2)
    engine = sa.create_engine(shared_ledger)
    with engine.connect() as conn:  # every slot was given back
        assert conn.execute(sa.select(sa.func.count()).select_from(licence_slots)).scalar_one() == 0
    engine.dispose()


def test_two_schedulers_sharing_one_state_dir_stay_within_the_licence_together(
    tmp_path: Path, sandbox: ActitoSandbox
) -> None:
    assert_within_the_licence(run_case(tmp_path, sandbox, 16, replicas=2), 16, tokens=2)


# --------------------------------------------------------------------------- one process


def test_the_runs_of_a_process_share_one_licence_and_closing_one_client_spares_the_others(
    tmp_path: Path, sandbox: ActitoSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, SANDBOX_KEY)
    config = load_config(write_project(tmp_path, sandbox.url, range(2)))
    first, second = open_client(config, "d"), open_client(config, "d")
    assert first._licence is second._licence
    assert first._licence.name == licence_name("Actito", sandbox.url, "demo")
    first.entities()
    first.close()
    assert second.profile_table("customers").id == "customers"  # the same token, its own connections
    second.close()
    assert sandbox.limits()["demo"]["tokens"] == 1
    served = requests.get(f"{sandbox.url}/_sandbox/limits", timeout=5).json()["licences"]
    assert served == sandbox.limits() and served["demo"]["entities"] == ["demo"]
    assert requests.post(f"{sandbox.url}/_sandbox/limits/reset", timeout=5).status_code == 204
    assert sandbox.limits() == {}


def test_two_runs_on_one_openfield_tenant_share_its_max_concurrency(tmp_path: Path) -> None:
    with OpenFieldSandbox(latency_seconds=0.1) as sandbox:
        path = tmp_path / "schedules.toml"
        path.write_text(f"""
[settings]
state_dir = "state"
[destinations.of]
type = "openfield"
url = "{sandbox.url}"
tenant_id = "{DEMO_TENANT}"
application_id = "{DEMO_APPLICATION}"
password = "${{OF_PASSWORD}}"
calls_per_minute = 10000
[warehouses.w]
url = "sqlite:///warehouse.db"
[activations.people]
kind = "profiles"
sql = "people.sql"
destination = "of"
""", encoding="utf-8")
        (tmp_path / "people.sql").write_text("SELECT 'a@example.com' AS Email", encoding="utf-8")
        config = load_config(path, environ={"OF_PASSWORD": DEMO_PASSWORD})
        clients = [openfield.open_client(config, "of") for _ in range(2)]
        with ThreadPoolExecutor(16) as pool:  # each run with as many workers as it may have in flight, and more
            list(pool.map(lambda i: clients[i % 2].find(f"user{i}@example.com"), range(48)))
        for client in clients:
            client.close()
        assert sandbox.peak_in_flight == 4  # the tenant's max_concurrency, not 4 per run


# --------------------------------------------------------------------------- the ledger's slot leases


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        store = StateStore.in_directory(tmp_path / "state")
        yield store.engine
        store.close()
        return
    url = request.getfixturevalue("shared_ledger")
    store = StateStore(url)
    yield store.engine
    store.close()


_made: list[LedgerSlots] = []


def slots(engine: sa.Engine, size: int = 2, **options: float) -> LedgerSlots:
    made = LedgerSlots(engine, "actito:test/demo", size, **{"lease": 60.0, "wait_seconds": 0.5, **options})
    _made.append(made)
    return made


@pytest.fixture(autouse=True)
def _slots_given_back() -> Iterator[None]:
    """Leases a test kept on purpose are given back after it, so no renewer thread outlives its ledger."""
    yield
    while _made:
        made = _made.pop()
        for lease in list(made._held):
            made.release(lease)


def test_slots_run_out_then_wait_then_fail_clearly(ledger: sa.Engine) -> None:
    ours, theirs = slots(ledger), slots(ledger)  # two processes' views of the licence
    held = [ours.acquire(), ours.acquire()]
    assert sorted(lease.slot for lease in held) == [0, 1]
    began = time.monotonic()
    with pytest.raises(LicenceBusy) as busy:
        theirs.acquire()
    assert time.monotonic() - began >= 0.5
    assert busy.value.where == "actito:test/demo"
    assert "all 2 request slots" in busy.value.what and "licence_slots" in busy.value.hint

    freed = threading.Timer(0.2, ours.release, args=(held[0],))
    freed.start()
    taken = slots(ledger, wait_seconds=5).acquire()  # waits, with short sleeps, for the slot given back
    freed.join()
    assert taken.slot == held[0].slot


def test_an_expired_slot_is_taken_over_on_the_databases_clock(ledger: sa.Engine) -> None:
    with ledger.begin() as conn:
        now = database_now(conn)
        conn.execute(licence_slots.insert(), [
            {"licence": "actito:test/demo", "slot": 0, "owner": "elsewhere:1:a", "acquired_at": now,
             "expires_at": now - timedelta(seconds=1)},  # its holder stopped renewing it
            {"licence": "actito:test/demo", "slot": 1, "owner": "elsewhere:1:b", "acquired_at": now,
             "expires_at": now + timedelta(minutes=5)},  # live
        ])
    taken = slots(ledger).acquire()
    assert taken.slot == 0
    with pytest.raises(LicenceBusy):
        slots(ledger).acquire()


def test_a_held_slot_is_renewed_while_its_request_runs(ledger: sa.Engine) -> None:
    ours = slots(ledger, size=1, lease=0.8)  # renewed every 0.2 s
    with ours.held():
        time.sleep(1.5)  # longer than the lease: a request (an upload) outlasting it
        with pytest.raises(LicenceBusy):
            slots(ledger, size=1).acquire()
    assert slots(ledger, size=1).acquire().slot == 0  # given back at the end


def test_a_licence_holds_its_process_place_then_a_ledger_slot(ledger: sa.Engine) -> None:
    licence = Licence(service="Actito", name="actito:test/demo", max_in_flight=3, calls_per_minute=1000,
                      ledger=slots(ledger, size=3))
    outside = slots(ledger, size=3)
    with licence.slot(), licence.slot():
        with ledger.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(licence_slots)).scalar_one() == 2
        outside.acquire()  # the third is free for another process
        with pytest.raises(LicenceBusy):
            outside.acquire()


def test_a_ledger_failing_at_release_does_not_fail_the_answered_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore.in_directory(tmp_path / "state")
    ours = slots(store.engine)
    lease = ours.acquire()
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE licence_slots"))  # the ledger breaks while the request runs
    ours.release(lease)
    assert "licence slot not given back, it will expire" in caplog.text
    store.close()


def test_a_thread_keeps_its_ledger_slot_between_requests_and_gives_it_back_once_idle(ledger: sa.Engine) -> None:
    """Two ledger writes per request made 4,000 OpenField requests 15 s slower on SQLite: a thread keeps
    its slot for its next request, and an idle slot goes back within a fraction of a second."""
    from etl.destinations.licence import ParkedSlots

    name = f"actito:test/{uuid.uuid4().hex[:8]}"  # its own licence: other tests' slots stay out of sight
    parked = ParkedSlots(LedgerSlots(ledger, name, 2, lease=60.0, wait_seconds=0.5), idle_seconds=0.2)

    def rows() -> list[tuple[int, str]]:
        with ledger.connect() as conn:
            return sorted((r.slot, r.owner) for r in conn.execute(
                sa.select(licence_slots).where(licence_slots.c.licence == name)))

    with parked.held() as first:
        pass
    with parked.held() as again:  # the same thread, at once: the same slot, no new row
        assert again == first
        assert rows() == [(first.slot, first.owner)]
    entered, leave, seen = threading.Event(), threading.Event(), []

    def another_thread() -> None:
        with parked.held() as lease:
            seen.append(lease)
            entered.set()
            leave.wait(10)

    worker = threading.Thread(target=another_thread)
    worker.start()
    assert entered.wait(10)
    assert seen[0] == first and len(rows()) == 1  # another thread of the process takes the parked slot
    with parked.held() as second:  # while it is busy, this thread needs one of its own
        assert second != first and len(rows()) == 2
    time.sleep(0.4)
    assert rows() == [(first.slot, first.owner)]  # the idle one was given back; the busy one is kept
    leave.set()
    worker.join()
    time.sleep(0.4)
    assert rows() == []
