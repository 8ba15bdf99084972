"""`audience-sync replay RUN_ID` of an import run: the files a past profiles import sent, imported again
into the Actito sandbox through the real CLI on the demo, with the delta snapshot kept honest."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
import pytest

from conftest import cli_process, json_run, sandbox_state, stopped_itself

NAME = "qualifio_profiles"
SQL = "sql/qualifio_profiles.sql"

cli = cli_process


@pytest.fixture
def demo(demo_project: Path) -> Path:
    return demo_project


def first_names(config: Path) -> dict[str, str]:
    return {p["attributes"]["emailAddress"]: p["attributes"].get("firstName")
            for p in sandbox_state(config.parent / "var").profiles("demo", "customers")}


def imports(config: Path) -> int:
    return len(sandbox_state(config.parent / "var").executions("demo"))


def bad_query(config: Path) -> None:
    """A bad change to the query: every participant's first name overwritten."""
    sql = config.parent / SQL
    sql.write_text(sql.read_text().replace("SELECT firstname,", "SELECT 'Oops' AS firstname,", 1))


def test_a_replay_restores_the_values_a_past_import_set(demo: Path) -> None:
    good = json_run(demo, "run", NAME)
    good_names = first_names(demo)
    assert good["rows_delivered"] > 2000 and set(good_names.values()) != {"Oops"}
    bad_query(demo)
    assert json_run(demo, "run", NAME)["rows_delivered"] == good["rows_delivered"]
    assert set(first_names(demo).values()) == {"Oops"}

    replayed = json_run(demo, "replay", good["run_id"])
    assert replayed["status"] == "succeeded" and replayed["rows_delivered"] == good["rows_delivered"]
    restored = first_names(demo)
    assert {key: name for key, name in restored.items() if good_names[key] is not None} == {
        key: name for key, name in good_names.items() if name is not None}
    # an empty cell keeps what Actito has (empty_values = "keep"): the first names the good run did not
    # have stay as the bad run set them
    assert {restored[key] for key, name in good_names.items() if name is None} == {"Oops"}
    # the snapshot no longer believes Actito holds the bad values: with the bad query still there, the
    # next run sends them again (a snapshot left as it was would send nothing, and lie)
    assert json_run(demo, "run", NAME)["rows_delivered"] == good["rows_delivered"]
    assert set(first_names(demo).values()) == {"Oops"}
    shown = cli(demo, "history", NAME)
    assert f"replay of {good['run_id']}" in shown.stdout


def test_after_a_replay_the_next_run_sends_only_what_differs_from_the_warehouse(demo: Path) -> None:
    good = json_run(demo, "run", NAME)
    replayed = json_run(demo, "replay", good["run_id"])
    assert replayed["rows_delivered"] == good["rows_delivered"]
    # the replayed rows were forgotten, so they are sent once more; after that, nothing
    assert json_run(demo, "run", NAME)["rows_delivered"] == good["rows_delivered"]
    assert json_run(demo, "run", NAME)["rows_delivered"] == 0


def test_a_dry_replay_checks_and_sends_nothing(demo: Path) -> None:
    good = json_run(demo, "run", NAME)
    bad_query(demo)
    json_run(demo, "run", NAME)
    before = imports(demo)
    dry = cli(demo, "replay", good["run_id"], "--dry-run")
    assert dry.returncode == 0 and f"the 1 file(s) of run {good['run_id']} checked" in dry.stdout
    assert imports(demo) == before and set(first_names(demo).values()) == {"Oops"}
    assert json_run(demo, "run", NAME)["rows_delivered"] == 0  # the dry replay forgot nothing


def test_a_replay_whose_files_were_pruned_is_refused(demo: Path) -> None:
    good = json_run(demo, "run", NAME)
    shutil.rmtree(demo.parent / "var" / "state" / "runs" / NAME / good["run_id"])
    before = imports(demo)
    refused = cli(demo, "replay", good["run_id"])
    assert refused.returncode == 2 and "is gone" in refused.stderr and "Traceback" not in refused.stderr
    assert imports(demo) == before
    assert len(cli(demo, "--log-format", "json", "history", NAME).stdout.splitlines()) == 1


def test_a_replay_under_another_mapping_is_refused(demo: Path) -> None:
    good = json_run(demo, "run", NAME)
    demo.write_text(demo.read_text().replace('mode = "CREATE_UPDATE"         # or UPDATE_ONLY, CREATE_ONLY',
                                             'mode = "UPDATE_ONLY"', 1))
    refused = cli(demo, "replay", good["run_id"])
    assert refused.returncode == 2 and "now maps its rows differently" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_replay_over_the_daily_budget_is_refused_before_anything_is_sent(demo: Path) -> None:
    demo.write_text(demo.read_text().replace('entity = "demo"\n', 'entity = "demo"\ndaily_import_budget = 1\n', 1))
    good = json_run(demo, "run", NAME)  # today's one import on the table
    before = imports(demo)
    refused = cli(demo, "replay", good["run_id"])
    assert refused.returncode == 1 and "daily_import_budget" in refused.stdout + refused.stderr
    assert imports(demo) == before
    assert json_run(demo, "run", NAME)["rows_delivered"] == 0  # the refused replay forgot nothing


def test_an_openfield_run_is_refused_with_what_to_do(demo: Path) -> None:
    sql = demo.parent / "sql" / "openfield_profiles.sql"
    sql.write_text(sql.read_text() + "LIMIT 20\n")  # a few profiles: each is a request of its own
    sent = json_run(demo, "run", "openfield_profiles")
    refused = cli(demo, "replay", sent["run_id"])
    assert refused.returncode == 2 and "--full" in refused.stderr and "Traceback" not in refused.stderr


def test_a_replay_never_overlaps_a_run_of_its_activation(demo: Path) -> None:
    good = json_run(demo, "run", NAME)
    bad_query(demo)
    running = subprocess.Popen([sys.executable, "-m", "etl", "--config", str(demo), "run", NAME], cwd=demo.parent,
                               env={**os.environ, "AUDIENCE_SYNC_STALL_AT": "extracted"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert stopped_itself(running), "the run never reached 'extracted'"
        before = imports(demo)
        locked = cli(demo, "replay", good["run_id"])
        assert locked.returncode == 3, locked.stdout + locked.stderr
        assert imports(demo) == before
    finally:
        running.send_signal(signal.SIGCONT)
    out, err = running.communicate(timeout=120)
    assert running.returncode == 0, out + err
    assert set(first_names(demo).values()) == {"Oops"}  # the run's import alone, nothing of the replay


def test_an_interactions_replay_keeps_how_the_rows_were_collected(demo: Path) -> None:
    json_run(demo, "run", NAME)
    sent = json_run(demo, "run", "qualifio_participations")
    replayed = json_run(demo, "replay", sent["run_id"])
    assert replayed["rows_delivered"] == sent["rows_delivered"] > 0
    original, again = sandbox_state(demo.parent / "var").executions("demo")[-2:]
    assert again["table"] == original["table"] == "participations"
    # the campaign's source and date the rows were collected by, not the replay's own run
    assert again["dataCollection"] == original["dataCollection"] and original["dataCollection"]
