"""Profiles, subscriptions and interactions end to end: demo warehouse → real client → Actito sandbox."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl.destinations.actito.check import check_destination
from etl.destinations.actito.presets import qualifio_mapping
from etl.transform.mapping import RowMapper
from etl.config import Config, ProfilesActivation, load_config
from etl.extract import activation_batches
from etl.runtime.runs import RunOutcome, execute
from etl.runtime.ledger import open_store
from etl.testing.actito.server import ActitoSandbox
from etl.testing.actito.state import DEFAULT_FIXTURE
from jobs import job_for
from servers import with_actito_sandbox

REPO = Path(__file__).resolve().parent.parent
KEY = "sandbox-demo-key"


@pytest.fixture
def sandbox() -> Iterator[ActitoSandbox]:
    with ActitoSandbox(processing_seconds=0.05) as server:
        yield server


@pytest.fixture
def config_path(tmp_path: Path, sandbox: ActitoSandbox) -> Path:
    return _configured(tmp_path, sandbox)


def _configured(tmp_path: Path, sandbox: ActitoSandbox) -> Path:
    """The shipped configuration, its destination pointed at this test's sandbox."""
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    text = with_actito_sandbox((REPO / "schedules.toml").read_text(), sandbox.url)
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


def load(path: Path, key: str = KEY) -> Config:
    return load_config(path, environ={"TEST_ACTITO_KEY": key})


def run(config: Config, name: str) -> RunOutcome:
    store = open_store(config)
    try:
        return execute(config, store, name, config.activations[name].kind, job_for(config.activations[name].kind))
    finally:
        store.close()


def imports_posted(sandbox: ActitoSandbox) -> int:
    return sum(1 for method, path, status in sandbox.request_log
               if method == "POST" and path.endswith("/etl-executions") and status < 300)


def expected_profiles(config: Config) -> dict[str, dict[str, object]]:
    """The warehouse rows through the Qualifio mapping, first row per e-mail: what Actito must hold."""
    mapper: RowMapper | None = None
    expected: dict[str, dict[str, object]] = {}
    for batch in activation_batches(config, "qualifio_profiles", datetime.now(UTC)):
        mapper = mapper or RowMapper(qualifio_mapping(
            batch.schema.names, incomplete_participations=config.activation_of(
                "qualifio_profiles", ProfilesActivation).incomplete_participations))
        for row in mapper.map(batch).rows.to_pylist():
            expected.setdefault(str(row["emailAddress"]), row)
    return expected


def test_qualifio_profiles_land_in_actito_exactly_as_mapped(config_path: Path, sandbox: ActitoSandbox) -> None:
    config = load(config_path)
    outcome = run(config, "qualifio_profiles")
    assert outcome.ok, outcome.error
    stored = {p["attributes"]["emailAddress"]: p for p in sandbox.profiles("demo", "customers")}
    expected = expected_profiles(config)
    assert set(stored) == set(expected)
    assert outcome.results["rows_delivered"] == len(expected)
    for email, row in expected.items():
        attributes = stored[email]["attributes"]
        for column, value in row.items():
            if column.startswith("dataCollection."):
                continue  # the import's, not the profile's: test_qualifio_campaign_fields_are_the_imports_data_collection
            if column.startswith("subscription_"):
                assert stored[email]["subscriptions"].get(column.removeprefix("subscription_")) == (value == "Y")
            elif value is not None:
                assert attributes.get(column) == value, (email, column)


