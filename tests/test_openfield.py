"""OpenField profiles runs end to end: warehouse rows → payloads → the OpenField sandbox, over real sockets.

Each test reads back what the sandbox holds and what crossed the socket (its request log), and what
the run recorded (ledger results, details, reject file), as a user checking a run would.
"""

from __future__ import annotations

import csv
import json
import secrets
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from etl.config import Config, load_config
from etl.errors import ConfigError
from etl.logs import redact
from etl.runtime.runs import RunOutcome, execute
from etl.runtime.ledger import open_store
from etl.testing.openfield_sandbox import OpenFieldSandbox
from jobs import job_for

REPO = Path(__file__).resolve().parent.parent
TENANT, APPLICATION, PASSWORD = "tenant-1", "app-1", "of-secret-3c9a17b2"

COLUMNS = ("email", "firstname", "lastname", "gender", "civility", "birthday", "country", "zipcode", "locality",
           "address", "number", "language", "participated_at", "optin_newsletter", "optin_partners", "password")
PEOPLE = [
    ("ann@example.com", "Ann", "Peeters", "F", "Madame", "1990-08-01", "BE", "1000", "Brussels", "Rue de la Loi",
     "16", "NL", "2026-11-02 09:15:00", 1, 0, "s3cret-ann"),
    ("bob@example.com", "Bob", "Maes", "M", "Mr", "1985-12-31", "FRA", "75001", "Paris", "Rue de Rivoli", None,
     None, "2026-11-03 18:00:05", 0, 1, "s3cret-bob"),
    ("cleo@example.com", "Cléo", "Dubois", "female", "MME", None, "lu", None, None, None, None, "fr",
     None, 0, 0, None),
    ("dan@example.com", "Dan", "Wouters", "X", "M", "1970-01-01", "BE", "2000", "Antwerpen", None, None, None,
     "2026-11-04 10:00:00", 1, 1, None),
    ("eve@example.com", "Eve", "Claes", "F", "Dr", "1999-02-02", "BE", None, None, None, None, None,
     "2026-11-04 10:00:00", 0, 0, None),
    ("finn@example.com", "Finn", "Lambert", "H", "Monsieur", "31/02/1990", "BE", None, None, None, None, None,
     "2026-11-04 10:00:00", 0, 0, None),
    ("gus@example.com", "Gus", "Leroy", "M", "M", "1960-05-05", "Belgium", None, None, None, None, None,
     "2026-11-04 10:00:00", 0, 0, None),
    ("hana@example.com", "Hana", "Nguyen", "F", "MME", "2001-03-04", "BE", None, None, None, None, None,
     None, 1, 0, None),
]
PARTY = {"PartyType": "Person", "Version": 1}


def service(name: str, when: str) -> dict[str, Any]:
    return {"ActivationDate": when, "ServiceId": name, "ServiceStatus": True, "ServiceTypeId": "OPTINS"}


#: what OpenField must hold after one run, written out by hand from PEOPLE and seed 002
EXPECTED = {
    "ann@example.com": {
        "Party": {**PARTY, "LanguageId": "nl"}, "Email": "ann@example.com", "FirstName": "Ann", "LastName": "Peeters",
        "Gender": "F", "Civility": "MME", "BirthDate": "01081990", "Country": "BEL", "ZipCode": "1000",
        "Locality": "Brussels", "Address": "Rue de la Loi 16",
        "Services": [service("Newsletter", "2026-11-02T09:15:00")],
    },
    "bob@example.com": {
        "Party": {**PARTY, "LanguageId": "fr"}, "Email": "bob@example.com", "FirstName": "Bob", "LastName": "Maes",
        "Gender": "H", "Civility": "M", "BirthDate": "31121985", "Country": "FRA", "ZipCode": "75001",
        "Locality": "Paris", "Address": "Rue de Rivoli", "Services": [service("Partners", "2026-11-03T18:00:05")],
    },
    "cleo@example.com": {
        "Party": {**PARTY, "LanguageId": "fr"}, "Email": "cleo@example.com", "FirstName": "Cléo",
        "LastName": "Dubois", "Gender": "F", "Civility": "MME", "Country": "LUX",
    },
}
REJECTED = {
    4: ("X", "gender: 'X' is not a gender OpenField takes"),
    5: ("Dr", "civility: 'Dr' is not a civility OpenField takes"),
    6: ("31/02/1990", "birthday: '31/02/1990' is not a date"),
    7: ("Belgium", "country: 'Belgium' is not an ISO 3166-1 country code"),
    8: ("Y", "optin_newsletter: given, but participated_at is empty"),
}


