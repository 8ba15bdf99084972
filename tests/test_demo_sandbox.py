"""The README demo across CLI processes: the in-process Actito sandbox keeps its state between runs.

Each `audience-sync run` is its own process with its own sandbox, while the ledger remembers what
was sent; so the sandbox must remember what it received, or a later run that sends only the changed
rows finds none of the profiles an earlier run created.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl", "--config", str(config), *args],
        capture_output=True, text=True, timeout=300, cwd=config.parent,
    )


def sandbox_state(project: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((project / "var" / "state" / "sandbox" / "state.json").read_text("utf-8"))
    return state


def test_a_later_run_finds_the_profiles_an_earlier_process_created(tmp_path: Path) -> None:
    shutil.copy(REPO / "schedules.toml", tmp_path / "schedules.toml")
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    config = tmp_path / "schedules.toml"

    for _ in range(2):
        done = cli(config, "run", "--all")
        assert done.returncode == 0, done.stdout + done.stderr

    demo = sandbox_state(tmp_path)["entities"]["demo"]
    created = {p["attributes"]["emailAddress"]: p for p in demo["profileTables"]["customers"]}
    assert created, "the first run created no profile"

    # one participant moves; another, whose profile run 1 created, takes part again
    with sqlite3.connect(tmp_path / "var" / "demo" / "warehouse.db") as db:
        latest = db.execute(
            "SELECT email, MAX(participation_id) FROM qualifio_participations"
            " WHERE participated_at >= date('now', '-30 days') GROUP BY email ORDER BY email"
        ).fetchall()
        participants = [(email, pid) for email, pid in latest if email in created]
        (moved_email, moved_id), (player_email, player_id) = participants[0], participants[1]
        db.execute("UPDATE qualifio_participations SET locality = 'Testville' WHERE participation_id = ?", (moved_id,))
        new_id = db.execute("SELECT MAX(participation_id) + 1 FROM qualifio_participations").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA table_info(qualifio_participations)")]
        copied = ", ".join(c for c in columns if c != "participation_id")
        db.execute(
            f"INSERT INTO qualifio_participations (participation_id, {copied})"
            f" SELECT ?, {copied} FROM qualifio_participations WHERE participation_id = ?",
            (new_id, player_id),
        )

    done = cli(config, "--log-format", "json", "run", "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["activation"]: r for r in map(json.loads, filter(str.strip, done.stdout.splitlines()))}
    participations = results["qualifio_participations"]
    assert participations["status"] == "succeeded"
    with open(participations["rejects_file"], newline="", encoding="utf-8") as rejects:
        refused = [row for row in csv.DictReader(rejects)
                   if row["value"] == player_email and "profile not found" in row["reason"]]
    assert refused == []
    assert participations["rows_delivered"] >= 1  # the new participation, accepted

    demo = sandbox_state(tmp_path)["entities"]["demo"]
    records = {r["participationId"]: r for r in demo["customTables"]["participations"]}
    assert records[str(new_id)]["emailAddress"] == player_email
    profiles = {p["attributes"]["emailAddress"]: p for p in demo["profileTables"]["customers"]}
    assert profiles[player_email]["profileId"] == created[player_email]["profileId"]
    assert profiles[moved_email]["attributes"]["addressLocality"] == "Testville"