def test_rejected_rows_are_listed_with_their_reasons(config_path: Path, sandbox: ActitoSandbox) -> None:
    outcome = run(load(config_path), "qualifio_profiles")
    with open(outcome.details["rejects_file"], newline="", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    rows = {row["row"] for row in rejects if row["action"] == "row rejected"}
    dropped = [row for row in rejects if row["action"] == "value dropped"]
    assert len(rows) == outcome.results["rows_rejected"] > 0
    assert len(dropped) == outcome.details["values_dropped"] > 0
    reasons = " | ".join(row["reason"] for row in rejects)
    assert re.search(r"gender: 'X' is not", reasons)
    assert "birthday" in reasons and "international prefix" in reasons
    assert all(row["row"].isdigit() for row in rejects)


def test_a_second_unchanged_run_sends_nothing(config_path: Path, sandbox: ActitoSandbox) -> None:
    config = load(config_path)
    assert run(config, "qualifio_profiles").ok
    posted = imports_posted(sandbox)
    second = run(config, "qualifio_profiles")
    assert second.ok and second.results["rows_delivered"] == 0
    assert second.details["to_send"] == 0 and second.details["unchanged"] > 0
    assert imports_posted(sandbox) == posted


def test_a_changed_row_is_the_only_one_sent_again(config_path: Path, sandbox: ActitoSandbox) -> None:
    import sqlite3

    config = load(config_path)
    assert run(config, "qualifio_profiles").ok
    warehouse = config_path.parent / "var" / "demo" / "warehouse.db"
    with sqlite3.connect(warehouse) as db:
        email = db.execute("SELECT email FROM qualifio_participations WHERE gender = 'F' LIMIT 1").fetchone()[0]
        db.execute("UPDATE qualifio_participations SET locality = 'Namur' WHERE email = ?", (email,))
    second = run(config, "qualifio_profiles")
    assert second.ok and second.details["to_send"] == 1
    profile = next(p for p in sandbox.profiles("demo", "customers") if p["attributes"]["emailAddress"] == email)
    assert profile["attributes"]["addressLocality"] == "Namur"


def test_didomi_consents_update_known_profiles_and_create_none(config_path: Path, sandbox: ActitoSandbox) -> None:
    config = load(config_path)
    assert run(config, "qualifio_profiles").ok
    before = {p["attributes"]["emailAddress"]: p for p in sandbox.profiles("demo", "customers")}
    outcome = run(config, "didomi_consents")
    assert outcome.ok, outcome.error
    after = {p["attributes"]["emailAddress"]: p for p in sandbox.profiles("demo", "customers")}
    assert set(after) == set(before)  # upsert_mode = false: nobody created
    with open(outcome.details["rejects_file"], newline="", encoding="utf-8") as handle:
        refused = [row for row in csv.DictReader(handle) if "profile not found" in row["reason"]]
    assert refused and all(row["value"] not in before for row in refused)
    changed = [e for e in after if after[e]["subscriptions"] != before[e]["subscriptions"]]
    assert changed


def test_participations_become_interactions_linked_to_profiles(config_path: Path, sandbox: ActitoSandbox) -> None:
    config = load(config_path)
    assert run(config, "qualifio_profiles").ok
    outcome = run(config, "qualifio_participations")
    assert outcome.ok, outcome.error
    records = sandbox.records("demo", "participations")
    assert len(records) == outcome.results["rows_delivered"] > 0
    known = {p["attributes"]["emailAddress"] for p in sandbox.profiles("demo", "customers")}
    assert all(record["emailAddress"] in known for record in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["date"]) for record in records)


def test_the_daily_import_budget_is_refused_before_sending(config_path: Path, sandbox: ActitoSandbox) -> None:
    config_path.write_text(config_path.read_text().replace('entity = "demo"', 'entity = "demo"\ndaily_import_budget = 1'))
    config = load(config_path)
    assert run(config, "qualifio_profiles").ok
    posted = imports_posted(sandbox)
    outcome = run(config, "didomi_consents")  # the same table: its quota is used up
    assert outcome.status == "failed"
    assert "1 of the 1 allowed today on table 'customers'" in (outcome.error or "")
    assert imports_posted(sandbox) == posted


