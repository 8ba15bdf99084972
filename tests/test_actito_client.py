"""The Actito client against the project's Actito sandbox, over real sockets.

No HTTP mocking: the sandbox is a real server on loopback that answers as docs/actito-wire.md
says Actito does, with faults, a clock and limits tests can steer, so the client's real stack
(connection pool, timeouts, streamed multipart bodies, its own retries) is what gets exercised.
Every test starts its own sandbox, so its ``request_log`` shows exactly what the client sent.
Waiting is real except where a test needs to see the delays the client chose (an injected
``sleep`` records them) or where the wait would be long (a fake clock).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest

from etl.destinations.actito.client import MAX_UPLOAD_BYTES, ActitoClient
from etl.destinations.actito.tables import Attribute, LineError
from etl.errors import (
    ActitoAuthError,
    ActitoBudgetExhausted,
    ActitoError,
    ActitoImportError,
    ActitoNotFound,
    ActitoRateLimited,
)
from etl.testing.actito.server import ActitoSandbox
from etl.testing.actito.state import DEFAULT_FIXTURE

KEY = "sandbox-demo-key"
ENTITY = "demo"
EXECUTIONS = "/mass-imports/v5/entities/demo/etl-executions"


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture
def sandboxes() -> Iterator[Callable[..., ActitoSandbox]]:
    """Start sandboxes with the given options; all are stopped at the end of the test."""
    started: list[ActitoSandbox] = []

    def start(**options: Any) -> ActitoSandbox:
        options.setdefault("processing_seconds", 0.05)
        sandbox = ActitoSandbox(**options)
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(sandboxes: Callable[..., ActitoSandbox]) -> ActitoSandbox:
    return sandboxes()


class Clock:
    """A fake monotonic clock whose ``sleep`` records the delay and moves time on, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_for(sandbox: ActitoSandbox, **options: Any) -> ActitoClient:
    """A client with short backoffs, so retries happen for real but quickly."""
    options.setdefault("entity", ENTITY)
    options.setdefault("api_key", KEY)
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("connect_timeout", 2)
    options.setdefault("read_timeout", 10)
    return ActitoClient(base_url=sandbox.url, **options)


def recording_sleep() -> tuple[list[float], Callable[[float], None]]:
    """A sleep that records what the client asked for and returns at once."""
    sleeps: list[float] = []
    return sleeps, sleeps.append


def definition(reference: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reference": reference,
        "target": {"type": "PROFILE_TABLE", "id": "customers"},
        "mode": "CREATE_UPDATE",
        "keyColumn": "emailAddress",
        "format": {"separator": ",", "encoding": "UTF-8", "compression": "NONE"},
        "emptyValues": "KEEP",
        "attributes": [
            {"column": "emailAddress", "attribute": "emailAddress"},
            {"column": "firstName", "attribute": "firstName"},
        ],
    }
    body.update(overrides)
    return body


