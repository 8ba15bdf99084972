"""The OpenField client against the OpenField sandbox, over real sockets: what the wire must survive.

The sandbox is strict where OpenField would refuse a profile and records every request, so each test
reads back what really crossed the socket: how many POSTs, how many profiles, which statuses.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from etl.config import OPENFIELD_ROUTES
from etl.destinations.retry import RetryPolicy
from etl.destinations.openfield.client import OpenFieldClient
from etl.errors import OpenFieldAuthError, OpenFieldRateLimited, OpenFieldRefused
from etl.testing.openfield_sandbox import OpenFieldSandbox

TENANT, APPLICATION, PASSWORD = "tenant-7", "app-42", "of-test-password-5d1c"
PERSON: dict[str, Any] = {"Party": {"PartyType": "Person", "Version": 1, "LanguageId": "fr"}, "Email": "ann@example.com",
          "FirstName": "Ann", "Gender": "F", "Civility": "MME", "BirthDate": "01081990", "Country": "BEL",
          "Services": [{"ActivationDate": "2026-11-01T10:00:00", "ServiceId": "Newsletter", "ServiceStatus": True,
                        "ServiceTypeId": "OPTINS"}]}


@pytest.fixture
def sandbox() -> Iterator[OpenFieldSandbox]:
    with OpenFieldSandbox(tenant_id=TENANT, application_id=APPLICATION, password=PASSWORD,
                          fault_delay_seconds=0.6) as running:
        yield running


def recording_sleep() -> tuple[list[float], Callable[[float], None]]:
    sleeps: list[float] = []
    return sleeps, sleeps.append


def client_for(sandbox: OpenFieldSandbox, **options: Any) -> OpenFieldClient:
    settings: dict[str, Any] = {"base_url": sandbox.url, "tenant_id": TENANT, "application_id": APPLICATION,
                                "password": PASSWORD, "routes": OPENFIELD_ROUTES, **options}
    return OpenFieldClient(**settings)


def calls(sandbox: OpenFieldSandbox) -> list[tuple[str, int]]:
    return [(method, status) for method, _, status in sandbox.request_log]


def post(sandbox: OpenFieldSandbox, payload: dict[str, Any], password: str = PASSWORD) -> requests.Response:
    return requests.post(f"{sandbox.url}/api/{TENANT}/{APPLICATION}/profiles", json=payload,
                         auth=(APPLICATION, password), timeout=5)


# ---------------------------------------------------------------------------------------------- the sandbox


def test_the_sandbox_refuses_every_value_openfield_would_refuse(sandbox: OpenFieldSandbox) -> None:
    bad = {**PERSON, "Gender": "M", "Civility": "Mme", "BirthDate": "1990-08-01", "Country": "BE",
           "Password": "hunter2", "Services": [{**PERSON["Services"][0], "ServiceStatus": False}]}
    answer = post(sandbox, bad)
    assert answer.status_code == 400
    refused = {error["Field"] for error in answer.json()["Errors"]}
    assert refused == {"Gender", "Civility", "BirthDate", "Country", "Password", "Services"}
    assert post(sandbox, {**PERSON, "BirthDate": "31021990"}).status_code == 400  # no 31 February
    assert post(sandbox, {**PERSON, "Party": {"PartyType": "Company", "Version": 1, "LanguageId": "fr"}}).status_code == 400
    assert sandbox.profiles() == []
    assert post(sandbox, PERSON).status_code == 201
    assert [p["Email"] for p in sandbox.profiles()] == ["ann@example.com"]


def test_the_sandbox_wants_the_application_credentials(sandbox: OpenFieldSandbox) -> None:
    assert post(sandbox, PERSON, password="nope").status_code == 401
    other = requests.post(f"{sandbox.url}/api/other-tenant/{APPLICATION}/profiles", json=PERSON,
                          auth=(APPLICATION, PASSWORD), timeout=5)
    assert other.status_code == 404
    assert sandbox.profiles() == []


# ---------------------------------------------------------------------------------------------- the client


def test_an_unknown_profile_is_created_and_a_known_one_updated_not_duplicated(sandbox: OpenFieldSandbox) -> None:
    existing = sandbox.add_profile({**PERSON, "FirstName": "Anne"})
    with client_for(sandbox) as client:
        assert client.upsert("ANN@example.com", PERSON) == "updated"
        assert client.upsert("bob@example.com", {**PERSON, "Email": "bob@example.com"}) == "created"
    profiles = {p["Email"]: p for p in sandbox.profiles()}
    assert sorted(profiles) == ["ann@example.com", "bob@example.com"]
    assert profiles["ann@example.com"]["PartyId"] == existing
    assert profiles["ann@example.com"]["FirstName"] == "Ann"
    assert calls(sandbox) == [("GET", 200), ("PUT", 200), ("GET", 200), ("POST", 201)]


def test_a_wrong_password_is_one_clear_error_without_the_secret(sandbox: OpenFieldSandbox) -> None:
    secret = "wrong-password-9f8e7d"
    with client_for(sandbox, password=secret) as client, pytest.raises(OpenFieldAuthError) as caught:
        client.upsert("ann@example.com", PERSON)
    error = caught.value
    assert calls(sandbox) == [("GET", 401)]  # not retried: another attempt cannot help
    assert "invalid credentials" in error.openfield_message
    assert "password" in error.hint and error.where.startswith("OpenField GET /api/")
    shown = "\n".join([str(error), repr(error), error.hint, *traceback.format_exception(error)])
    assert secret not in shown


def test_429_and_500_on_find_are_retried_honouring_a_capped_retry_after(sandbox: OpenFieldSandbox) -> None:
    sleeps, sleep = recording_sleep()
    sandbox.inject_faults(429, 2, method="GET", retry_after=3600)
    sandbox.inject_faults(500, 2, method="GET")
    policy = RetryPolicy(first_pause=1, max_pause=4, retry_after_max=5)
    with client_for(sandbox, sleep=sleep, policy=policy) as client:
        assert client.upsert("ann@example.com", PERSON) == "created"
    assert calls(sandbox) == [("GET", 429), ("GET", 429), ("GET", 500), ("GET", 500), ("GET", 200), ("POST", 201)]
    assert sleeps[:2] == [5.0, 5.0]  # OpenField's hour-long Retry-After, capped
    assert 0 <= sleeps[2] <= 4 and 0 <= sleeps[3] <= 4  # full jitter within the doubling cap
    assert len(sandbox.profiles()) == 1


def test_a_429_that_never_stops_is_rate_limited_after_max_attempts(sandbox: OpenFieldSandbox) -> None:
    sandbox.inject_faults(429, 100)
    with client_for(sandbox, sleep=lambda s: None, policy=RetryPolicy(attempts=3)) as client:
        with pytest.raises(OpenFieldRateLimited) as caught:
            client.find("ann@example.com")
    assert "after 3 attempts" in caught.value.what
    assert calls(sandbox) == [("GET", 429)] * 3


def test_a_create_whose_answer_is_lost_is_looked_up_and_not_sent_twice(sandbox: OpenFieldSandbox) -> None:
    sandbox.inject_faults("timeout", 1, method="POST")
    with client_for(sandbox, read_timeout=0.3, sleep=lambda s: None) as client:
        assert client.upsert("ann@example.com", PERSON) == "created"
    assert [p["Email"] for p in sandbox.profiles()] == ["ann@example.com"]
    methods = [m for m, _ in calls(sandbox)]
    assert methods.count("POST") == 1  # found by its e-mail after the lost answer, not created again


def test_a_create_answered_500_is_sent_again_only_after_a_lookup_finds_nothing(sandbox: OpenFieldSandbox) -> None:
    sandbox.inject_faults(500, 1, method="POST")
    sandbox.inject_faults(429, 1, method="POST", retry_after=0)
    with client_for(sandbox, sleep=lambda s: None) as client:
        assert client.upsert("ann@example.com", PERSON) == "created"
    assert calls(sandbox) == [("GET", 200), ("POST", 500), ("GET", 200), ("POST", 429), ("POST", 201)]
    assert len(sandbox.profiles()) == 1


def test_a_profile_openfield_refuses_is_a_per_profile_error(sandbox: OpenFieldSandbox) -> None:
    with client_for(sandbox) as client, pytest.raises(OpenFieldRefused) as caught:
        client.upsert("ann@example.com", {**PERSON, "Gender": "X"})
    assert "Gender" in caught.value.openfield_message
    assert calls(sandbox) == [("GET", 200), ("POST", 400)]


def test_configured_routes_are_the_ones_called() -> None:
    routes = {"find": "GET /ws/{tenant_id}/Party/Search?{match_on}={value}&app={application_id}",
              "create": "POST /ws/{tenant_id}/{application_id}/Party/Create",
              "update": "PATCH /ws/{tenant_id}/{application_id}/Party/{id}/Update"}
    with OpenFieldSandbox(tenant_id=TENANT, application_id=APPLICATION, password=PASSWORD, routes=routes) as sandbox:
        with client_for(sandbox, routes=routes) as client:
            client.upsert("ann@example.com", PERSON)
            client.upsert("ann@example.com", {**PERSON, "FirstName": "Annie"})
        paths = [(method, path.split("?")[0]) for method, path, _ in sandbox.request_log]
        assert paths == [("GET", f"/ws/{TENANT}/Party/Search"), ("POST", f"/ws/{TENANT}/{APPLICATION}/Party/Create"),
                         ("GET", f"/ws/{TENANT}/Party/Search"),
                         ("PATCH", f"/ws/{TENANT}/{APPLICATION}/Party/OF0000001/Update")]
        assert [p["FirstName"] for p in sandbox.profiles()] == ["Annie"]
