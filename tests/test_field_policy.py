"""Field-level policy for invalid values, through the real CLI on the shipped demo: each run is its own
process talking to the in-process Actito / OpenField sandboxes over loopback sockets.

A bad optional field (a national-format phone, gender X, a country name) drops that value, not the
person; the key and mandatory attributes still reject their row; ``on_invalid`` restores rejection per
column; every problem is listed in the reject file with its action and counted as "values dropped"."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
#: the Qualifio variable of each attribute whose values the demo has bad ones of
TARGET = {"phone": "telephoneNumber", "gender": "sex", "country": "addressCountry", "birthday": "birthDate",
          "email": "emailAddress", "firstname": "firstName", "deviceName": "deviceName"}


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", "schedules.toml", *args],
                          capture_output=True, text=True, timeout=300, cwd=project)


def demo(tmp_path: Path, activation_lines: str = "") -> Path:
    """A copy of the shipped demo; ``activation_lines`` go at the end of [activations.qualifio_profiles]."""
    text = (REPO / "schedules.toml").read_text("utf-8")
    if activation_lines:
        anchor = "[activations.qualifio_participations]"
        text = text.replace(anchor, f"{activation_lines}\n\n{anchor}", 1)
    (tmp_path / "schedules.toml").write_text(text, "utf-8")
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    return tmp_path


def run_json(project: Path, *names: str) -> dict[str, dict[str, Any]]:
    done = cli(project, "--log-format", "json", "run", *names)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {line["activation"]: line for line in lines if line.get("event") == "run_finished"}


def rejects(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def profiles(project: Path) -> dict[str, dict[str, Any]]:
    state = json.loads((project / "var" / "state" / "sandbox" / "state.json").read_text("utf-8"))
    return {p["attributes"]["emailAddress"]: p["attributes"]
            for p in state["entities"]["demo"]["profileTables"]["customers"]}


def participants(project: Path) -> int:
    """How many rows the qualifio_profiles query returns: one per participant, every one meant to be sent
    (the demo sends the profiles of participants who never finished a campaign too)."""
    with sqlite3.connect(project / "var" / "demo" / "warehouse.db") as db:
        return int(db.execute("SELECT COUNT(DISTINCT email) FROM qualifio_participations").fetchone()[0])


def sent_emails(result: dict[str, Any], rejected: set[int]) -> dict[int, str]:
    """Source row → the e-mail as sent (normalised), from the run's import file: rows kept, in source order."""
    sent = Path(result["rejects_file"]).with_name(result["files"][0]["name"])
    with gzip.open(sent, "rt", encoding="utf-8", newline="") as handle:
        emails = [row["emailAddress"] for row in csv.DictReader(handle)]
    kept = [row for row in range(1, result["rows_extracted"] + 1) if row not in rejected]
    return dict(zip(kept, emails, strict=True))


def test_no_participant_with_a_valid_email_is_lost_for_an_optional_field(tmp_path: Path) -> None:
    project = demo(tmp_path)
    result = run_json(project, "qualifio_profiles", "qualifio_participations")["qualifio_profiles"]
    lines = rejects(result["rejects_file"])
    by_row: dict[int, list[dict[str, str]]] = {}
    for line in lines:
        by_row.setdefault(int(line["row"]), []).append(line)
    rejected = {row for row, found in by_row.items() if any(f["action"] == "row rejected" for f in found)}
    dropped = [line for line in lines if line["action"] == "value dropped"]

    # only the key rejects a row (its other problems are listed with it); every other problem drops its value
    assert rejected and all(by_row[row][0]["column"] == "email" for row in rejected)
    assert {line["column"] for line in dropped} == {"phone", "gender", "country", "birthday", "firstname"}
    assert result["rows_rejected"] == len(rejected) and result["values_dropped"] == len(dropped) > 300

    held = profiles(project)
    assert len(held) == participants(project) - len(rejected) == result["rows_delivered"]
    assert not result.get("left_out")  # incomplete_participations = true: a participant is a participant
    emails = sent_emails(result, rejected)
    for line in dropped:  # the person is there, without the bad value
        person = held[emails[int(line["row"])]]
        assert person.get(TARGET[line["column"]]) in (None, ""), line

    # a row with several problems lists them all, not only the first
    assert any(len({f["column"] for f in found}) > 1 for found in by_row.values())


