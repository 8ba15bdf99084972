"""The transform step's cost: an identity transform against the same audience without one (the baseline).

Builds a SQLite warehouse of ``--rows`` customers (e-mail, country, orders), then runs a real
``audience-sync run`` of each activation in a fresh process, ``--repeat`` times, and prints the median
wall time, the overhead per million rows and the peak RSS of each:

- **baseline**: ``SELECT email, country, orders`` with no transform (only the e-mail is read);
- **identity**: the same query through ``transform = "identity.py:shape"``, which returns its chunk:
  every column is now read and converted to an Arrow-backed DataFrame and back.

Usage: ``python bench/transform_step.py [--rows 1000000] [--chunk-size 50000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
from pathlib import Path

from _sandbox import audience, measure, sqlite_config


def build(root: Path, rows: int, chunk_size: int) -> Path:
    with sqlite3.connect(root / "audience.db") as db:
        db.execute("CREATE TABLE c (email TEXT, country TEXT, orders INTEGER)")
        db.executemany("INSERT INTO c VALUES (?, ?, ?)",
                       ((f"user{n}@example.com", ("BE", "FR", "NL")[n % 3], n % 17) for n in range(rows)))
    (root / "audience.sql").write_text("SELECT email, country, orders FROM c")
    (root / "identity.py").write_text("def shape(chunk, context):\n    return chunk\n")
    config = root / "schedules.toml"
    config.write_text(sqlite_config("audience.db", audience("baseline", sql="audience.sql"),
                                    audience("identity", 'transform = "identity.py:shape"', sql="audience.sql"),
                                    chunk_size=chunk_size))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = build(Path(tmp), args.rows, args.chunk_size)
        results = {}
        for name in ("baseline", "identity") * args.repeat:
            results.setdefault(name, []).append(measure(config, name))
    medians = {name: (statistics.median(t for t, _ in runs), max(m for _, m in runs)) for name, runs in results.items()}
    for name, (seconds, peak) in medians.items():
        print(f"{name:9} {args.rows:,} rows, chunk {args.chunk_size:,}: {seconds:.2f} s, peak RSS {peak:.0f} MB")
    overhead = (medians["identity"][0] - medians["baseline"][0]) / (args.rows / 1_000_000)
    print(f"identity transform overhead: {overhead:.2f} s per million rows")


if __name__ == "__main__":
    main()