def csv_file(tmp_path: Path, text: str = "emailAddress,firstName\nann@example.com,Ann\n", name: str = "p.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def calls(sandbox: ActitoSandbox, method: str, path: str) -> list[tuple[str, str, int]]:
    return [entry for entry in sandbox.request_log if entry[0] == method and entry[1].startswith(path)]


def statuses(sandbox: ActitoSandbox) -> list[int]:
    return [status for _, _, status in sandbox.request_log]


def logged(sandbox: ActitoSandbox, path: str, count: int) -> list[int]:
    """Statuses of the requests to ``path``, once ``count`` are logged: a withheld ("timeout") answer
    is logged only when the sandbox gives up on it, after the client has moved on."""
    deadline = time.monotonic() + 10
    while True:
        found = [status for _, logged_path, status in sandbox.request_log if logged_path == path]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------- discovery


def test_discovery_reads_entities_and_both_kinds_of_tables(sandbox: ActitoSandbox) -> None:
    with client_for(sandbox) as client:
        assert [e["name"] for e in client.entities()] == ["demo"]

        tables = client.profile_tables()
        assert "customers" in [t.id for t in tables]
        customers = client.profile_table("customers")
        assert customers in tables
        assert customers.kind == "profile"
        assert {"Newsletter", "Partners", "Promotions"} <= set(customers.subscriptions)
        assert customers.attribute("emailAddress") == Attribute("emailAddress", "EMAIL_ADDRESS", None, True, True, None)
        assert customers.attribute("firstName") == Attribute("firstName", "FIRSTNAME", None, False, False, 64)
        customer_id = customers.attribute("customerId")
        assert customer_id is not None and customer_id.value_type == "INTEGER" and customer_id.unique

        participations = client.custom_table("participations")
        assert participations.kind == "custom"
        assert participations.custom_type == "INTERACTIONS"
        assert participations.primary_key == "participationId"
        assert participations.foreign_keys[0]["profileTable"] == "customers"
        assert "participations" in [t.id for t in client.custom_tables()]
    # one token for the whole session, and the header Actito insists on (the sandbox 406s without it)
    assert len(calls(sandbox, "GET", "/auth/token")) == 1
    assert 406 not in statuses(sandbox)


def test_a_table_is_found_by_its_name_and_an_unknown_one_lists_the_known(sandbox: ActitoSandbox) -> None:
    with client_for(sandbox) as client:
        assert client.profile_table("Customers").id == "customers"
        assert client.custom_table("participations").name == "Participations"
        with pytest.raises(ActitoNotFound) as caught:
            client.profile_table("prospects")
    error = caught.value
    assert error.status == 404
    assert "customers (Customers)" in error.what
    assert error.where == "Actito GET /profile-table-structure/v5/entities/{entity}/profile-tables/{tableId}"


def test_an_unknown_entity_is_not_found_with_actitos_message(sandbox: ActitoSandbox) -> None:
    with client_for(sandbox, entity="nowhere") as client, pytest.raises(ActitoNotFound) as caught:
        client.profile_tables()
    assert "entity 'nowhere' not found" in caught.value.actito_message
    assert "entity 'nowhere' not found" in str(caught.value)


def test_environment_names_resolve_to_actito_hosts() -> None:
    assert ActitoClient(base_url="ENV-3", entity="x", api_key="k-123").base_url == "https://api3.actito.com"
    assert ActitoClient(base_url="https://proxy.example/", entity="x", api_key="k-123").base_url == "https://proxy.example"
    with pytest.raises(ValueError):
        ActitoClient(base_url="sandbox", entity="x", api_key="k-123")  # its URL is only known once it runs


# ---------------------------------------------------------------------------------------- token


def test_an_expired_token_is_renewed_transparently(sandbox: ActitoSandbox) -> None:
    with client_for(sandbox) as client:
        client.entities()
        sandbox.advance_clock(901)  # Actito's clock: our cached token is now expired there
        assert "customers" in [t.id for t in client.profile_tables()]
        client.custom_tables()
    assert len(calls(sandbox, "GET", "/auth/token")) == 2  # exactly one extra
    assert statuses(sandbox).count(401) == 1  # one refused call, renewed and repeated once


def test_the_token_is_renewed_ahead_of_its_expiry(sandbox: ActitoSandbox) -> None:
    clock = Clock()
    with client_for(sandbox, monotonic=clock.monotonic, sleep=clock.sleep) as client:
        client.entities()
        clock.now += 850  # 50 s of the token's 900 left on our side: under the 60 s margin
        sandbox.advance_clock(850)  # still valid on Actito's side
        client.entities()
        clock.now += 10
        client.entities()
    assert len(calls(sandbox, "GET", "/auth/token")) == 2
    assert 401 not in statuses(sandbox)


def test_one_token_for_many_threads(sandbox: ActitoSandbox) -> None:
    with client_for(sandbox) as client, ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda _: client.entities(), range(12)))
    assert len(calls(sandbox, "GET", "/auth/token")) == 1


