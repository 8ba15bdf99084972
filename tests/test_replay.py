"""`audience-sync replay RUN_ID`: a past audience run's exact files delivered again, through the real CLI
on the demo (local file location, and a fan-out's delivery)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_process, json_run

NAME = "lapsed_buyers"
SHIPPED_PARAMS = "params = { min_days = 180, max_days = 365 }"


cli = cli_process


def run(config: Path, *args: str) -> dict[str, Any]:
    return json_run(config, *args)


@pytest.fixture
def demo(demo_project: Path) -> Path:
    return demo_project


def delivered(config: Path, name: str, outbox: str = "outbox") -> dict[str, str]:
    """The sha256 of each of the activation's files at the location."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((config.parent / "var" / outbox).glob(f"{name}*")) if "manifest" not in path.name}


def bad_query_delivered(config: Path) -> None:
    """A narrower audience slips through (forced past the shrink guard), replacing the good one."""
    config.write_text(config.read_text().replace(SHIPPED_PARAMS, "params = { min_days = 330, max_days = 365 }"))
    run(config, "run", NAME, "--force")


def test_a_replay_restores_the_previous_audience_byte_for_byte(demo: Path) -> None:
    good = run(demo, "run", NAME)
    good_files = delivered(demo, NAME)
    bad_query_delivered(demo)
    assert delivered(demo, NAME) != good_files
    replayed = run(demo, "replay", good["run_id"])
    assert replayed["status"] == "succeeded" and replayed["run_id"] != good["run_id"]
    assert delivered(demo, NAME) == good_files
    manifest = json.loads(next((demo.parent / "var" / "outbox").glob(f"{NAME}*.manifest.json")).read_text())
    assert manifest["replay_of"] == good["run_id"] and manifest["run_id"] == replayed["run_id"]
    # its members are the snapshot now: a run of the good query again finds nobody entering or leaving
    demo.write_text(demo.read_text().replace("params = { min_days = 330, max_days = 365 }", SHIPPED_PARAMS))
    again = run(demo, "run", NAME)
    assert (again["entered"], again["left"]) == (0, 0)
    shown = cli(demo, "history", NAME)
    assert f"replay of {good['run_id']}" in shown.stdout
    report = demo.parent / "report.html"
    assert cli(demo, "report", "--output", str(report)).returncode == 0
    assert f"replay of {good['run_id']}" in report.read_text()


def test_a_replay_whose_files_were_pruned_is_refused_before_anything_runs(demo: Path) -> None:
    good = run(demo, "run", NAME)
    bad_query_delivered(demo)
    shutil.rmtree(demo.parent / "var" / "state" / "runs" / NAME / good["run_id"])
    before = delivered(demo, NAME)
    refused = cli(demo, "replay", good["run_id"])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "are gone" in refused.stderr and "Traceback" not in refused.stderr
    assert delivered(demo, NAME) == before
    recorded = cli(demo, "--log-format", "json", "history", NAME).stdout.splitlines()
    assert len(recorded) == 2  # the good run and the bad one: the refused replay recorded nothing


def test_a_replay_the_configuration_no_longer_describes_is_refused(demo: Path) -> None:
    good = run(demo, "run", NAME)
    demo.write_text(demo.read_text().replace('file = { name = "lapsed_buyers_$yyyyMMdd.csv", compression = "zip" }',
                                             'file = { name = "lapsed_$yyyyMMdd.csv", compression = "zip" }'))
    refused = cli(demo, "replay", good["run_id"])
    assert refused.returncode == 2 and "is not a name of the activation's file.name" in refused.stderr


def test_only_a_delivered_audience_can_be_replayed(demo: Path) -> None:
    dry = run(demo, "run", NAME, "--dry-run")
    refused = cli(demo, "replay", dry["run_id"])
    assert refused.returncode == 2 and "not a delivery (a dry run)" in refused.stderr
    assert cli(demo, "replay", "20260101T000000Z-000000").returncode == 2


def test_a_replay_goes_through_the_shrink_guard(demo: Path) -> None:
    demo.write_text(demo.read_text().replace(SHIPPED_PARAMS, "params = { min_days = 330, max_days = 365 }"))
    small = run(demo, "run", NAME)
    demo.write_text(demo.read_text().replace("params = { min_days = 330, max_days = 365 }", SHIPPED_PARAMS))
    run(demo, "run", NAME)
    big_files = delivered(demo, NAME)
    guarded = cli(demo, "replay", small["run_id"])
    assert guarded.returncode == 1 and "max_shrink" in guarded.stdout + guarded.stderr
    assert delivered(demo, NAME) == big_files
    assert run(demo, "replay", small["run_id"], "--force")["status"] == "succeeded"


def test_a_fan_out_delivery_is_replayed_at_its_destination_only(demo: Path) -> None:
    fan_out = "vip_everywhere"
    done = cli(demo, "--log-format", "json", "run", fan_out)
    assert done.returncode == 0, done.stderr
    runs = {line["activation"]: line for line in map(json.loads, done.stdout.splitlines()) if "event" in line}
    fr_files, demo_files = delivered(demo, fan_out, "outbox_fr"), delivered(demo, fan_out)
    (demo.parent / "var" / "outbox_fr" / f"{fan_out}.csv").unlink()  # the French location was wiped
    extract = cli(demo, "replay", runs[fan_out]["run_id"])  # the fan-out's own run delivered nothing itself
    assert extract.returncode == 2 and runs[f"{fan_out}@actito_fr"]["run_id"] in extract.stderr
    replayed = run(demo, "replay", runs[f"{fan_out}@actito_fr"]["run_id"])
    assert replayed["activation"] == f"{fan_out}@actito_fr"
    assert delivered(demo, fan_out, "outbox_fr") == fr_files and delivered(demo, fan_out) == demo_files