@dataclass
class Project:
    dir: Path
    db: Path
    sandbox: OpenFieldSandbox
    environ: dict[str, str]

    def config(self, extra: str = "", activation: str = "") -> Config:
        (self.dir / "schedules.toml").write_text(textwrap.dedent(f"""\
            [settings]
            state_dir = "state"
            [warehouses.w]
            url = "sqlite:///{self.db}"
            [destinations.of]
            type = "openfield"
            url = "{self.sandbox.url}"
            tenant_id = "{TENANT}"
            application_id = "{APPLICATION}"
            password = "${{OF_PASSWORD}}"
            calls_per_minute = 10000
            {extra}
            [activations.people]
            kind = "profiles"
            sql = "people.sql"
            destination = "of"
            {activation or 'on_invalid = "reject_row"'}
            """), encoding="utf-8")
        return load_config(self.dir / "schedules.toml", environ=self.environ)

    def run(self, config: Config | None = None, **options: Any) -> RunOutcome:
        config = config or self.config()
        store = open_store(config)
        try:
            return execute(config, store, "people", "profiles", job_for("profiles"),
                           now=datetime.now().astimezone(), **options)
        finally:
            store.close()

    def sent(self) -> list[tuple[str, int]]:
        return [(method, status) for method, _, status in self.sandbox.request_log]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    db = tmp_path / "warehouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE people ({', '.join(COLUMNS)})")
        conn.executemany(f"INSERT INTO people VALUES ({', '.join('?' * len(COLUMNS))})", PEOPLE)
    (tmp_path / "people.sql").write_text(f"SELECT {', '.join(COLUMNS)} FROM people ORDER BY email", encoding="utf-8")
    with OpenFieldSandbox(tenant_id=TENANT, application_id=APPLICATION, password=PASSWORD,
                          fault_delay_seconds=0.5) as sandbox:
        yield Project(tmp_path, db, sandbox, {"OF_PASSWORD": PASSWORD})


def held(sandbox: OpenFieldSandbox) -> dict[str, dict[str, Any]]:
    return {p["Email"]: {k: v for k, v in p.items() if k != "PartyId"} for p in sandbox.profiles()}


