"""The shrink guard: a collapsed audience is not delivered unless forced, and the refusal is recorded."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from etl.runtime.ledger import StateStore


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def shrink_vip(config: Path, keep_share: float) -> None:
    with sqlite3.connect(config.parent / "var" / "demo" / "warehouse.db") as db:
        total = db.execute("SELECT count(*) FROM customers WHERE lifetime_value >= 500").fetchone()[0]
        db.execute("UPDATE customers SET lifetime_value = 0 WHERE customer_id IN (SELECT customer_id FROM customers "
                   "WHERE lifetime_value >= 500 ORDER BY customer_id LIMIT ?)", (int(total * (1 - keep_share)),))


def test_an_audience_that_collapses_is_not_delivered_until_forced(demo_project: Path) -> None:
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    delivered = demo_project.parent / "var" / "outbox" / "vip_customers.csv"
    before = delivered.read_bytes()

    shrink_vip(demo_project, keep_share=0.3)
    refused = cli(demo_project, "run", "vip_customers")
    assert refused.returncode == 1
    assert "not delivered: the audience fell from" in refused.stdout and "--force" in refused.stdout
    assert delivered.read_bytes() == before
    store = StateStore.in_directory(demo_project.parent / "var" / "state")
    record = store.runs("vip_customers", limit=1)[0]
    store.close()
    assert record.status == "failed" and record.details["guard"]["name"] == "max_shrink"

    forced = cli(demo_project, "run", "vip_customers", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert delivered.read_bytes() != before


def test_a_small_change_passes_and_an_empty_audience_never_does(demo_project: Path) -> None:
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    shrink_vip(demo_project, keep_share=0.9)
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    shrink_vip(demo_project, keep_share=0.0)
    empty = cli(demo_project, "run", "vip_customers")
    assert empty.returncode == 1 and "to 0 rows" in empty.stdout