def test_a_revoked_key_is_one_clear_auth_error_without_the_key(
    sandboxes: Callable[..., ActitoSandbox], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "secret-key-7f3a9c1e5b"
    fixture = json.loads(DEFAULT_FIXTURE.read_text(encoding="utf-8"))
    fixture["licences"][0]["apiKeys"] = [secret]
    sandbox = sandboxes(fixture=fixture)
    caplog.set_level(logging.DEBUG)
    with client_for(sandbox, api_key=secret) as client:
        client.entities()
        sandbox.revoke(secret)
        before = len(sandbox.request_log)
        with pytest.raises(ActitoAuthError) as caught:
            client.profile_tables()
    error = caught.value
    # the call was refused, the token renewed once, the key refused: no further retries
    assert [(m, s) for m, _, s in sandbox.request_log[before:]] == [("GET", 401), ("GET", 401)]
    assert error.status == 401
    assert "revoked" in error.actito_message
    assert "API key" in error.hint
    everything = "\n".join(
        [str(error), repr(error), error.what, error.where, error.hint, error.actito_message, *map(str, error.args)]
        + traceback.format_exception(error)
        + [caplog.text]
    )
    assert secret not in everything


def test_a_bad_key_is_an_auth_error_at_the_first_call(sandbox: ActitoSandbox) -> None:
    with client_for(sandbox, api_key="not-a-valid-key-123") as client, pytest.raises(ActitoAuthError) as caught:
        client.entities()
    assert "not-a-valid-key-123" not in str(caught.value)
    assert "invalid or revoked API key" in str(caught.value)
    assert sandbox.request_log == [("GET", "/auth/token", 401)]


# ---------------------------------------------------------------------------------------- retries of safe calls


def test_a_429_storm_ends_in_success_honouring_retry_after(sandbox: ActitoSandbox) -> None:
    sleeps, sleep = recording_sleep()
    sandbox.inject_faults(429, 5, "profile-tables", retry_after=2)
    with client_for(sandbox, sleep=sleep) as client:
        assert "customers" in [t.id for t in client.profile_tables()]
    assert statuses(sandbox).count(429) == 5
    assert sleeps == [2.0] * 5  # Actito's Retry-After, not our own backoff


def test_retry_after_is_capped(sandbox: ActitoSandbox) -> None:
    sleeps, sleep = recording_sleep()
    sandbox.inject_faults(429, 2, "profile-tables", retry_after=3600)
    with client_for(sandbox, sleep=sleep, retry_after_max=7) as client:
        client.profile_tables()
    assert sleeps == [7.0, 7.0]


def test_backoff_without_retry_after_is_exponential_with_full_jitter(sandbox: ActitoSandbox) -> None:
    sleeps, sleep = recording_sleep()
    sandbox.inject_faults(503, 5, "profile-tables")
    with client_for(sandbox, sleep=sleep, backoff_base=1, backoff_max=4) as client:
        client.profile_tables()
    caps = [1, 2, 4, 4, 4]
    assert len(sleeps) == 5 and all(0 <= s <= cap for s, cap in zip(sleeps, caps))


def test_500s_end_in_success_for_gets(sandbox: ActitoSandbox) -> None:
    sandbox.inject_faults(500, 3, "custom-tables")
    with client_for(sandbox) as client:
        assert client.custom_table("participations").primary_key == "participationId"
    assert [s for m, p, s in sandbox.request_log if "custom-tables" in p] == [500, 500, 500, 200]


def test_a_lost_answer_to_a_get_is_retried(sandboxes: Callable[..., ActitoSandbox]) -> None:
    sandbox = sandboxes(fault_delay_seconds=0.8)
    sandbox.inject_faults("timeout", 1, "/entities/v5")
    sandbox.inject_faults("disconnect", 1, "/entities/v5")
    with client_for(sandbox, read_timeout=0.3) as client:
        assert client.entities()[0]["name"] == "demo"
    assert logged(sandbox, "/entities/v5/entities", 3) == [0, 200, 0]  # the timeout's is logged last


def test_a_429_that_never_stops_is_rate_limited_after_max_attempts(sandbox: ActitoSandbox) -> None:
    sandbox.inject_faults(429, 100, "profile-tables")
    with client_for(sandbox, max_attempts=3) as client, pytest.raises(ActitoRateLimited) as caught:
        client.profile_tables()
    assert statuses(sandbox).count(429) == 3
    assert caught.value.status == 429
    assert caught.value.actito_message == "injected fault: HTTP 429"
    assert caught.value.where == "Actito GET /profile-table-structure/v5/entities/{entity}/profile-tables"
    assert "after 3 attempts" in caught.value.what


def test_an_unreachable_host_is_a_clear_error(sandboxes: Callable[..., ActitoSandbox]) -> None:
    sandbox = sandboxes()
    sandbox.stop()  # nothing listens on its port any more
    with client_for(sandbox, max_attempts=2) as client, pytest.raises(ActitoError) as caught:
        client.entities()
    assert caught.value.status is None
    assert "no answer from Actito" in caught.value.what and "after 2 attempts" in caught.value.what


# ---------------------------------------------------------------------------------------- limits


def test_the_clients_limit_keeps_a_burst_of_20_threads_from_any_429(sandboxes: Callable[..., ActitoSandbox]) -> None:
    """The first 5 requests hold their slot in the sandbox for 0.3 s ("timeout" faults: answered
    late, then retried), so the burst really overlaps: with the client's limit above Actito's 5 the
    sandbox refuses the others, with the default 4 it refuses none and never sees more than 4 at once."""

    def burst(**options: Any) -> tuple[ActitoSandbox, int]:
        sandbox = sandboxes(fault_delay_seconds=0.3)
        sandbox.inject_faults("timeout", 5, "profile-tables")
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, sandbox.in_flight)
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with client_for(sandbox, **options) as client, ThreadPoolExecutor(20) as pool:
                results = list(pool.map(lambda _: client.profile_tables(), range(20)))
        finally:
            done.set()
            watcher.join()
        assert all("customers" in [t.id for t in r] for r in results)
        return sandbox, peak

    # backoffs long enough to outlast the held slots, and no pacing in the way of its many retries
    greedy, greedy_peak = burst(max_concurrency=10, backoff_base=0.1, backoff_max=0.4, max_attempts=10,
                                calls_per_minute=10_000)
    assert 429 in statuses(greedy) and greedy_peak == 5  # the sandbox does enforce Actito's limit

    polite, polite_peak = burst()
    assert 429 not in statuses(polite)
    assert polite_peak == 5  # all of Actito's 5, never a 6th
    assert len(calls(polite, "GET", "/auth/token")) == 1