def test_a_server_error_on_the_upload_never_duplicates_the_import(config_path: Path, sandbox: ActitoSandbox) -> None:
    sandbox.inject_faults(500, 2, path_contains="etl-executions")
    outcome = run(load(config_path), "qualifio_profiles")
    assert outcome.ok, outcome.error
    assert len(sandbox.executions("demo")) == 1


def test_check_passes_on_the_shipped_configuration(config_path: Path) -> None:
    report = check_destination(load(config_path), "actito_demo")
    assert report.ok, report.text()
    assert "qualifio_profiles: table 'Customers'" in report.text()


def test_check_names_a_missing_column(config_path: Path) -> None:
    config_path.write_text(config_path.read_text() + """
[activations.crm_profiles]
kind = "profiles"
sql = "sql/crm_profiles.sql"
destination = "actito_demo"
table = "customers"
attributes = { email = "emailAddress", first_name = "firstName", shoe_size = "shoeSize" }
""")
    (config_path.parent / "sql" / "crm_profiles.sql").write_text(
        "SELECT email, firstname AS first_name, 42 AS shoe_size FROM qualifio_participations"
    )
    report = check_destination(load(config_path), "actito_demo")
    assert not report.ok
    assert "✗ crm_profiles: column shoe_size → shoeSize: table 'Customers' has no such attribute" in report.text()


def test_check_names_a_wrong_type(tmp_path: Path) -> None:
    """An Actito table whose birthDate is an integer cannot take Qualifio's birthday."""
    fixture = json.loads(DEFAULT_FIXTURE.read_text())
    table = fixture["licences"][0]["entities"][0]["profileTables"][0]
    for attribute in table["attributes"]:
        if attribute["name"] == "birthDate":
            attribute.update(type="CUSTOM", valueType="INTEGER")
    with ActitoSandbox(fixture) as sandbox:
        config = load(_configured(tmp_path, sandbox))
        report = check_destination(config, "actito_demo")
        outcome = run(config, "qualifio_profiles")
    assert "✗ qualifio_profiles: column birthday → birthDate: wrong type, we send a date but Actito's attribute is " \
           "INTEGER" in report.text()
    assert outcome.status == "failed" and "birthDate: wrong type" in (outcome.error or "")
    assert not sandbox.executions("demo")  # nothing was sent


def test_check_names_a_bad_key_without_showing_it(config_path: Path) -> None:
    report = check_destination(load(config_path, key="not-the-key-123"), "actito_demo")
    assert not report.ok
    assert report.lines[0][1].startswith("credentials:")
    assert "not-the-key-123" not in report.text()


def test_membership_delivery_imports_who_entered_and_deletes_who_left(
    config_path: Path, sandbox: ActitoSandbox
) -> None:
    import sqlite3

    config = load(config_path)
    first = run(config, "vip_members")
    assert first.ok, first.error
    members = {r["profileId"] for r in sandbox.records("demo", "audience_members")}
    assert len(members) == first.details["entered"] == first.results["rows_delivered"] > 100
    warehouse = config_path.parent / "var" / "demo" / "warehouse.db"
    with sqlite3.connect(warehouse) as db:
        leaving = [r[0] for r in db.execute(
            "SELECT actito_profile_id FROM customers WHERE lifetime_value >= 500 AND actito_profile_id IS NOT NULL "
            "ORDER BY customer_id LIMIT 4")]
        entering = [r[0] for r in db.execute(
            "SELECT actito_profile_id FROM customers WHERE lifetime_value < 500 AND actito_profile_id IS NOT NULL "
            "ORDER BY customer_id LIMIT 2")]
        db.execute(f"UPDATE customers SET lifetime_value = 0 WHERE actito_profile_id IN ({','.join('?' * 4)})", leaving)
        db.execute(f"UPDATE customers SET lifetime_value = 999 WHERE actito_profile_id IN ({','.join('?' * 2)})",
                   entering)
    second = run(config, "vip_members")
    assert second.ok, second.error
    assert (second.details["entered"], second.details["left"]) == (2, 4)
    after = {str(r["profileId"]) for r in sandbox.records("demo", "audience_members")}
    assert after == ({str(m) for m in members} - {str(p) for p in leaving}) | {str(p) for p in entering}
    assert all(r["audience"] == "vip_members" for r in sandbox.records("demo", "audience_members"))