def rejects_of(outcome: RunOutcome) -> dict[int, tuple[str, str]]:
    """Row → (value, reason) of its first problem (every problem of a row is listed)."""
    found: dict[int, tuple[str, str]] = {}
    with open(outcome.details["rejects_file"], newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            found.setdefault(int(row["row"]), (row["value"], row["reason"]))
    return found


# ---------------------------------------------------------------------------------------------- one run


def test_a_run_creates_exactly_the_expected_payloads_and_rejects_the_rest(project: Project) -> None:
    outcome = project.run()
    assert outcome.ok, outcome.error
    assert held(project.sandbox) == EXPECTED
    assert "s3cret" not in json.dumps(project.sandbox.state())  # passwords are never synced
    assert outcome.results["rows_extracted"] == len(PEOPLE)
    assert outcome.results["rows_rejected"] == len(REJECTED)
    assert outcome.results["rows_delivered"] == len(EXPECTED)
    assert (outcome.details["created"], outcome.details["updated"]) == (3, 0)
    assert outcome.details["dropped_columns"] == ["password"]
    found = rejects_of(outcome)
    assert sorted(found) == sorted(REJECTED)
    for row, (value, reason) in REJECTED.items():
        assert found[row][0] == (value or "") and found[row][1].startswith(reason), found[row]


def test_a_known_profile_is_updated_not_duplicated(project: Project) -> None:
    known = project.sandbox.add_profile({"Party": {**PARTY, "LanguageId": "fr"}, "Email": "ann@example.com",
                                         "FirstName": "Anne", "Locality": "Gent"})
    outcome = project.run()
    assert outcome.ok, outcome.error
    assert (outcome.details["created"], outcome.details["updated"]) == (2, 1)
    profiles = [p for p in project.sandbox.profiles() if p["Email"] == "ann@example.com"]
    assert len(profiles) == 1 and profiles[0]["PartyId"] == known
    assert held(project.sandbox)["ann@example.com"] == EXPECTED["ann@example.com"]


def test_an_unchanged_second_run_sends_nothing_and_a_changed_row_is_the_only_one_sent(project: Project) -> None:
    assert project.run().ok
    before = len(project.sandbox.request_log)
    second = project.run()
    assert second.ok and second.results["rows_delivered"] == 0
    assert len(project.sandbox.request_log) == before  # not even a lookup
    with sqlite3.connect(project.db) as conn:
        conn.execute("UPDATE people SET locality = 'Gent', optin_partners = 1 WHERE email = 'ann@example.com'")
    third = project.run()
    assert third.ok and third.results["rows_delivered"] == 1 and third.details["updated"] == 1
    assert project.sent()[before:] == [("GET", 200), ("PUT", 200)]
    ann = held(project.sandbox)["ann@example.com"]
    assert ann["Locality"] == "Gent"
    assert ann["Services"] == [service("Newsletter", "2026-11-02T09:15:00"), service("Partners", "2026-11-02T09:15:00")]


def test_429s_and_500s_are_retried_to_success(project: Project) -> None:
    project.sandbox.inject_faults(500, 2, method="GET")
    project.sandbox.inject_faults(429, 2, method="POST", retry_after=0)
    outcome = project.run()
    assert outcome.ok, outcome.error
    assert held(project.sandbox) == EXPECTED
    statuses = [status for _, status in project.sent()]
    assert statuses.count(500) == 2 and statuses.count(429) == 2
    assert outcome.details["requests"] == len(project.sandbox.request_log)


def test_an_unclear_create_does_not_create_a_duplicate(project: Project) -> None:
    project.sandbox.inject_faults("disconnect", 1, method="POST")
    project.sandbox.inject_faults("timeout", 1, method="POST")
    outcome = project.run()
    assert outcome.ok, outcome.error
    emails = [p["Email"] for p in project.sandbox.profiles()]
    assert sorted(emails) == sorted(EXPECTED)  # each once
    assert [m for m, _ in project.sent()].count("POST") == len(EXPECTED)


def test_a_wrong_password_fails_the_run_with_one_clear_error_without_the_secret(project: Project) -> None:
    project.environ["OF_PASSWORD"] = "not-the-password-77aa"
    outcome = project.run()
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "HTTP 401" in outcome.error and "check the OpenField password" in outcome.error
    assert "not-the-password-77aa" not in outcome.error
    assert project.sent() == [("GET", 401)]  # the first profile goes alone: one refusal, not one per row
    assert project.sandbox.profiles() == []


def test_a_run_over_the_daily_request_budget_is_refused_before_sending(project: Project) -> None:
    outcome = project.run(project.config("daily_request_budget = 5"))
    assert outcome.status == "failed"
    assert outcome.error is not None and "daily_request_budget" in outcome.error
    assert "needs up to 6 requests" in outcome.error
    assert project.sandbox.request_log == []


def test_a_dry_run_sends_nothing(project: Project) -> None:
    outcome = project.run(dry_run=True)
    assert outcome.ok and "dry run" in outcome.details["note"]
    assert project.sandbox.request_log == []


def test_update_only_skips_unknown_profiles(project: Project) -> None:
    config = project.config(activation='mode = "UPDATE_ONLY"\non_invalid = "reject_row"')
    project.sandbox.add_profile({"Party": {**PARTY, "LanguageId": "fr"}, "Email": "bob@example.com"})
    outcome = project.run(config)
    assert outcome.ok, outcome.error
    assert (outcome.details["created"], outcome.details["updated"], outcome.details["skipped"]) == (0, 1, 2)
    assert sorted(held(project.sandbox)) == ["bob@example.com"]


# ---------------------------------------------------------------------------------------------- configuration


def problems_of(project: Project, destination: str, activation: str = "") -> list[tuple[str, str]]:
    (project.dir / "schedules.toml").write_text(textwrap.dedent(f"""\
        [warehouses.w]
        url = "sqlite:///{project.db}"
        [destinations.of]
        type = "openfield"
        """) + textwrap.dedent(destination) + textwrap.dedent(f"""\
        [activations.people]
        sql = "people.sql"
        destination = "of"
        """) + textwrap.dedent(activation), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(project.dir / "schedules.toml", environ={})
    return caught.value.problems


def test_a_missing_tenant_id_and_a_literal_password_are_named(project: Project) -> None:
    problems = problems_of(project, """\
        url = "https://crm.example.com/openfield"
        application_id = "app"
        password = "hunter2-literal"
        """, 'kind = "profiles"\n')
    assert ("[destinations.of] tenant_id", "required key is missing") in problems
    assert any(where == "[destinations.of] password" and "${ENV_VAR}" in what for where, what in problems)
    assert all("hunter2-literal" not in what for _, what in problems)


def test_an_openfield_destination_takes_profiles_only_and_no_actito_keys(project: Project) -> None:
    problems = problems_of(project, 'environment = "sandbox"\ntenant_id = "t"\napplication_id = "a"\n',
                           'identifier = "email"\n')
    assert problems == [("[activations.people] destination",
                         '[destinations.of] is an OpenField destination: only kind = "profiles" goes there')]
    problems = problems_of(project, """\
        environment = "sandbox"
        tenant_id = "t"
        application_id = "a"
        routes = { find = "GET /profiles" }
        """, 'kind = "profiles"\n')
    assert ("[destinations.of] routes", "routes.find needs the placeholder {value}") in problems
    problems = problems_of(project, 'environment = "sandbox"\ntenant_id = "t"\napplication_id = "a"\n',
                           'kind = "profiles"\ntable = "customers"\n')
    assert problems == [("[activations.people] table", "not used with the OpenField destination "
                                                        "[destinations.of]: remove it")]


def test_an_unknown_column_is_refused_before_anything_is_sent(project: Project) -> None:
    (project.dir / "people.sql").write_text("SELECT email, firstname, zipcode AS shoe_size FROM people", encoding="utf-8")
    outcome = project.run()
    assert outcome.status == "failed" and outcome.error is not None
    assert "'shoe_size': not a field of the OpenField profile" in outcome.error
    assert project.sandbox.request_log == []


# ---------------------------------------------------------------------------------------------- the demo


def demo_rows(project: Path) -> list[sqlite3.Row]:
    sql = (project / "sql" / "openfield_profiles.sql").read_text(encoding="utf-8")
    with sqlite3.connect(project / "var" / "demo" / "warehouse.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()


def expected_demo_payload(row: sqlite3.Row) -> dict[str, Any]:
    """The payload of one accepted demo row, computed here without etl.destinations.openfield."""
    alpha3 = {"BE": "BEL", "FR": "FRA", "NL": "NLD", "LU": "LUX", "DE": "DEU"}
    birthday = date.fromisoformat(row["birthday"]).strftime("%d%m%Y") if row["birthday"] else None
    payload: dict[str, Any] = {
        "Party": {"PartyType": "Person", "Version": 1, "LanguageId": row["language"]},
        "Email": row["email"].removeprefix("mailto:"), "FirstName": row["firstname"], "LastName": row["lastname"],
        "Address": f"{row['address']} {row['number']}", "ZipCode": row["zipcode"], "Locality": row["locality"],
        "Country": alpha3[row["country"]], "BirthDate": birthday,
        "Gender": {"M": "H", "F": "F"}[row["gender"].upper()] if row["gender"] else None,
        "Civility": {"M": "M", "MR": "M", "MONSIEUR": "M", "MME": "MME", "MADAME": "MME"}[row["civility"].upper()]
        if row["civility"] else None,
    }
    when = row["participated_at"].replace(" ", "T")
    services = [service(name, when) for column, name in (("optin_newsletter", "Newsletter"),
                                                         ("optin_partners", "Partners")) if row[column]]
    if services:
        payload["Services"] = services
    return {k: v for k, v in payload.items() if v is not None}


def test_the_demo_activation_lands_in_the_sandbox_exactly_as_converted(tmp_path: Path) -> None:
    # rows with a bad value rejected whole, as before on_invalid (tests/test_field_policy.py: the default)
    (tmp_path / "schedules.toml").write_text((REPO / "schedules.toml").read_text("utf-8").rstrip()
                                             + '\non_invalid = "reject_row"\n', "utf-8")
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    done = subprocess.run([sys.executable, "-m", "etl", "--log-format", "json", "run", "openfield_profiles"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = next(r for r in map(json.loads, filter(str.strip, done.stdout.splitlines()))
                  if r.get("event") == "run_finished")
    state = json.loads((tmp_path / "var" / "state" / "openfield-sandbox" / "state.json").read_text("utf-8"))
    profiles = {p["Email"]: p for p in state["profiles"].values()}
    with open(result["rejects_file"], newline="", encoding="utf-8") as file:
        rejected = {int(r["row"]): r["reason"] for r in csv.DictReader(file)}
    rows = demo_rows(tmp_path)
    kept = [row for number, row in enumerate(rows, start=1) if number not in rejected]
    assert result["rows_delivered"] == len(profiles) == len(kept) > 1000
    assert {email: payload for email, payload in profiles.items()} == {
        row["email"].removeprefix("mailto:"): expected_demo_payload(row) for row in kept
    }
    # the demo's dirt is refused with reasons, and the passwords never leave
    reasons = " ".join(rejected.values())
    for expected in ("gender: 'X'", "civility: 'Dr'", "country: 'Belgium'", "birthday: ", "email: "):
        assert expected in reasons
    assert "demo-secret" not in json.dumps(state)
    assert any(p.get("Country") == "BEL" for p in profiles.values())
    assert any("Services" not in p for p in profiles.values())  # opt-ins not given send no service


def test_the_password_from_the_environment_is_redacted_from_logs(project: Project) -> None:
    fresh = f"never-seen-before-{secrets.token_hex(8)}"  # registered by loading the configuration, nothing else
    project.environ["OF_PASSWORD"] = fresh
    assert fresh in redact(fresh)
    project.config()
    assert fresh not in redact(f"calling with {fresh}")
