"""Wide rows: an audience query that selects far more columns than the audience needs.

Builds a SQLite warehouse of ``--rows`` customers with ``--columns`` text columns (the e-mail first),
then runs a real ``audience-sync run`` of two activations in fresh processes, each ``--repeat``
times, and prints the median wall time and peak RSS of each:

- **wide**: ``SELECT * FROM w`` — every column of the table;
- **narrow**: ``SELECT email FROM w`` — the baseline: what the audience really reads.

``--source DIR`` runs another checkout (e.g. ``git worktree add /tmp/old <commit>``) for the same
figures before a change. Usage: ``bench/.venv/bin/python bench/wide_rows.py [--rows 100000]
[--columns 500] [--repeat 3] [--source DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sandbox import audience, sqlite_config

REPO = Path(__file__).resolve().parent.parent


def build(directory: Path, rows: int, columns: int) -> None:
    with sqlite3.connect(directory / "wide.db") as db:
        db.execute("CREATE TABLE w (email TEXT, " + ", ".join(f"c{i} TEXT" for i in range(columns - 1)) + ")")
        tail = [f"value-{i}-xxxxxxxx" for i in range(columns - 1)]
        db.executemany(f"INSERT INTO w VALUES ({','.join('?' * columns)})",
                       ([f"person{r}@example.com", *tail] for r in range(rows)))


def run_once(directory: Path, name: str, source: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (kB) of one run in a fresh process (called in a process of its own, so
    the largest child it has waited for is that run)."""
    environ = {**os.environ, "PYTHONPATH": str(source)}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "etl", "--config", str(directory / f"{name}.toml"), "run", name],
                          cwd=directory, env=environ, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stdout}{done.stderr}")
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout whose etl to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        build(directory, args.rows, args.columns)
        results = {}
        for name, sql in (("narrow", "SELECT email FROM w"), ("wide", "SELECT * FROM w")):
            (directory / f"{name}.sql").write_text(sql)
            (directory / f"{name}.toml").write_text(sqlite_config("wide.db", audience(name)))
            # each case in its own process tree, so RUSAGE_CHILDREN's maximum is that case's
            measured = [_isolated(directory, name, args.source) for _ in range(args.repeat)]
            results[name] = {"wall_s": round(statistics.median(m[0] for m in measured), 2),
                             "peak_rss_mb": round(max(m[1] for m in measured) / 1024)}
        print(json.dumps({"rows": args.rows, "columns": args.columns, "source": str(args.source), **results}))


def _isolated(directory: Path, name: str, source: Path) -> tuple[float, int]:
    """run_once in a child of its own: the maximum RSS over children is then this run's alone."""
    code = ("import sys, json; sys.path.insert(0, %r); import wide_rows as w; from pathlib import Path; "
            "print(json.dumps(w.run_once(Path(%r), %r, Path(%r))))") % (str(REPO / "bench"), str(directory), name,
                                                                      str(source))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall, peak = json.loads(out)
    return float(wall), int(peak)


if __name__ == "__main__":
    main()
