"""What `history` and a failed run tell a user, through the real command line (a subprocess each):
the same data gives the same "rejected" on every run, "delivered" is what that run delivered, and a
failure is said once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from etl.transform.delta import RowSnapshot

IMPORTS = ("qualifio_profiles", "qualifio_participations", "didomi_consents", "openfield_profiles")


def audience_sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], cwd=config.parent,
                          env=environment, capture_output=True, text=True, timeout=300)


def history_rows(config: Path, *args: str) -> list[dict[str, str]]:
    """`history`'s table read back as its columns say (cells split on two spaces or more)."""
    shown = audience_sync(config, "history", *args)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    header, rule, *lines = shown.stdout.splitlines()
    spans = [match.span() for match in re.finditer(r"-+", rule)]  # an empty cell keeps its place
    return [{header[a:b].strip(): line[a:b].strip() for a, b in spans} for line in lines]


@pytest.fixture(scope="module")
def demo_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The shipped demo run twice on the same data: its configuration, and each run's JSON lines."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "sql", root / "sql")
    shutil.copy(REPO / "schedules.toml", root / "schedules.toml")
    outputs = []
    for _ in range(2):
        done = audience_sync(root / "schedules.toml", "--log-format", "json", "run", "--all")
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    return root / "schedules.toml", outputs


def test_two_runs_on_the_same_data_reject_the_same_rows(demo_twice: tuple[Path, list[str]]) -> None:
    """Actito refuses some of the demo's consents on the first run (unknown profiles); the second sends only
    those again (they wait for their profile), delivers none, and counts and lists them again."""
    config, _ = demo_twice
    runs = history_rows(config)
    for name in IMPORTS:
        second, first = [row for row in runs if row["activation"] == name]
        assert first["rejected"] == second["rejected"], (name, first, second)
        assert second["delivered"] == "0", (name, second)  # a delta run that found nothing changed
    consents = [row for row in runs if row["activation"] == "didomi_consents"]
    assert int(consents[0]["rejected"].replace(",", "")) > 50  # Actito's refusals (unknown profiles) are in it
    rejects = sorted((config.parent / "var" / "state" / "runs" / "didomi_consents").glob("*/*.rejects.csv"))
    first_file, second_file = (path.read_text() for path in rejects)
    assert first_file.count("\n") == second_file.count("\n")
    # the consents of unknown profiles wait for them: sent again on the second run, refused again, still listed
    waiting = "refused by Actito: emailAddress: profile not found (sent again on the next runs"
    assert first_file.count(waiting) == second_file.count(waiting) > 50


def test_a_membership_run_delivers_who_entered_and_left(demo_twice: tuple[Path, list[str]]) -> None:
    """vip_members' second run changes nobody: it delivered 0, and its size (1,479 members) is said as such."""
    config, outputs = demo_twice
    second, first = [row for row in history_rows(config, "vip_members")]
    assert first["delivered"] == "1,479" and second["delivered"] == "0"
    (line,) = [json.loads(line) for line in outputs[1].splitlines() if '"vip_members"' in line]
    assert line["rows_delivered"] == 0 and line["entered"] == 0 and line["left"] == 0 and line["members"] == 1479
    sized = audience_sync(config, "history", "vip_members", "--sizes").stdout.splitlines()
    assert re.split(r"\s{2,}", sized[0].strip()) == ["activation", "run (UTC)", "size", "change", "%", "entered", "left"]
    cells = [re.split(r"\s{2,}", line.strip()) for line in sized[2:]]  # oldest first; the first has no change
    assert [(c[2], c[-2], c[-1]) for c in cells] == [("1,479", "1,479", "0"), ("1,479", "0", "0")]
    shown = audience_sync(config, "show", second["run id"])
    assert "delivered 0" in shown.stdout and "0 entered, 0 left" in shown.stdout and "1,479 members now" in shown.stdout
    # the file audience of the same query delivers its whole file every run
    assert [row["delivered"] for row in history_rows(config, "vip_customers")] == ["1,479", "1,479"]


def _unreachable(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    (tmp_path / "schedules.toml").write_text(
        '[warehouses.dwh]\nurl = "postgresql+psycopg://etl@127.0.0.1:1/analytics"\n\n'
        '[destinations.d]\nenvironment = "sandbox"\nentity = "demo"\nfiles = { type = "local", path = "outbox" }\n\n'
        '[activations.vip]\nsql = "sql/vip_customers.sql"\ndestination = "d"\nidentifier = "profileId"\n'
        "params = { min_value = 500 }\n")
    return tmp_path / "schedules.toml"


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_a_failed_run_says_its_error_once(tmp_path: Path, verbose: list[str]) -> None:
    """A warehouse that refuses the connection: one line, at the configuration key, exit code 1."""
    done = audience_sync(_unreachable(tmp_path), *verbose, "run", "vip")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert said.count("cannot connect to") == 1, said
    assert "✗ vip: [warehouses.dwh] url: cannot connect to postgresql+psycopg://etl@127.0.0.1:1/analytics" in done.stdout
    assert "Traceback" not in said


def test_a_failed_run_stays_a_record_in_json_logs(tmp_path: Path) -> None:
    done = audience_sync(_unreachable(tmp_path), "--log-format", "json", "run", "vip")
    assert done.returncode == 1
    (logged,) = [json.loads(line) for line in done.stderr.splitlines() if "cannot connect" in line]
    assert logged["level"] == "error" and logged["activation"] == "vip"
    assert logged["message"].startswith("run failed: [warehouses.dwh] url: cannot connect to")
    (finished,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert finished["status"] == "failed" and "[warehouses.dwh] url" in finished["error"]


def test_a_row_snapshot_written_before_refusals_were_kept_still_loads(tmp_path: Path) -> None:
    """An upgrade keeps the last delivery's snapshot: its rows count as accepted, none is sent again."""
    path = tmp_path / "rows.parquet"
    keys, rows = np.array([1, 2, 3], np.uint64), np.array([10, 20, 30], np.uint64)
    pq.write_table(pa.table({"key": keys, "row": rows}).replace_schema_metadata(
        {b"audience_sync_fingerprint": b"f"}), path)
    compared = RowSnapshot(path, "f").compare(keys, np.array([10, 21, 30], np.uint64))
    assert compared.changed.tolist() == [False, True, False] and compared.refused.tolist() == [False, False, False]
    assert not compared.retry.any()