def test_qualifio_campaign_fields_are_the_imports_data_collection(config_path: Path, sandbox: ActitoSandbox) -> None:
    """source / updateSource / way / date come from the rows (the latest participation's), not from this tool."""
    import sqlite3

    config = load(config_path)
    profiles_run = run(config, "qualifio_profiles")
    assert profiles_run.ok, profiles_run.error
    warehouse = config_path.parent / "var" / "demo" / "warehouse.db"
    with sqlite3.connect(warehouse) as db:
        latest_campaign, latest = db.execute(
            "SELECT campaign_id, participated_at FROM qualifio_participations "
            "ORDER BY participated_at DESC, participation_id DESC LIMIT 1").fetchone()
        campaigns = db.execute("SELECT COUNT(DISTINCT campaign_id) FROM qualifio_participations").fetchone()[0]
    [execution] = [e for e in sandbox.executions("demo") if e["table"] == "customers"]
    assert execution["dataCollection"] == {"source": "Qualifio", "updateSource": "Qualifio",
                                           "way": str(latest_campaign), "date": latest}
    assert profiles_run.details["data_collection_mixed"]["way"] == campaigns > 1  # said, not hidden
    from etl.ops.history import show_run

    store = open_store(config)
    try:
        shown = show_run(store.runs("qualifio_profiles", limit=1)[0])
    finally:
        store.close()
    assert f"collected  source Qualifio   way {latest_campaign} (latest of {campaigns})" in shown
    attributes = {a for p in sandbox.profiles("demo", "customers") for a in p["attributes"]}
    assert not attributes & {"source", "updateSource", "way", "date"}  # no attribute of a profile
    participations_run = run(config, "qualifio_participations")
    assert participations_run.ok and participations_run.details["left_out"] > 0
    store = open_store(config)
    try:
        shown = show_run(store.runs("qualifio_participations", limit=1)[0])
    finally:
        store.close()
    assert re.search(r"left out   \d+ incomplete participations", shown)
    [interactions] = [e for e in sandbox.executions("demo") if e["table"] == "participations"]
    assert interactions["dataCollection"]["source"] == "Qualifio"
    assert {r["way"] for r in sandbox.records("demo", "participations")} == {"4101", "4102", "4103"}


def test_without_campaign_fields_the_import_names_this_tool(config_path: Path, sandbox: ActitoSandbox) -> None:
    sql = config_path.parent / "sql" / "qualifio_profiles.sql"
    sql.write_text(re.sub(r",\s*'Qualifio' AS source.*AS date", "", sql.read_text(), flags=re.S))
    outcome = run(load(config_path), "qualifio_profiles")
    assert outcome.ok, outcome.error
    [execution] = sandbox.executions("demo")
    assert execution["dataCollection"]["source"] == "audience-sync"
    assert execution["dataCollection"]["way"] == "qualifio_profiles"
    assert "data_collection" not in outcome.details



def after_profiles(config: Config, name: str) -> RunOutcome:
    """``name`` run once the participants it refers to are profiles, as the demo's ``after`` orders it."""
    assert run(config, "qualifio_profiles").ok
    outcome = run(config, name)
    assert outcome.ok, outcome.error
    return outcome


