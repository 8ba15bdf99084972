"""Rows Actito refuses for a missing dependency wait in a retry queue and are sent again, unchanged.

Each test runs the real CLI in child processes on a copy of the shipped demo (its warehouse, its
Actito sandbox whose state outlives each process): a participation whose participant's profile was
refused is accepted on the run after the profile is fixed, with no other change; a consent of an
unknown profile waits until ``retry_refused_for`` has passed (the clock moved with libfaketime), the
queue stays within ``retry_queue_max``, and a run killed after Actito answered, before it recorded
anything, leaves the queue as a finished run would have.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbservers import faketime
from etl.destinations.actito.refusals import Refusals
from etl.destinations.actito.tables import LineError

REPO = Path(__file__).resolve().parent.parent
WAITING = "profile not found (sent again on the next runs"


def project(tmp_path: Path, **activation_settings: str) -> Path:
    """The demo in ``tmp_path``; each keyword sets a key of that activation (``name = "key = value"``)."""
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    text = (REPO / "schedules.toml").read_text("utf-8")
    for name, line in activation_settings.items():
        header = f"[activations.{name}]\n"
        assert header in text
        start = text.index(header) + len(header)
        end = text.find("\n[", start) % (len(text) + 1)
        key = line.split("=")[0].strip()
        block = "".join(kept for kept in text[start:end].splitlines(keepends=True)
                        if kept.split("=")[0].strip() != key)  # the shipped value, replaced
        text = text[:start] + line + "\n" + block + text[end:]
    (tmp_path / "schedules.toml").write_text(text, "utf-8")
    return tmp_path / "schedules.toml"


def cli(config: Path, *args: str, env: dict[str, str] | None = None,
        clock: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(clock or []), sys.executable, "-m", "etl", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300, cwd=config.parent,
                          env={**os.environ, **(env or {})})


def run(config: Path, *names: str, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Each activation's JSON line, the run having succeeded."""
    done = cli(config, "--log-format", "json", "run", *names, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event"')]
    return {line["activation"]: line for line in lines}


def rejects(line: dict[str, Any]) -> list[dict[str, str]]:
    with open(line["rejects_file"], newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sandbox(config: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((config.parent / "var/state/sandbox/state.json").read_text("utf-8"))
    return state["entities"]["demo"]


def test_a_participation_refused_for_its_missing_profile_is_accepted_once_the_profile_is_fixed(
        tmp_path: Path) -> None:
    # profiles with a bad phone are rejected, so Actito refuses their participations: their profile is missing
    config = project(tmp_path, qualifio_profiles='on_invalid = { phone = "reject_row" }')
    first = run(config, "qualifio_profiles", "qualifio_participations")["qualifio_participations"]
    waiting = [row for row in rejects(first) if WAITING in row["reason"]]
    assert first["refused_by_actito"] == len(waiting) == first["retry_queue"] > 10

    email = waiting[0]["value"]  # the participant's e-mail, the profile Actito did not find
    theirs = sum(1 for row in waiting if row["value"] == email)
    with sqlite3.connect(tmp_path / "var/demo/warehouse.db") as db:
        db.execute("UPDATE qualifio_participations SET phone = '+32470000001' WHERE email = ?", (email,))
        ids = {str(r[0]) for r in db.execute("SELECT participation_id FROM qualifio_participations WHERE email = ?",
                                             (email,))}

    second = run(config, "qualifio_profiles", "qualifio_participations")
    participations = second["qualifio_participations"]
    assert second["qualifio_profiles"]["rows_delivered"] == 1  # the fixed profile, created first (after =)
    assert participations["retried"] == len(waiting)  # the whole queue went again, no row of it changed
    assert participations["rows_delivered"] == theirs
    assert participations["retry_queue"] == len(waiting) - theirs
    records = {r["participationId"]: r for r in sandbox(config)["customTables"]["participations"]}
    assert {i for i in ids if i in records} and all(records[i]["emailAddress"] == email for i in ids if i in records)

    shown = cli(config, "show", participations["run_id"]).stdout
    assert re.search(rf"retries\s+{len(waiting)} sent again .*; {participations['retry_queue']} waiting", shown)
    history = cli(config, "history", "qualifio_participations").stdout
    assert "retry queue" in history.splitlines()[0]

    third = run(config, "qualifio_participations")["qualifio_participations"]
    assert third["retried"] == participations["retry_queue"] and third["rows_delivered"] == 0


def test_a_consent_waits_for_its_profile_for_retry_refused_for_then_is_given_up(tmp_path: Path) -> None:
    clock = faketime("a week cannot pass in a test otherwise")
    config = project(tmp_path, didomi_consents='retry_refused_for = "7d"')
    first = run(config, "qualifio_profiles", "didomi_consents")["didomi_consents"]
    queued = first["retry_queue"]
    assert queued == first["refused_by_actito"] > 50

    six_days = run(config, "didomi_consents", clock=[clock, "-f", "+6d"])["didomi_consents"]
    assert six_days["retried"] == queued and six_days["retry_queue"] == queued  # refused again, the window kept

    eight_days = run(config, "didomi_consents", clock=[clock, "-f", "+8d"])["didomi_consents"]
    assert eight_days["retried"] == 0 and eight_days["retry_queue"] == 0 and eight_days["rows_delivered"] == 0
    assert eight_days["retries_expired"] == queued and eight_days["rows_rejected"] == first["rows_rejected"]
    given_up = [row for row in rejects(eight_days) if "sent again for 7d" in row["reason"]]
    assert len(given_up) == queued and "raise retry_refused_for" in given_up[0]["reason"]


def test_retries_off_leave_a_refused_consent_waiting_for_a_change(tmp_path: Path) -> None:
    config = project(tmp_path, didomi_consents='retry_refused_for = "off"')
    first = run(config, "qualifio_profiles", "didomi_consents")["didomi_consents"]
    assert first["refused_by_actito"] > 50 and "retry_queue" not in first
    assert not [row for row in rejects(first) if WAITING in row["reason"]]
    second = run(config, "didomi_consents")["didomi_consents"]
    assert second["rows_delivered"] == 0 and second["still_refused"] == first["refused_by_actito"]


def test_the_queue_keeps_at_most_retry_queue_max_rows(tmp_path: Path) -> None:
    config = project(tmp_path, didomi_consents="retry_queue_max = 10")
    first = run(config, "qualifio_profiles", "didomi_consents")["didomi_consents"]
    assert first["refused_by_actito"] > 10 and first["retry_queue"] == 10
    second = run(config, "didomi_consents")["didomi_consents"]
    assert second["retried"] == 10 and second["retries_expired"] == first["refused_by_actito"] - 10
    assert second["retry_queue"] == 10


def test_a_run_killed_after_actito_answered_leaves_the_queue_a_finished_run_would(tmp_path: Path) -> None:
    """Killed after the import's report, before the snapshot: its successor commits what landed, with the
    refused rows waiting, and sends again only those."""
    config = project(tmp_path)
    run(config, "qualifio_profiles")
    killed = cli(config, "run", "didomi_consents", env={"AUDIENCE_SYNC_KILL_AT": "confirmed"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    executions = len(sandbox(config)["executions"])

    after = run(config, "didomi_consents")["didomi_consents"]
    assert after["unchanged"] > 1000  # what landed was committed, not sent again
    assert after["retried"] == after["refused_by_actito"] == after["retry_queue"] > 50
    assert len(sandbox(config)["executions"]) == executions + 1  # one import: the waiting rows only


def test_a_row_refused_for_a_bad_value_as_well_does_not_wait() -> None:
    """Sent again unchanged, it would be refused for its value whatever exists by then; the report lists a
    line's problems in ``problems``, or (another shape) one entry per problem."""
    refusals = Refusals(re.compile(r"(?i)\bprofile\s+not\s+found\b"))
    both = ("profile not found", "mandatory attribute surveyName is empty")
    refusals.add(0, [LineError(2, "emailAddress", "a@b.be", "profile not found", ("profile not found",)),
                     LineError(3, "emailAddress", "c@d.be", "profile not found", both),
                     LineError(4, "emailAddress", "e@f.be", "profile not found"),
                     LineError(4, "birthDate", "1990-13-01", "not a date"),
                     LineError(9, "emailAddress", "g@h.be", "profile not found")], staged=4)
    refused, waiting = refusals.flags(4)
    assert refused.tolist() == [True, True, True, False] and waiting.tolist() == [True, False, False, False]
    assert len(refusals) == 3  # line 9 is past the rows staged: not a row of this part
    assert not Refusals(re.compile("x")).flags(2)[0].any()