def test_calls_are_paced_under_the_per_minute_limit(sandbox: ActitoSandbox) -> None:
    clock = Clock()
    with client_for(sandbox, calls_per_minute=3, monotonic=clock.monotonic, sleep=clock.sleep) as client:
        client.entities()  # the token and this call
        client.profile_tables()
        assert clock.sleeps == []
        client.custom_tables()  # the 4th call within a minute waits for the 1st to leave the window
    assert clock.sleeps == [60.0]
    assert len(sandbox.request_log) == 4


# ---------------------------------------------------------------------------------------- imports


def test_an_import_is_created_polled_and_succeeds(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    with client_for(sandbox) as client:
        started = client.start_import(definition("run-1-part-1"), csv_file(tmp_path))
        assert started.reference == "run-1-part-1" and started.status == "PENDING"
        final = client.wait_for(started.id, poll_initial=0.02)
        assert final.status == "SUCCESS" and final.counts["created"] == 1
        assert client.report(final.id) == []
    assert [p["attributes"]["emailAddress"] for p in sandbox.profiles(ENTITY, "customers")] == ["ann@example.com"]


def test_a_500_on_the_import_post_does_not_create_a_duplicate(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    # the POST answers 500, and so do the first two look-ups of the reference (retried as GETs)
    sandbox.inject_faults(500, 3, "etl-executions")
    with client_for(sandbox) as client:
        started = client.start_import(definition("run-500"), csv_file(tmp_path))
        assert client.wait_for(started.id, poll_initial=0.02).status == "SUCCESS"
    assert [s for m, p, s in calls(sandbox, "POST", EXECUTIONS)] == [500, 201]
    assert [s for m, p, s in calls(sandbox, "GET", EXECUTIONS + "?reference=run-500")] == [500, 500, 200]
    assert len(sandbox.executions(ENTITY)) == 1


@pytest.mark.parametrize("fault", ["timeout", "disconnect"])
def test_an_unanswered_import_post_is_found_by_its_reference(
    sandboxes: Callable[..., ActitoSandbox], tmp_path: Path, fault: Literal["timeout", "disconnect"]
) -> None:
    sandbox = sandboxes(fault_delay_seconds=0.8)
    sandbox.inject_faults(fault, 1, EXECUTIONS)  # processed (the import exists), answer withheld
    with client_for(sandbox, read_timeout=0.3) as client:
        started = client.start_import(definition(f"run-{fault}"), csv_file(tmp_path))
        assert started.reference == f"run-{fault}"
        assert client.wait_for(started.id, poll_initial=0.02).status == "SUCCESS"
    assert logged(sandbox, EXECUTIONS, 1) == [0]  # sent once, never again
    executions = sandbox.executions(ENTITY)
    assert len(executions) == 1 and executions[0]["id"] == started.id


def test_an_import_whose_connection_never_opened_is_sent_again_without_a_lookup(
    sandboxes: Callable[..., ActitoSandbox], tmp_path: Path
) -> None:
    first = sandboxes()
    port = int(first.url.rsplit(":", 1)[1])
    second: list[ActitoSandbox] = []

    def sleep(seconds: float) -> None:  # Actito comes back while the client backs off
        if not second:
            second.append(sandboxes(port=port))

    with client_for(first, sleep=sleep) as client:
        client.entities()  # a token, and a pooled connection that is about to die
        first.stop()
        started = client.start_import(definition("run-refused"), csv_file(tmp_path))
    back = second[0]
    # refused connection: nothing was sent, so no look-up; the new server wants a new token
    assert [(m, s) for m, _, s in back.request_log] == [("POST", 401), ("GET", 200), ("POST", 201)]
    assert [e["id"] for e in back.executions(ENTITY)] == [started.id]


def test_a_429_on_the_import_post_is_sent_again_after_backoff(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    sleeps, sleep = recording_sleep()
    sandbox.inject_faults(429, 2, EXECUTIONS, retry_after=1)
    with client_for(sandbox, sleep=sleep) as client:
        client.start_import(definition("run-429"), csv_file(tmp_path))
    assert [s for m, p, s in calls(sandbox, "POST", EXECUTIONS)] == [429, 429, 201]
    assert calls(sandbox, "GET", EXECUTIONS) == []  # a 429 is a refusal: no look-up needed
    assert sleeps == [1.0, 1.0]
    assert len(sandbox.executions(ENTITY)) == 1


def test_an_import_with_an_expired_token_is_sent_again_once_renewed(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    with client_for(sandbox) as client:
        client.entities()
        sandbox.advance_clock(1000)
        client.start_import(definition("run-401"), csv_file(tmp_path))
    assert [s for m, p, s in calls(sandbox, "POST", EXECUTIONS)] == [401, 201]
    assert len(sandbox.executions(ENTITY)) == 1


def test_the_daily_budget_is_not_retried(sandboxes: Callable[..., ActitoSandbox], tmp_path: Path) -> None:
    sandbox = sandboxes(daily_imports_per_table=1)
    sleeps, sleep = recording_sleep()
    with client_for(sandbox, sleep=sleep) as client:
        client.start_import(definition("run-a"), csv_file(tmp_path))
        with pytest.raises(ActitoBudgetExhausted) as caught:
            client.start_import(definition("run-b"), csv_file(tmp_path))
    assert [s for m, p, s in calls(sandbox, "POST", EXECUTIONS)] == [201, 429]
    assert sleeps == []
    assert caught.value.status == 429
    assert "daily import limit reached for table customers" in caught.value.actito_message
    assert "daily import quota" in caught.value.hint


def test_an_invalid_definition_is_refused_once_with_actitos_reasons(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    with client_for(sandbox) as client, pytest.raises(ActitoError) as caught:
        client.start_import(definition("run-bad", mode="MERGE"), csv_file(tmp_path))
    assert caught.value.status == 400
    assert "mode: must be one of" in caught.value.actito_message
    assert len(calls(sandbox, "POST", EXECUTIONS)) == 1


def test_an_oversized_file_is_refused_before_uploading(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk used
    with client_for(sandbox) as client, pytest.raises(ActitoError) as caught:
        client.start_import(definition("run-big"), big)
    assert "over 100 MB" in caught.value.what
    assert calls(sandbox, "POST", EXECUTIONS) == []


def test_a_file_over_actitos_limit_is_actitos_400(sandboxes: Callable[..., ActitoSandbox], tmp_path: Path) -> None:
    sandbox = sandboxes(max_file_bytes=1000)
    rows = "".join(f"p{i}@example.com,Name{i}\n" for i in range(100))
    with client_for(sandbox) as client, pytest.raises(ActitoError) as caught:
        client.start_import(definition("run-400"), csv_file(tmp_path, "emailAddress,firstName\n" + rows))
    assert caught.value.status == 400 and "over the limit" in caught.value.actito_message
    assert sandbox.executions(ENTITY) == []


def test_a_recurring_etl_is_triggered_with_the_file_alone(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv.gz"
    path.write_bytes(gzip.compress(b"emailAddress,firstName,subscription_Newsletter\nbob@example.com,Bob,Y\n"))
    with client_for(sandbox) as client:
        started = client.start_import({}, path, etl_id="customers-upsert", upload_name="people.run-etl-1.csv.gz")
        assert client.wait_for(started.id, poll_initial=0.02).status == "SUCCESS"
        found = client.find_execution("run-etl-1", ["people.run-etl-1.csv.gz"])
        assert found is not None and found.id == started.id
    [execution] = sandbox.executions(ENTITY)
    assert execution["etlId"] == "customers-upsert" and execution["fileName"] == "people.run-etl-1.csv.gz"
    assert sandbox.profiles(ENTITY, "customers")[0]["subscriptions"] == {"Newsletter": True}


def test_a_reference_is_generated_when_the_definition_has_none(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    raw = definition("")
    del raw["reference"]
    with client_for(sandbox) as client:
        started = client.start_import(raw, csv_file(tmp_path))
        assert started.reference and started.reference.startswith("audience-sync-")
        found = client.find_execution(started.reference)
    assert found is not None and found.id == started.id


# ---------------------------------------------------------------------------------------- outcomes


def test_a_partial_success_is_returned_with_its_rejected_lines(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    text = "emailAddress,firstName\nann@example.com,Ann\nnot-an-email,Bob\ncid@example.com,Cid\n"
    with client_for(sandbox) as client:
        started = client.start_import(definition("run-partial"), csv_file(tmp_path, text))
        final = client.wait_for(started.id, poll_initial=0.02)
        assert final.status == "PARTIAL_SUCCESS"
        assert final.counts["lines"] == 3 and final.counts["created"] == 2 and final.counts["rejected"] == 1
        assert client.report(final.id) == [LineError(3, "emailAddress", "not-an-email", "invalid e-mail address",
                                                    ("invalid e-mail address",))]


def test_a_file_with_a_bom_ends_in_error_with_actitos_message(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfemailAddress,firstName\nann@example.com,Ann\n")
    with client_for(sandbox) as client:
        started = client.start_import(definition("run-bom"), path)
        with pytest.raises(ActitoImportError) as caught:
            client.wait_for(started.id, poll_initial=0.02)
    said = sandbox.executions(ENTITY)[0]["message"]
    assert said and "BOM" in said
    assert caught.value.actito_message == said
    assert said in str(caught.value) and started.id in str(caught.value)


def test_wait_for_gives_up_at_its_timeout_polling_ever_less_often(
    sandboxes: Callable[..., ActitoSandbox], tmp_path: Path
) -> None:
    sandbox = sandboxes(processing_seconds=60)
    clock = Clock()
    with client_for(sandbox, monotonic=clock.monotonic, sleep=clock.sleep) as client:
        started = client.start_import(definition("run-slow"), csv_file(tmp_path))
        with pytest.raises(ActitoImportError) as caught:
            client.wait_for(started.id, timeout=10, poll_initial=1, poll_max=4)
    assert clock.sleeps == [1, 2, 4, 3]
    assert "still PENDING after 10 s" in caught.value.what
    assert len(calls(sandbox, "GET", f"{EXECUTIONS}/{started.id}")) == 5


def test_persistent_5xx_on_an_import_gives_up_saying_nothing_was_imported(
    sandbox: ActitoSandbox, tmp_path: Path
) -> None:
    path = tmp_path / "customers.csv.gz"
    path.write_bytes(gzip.compress(b"emailAddress,firstName\nbob@example.com,Bob\n"))
    sandbox.inject_faults(503, 100, "trigger-execution")  # the POST only, not the look-ups
    with client_for(sandbox, max_attempts=3) as client, pytest.raises(ActitoError) as caught:
        client.start_import({"reference": "run-503"}, path, etl_id="customers-upsert")
    assert [s for m, p, s in sandbox.request_log if "trigger-execution" in p] == [503, 503, 503]
    assert [s for m, p, s in calls(sandbox, "GET", EXECUTIONS + "?fileName=customers.csv.gz")] == [200, 200, 200]
    assert caught.value.status == 503
    assert "no execution with reference 'run-503'" in caught.value.what
    assert "safely be repeated" in caught.value.hint
    assert sandbox.executions(ENTITY) == []


def test_an_import_is_never_resent_when_its_outcome_cannot_be_checked(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    sandbox.inject_faults(500, 100, "etl-executions")  # the POST and every look-up fail
    with client_for(sandbox, max_attempts=3) as client, pytest.raises(ActitoError) as caught:
        client.start_import(definition("run-unknown"), csv_file(tmp_path))
    assert [s for m, p, s in calls(sandbox, "POST", EXECUTIONS)] == [500]
    assert "outcome is unknown" in caught.value.what
    assert "reference 'run-unknown'" in caught.value.hint


def test_a_netrc_entry_for_the_host_does_not_replace_our_authorization(
    sandbox: ActitoSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with client_for(sandbox) as client:
        assert client.entities()[0]["name"] == "demo"
    assert 401 not in statuses(sandbox)


def test_a_reused_reference_finds_the_newest_execution(sandbox: ActitoSandbox, tmp_path: Path) -> None:
    with client_for(sandbox) as client:
        client.start_import(definition("run-reused"), csv_file(tmp_path))
        second = client.start_import(definition("run-reused"), csv_file(tmp_path))
        found = client.find_execution("run-reused")
        assert client.find_execution("run-never") is None
    assert found is not None and found.id == second.id