def test_a_dropped_value_keeps_what_actito_holds_and_is_counted_everywhere(tmp_path: Path) -> None:
    project = demo(tmp_path)
    before = run_json(project, "qualifio_profiles")["qualifio_profiles"]["values_dropped"]
    held = profiles(project)
    email, phone = next((e, p["telephoneNumber"]) for e, p in sorted(held.items()) if p.get("telephoneNumber"))
    with sqlite3.connect(project / "var" / "demo" / "warehouse.db") as db:
        db.execute("UPDATE qualifio_participations SET phone = '0470 12 34 56', firstname = 'Renamed' "
                   "WHERE email = ?", (email,))

    done = cli(project, "run", "qualifio_profiles")
    assert done.returncode == 0, done.stdout + done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("activation"))
    assert "values dropped" in header
    row = next(line for line in done.stdout.splitlines() if line.startswith("qualifio_profiles"))
    # counted over every row read, as rejections are: one more than before, in its own column
    assert re.search(rf"succeeded\s+[\d,]+\s+[\d,]+\s+{before + 1}\s", row), done.stdout

    person = profiles(project)[email]
    assert person["firstName"] == "Renamed" and person["telephoneNumber"] == phone  # empty cell + KEEP: not erased
    history = cli(project, "history", "qualifio_profiles")
    assert "values dropped" in history.stdout.splitlines()[0]
    run_id = history.stdout.splitlines()[2].split()[0]
    shown = cli(project, "show", run_id).stdout
    assert f"values dropped {before + 1}" in shown and "value dropped" in shown and "0470 12 34 56" in shown
    report = project / "report.html"
    assert cli(project, "report", "--output", str(report)).returncode == 0
    assert "Values dropped" in report.read_text("utf-8")


def test_reject_row_on_a_column_restores_rejection_for_it(tmp_path: Path) -> None:
    project = demo(tmp_path, 'on_invalid = { phone = "reject_row" }')
    result = run_json(project, "qualifio_profiles")["qualifio_profiles"]
    lines = rejects(result["rejects_file"])
    phone_rows = {int(line["row"]) for line in lines if line["column"] == "phone"}
    assert phone_rows and all(line["action"] == "row rejected" for line in lines if line["column"] == "phone")
    rejected = {int(line["row"]) for line in lines if line["action"] == "row rejected"}
    assert phone_rows <= rejected
    assert rejected == phone_rows | {int(line["row"]) for line in lines if line["column"] == "email"}
    genders = {line["action"] for line in lines if line["column"] == "gender" and int(line["row"]) not in rejected}
    assert genders == {"value dropped"}  # the other columns keep the default
    assert len(profiles(project)) == participants(project) - len(rejected) == result["rows_delivered"]


def test_a_mandatory_attribute_still_rejects_the_row(tmp_path: Path) -> None:
    """The participations table's emailAddress is mandatory: a bad one rejects the participation."""
    project = demo(tmp_path)
    result = run_json(project, "qualifio_participations")["qualifio_participations"]
    lines = rejects(result["rejects_file"])
    invalid = [line for line in lines if line["column"] == "email"]
    assert invalid and {line["action"] for line in invalid} == {"row rejected"}
    dropped = [line for line in lines if line["action"] == "value dropped"]
    assert {line["column"] for line in dropped} == {"deviceName"}  # a tablet: not desktop nor mobile
    assert result["values_dropped"] == len(dropped) and all(line["value"] == "tablet" for line in dropped)


@pytest.mark.parametrize(("setting", "said"), [
    ('on_invalid = { phone = "drop" }', 'on_invalid.phone = \'drop\': use "reject_row"'),
    ('on_invalid = "sometimes"', "on_invalid = 'sometimes'"),
])
def test_a_wrong_policy_is_named_by_validate(tmp_path: Path, setting: str, said: str) -> None:
    done = cli(demo(tmp_path, setting), "validate")
    assert done.returncode != 0 and said in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("setting", "said"), [
    ('on_invalid = { email = "drop_value" }', "on_invalid.email: the key or a required attribute cannot be dropped"),
    ('on_invalid = { telephone = "reject_row" }', "on_invalid.telephone: no column of the query nor attribute"),
])
def test_a_policy_the_mapping_cannot_follow_fails_the_run_clearly(tmp_path: Path, setting: str, said: str) -> None:
    done = cli(demo(tmp_path, setting), "run", "qualifio_profiles")
    assert done.returncode != 0 and said in done.stdout + done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_openfield_keeps_every_participant_with_a_valid_email(tmp_path: Path) -> None:
    project = demo(tmp_path)
    result = run_json(project, "openfield_profiles")["openfield_profiles"]
    lines = rejects(result["rejects_file"])
    rejected = {int(line["row"]) for line in lines if line["action"] == "row rejected"}
    assert rejected == {int(line["row"]) for line in lines if line["column"] == "email"}
    assert {line["column"] for line in lines if line["action"] == "value dropped"} >= {"gender", "civility",
                                                                                        "country"}
    state = json.loads((project / "var" / "state" / "openfield-sandbox" / "state.json").read_text("utf-8"))
    assert len(state["profiles"]) == result["rows_delivered"] == result["rows_extracted"] - len(rejected)
