"""The Actito sandbox against docs/actito-wire.md, over real sockets with plain `requests`.

The client is tested against this sandbox, so the sandbox itself must be right first: each test
here pins one rule of the wire page (auth, limits, faults, import semantics, file rules).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import stat
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from etl.testing.actito.server import ActitoSandbox
from etl.testing.actito.state import DEFAULT_FIXTURE

KEY = "sandbox-demo-key"
E = "demo"
#: a fixed clock (2027-01-15 08:00 UTC): the daily budget's UTC date cannot roll over mid-test
T0 = 1_800_000_000.0
EXECUTIONS = f"/mass-imports/v5/entities/{E}/etl-executions"


@pytest.fixture
def sandbox() -> Iterator[ActitoSandbox]:
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.05, fault_delay_seconds=1.0) as box:
        yield box


class Api:
    """A minimal hand-written client: the tests must not depend on etl.destinations.actito.client."""

    def __init__(self, sandbox: ActitoSandbox, key: str = KEY) -> None:
        self.base = sandbox.url
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.token = self.new_token(key)

    def new_token(self, key: str = KEY) -> str:
        response = self.session.get(self.base + "/auth/token", headers={"Authorization": key}, timeout=5)
        assert response.status_code == 200, response.text
        return str(response.json()["accessToken"])

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base + path, headers={**self.auth(), **(headers or {})}, timeout=5, **kwargs)

    def upload(
        self, data: bytes, definition: dict[str, Any] | None = None, *, file_name: str | None = None,
        timeout: Any = 5,
    ) -> requests.Response:
        """The file part named and typed for the definition's compression, as Actito wants it."""
        compression = ((definition or {}).get("format") or {}).get("compression", "NONE")
        name, content_type = FILE_FORMS.get(compression, FILE_FORMS["NONE"])
        files: dict[str, Any] = {"inputFile": (file_name or name, data, content_type)}
        if definition is not None:
            files = {"definition": (None, json.dumps(definition), "application/json"), **files}
        return self.session.post(self.base + EXECUTIONS, headers=self.auth(), files=files, timeout=timeout)

    def trigger(self, etl_id: str, data: bytes, file_name: str) -> requests.Response:
        files: dict[str, Any] = {"inputFile": (file_name, data, "application/gzip")}
        path = f"/mass-imports/v5/entities/{E}/etls/{etl_id}/trigger-execution"
        return self.session.post(self.base + path, headers=self.auth(), files=files, timeout=5)

    def wait(self, execution_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:
            body: dict[str, Any] = self.get(f"{EXECUTIONS}/{execution_id}").json()
            if body["status"] not in ("PENDING", "RUNNING"):
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.02)

    def run(self, data: bytes, definition: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Upload, wait for the end, return the final status and the report's errors."""
        created = self.upload(data, definition if definition is not None else profile_definition())
        assert created.status_code == 201, created.text
        final = self.wait(created.json()["id"])
        report = self.get(f"{EXECUTIONS}/{final['id']}/report")
        assert report.status_code == 200, report.text
        return final, report.json()["errors"]


#: per compression, the file part's name and content type
FILE_FORMS = {"NONE": ("import.csv", "text/csv"), "GZIP": ("import.csv.gz", "application/gzip"),
              "ZIP": ("import.zip", "application/zip")}


def profile_definition(**overrides: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "reference": f"test-{uuid.uuid4().hex[:8]}",
        "target": {"type": "PROFILE_TABLE", "id": "customers"},
        "mode": "CREATE_UPDATE",
        "keyColumn": "emailAddress",
        "format": {"separator": ",", "encoding": "UTF-8", "compression": "NONE"},
        "emptyValues": "KEEP",
        "subscriptions": [
            {"column": "subscription_Newsletter", "subscription": "Newsletter"},
            {"column": "subscription_Partners", "subscription": "Partners"},
        ],
        "dataCollection": {"source": "audience-sync", "way": "tests", "date": "2027-01-15 08:00:00"},
    }
    definition.update(overrides)
    return definition


def custom_definition(table: str, key: str, **overrides: Any) -> dict[str, Any]:
    definition = profile_definition(target={"type": "CUSTOM_TABLE", "id": table}, keyColumn=key, subscriptions=[])
    definition.update(overrides)
    return definition


def csv_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def by_email(sandbox: ActitoSandbox) -> dict[str, dict[str, Any]]:
    return {p["attributes"]["emailAddress"]: p for p in sandbox.profiles(E, "customers")}


# ------------------------------------------------------------------------------ auth and headers


def test_token_flow_and_expiry_on_the_sandbox_clock(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    body = requests.get(sandbox.url + "/auth/token", headers={"Authorization": KEY, "Accept": "application/json"},
                        timeout=5).json()
    assert body["tokenType"] == "bearer" and body["expiresIn"] == "900s" and body["jti"] and body["scope"]
    assert api.get("/entities/v5/entities").json() == {"entities": [{"id": 1, "name": "demo",
                                                                     "comment": "Actito sandbox demo entity"}]}
    sandbox.advance_clock(899)
    assert api.get("/entities/v5/entities").status_code == 200
    sandbox.advance_clock(1)
    expired = api.get("/entities/v5/entities")
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    api.token = api.new_token()
    assert api.get("/entities/v5/entities").status_code == 200


def test_bad_keys_and_tokens_get_401(sandbox: ActitoSandbox) -> None:
    url = sandbox.url
    accept = {"Accept": "application/json"}
    assert requests.get(url + "/auth/token", headers={**accept, "Authorization": "nope"}, timeout=5).status_code == 401
    assert requests.get(url + "/auth/token", headers={**accept, "Authorization": f"Bearer {KEY}"},
                        timeout=5).status_code == 401
    assert requests.get(url + "/auth/token", headers=accept, timeout=5).status_code == 401
    assert requests.get(url + "/entities/v5/entities", headers={**accept, "Authorization": "Bearer x"},
                        timeout=5).status_code == 401
    # the raw API key is not a bearer token
    assert requests.get(url + "/entities/v5/entities", headers={**accept, "Authorization": KEY},
                        timeout=5).status_code == 401


def test_406_without_accept_application_json(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    for accept in (None, "*/*", "text/html"):
        headers = {**api.auth(), "Accept": accept} if accept else api.auth()
        session = requests.Session()
        if accept is None:
            del session.headers["Accept"]
        response = session.get(sandbox.url + "/entities/v5/entities", headers=headers, timeout=5)
        assert response.status_code == 406, accept
        assert "application/json" in response.json()["message"]
    no_accept = requests.Session()
    del no_accept.headers["Accept"]
    assert no_accept.get(sandbox.url + "/auth/token", headers={"Authorization": KEY}, timeout=5).status_code == 406
    assert api.get("/entities/v5/entities", headers={"Accept": "text/html, application/json; q=0.9"}).ok


def test_revoked_key_and_its_tokens_get_401(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    assert api.get("/entities/v5/entities").status_code == 200
    sandbox.revoke(KEY)
    assert api.get("/entities/v5/entities").status_code == 401
    response = api.session.get(sandbox.url + "/auth/token", headers={"Authorization": KEY}, timeout=5)
    assert response.status_code == 401


# ------------------------------------------------------------------------------ discovery and 404


def test_discovery_routes_and_404s(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    tables = api.get(f"/profile-table-structure/v5/entities/{E}/profile-tables").json()["profileTables"]
    assert [t["id"] for t in tables] == ["customers"]
    customers = api.get(f"/profile-table-structure/v5/entities/{E}/profile-tables/customers").json()
    attributes = {a["name"]: a for a in customers["attributes"]}
    assert attributes["emailAddress"]["type"] == "EMAIL_ADDRESS" and attributes["emailAddress"]["unique"]
    assert attributes["customerId"]["valueType"] == "INTEGER" and attributes["customerId"]["unique"]
    assert attributes["footballTeam"]["valueRestriction"] == {"maxLength": 64}
    assert [s["name"] for s in customers["subscriptions"]] == ["Newsletter", "Partners", "Promotions"]
    custom = api.get(f"/custom-table-structure/v5/entities/{E}/custom-tables").json()["customTables"]
    assert {t["id"]: t["type"] for t in custom} == {"participations": "INTERACTIONS", "audience_members": "STANDARD"}
    participations = api.get(f"/custom-table-structure/v5/entities/{E}/custom-tables/participations").json()
    assert participations["primaryKeyAttribute"] == "participationId"
    assert participations["foreignKeys"] == [
        {"attribute": "emailAddress", "profileTable": "customers", "profileAttribute": "emailAddress"}
    ]
    etls = api.get(f"/mass-imports/v5/entities/{E}/etls").json()["etls"]
    assert [e["id"] for e in etls] == ["customers-upsert"]

    for path in (
        "/profile-table-structure/v5/entities/nope/profile-tables",
        f"/profile-table-structure/v5/entities/{E}/profile-tables/nope",
        f"/custom-table-structure/v5/entities/{E}/custom-tables/nope",
        f"/mass-imports/v5/entities/{E}/etl-executions/999999",
        f"/profile-table-structure/v4/entity/{E}/profile-tables",  # V4: retired
        f"/v5/entities/{E}/profile-tables",  # un-prefixed: retired
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["message"]
    unknown = api.upload(csv_bytes("emailAddress", "a@b.be"),
                         profile_definition(target={"type": "PROFILE_TABLE", "id": "nope"}))
    assert unknown.status_code == 404
    assert api.session.delete(sandbox.url + EXECUTIONS, headers=api.auth(), timeout=5).status_code == 405


# ------------------------------------------------------------------------------ limits


def _held_upload(api: Api, release: threading.Event, results: list[int]) -> None:
    """An import whose body is only sent once ``release`` is set: the request stays open meanwhile."""
    definition = json.dumps(profile_definition()).encode()
    boundary = "held-upload-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"definition\"\r\n"
        f"Content-Type: application/json\r\n\r\n".encode() + definition
        + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"inputFile\"; filename=\"a.csv\"\r\n"
          f"Content-Type: text/csv\r\n\r\nemailAddress\r\nheld@example.com\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:
        release.wait(10)
        yield body

    response = requests.post(
        api.base + EXECUTIONS,
        data=chunks(),
        headers={**api.auth(), "Accept": "application/json",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=10,
    )
    results.append(response.status_code)


def test_sixth_concurrent_request_gets_429_immediately(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    release = threading.Event()
    results: list[int] = []
    threads = [threading.Thread(target=_held_upload, args=(api, release, results)) for _ in range(5)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 5
        while sandbox.in_flight < 5:
            assert time.monotonic() < deadline, "the 5 uploads never got hold of their slots"
            time.sleep(0.01)
        started = time.monotonic()
        sixth = api.get("/entities/v5/entities")
        assert sixth.status_code == 429
        assert time.monotonic() - started < 1
        assert "concurrent" in sixth.json()["message"]
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert results == [201] * 5
    assert api.get("/entities/v5/entities").status_code == 200
    assert sandbox.in_flight == 0


def test_daily_import_budget_per_table_and_utc_day(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = csv_bytes("emailAddress", "budget@example.com")
    for _ in range(24):
        assert api.upload(data, profile_definition()).status_code == 201
    refused = api.upload(data, profile_definition(reference="the-25th"))
    assert refused.status_code == 429
    assert "daily import limit reached for table customers" in refused.json()["message"]
    assert all(e["reference"] != "the-25th" for e in sandbox.executions(E))
    # another table has its own budget
    members = custom_definition("audience_members", "memberKey")
    assert api.upload(csv_bytes("memberKey", "m1"), members).status_code == 201
    # the next UTC day (the token has expired by then too)
    sandbox.advance_clock(24 * 3600)
    api.token = api.new_token()
    assert api.upload(data, profile_definition()).status_code == 201


def test_file_over_the_size_limit_gets_400() -> None:
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.01, max_file_bytes=1000) as box:
        api = Api(box)
        header = b"emailAddress\n"
        line = b"a@example.com\n"
        fits = header + line * ((1000 - len(header)) // len(line))
        assert api.upload(fits, profile_definition()).status_code == 201
        too_big = fits + b"b@example.com\n"
        refused = api.upload(too_big, profile_definition())
        assert refused.status_code == 400 and "limit" in refused.json()["message"]
        assert len(box.executions(E)) == 1
        # the connection is still usable after a refused upload
        assert api.get("/entities/v5/entities").status_code == 200


def test_malformed_requests_get_400_with_a_message(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = csv_bytes("emailAddress", "a@b.be")
    cases = [
        profile_definition(mode="UPSERT"),
        profile_definition(keyColumn="firstName"),  # not a unique attribute
        profile_definition(attributes=[{"column": "x", "attribute": "noSuchAttribute"}]),
        profile_definition(subscriptions=[{"column": "s", "subscription": "NoSuchSubscription"}]),
        profile_definition(format={"separator": "|"}),
        profile_definition(emptyValues="MAYBE"),
        custom_definition("participations", "emailAddress"),  # key must be the primary key
    ]
    for definition in cases:
        response = api.upload(data, definition)
        assert response.status_code == 400, definition
        body = response.json()
        assert body["status"] == 400 and body["message"] and body["errors"][0]["field"]
    no_definition = api.upload(data, None)
    assert no_definition.status_code == 400 and "definition" in no_definition.json()["message"]
    broken: dict[str, Any] = {"definition": (None, "{nope", "application/json"), "inputFile": ("a.csv", data)}
    not_json = api.session.post(sandbox.url + EXECUTIONS, headers=api.auth(), timeout=5, files=broken)
    assert not_json.status_code == 400
    not_multipart = api.session.post(sandbox.url + EXECUTIONS, headers=api.auth(), json={}, timeout=5)
    assert not_multipart.status_code == 400
    assert sandbox.executions(E) == []


# ------------------------------------------------------------------------------ imports


def test_import_succeeds_and_state_reads_back(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = csv_bytes(
        '"emailAddress","firstName","customerId","gdprConsent","birthDate","subscription_Newsletter"',
        '"ann@example.com","Ann","1","TRUE","1990-05-17","Y"',
        '"bob@example.com","Bob","2","0","","N"',
    )
    definition = profile_definition(attributes=[{"column": "firstName", "attribute": "firstName"}])
    created = api.upload(data, definition)
    assert created.status_code == 201
    assert created.json()["reference"] == definition["reference"]
    assert created.headers["Location"].endswith(f"{EXECUTIONS}/{created.json()['id']}")
    final = api.wait(created.json()["id"])
    assert final["status"] == "SUCCESS"
    assert final["counts"] == {"lines": 2, "created": 2, "updated": 0, "deleted": 0, "rejected": 0}
    profiles = by_email(sandbox)
    ann = profiles["ann@example.com"]
    assert ann["attributes"] == {"emailAddress": "ann@example.com", "firstName": "Ann", "customerId": 1,
                                 "gdprConsent": True, "birthDate": "1990-05-17"}
    assert ann["subscriptions"] == {"Newsletter": True}
    assert isinstance(ann["profileId"], int)
    assert profiles["bob@example.com"]["profileId"] != ann["profileId"]

    # an update: KEEP leaves what an empty cell would have touched, CLEAR erases it
    update = csv_bytes("emailAddress,firstName,customerId", "ann@example.com,,11")
    api.run(update, profile_definition(emptyValues="KEEP"))
    assert by_email(sandbox)["ann@example.com"]["attributes"]["firstName"] == "Ann"
    final, _ = api.run(update, profile_definition(emptyValues="CLEAR"))
    assert final["counts"]["updated"] == 1
    ann = by_email(sandbox)["ann@example.com"]
    assert "firstName" not in ann["attributes"] and ann["attributes"]["customerId"] == 11

    # the same state over HTTP, for a client in another process
    state = requests.get(sandbox.url + "/_sandbox/state", timeout=5).json()
    assert len(state["entities"][E]["profileTables"]["customers"]) == 2
    assert [e["status"] for e in state["entities"][E]["executions"]] == ["SUCCESS"] * 3


def test_status_progresses_and_report_waits_for_the_end() -> None:
    # PENDING for the first 0.3 s, RUNNING until 0.6 s, then final: wide windows for a busy machine
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.6) as box:
        api = Api(box)
        created = api.upload(csv_bytes("emailAddress", "slow@example.com"), profile_definition())
        execution_id = created.json()["id"]
        assert created.json()["status"] == "PENDING"
        assert api.get(f"{EXECUTIONS}/{execution_id}").json()["status"] == "PENDING"
        assert api.get(f"{EXECUTIONS}/{execution_id}/report").status_code == 409
        assert box.profiles(E, "customers") == []
        time.sleep(0.35)
        assert api.get(f"{EXECUTIONS}/{execution_id}").json()["status"] == "RUNNING"
        time.sleep(0.3)
        assert api.get(f"{EXECUTIONS}/{execution_id}").json()["status"] == "SUCCESS"
        assert [p["attributes"]["emailAddress"] for p in box.profiles(E, "customers")] == ["slow@example.com"]


def test_partial_success_report_names_the_lines(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    long_text = "x" * 256
    lines = [
        "emailAddress,firstName,profession,birthDate,sex,telephoneNumber,addressCountry,motherLanguage,"
        "customerId,gdprConsent,subscription_Newsletter",
        "ok1@example.com,Ann,,1990-01-31,F,+32470123456,BE,fr,1,Y,Y",                # 2 ok
        "not-an-email,Bob,,,,,,,,,",                                                 # 3
        f"l4@example.com,{'y' * 65},,,,,,,,,",                                        # 4 over maxLength 64
        f"l5@example.com,,{long_text},,,,,,,,",                                        # 5 over 255
        "l6@example.com,,,1990-02-30,,,,,,,",                                        # 6 no such date
        "l7@example.com,,,,m,,,,,,",                                                 # 7 sex
        "l8@example.com,,,,,0470123456,,,,,",                                        # 8 phone
        "l9@example.com,,,,,,BEL,,,,",                                               # 9 country
        "l10@example.com,,,,,,,fra,,,",                                              # 10 language
        "l11@example.com,,,,,,,,12a,,",                                              # 11 integer
        "l12@example.com,,,,,,,,,maybe,",                                            # 12 boolean
        "l13@example.com,,,,,,,,,,yes",                                              # 13 subscription
        ",Nobody,,,,,,,,,",                                                          # 14 missing key
        "l15@example.com,too,few",                                                   # 15 column count
        '"l16@example.com","multi',                                                  # 16 spans two
        'line name",,,,,,,,,',                                                       #    physical lines
        "l17@example.com,,,,,,,,1,,",                                                # 17 customerId taken
        "ok2@example.com,Zoe,,,M,,,,,,N",                                            # 18 ok
    ]
    final, errors = api.run(csv_bytes(*lines))
    assert final["status"] == "PARTIAL_SUCCESS"
    assert final["counts"] == {"lines": 17, "created": 3, "updated": 0, "deleted": 0, "rejected": 14}
    by_line = {e["line"]: e for e in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17]
    assert by_line[3] | {"problems": None} == {"line": 3, "column": "emailAddress", "value": "not-an-email",
                                               "message": "invalid e-mail address", "problems": None}
    expected_words = {4: "64", 5: "255", 6: "date", 7: "M or F", 8: "phone", 9: "country", 10: "language",
                      11: "integer", 12: "boolean", 13: "Y or N", 14: "missing key", 15: "header has 11",
                      17: "already belongs to another profile"}
    for line, words in expected_words.items():
        assert words in by_line[line]["message"], (line, by_line[line])
    assert by_line[13]["column"] == "subscription_Newsletter"
    assert set(by_email(sandbox)) == {"ok1@example.com", "ok2@example.com", "l16@example.com"}
    assert by_email(sandbox)["l16@example.com"]["attributes"]["firstName"] == "multi\nline name"


def test_several_problems_on_one_line_are_one_report_entry(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    final, errors = api.run(csv_bytes("emailAddress,sex,birthDate", "bad@,X,yesterday"))
    assert final["counts"]["rejected"] == 1
    assert len(errors) == 1
    assert [p["column"] for p in errors[0]["problems"]] == ["emailAddress", "sex", "birthDate"]


def test_a_file_with_a_bom_ends_in_error(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    final, errors = api.run(b"\xef\xbb\xbf" + csv_bytes("emailAddress", "bom@example.com"))
    assert final["status"] == "ERROR"
    assert "BOM" in final["message"]
    assert errors[0]["line"] == 1
    assert sandbox.profiles(E, "customers") == []


def test_an_unknown_column_ends_in_error_and_applies_nothing(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    final, errors = api.run(csv_bytes("emailAddress,favouriteColour", "a@example.com,blue"))
    assert final["status"] == "ERROR"
    assert "favouriteColour" in final["message"]
    assert errors == [{"line": 1, "column": "favouriteColour", "value": None, "message": errors[0]["message"]}]
    assert sandbox.profiles(E, "customers") == []
    # a technical attribute is no column either
    final, _ = api.run(csv_bytes("emailAddress,profileId", "a@example.com,1"))
    assert final["status"] == "ERROR"


def test_other_file_level_errors(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    cases = {
        "not gzip": (csv_bytes("emailAddress", "a@b.be"), {"compression": "GZIP"}),
        "not zip": (csv_bytes("emailAddress", "a@b.be"), {"compression": "ZIP"}),
        "not UTF-8": (b"emailAddress,firstName\na@b.be,Ren\xe9\n", {}),
        "empty": (b"", {}),
        "no key column": (csv_bytes("firstName", "Ann"), {}),
        "unterminated quote": (b'emailAddress\n"a@b.be\n', {}),
    }
    for name, (data, fmt) in cases.items():
        definition = profile_definition(format={"separator": ",", "encoding": "UTF-8", "compression": "NONE", **fmt})
        final, _ = api.run(data, definition)
        assert final["status"] == "ERROR", name
        assert final["message"], name
    latin1 = profile_definition(format={"separator": ";", "encoding": "ISO-8859-1", "compression": "NONE"})
    final, _ = api.run(b"emailAddress;firstName\na@b.be;Ren\xe9\n", latin1)
    assert final["status"] == "SUCCESS"
    assert by_email(sandbox)["a@b.be"]["attributes"]["firstName"] == "René"


def test_update_only_and_create_only(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    api.run(csv_bytes("emailAddress,firstName", "known@example.com,Old"))
    data = csv_bytes("emailAddress,firstName", "known@example.com,New", "unknown@example.com,Who")

    final, errors = api.run(data, profile_definition(mode="UPDATE_ONLY"))
    assert final["status"] == "PARTIAL_SUCCESS"
    assert final["counts"]["updated"] == 1 and final["counts"]["created"] == 0
    assert errors[0]["line"] == 3 and errors[0]["message"] == "profile not found"
    assert errors[0]["value"] == "unknown@example.com"
    assert set(by_email(sandbox)) == {"known@example.com"}
    assert by_email(sandbox)["known@example.com"]["attributes"]["firstName"] == "New"

    data = csv_bytes("emailAddress,firstName", "known@example.com,Newer", "unknown@example.com,Who")
    final, errors = api.run(data, profile_definition(mode="CREATE_ONLY"))
    assert final["counts"]["created"] == 1 and final["counts"]["updated"] == 0
    assert errors[0]["line"] == 2 and errors[0]["message"] == "profile already exists"
    assert by_email(sandbox)["known@example.com"]["attributes"]["firstName"] == "New"
    assert set(by_email(sandbox)) == {"known@example.com", "unknown@example.com"}

    # DELETE: a file holding only the key column
    final, errors = api.run(csv_bytes("emailAddress", "known@example.com", "ghost@example.com"),
                            profile_definition(mode="DELETE", subscriptions=[]))
    assert final["counts"]["deleted"] == 1
    assert errors[0]["line"] == 3 and errors[0]["message"] == "profile not found"
    assert set(by_email(sandbox)) == {"unknown@example.com"}


def test_subscriptions_y_n_and_equivalents(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = csv_bytes(
        "emailAddress,subscription_Newsletter,subscription_Partners",
        "a@example.com,Y,N",
        "b@example.com,TRUE,0",
        "c@example.com,1,false",
        "d@example.com,,Y",
    )
    final, _ = api.run(data)
    assert final["status"] == "SUCCESS"
    subscriptions = {email: p["subscriptions"] for email, p in by_email(sandbox).items()}
    assert subscriptions == {
        "a@example.com": {"Newsletter": True, "Partners": False},
        "b@example.com": {"Newsletter": True, "Partners": False},
        "c@example.com": {"Newsletter": True, "Partners": False},
        "d@example.com": {"Partners": True},  # an empty cell leaves a subscription untouched
    }
    api.run(csv_bytes("emailAddress,subscription_Newsletter", "a@example.com,N"),
            profile_definition(mode="UPDATE_ONLY"))
    assert by_email(sandbox)["a@example.com"]["subscriptions"] == {"Newsletter": False, "Partners": False}


def test_interactions_need_an_existing_profile(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    api.run(csv_bytes("emailAddress", "player@example.com"))
    definition = custom_definition("participations", "participationId")
    data = csv_bytes(
        "participationId,emailAddress,source,way,date,surveyType,surveyDate,userAgent",
        "p1,player@example.com,Qualifio,123,2027-01-14 10:00:00,13,2027-01-14,Mozilla/5.0",
        "p2,stranger@example.com,Qualifio,123,2027-01-14 10:00:00,13,2027-01-14,",
        "p3,,Qualifio,123,2027-01-14 10:00:00,13,2027-01-14,",
        "p4,player@example.com,Qualifio,123,2027-01-14T10:00:00,x,14/01/2027,",
    )
    final, errors = api.run(data, definition)
    assert final["status"] == "PARTIAL_SUCCESS"
    assert final["counts"]["created"] == 1
    by_line = {e["line"]: e for e in errors}
    assert by_line[3]["message"] == "profile not found" and by_line[3]["value"] == "stranger@example.com"
    assert by_line[4]["message"] == "profile not found"
    assert [p["column"] for p in by_line[5]["problems"]] == ["date", "surveyType", "surveyDate"]
    assert sandbox.records(E, "participations") == [
        {"participationId": "p1", "emailAddress": "player@example.com", "source": "Qualifio", "way": "123",
         "date": "2027-01-14 10:00:00", "surveyType": 13, "surveyDate": "2027-01-14", "userAgent": "Mozilla/5.0"}
    ]
    # an upsert on the primary key updates the record
    final, _ = api.run(csv_bytes("participationId,emailAddress,way", "p1,player@example.com,456"), definition)
    assert final["counts"]["updated"] == 1
    assert sandbox.records(E, "participations")[0]["way"] == "456"
    # a STANDARD table has no profile to match
    members = custom_definition("audience_members", "memberKey")
    final, _ = api.run(csv_bytes("memberKey,audience,profileId,since", "m1,vip,42,2027-01-01"), members)
    assert final["status"] == "SUCCESS"
    assert sandbox.records(E, "audience_members") == [
        {"memberKey": "m1", "audience": "vip", "profileId": 42, "since": "2027-01-01"}
    ]


# ------------------------------------------------------------------------------ faults


def test_injected_500s_then_success(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    sandbox.inject_faults(500, 2, path_contains="/entities/v5/entities")
    statuses = [api.get("/entities/v5/entities").status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    # answered before any processing: before authentication, and an import is not created
    sandbox.inject_faults(503, 1, path_contains="etl-executions")
    assert requests.post(sandbox.url + EXECUTIONS, timeout=5).status_code == 503
    sandbox.inject_faults(429, 1, path_contains="etl-executions", retry_after=2)
    refused = api.upload(csv_bytes("emailAddress", "a@b.be"), profile_definition())
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert sandbox.executions(E) == []
    assert api.upload(csv_bytes("emailAddress", "a@b.be"), profile_definition()).status_code == 201
    # the same over HTTP
    requests.post(sandbox.url + "/_sandbox/faults", json={"status": 500, "count": 1, "path_contains": "entities"},
                  timeout=5).raise_for_status()
    assert api.get("/entities/v5/entities").status_code == 500
    assert api.get("/entities/v5/entities").status_code == 200


def test_timeout_fault_still_creates_the_execution(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    sandbox.inject_faults("timeout", 1, path_contains="etl-executions")
    definition = profile_definition(reference="run-42-1")
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.upload(csv_bytes("emailAddress", "late@example.com"), definition, timeout=(2, 0.3))
    found = api.get(EXECUTIONS, params={"reference": "run-42-1"}).json()["executions"]
    assert [e["reference"] for e in found] == ["run-42-1"]
    assert api.wait(found[0]["id"])["status"] == "SUCCESS"
    assert [p["attributes"]["emailAddress"] for p in sandbox.profiles(E, "customers")] == ["late@example.com"]
    assert api.get(EXECUTIONS, params={"reference": "other"}).json() == {"executions": []}


def test_disconnect_fault_and_request_log(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    sandbox.inject_faults("disconnect", 1, path_contains="etl-executions")
    with pytest.raises(requests.exceptions.ConnectionError):
        api.upload(csv_bytes("emailAddress", "cut@example.com"), profile_definition(reference="cut"))
    assert [e["reference"] for e in sandbox.executions(E)] == ["cut"]
    posts = [entry for entry in sandbox.request_log if entry[0] == "POST"]
    assert posts == [("POST", EXECUTIONS, 0)]


# ------------------------------------------------------------------------------ compression, ETLs


def test_gzip_and_zip_inputs(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    plain = csv_bytes("emailAddress,firstName", "gz@example.com,Gus")
    gz = profile_definition(format={"separator": ",", "encoding": "UTF-8", "compression": "GZIP"})
    final, _ = api.run(gzip.compress(plain), gz)
    assert final["status"] == "SUCCESS"

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("part1.csv", csv_bytes("emailAddress,firstName", "zip1@example.com,Zed"))
        archive.writestr("part2.csv", csv_bytes("emailAddress", "zip2@example.com", "not-an-email"))
    zipped = profile_definition(format={"separator": ",", "encoding": "UTF-8", "compression": "ZIP"})
    final, errors = api.run(buffer.getvalue(), zipped)
    assert final["status"] == "PARTIAL_SUCCESS"
    assert final["counts"]["created"] == 2
    assert errors[0]["file"] == "part2.csv" and errors[0]["line"] == 3
    assert set(by_email(sandbox)) == {"gz@example.com", "zip1@example.com", "zip2@example.com"}


def test_trigger_execution_uses_the_etl_definition(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = gzip.compress(csv_bytes("emailAddress,firstName,subscription_Promotions", "etl@example.com,Eve,Y"))
    created = api.trigger("customers-upsert", data, "etl-run-1.csv.gz")
    assert created.status_code == 201
    final = api.wait(created.json()["id"])
    assert final["status"] == "SUCCESS" and final["etlId"] == "customers-upsert"
    profile = by_email(sandbox)["etl@example.com"]
    assert profile["attributes"]["firstName"] == "Eve" and profile["subscriptions"] == {"Promotions": True}
    found = api.get(EXECUTIONS, params={"fileName": "etl-run-1.csv.gz"}).json()["executions"]
    assert [e["id"] for e in found] == [created.json()["id"]]
    assert api.trigger("no-such-etl", data, "x.csv.gz").status_code == 404


def test_reset_returns_to_the_fixture(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    api.run(csv_bytes("emailAddress", "gone@example.com"))
    requests.post(sandbox.url + "/_sandbox/reset", timeout=5).raise_for_status()
    assert sandbox.profiles(E, "customers") == [] and sandbox.executions(E) == []
    assert api.get("/entities/v5/entities").status_code == 401  # tokens are gone too


# ------------------------------------------------------------------------------ state file


def test_state_survives_a_restart_with_the_same_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox" / "state.json"
    fixture = json.loads(DEFAULT_FIXTURE.read_text(encoding="utf-8"))
    fixture["licences"][0]["apiKeys"] = [KEY, "second-key"]

    def box() -> ActitoSandbox:
        return ActitoSandbox(fixture, clock=lambda: T0, processing_seconds=0.05, daily_imports_per_table=3,
                             state_file=state_file)

    interactions = custom_definition("participations", "participationId")
    with box() as first:
        api = Api(first)
        api.run(csv_bytes("emailAddress,firstName,subscription_Newsletter", "kept@example.com,Kim,Y",
                          "other@example.com,Olu,N"))
        api.run(csv_bytes("emailAddress,firstName", "other@example.com,Ola"))
        final, _ = api.run(csv_bytes("participationId,emailAddress,source", "p1,kept@example.com,Qualifio",
                                     "p2,nobody@example.com,Qualifio"), interactions)
        assert final["status"] == "PARTIAL_SUCCESS"
        first.revoke("second-key")
        profiles, records = first.profiles(E, "customers"), first.records(E, "participations")
        executions = first.executions(E)
    assert len(profiles) == 2 and len(records) == 1 and len(executions) == 3

    with box() as second:
        # profiles with their ids, subscriptions and moments; records; executions with status, counts, errors
        assert second.profiles(E, "customers") == profiles
        assert second.records(E, "participations") == records
        assert second.executions(E) == executions
        api = Api(second)
        report = api.get(f"{EXECUTIONS}/{executions[-1]['id']}/report").json()
        assert report["status"] == "PARTIAL_SUCCESS" and report["errors"] == executions[-1]["errors"]
        revoked = api.session.get(second.url + "/auth/token", headers={"Authorization": "second-key"}, timeout=5)
        assert revoked.status_code == 401
        # an interaction of a profile created before the restart finds its profile
        final, errors = api.run(csv_bytes("participationId,emailAddress,source", "p3,kept@example.com,Qualifio"),
                                interactions)
        assert final["status"] == "SUCCESS" and errors == []
        assert final["id"] not in {e["id"] for e in executions}
        # the day's budget of "customers": 2 imports before the restart, 1 left
        created = api.upload(csv_bytes("emailAddress", "late@example.com"), profile_definition())
        assert created.status_code == 201
        assert api.upload(csv_bytes("emailAddress", "later@example.com"), profile_definition()).status_code == 429
        api.wait(created.json()["id"])
        late = by_email(second)["late@example.com"]
        assert late["profileId"] not in {p["profileId"] for p in profiles}


def test_an_import_pending_at_the_stop_is_applied_after_the_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    with ActitoSandbox(clock=lambda: T0, processing_seconds=5, state_file=state_file) as first:
        created = Api(first).upload(csv_bytes("emailAddress", "pending@example.com"), profile_definition())
        assert created.status_code == 201
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.05, state_file=state_file) as second:
        assert Api(second).wait(created.json()["id"])["status"] == "SUCCESS"
        assert list(by_email(second)) == ["pending@example.com"]


def test_a_state_file_of_another_fixture_is_not_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_file = tmp_path / "state.json"
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.05, state_file=state_file) as first:
        Api(first).run(csv_bytes("emailAddress", "old@example.com"))
        old_ids = {e["id"] for e in first.executions(E)}
    other = json.loads(DEFAULT_FIXTURE.read_text(encoding="utf-8"))
    other["licences"][0]["entities"][0]["comment"] = "another Actito"
    with caplog.at_level(logging.WARNING, logger="etl.testing.actito.state"):
        with ActitoSandbox(other, clock=lambda: T0, processing_seconds=0.05, state_file=state_file) as second:
            assert second.profiles(E, "customers") == [] and second.executions(E) == []
            final, _ = Api(second).run(csv_bytes("emailAddress", "new@example.com"))
            assert final["id"] not in old_ids  # execution ids are not given twice
    assert f"state file {state_file} was saved for another fixture" in caplog.text
    # the file now holds the other fixture's state; the first fixture no longer reads it
    with ActitoSandbox(other, clock=lambda: T0, state_file=state_file) as third:
        assert list(by_email(third)) == ["new@example.com"]
    with ActitoSandbox(clock=lambda: T0, state_file=state_file) as fourth:
        assert fourth.profiles(E, "customers") == []


def test_the_state_file_is_private_and_follows_the_control_routes(tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox" / "state.json"
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.05, state_file=state_file) as box:
        Api(box).run(csv_bytes("emailAddress", "gone@example.com"))
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        requests.post(box.url + "/_sandbox/revoke", json={"api_key": "old-key"}, timeout=5).raise_for_status()
        assert json.loads(state_file.read_text(encoding="utf-8"))["revokedKeys"] == ["old-key"]
        requests.post(box.url + "/_sandbox/reset", timeout=5).raise_for_status()
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert os.listdir(state_file.parent) == ["state.json"]  # no temporary file left behind
    with ActitoSandbox(clock=lambda: T0, state_file=state_file) as again:
        assert again.profiles(E, "customers") == [] and again.executions(E) == []
        assert json.loads(state_file.read_text(encoding="utf-8"))["revokedKeys"] == []


def test_finished_executions_leave_the_saved_state_after_two_weeks(tmp_path: Path) -> None:
    """Their reports name people: the sandbox keeps them no longer than a run's files are kept."""
    state_file = tmp_path / "state.json"
    with ActitoSandbox(clock=lambda: T0, processing_seconds=0.05, state_file=state_file) as first:
        old, _ = Api(first).run(csv_bytes("emailAddress", "old@example.com"))
        first.advance_clock(15 * 86400)
        recent, _ = Api(first).run(csv_bytes("emailAddress", "recent@example.com"))
    with ActitoSandbox(clock=lambda: T0 + 15 * 86400, state_file=state_file) as second:
        assert [e["id"] for e in second.executions(E)] == [recent["id"]]
        assert set(by_email(second)) == {"old@example.com", "recent@example.com"}  # the table is Actito's own


def test_data_collection_takes_its_four_entries_only(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = csv_bytes("emailAddress", "a@b.be")
    collection = {"source": "Qualifio", "updateSource": "Qualifio", "way": "4101", "date": "2027-01-15 08:00:00"}
    assert api.upload(data, profile_definition(dataCollection=collection)).status_code == 201
    for wrong, field in (({"campaign": "4101"}, "dataCollection.campaign"), ({"way": 4101}, "dataCollection.way"),
                         ({"source": "x" * 256}, "dataCollection.source"), ({"date": "15/01/2027"}, "dataCollection.date")):
        response = api.upload(data, profile_definition(dataCollection=wrong))
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == field, wrong
    assert [e["dataCollection"] for e in sandbox.executions(E)] == [collection]


def test_report_recipients_are_e_mail_addresses(sandbox: ActitoSandbox) -> None:
    api = Api(sandbox)
    data = csv_bytes("emailAddress", "a@b.be")
    assert api.upload(data, profile_definition(reportRecipients=["data-team@example.com"])).status_code == 201
    for wrong in (["not an address"], "data-team@example.com", [], ["a@b.be"] * 11):
        response = api.upload(data, profile_definition(reportRecipients=wrong))
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == "reportRecipients", wrong
    assert [e["reportRecipients"] for e in sandbox.executions(E)] == [["data-team@example.com"]]
