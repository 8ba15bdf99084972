"""`run NAME --full`: after Actito lost data, every row is sent again and the snapshot rebuilt, through the
real CLI against the Actito sandbox the demo runs (its state kept in a file between processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_process, json_run, sandbox_state

NAME = "qualifio_profiles"


cli = cli_process


def run(config: Path, *args: str) -> dict[str, Any]:
    return json_run(config, "run", NAME, *args)


@pytest.fixture
def demo(demo_project: Path) -> Path:
    return demo_project


def customers(config: Path) -> list[dict[str, Any]]:
    return sandbox_state(config.parent / "var").profiles("demo", "customers")


def actito_lost_everything(config: Path) -> None:
    """The sandbox back to its fixture: the table restored from an empty backup."""
    sandbox_state(config.parent / "var").reset()


def test_full_restores_every_profile_a_normal_run_would_not_send_again(demo: Path) -> None:
    first = run(demo)
    assert first["rows_delivered"] > 2000
    profiles = {p["attributes"]["emailAddress"] for p in customers(demo)}
    actito_lost_everything(demo)
    assert customers(demo) == []
    assert run(demo)["rows_delivered"] == 0  # the snapshot believes Actito has them all
    full = run(demo, "--full", "--yes")
    assert full["rows_delivered"] == first["rows_delivered"]
    assert {p["attributes"]["emailAddress"] for p in customers(demo)} == profiles
    assert run(demo)["rows_delivered"] == 0  # the snapshot rebuilt from what was taken
    shown = cli(demo, "--log-format", "json", "history", NAME)
    assert json.loads(shown.stdout.splitlines()[1])["details"]["full"] is True
    assert "(full)" in cli(demo, "history", NAME).stdout


def test_full_needs_a_confirmation(demo: Path) -> None:
    run(demo)
    without = cli(demo, "run", NAME, "--full")  # no terminal: refused before anything runs
    assert without.returncode == 2 and "--yes" in without.stderr and "Traceback" not in without.stderr
    assert len(cli(demo, "--log-format", "json", "history", NAME).stdout.splitlines()) == 1


def test_full_over_the_daily_budget_is_refused_before_anything_is_sent(demo: Path) -> None:
    demo.write_text(demo.read_text().replace('entity = "demo"\n', 'entity = "demo"\ndaily_import_budget = 1\n', 1))
    run(demo)  # today's one import on the table
    executions = len(sandbox_state(demo.parent / "var").executions("demo"))
    actito_lost_everything(demo)
    refused = cli(demo, "run", NAME, "--full", "--yes")
    assert refused.returncode == 1 and "daily_import_budget" in refused.stdout + refused.stderr
    assert customers(demo) == []
    assert len(sandbox_state(demo.parent / "var").executions("demo")) <= executions


def test_full_sends_a_membership_audience_whole_again(demo: Path) -> None:
    def members() -> set[str]:
        return {record["profileId"] for record in
                sandbox_state(demo.parent / "var").records("demo", "audience_members")}

    first = json_run(demo, "run", "vip_members")
    assert first["entered"] == first["members"] > 1000
    kept = members()
    assert len(kept) == first["members"]
    actito_lost_everything(demo)
    assert members() == set()
    assert json_run(demo, "run", "vip_members")["entered"] == 0  # the snapshot believes they are there
    full = json_run(demo, "run", "vip_members", "--full", "--yes")
    assert (full["entered"], full["left"]) == (first["members"], 0)
    assert members() == kept
    assert json_run(demo, "run", "vip_members")["entered"] == 0


def test_full_asks_on_a_terminal_and_a_no_sends_nothing(demo: Path) -> None:
    run(demo)
    actito_lost_everything(demo)
    main, terminal = os.openpty()  # stdin a terminal, as a person running it
    try:
        os.write(main, b"n\n")
        done = subprocess.run([sys.executable, "-m", "etl", "--config", str(demo), "run", NAME, "--full"],
                              stdin=terminal, capture_output=True, text=True, timeout=300, cwd=demo.parent)
    finally:
        os.close(main)
        os.close(terminal)
    assert "--full will send 2,334 rows in 1 import into Actito table 'Customers'. Send? [y/N]" in done.stdout
    assert done.returncode == 1 and "not confirmed: nothing was sent" in done.stdout + done.stderr
    assert customers(demo) == []
