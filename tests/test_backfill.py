"""`run --as-of DAY` and `preview --as-of DAY`: the audience of a past day, through the real CLI.

The query's :run_date, the file name's date and the ledger say that day; the run itself (its id, its
lease, its retention) stays on the real clock.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 6, 1)


def brussels_today() -> date:
    """The demo's activations live in Europe/Brussels: their :run_date and file dates are that day."""
    return datetime.now(ZoneInfo("Europe/Brussels")).date()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, cwd=config.parent)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    shutil.copy(REPO / "schedules.toml", tmp_path / "schedules.toml")
    return tmp_path / "schedules.toml"


def finished(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    line: dict[str, Any] = json.loads(next(x for x in done.stdout.splitlines() if x.startswith('{"event"')))
    return line


def lapsed_on(config: Path, day: date) -> int:
    """How many rows lapsed_buyers' query returns with :run_date = ``day`` (its params as shipped)."""
    sql = (config.parent / "sql" / "lapsed_buyers.sql").read_text("utf-8")
    with sqlite3.connect(config.parent / "var" / "demo" / "warehouse.db") as db:
        return len(db.execute(sql, {"run_date": day.isoformat(), "min_days": 180, "max_days": 365}).fetchall())


def test_a_backfill_reads_and_names_the_audience_of_that_day(demo: Path) -> None:
    past = finished(cli(demo, "--log-format", "json", "run", "lapsed_buyers", "--as-of", DAY.isoformat()))
    assert past["file_name"] == "lapsed_buyers_20260601.zip" and past["as_of"] == "2026-06-01"
    assert past["rows_extracted"] == lapsed_on(demo, DAY)
    assert (demo.parent / "var" / "outbox" / "lapsed_buyers_20260601.zip").is_file()
    assert past["run_id"][:8] in {f"{datetime.now(UTC):%Y%m%d}", f"{brussels_today():%Y%m%d}"}  # today's run

    today = finished(cli(demo, "--log-format", "json", "run", "lapsed_buyers"))
    assert today["rows_extracted"] == lapsed_on(demo, brussels_today()) != past["rows_extracted"]
    assert "as_of" not in today
    outbox = demo.parent / "var" / "outbox"  # the regular run's file replaced the backfilled one
    assert sorted(f.name for f in outbox.iterdir()) == [
        f"lapsed_buyers_{brussels_today():%Y%m%d}.manifest.json", f"lapsed_buyers_{brussels_today():%Y%m%d}.zip"]

    history = cli(demo, "history", "lapsed_buyers").stdout
    assert "succeeded as of 2026-06-01" in history
    shown = cli(demo, "show", past["run_id"]).stdout
    assert "as of 2026-06-01 (a backfill" in shown


def test_a_preview_as_of_a_day_counts_that_days_audience(demo: Path) -> None:
    done = cli(demo, "--log-format", "json", "preview", "lapsed_buyers", "--as-of", DAY.isoformat())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["extracted"] == lapsed_on(demo, DAY)


def test_an_import_backfill_reads_its_window_as_of_that_day(demo: Path) -> None:
    """qualifio_participations reads from 90 days before :run_date on: as of a day years ahead, it reads none."""
    done = finished(cli(demo, "--log-format", "json", "run", "qualifio_participations", "--as-of", "2030-01-01"))
    assert done["rows_extracted"] == 0 and done["as_of"] == "2030-01-01"


@pytest.mark.parametrize("day", ["2026-13-01", "yesterday", "01/06/2026"])
def test_a_day_that_is_not_one_is_refused_before_anything_runs(demo: Path, day: str) -> None:
    done = cli(demo, "run", "lapsed_buyers", "--as-of", day)
    assert done.returncode == 2
    assert f"'{day}' is not a day written YYYY-MM-DD" in done.stderr and "Traceback" not in done.stderr
    assert not (demo.parent / "var" / "state" / "runs").exists()
