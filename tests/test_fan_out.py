"""One query, several destinations (`destinations = [...]`), through the real CLI on the demo warehouse.

The audience is extracted and cleaned once; each destination gets it as a run of its own
(``NAME@destination``): its own guard, members, ledger entry and outcome, and one failing does not
stop the others.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FAN_OUT = "vip_everywhere"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, cwd=config.parent)


def finished(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """Each run_finished line by activation: the fan-out's and one per destination."""
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event"')]
    return {line["activation"]: line for line in lines}


@pytest.fixture
def demo(demo_project: Path) -> Path:
    return demo_project


def set_activation(config: Path, **values: str) -> None:
    """Rewrites keys of the fan-out's table (values as TOML), the rest of the file untouched."""
    text = config.read_text("utf-8")
    head, table = text.split(f"[activations.{FAN_OUT}]\n", 1)
    body, rest = table.split("\n\n", 1)
    for key, value in values.items():
        body, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", body, flags=re.M)
        body += "" if found else f"\n{key} = {value}"
    config.write_text(f"{head}[activations.{FAN_OUT}]\n{body}\n\n{rest}", "utf-8")


def history(config: Path, *args: str) -> list[dict[str, Any]]:
    done = cli(config, "--log-format", "json", "history", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_one_extract_reaches_every_destination_as_runs_of_their_own(demo: Path) -> None:
    done = cli(demo, "--log-format", "json", "run", FAN_OUT)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = finished(done)
    parts = [f"{FAN_OUT}@actito_demo", f"{FAN_OUT}@actito_fr"]
    assert set(runs) == {FAN_OUT, *parts} and all(runs[name]["status"] == "succeeded" for name in runs)
    outboxes = [demo.parent / "var" / "outbox", demo.parent / "var" / "outbox_fr"]
    delivered = [(outbox / f"{FAN_OUT}.csv").read_bytes() for outbox in outboxes]
    assert delivered[0] == delivered[1] and delivered[0].startswith(b"profileId\n")
    assert len(delivered[0].splitlines()) - 1 == runs[parts[0]]["members"] == runs[parts[1]]["members"] > 1000
    for outbox, part in zip(outboxes, parts):  # each manifest names the run that delivered it
        assert json.loads((outbox / f"{FAN_OUT}.manifest.json").read_text())["activation"] == part
    recorded = {record["activation"]: record for record in history(demo, FAN_OUT)}
    assert set(recorded) == {FAN_OUT, *parts}
    # the query ran once: the fan-out's run has the extract step, its deliveries only deliver
    assert "extract" in recorded[FAN_OUT]["details"]["steps"]
    assert all("extract" not in recorded[part]["details"]["steps"] for part in parts)
    assert recorded[FAN_OUT]["details"]["destinations"]["actito_fr"]["run_id"] == runs[parts[1]]["run_id"]


def test_one_failing_destination_does_not_stop_the_others(demo: Path) -> None:
    blocked = demo.parent / "var" / "outbox"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the first destination's directory should be")
    done = cli(demo, "--log-format", "json", "run", FAN_OUT)
    assert done.returncode == 1, done.stdout + done.stderr  # EXIT_FAILED: README, "Exit codes"
    assert "Traceback" not in done.stderr
    runs = finished(done)
    assert runs[f"{FAN_OUT}@actito_demo"]["status"] == "failed"
    assert runs[f"{FAN_OUT}@actito_fr"]["status"] == "succeeded"
    assert (demo.parent / "var" / "outbox_fr" / f"{FAN_OUT}.csv").is_file()
    assert runs[FAN_OUT]["status"] == "failed"
    assert f"{FAN_OUT}: not delivered to actito_demo (1 of 2 destinations)" in runs[FAN_OUT]["error"]
    blocked.unlink()
    again = finished(cli(demo, "--log-format", "json", "run", FAN_OUT))
    assert {name: run["status"] for name, run in again.items()} == dict.fromkeys(again, "succeeded")
    assert (blocked / f"{FAN_OUT}.csv").is_file()


def test_each_destination_guards_against_a_shrink_on_its_own(demo: Path) -> None:
    set_activation(demo, destinations='["actito_demo"]')
    assert cli(demo, "run", FAN_OUT).returncode == 0
    # the audience collapses; actito_fr never had it, so for it this is a first delivery
    set_activation(demo, destinations='["actito_demo", "actito_fr"]', params="{ min_value = 2000 }")
    done = cli(demo, "--log-format", "json", "run", FAN_OUT)
    runs = finished(done)
    assert done.returncode == 1
    assert runs[f"{FAN_OUT}@actito_demo"]["status"] == "failed"
    assert "more than the 50% allowed by max_shrink" in runs[f"{FAN_OUT}@actito_demo"]["error"]
    assert runs[f"{FAN_OUT}@actito_fr"]["status"] == "succeeded"
    kept = (demo.parent / "var" / "outbox" / f"{FAN_OUT}.csv").read_text().splitlines()
    small = (demo.parent / "var" / "outbox_fr" / f"{FAN_OUT}.csv").read_text().splitlines()
    assert len(kept) > 1000 > len(small) > 1  # the guarded destination keeps the audience it had


def test_a_dry_run_delivers_to_no_destination(demo: Path) -> None:
    done = cli(demo, "--log-format", "json", "run", "--dry-run", FAN_OUT)
    assert done.returncode == 0, done.stderr
    assert all(run["dry_run"] for run in finished(done).values()) and len(finished(done)) == 3
    assert not (demo.parent / "var" / "outbox_fr").exists()


@pytest.mark.parametrize(("value", "said"), [
    ('["actito_demo", "actito_demo"]', "destinations names one destination twice"),
    ("[]", "destinations is a non-empty list of destination names"),
    ('["actito_demo", "actito_be"]', "no [destinations.actito_be] table"),
])
def test_a_wrong_destinations_list_is_named(demo: Path, value: str, said: str) -> None:
    set_activation(demo, destinations=value)
    done = cli(demo, "validate")
    assert done.returncode == 2 and said in done.stderr and FAN_OUT in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_destination_and_destinations_together_are_refused(demo: Path) -> None:
    set_activation(demo, destination='"actito_demo"')
    done = cli(demo, "validate")
    assert done.returncode == 2 and "not both" in done.stderr, done.stderr


def test_two_destinations_in_one_directory_are_refused(demo: Path) -> None:
    demo.write_text(demo.read_text().replace('path = "var/outbox_fr"', 'path = "var/outbox"'))
    done = cli(demo, "validate")
    assert done.returncode == 2, done.stderr
    assert "[destinations.actito_demo] and [destinations.actito_fr] are one directory" in done.stderr


def test_a_destination_left_out_is_pointed_at_retire_and_retired_alone(demo: Path) -> None:
    assert cli(demo, "run", FAN_OUT).returncode == 0
    assert "is no longer in the configuration" not in cli(demo, "validate").stderr
    set_activation(demo, destinations='["actito_demo"]')
    said = cli(demo, "validate")
    assert said.returncode == 0
    assert f"`audience-sync retire {FAN_OUT}@actito_fr`" in said.stdout + said.stderr
    retired = cli(demo, "retire", f"{FAN_OUT}@actito_fr")
    assert retired.returncode == 0, retired.stdout + retired.stderr
    assert not (demo.parent / "var" / "outbox_fr" / f"{FAN_OUT}.csv").exists()
    assert (demo.parent / "var" / "outbox" / f"{FAN_OUT}.csv").is_file()


@pytest.mark.parametrize(("kill_at", "dead"), [
    ("delivered", {FAN_OUT, f"{FAN_OUT}@actito_demo"}),  # the first delivery's files uploaded, not in place
    ("recorded", {FAN_OUT}),  # the first delivery recorded, the second not begun
])
def test_a_fan_out_killed_during_its_deliveries_converges_on_the_rerun(demo: Path, kill_at: str, dead: set[str]
                                                                        ) -> None:
    """SIGKILL inside the first destination's delivery: the second never got the audience. The rerun marks
    the dead runs, and every destination ends with the same audience."""
    env = {key: value for key, value in os.environ.items() if key != "AUDIENCE_SYNC_KILL_AT"}
    killed = subprocess.run([sys.executable, "-m", "etl", "--config", str(demo), "run", FAN_OUT], cwd=demo.parent,
                            env={**env, "AUDIENCE_SYNC_KILL_AT": kill_at}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (demo.parent / "var" / "outbox_fr").exists()
    rerun = finished(cli(demo, "--log-format", "json", "run", FAN_OUT))
    assert {run["status"] for run in rerun.values()} == {"succeeded"}
    assert (demo.parent / "var" / "outbox_fr" / f"{FAN_OUT}.csv").read_bytes() == \
        (demo.parent / "var" / "outbox" / f"{FAN_OUT}.csv").read_bytes()
    interrupted = {record["activation"] for record in history(demo, FAN_OUT) if record["status"] == "interrupted"}
    assert interrupted == dead


def test_retiring_a_fan_out_that_left_the_configuration_retires_its_deliveries(demo: Path) -> None:
    assert cli(demo, "run", FAN_OUT).returncode == 0
    text = demo.read_text("utf-8")
    head, table = text.split(f"[activations.{FAN_OUT}]\n", 1)
    demo.write_text(head + table.split("\n\n", 1)[1], "utf-8")  # the whole table removed
    left = cli(demo, "validate")
    assert left.returncode == 0
    for name in (FAN_OUT, f"{FAN_OUT}@actito_demo", f"{FAN_OUT}@actito_fr"):
        assert f"`audience-sync retire {name}`" in left.stdout + left.stderr
    retired = cli(demo, "retire", FAN_OUT)
    assert retired.returncode == 0, retired.stdout + retired.stderr
    assert not (demo.parent / "var" / "outbox" / f"{FAN_OUT}.csv").exists()
    assert not (demo.parent / "var" / "outbox_fr" / f"{FAN_OUT}.csv").exists()
    after = cli(demo, "validate")
    assert "is no longer in the configuration" not in after.stdout + after.stderr