def test_incomplete_participations_are_left_out_unless_the_preset_option_says_push(
    config_path: Path, sandbox: ActitoSandbox
) -> None:
    import sqlite3

    config = load(config_path)
    left = after_profiles(config, "qualifio_participations")
    warehouse = config_path.parent / "var" / "demo" / "warehouse.db"
    with sqlite3.connect(warehouse) as db:
        stopped = {str(r[0]) for r in db.execute("SELECT participation_id FROM qualifio_participations "
                                                 "WHERE completed = 0")}
    held = {r["participationId"] for r in sandbox.records("demo", "participations")}
    assert stopped and not held & stopped
    assert left.details["left_out"] == len(stopped)  # every participation is within the query's 90 days
    with open(left.details["rejects_file"], newline="", encoding="utf-8") as handle:
        assert not [row for row in csv.DictReader(handle) if row["value"] in stopped]  # not rejected: left out

    config_path.write_text(config_path.read_text().replace(
        "incomplete_participations = false   # participations", "incomplete_participations = true   # participations"))
    pushed = run(load(config_path), "qualifio_participations")
    assert pushed.ok, pushed.error
    assert "left_out" not in pushed.details
    held = {r["participationId"] for r in sandbox.records("demo", "participations")}
    assert stopped & held  # sent now (those of known profiles)


def test_incomplete_participations_needs_the_qualifio_preset(config_path: Path) -> None:
    from etl.errors import ConfigError

    config_path.write_text(config_path.read_text().replace(
        'preset = "qualifio"            # firstname', '# firstname', 1))
    with pytest.raises(ConfigError, match=r'qualifio_profiles.*incomplete_participations is an option of preset'):
        load(config_path)


def test_didomi_metadata_lands_in_existing_attributes_and_the_rest_is_listed(
    config_path: Path, sandbox: ActitoSandbox
) -> None:
    outcome = after_profiles(load(config_path), "didomi_consents")
    # the extra column updated_at and the JSON property favouriteShop: no attribute of that name, not sent
    assert outcome.details["metadata_not_in_table"] == ["updated_at", "metadata.favouriteShop"]
    assert "not sent: updated_at, metadata.favouriteShop" in outcome.delivery.summary
    profiles = sandbox.profiles("demo", "customers")
    assert {p["attributes"].get("loyaltyTier") for p in profiles} >= {"bronze", "silver", "gold"}
    assert {p["attributes"].get("gdprConsent") for p in profiles} >= {True, False}
    assert not any("favouriteShop" in p["attributes"] or "updated_at" in p["attributes"] for p in profiles)
    with open(outcome.details["rejects_file"], newline="", encoding="utf-8") as handle:
        broken = [row for row in csv.DictReader(handle) if row["column"] == "metadata"]
    assert broken and {row["action"] for row in broken} == {"value dropped"}


def test_check_lists_metadata_the_table_has_no_attribute_for(config_path: Path) -> None:
    report = check_destination(load(config_path), "actito_demo")
    assert report.ok, report.text()
    assert "! didomi_consents: column updated_at is metadata table 'Customers' has no attribute for" in report.text()


def test_imports_name_the_technical_email_as_their_report_recipient(config_path: Path, sandbox: ActitoSandbox) -> None:
    """technical_email receives Actito's import reports: one-shot definitions name it (field: a wire setting)."""
    after_profiles(load(config_path), "qualifio_participations")
    assert {tuple(e["reportRecipients"]) for e in sandbox.executions("demo")} == {("data-team@example.com",)}
    config_path.write_text(config_path.read_text().replace(
        "[destinations.actito_demo.files]", '[destinations.actito_demo.wire]\nreport_recipients_field = ""\n\n'
                                            "[destinations.actito_demo.files]"))
    assert run(load(config_path), "didomi_consents").ok
    assert sandbox.executions("demo")[-1]["reportRecipients"] == []  # switched off: not sent


def test_a_report_recipients_field_that_is_no_name_is_refused(config_path: Path) -> None:
    from etl.errors import ConfigError

    config_path.write_text(config_path.read_text().replace(
        "[destinations.actito_demo.files]", '[destinations.actito_demo.wire]\nreport_recipients_field = "1 field"\n\n'
                                            "[destinations.actito_demo.files]"))
    with pytest.raises(ConfigError, match="report_recipients_field"):
        load(config_path)
