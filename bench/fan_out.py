"""One query to two destinations: a fan-out (``destinations = ["d", "d2"]``) against the same audience
as two activations, one per destination — the query run and the rows cleaned once instead of twice.

Builds a SQLite warehouse of ``--rows`` customers, then times a real ``audience-sync run`` of each in a
fresh process, ``--repeat`` times, taken in turn, and prints the median wall time and peak RSS:

- **fan-out**: ``run fanout``, one extract and clean, a delivery per destination;
- **twice**: ``run to_d to_d2``, the same query as two activations.

Usage: ``python bench/fan_out.py [--rows 1000000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
from pathlib import Path

from _sandbox import audience, measure, sqlite_config

SECOND_DESTINATION = """
[destinations.d2]
environment = "sandbox"
entity = "demo"
files = { type = "local", path = "outbox2" }
"""
RUNS = {"fan-out": ("fanout",), "twice": ("to_d", "to_d2")}


def build(root: Path, rows: int) -> Path:
    with sqlite3.connect(root / "audience.db") as db:
        db.execute("CREATE TABLE c (email TEXT, orders INTEGER)")
        db.executemany("INSERT INTO c VALUES (?, ?)", ((f"user{n}@example.com", n % 17) for n in range(rows)))
    (root / "audience.sql").write_text("SELECT email FROM c WHERE orders >= 0")
    config = root / "schedules.toml"
    fan_out = audience("fanout", sql="audience.sql").replace('destination = "d"', 'destinations = ["d", "d2"]')
    to_d2 = audience("to_d2", 'file = { name = "to_d2.csv" }', sql="audience.sql").replace('"d"', '"d2"')
    config.write_text(sqlite_config("audience.db", fan_out, audience("to_d", sql="audience.sql"), to_d2)
                      + SECOND_DESTINATION)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = build(Path(tmp), args.rows)
        results: dict[str, list[tuple[float, float]]] = {}
        for label in list(RUNS) * args.repeat:
            results.setdefault(label, []).append(measure(config, *RUNS[label]))
    for label, runs in results.items():
        seconds, peak = statistics.median(t for t, _ in runs), max(m for _, m in runs)
        print(f"{label:8} {args.rows:,} rows to 2 destinations: {seconds:.2f} s, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
