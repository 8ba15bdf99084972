"""Benchmark: one audience run over a PostgreSQL table, wall time and peak memory.

Generates `bench_customers` (N rows, realistic dirt) in the local PostgreSQL once, then times
(a) `audience-sync run` end to end (extract -> validate -> dedupe -> gzip file -> local delivery) and
(b) the baseline `psql \\copy (query) TO STDOUT CSV | gzip -1`, reporting wall time and peak RSS of each.

    python bench/pg_audience.py --customers 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUERY = "SELECT email FROM bench_customers WHERE newsletter_optin AND orders_count >= 1 ORDER BY customer_id"

GENERATE = """
DROP TABLE IF EXISTS bench_customers;
CREATE TABLE bench_customers AS
SELECT i AS customer_id,
       CASE
         WHEN i % 31 = 0 THEN NULL
         WHEN i % 37 = 0 THEN 'not-an-email-' || i
         WHEN i % 41 = 0 THEN '  Person.' || (i % 50000) || '@Example.COM '
         WHEN i % 43 = 0 THEN 'mailto:someone' || i || '@example.be'
         WHEN i % 47 = 0 THEN 'dup' || (i % 1000) || '@family.be'
         ELSE 'customer' || i || '@' || (ARRAY['gmail.com','outlook.be','skynet.be','yahoo.fr'])[1 + i % 4]
       END AS email,
       (i % 3 <> 0) AS newsletter_optin,
       (i % 7) AS orders_count
FROM generate_series(1, :n) AS i;
"""


def ensure_table(customers: int) -> None:
    engine = sa.create_engine(URL)
    with engine.begin() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('bench_customers') IS NOT NULL")).scalar()
        count = conn.execute(sa.text("SELECT count(*) FROM bench_customers")).scalar() if exists else 0
        if count != customers:
            print(f"generating {customers:,} customers ...", file=sys.stderr)
            for statement in GENERATE.strip().split(";\n"):
                if statement.strip():
                    conn.execute(sa.text(statement), {"n": customers})
            conn.execute(sa.text("ANALYZE bench_customers"))
    engine.dispose()


def measure(command: list[str] | str, *, shell: bool = False) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process (the largest process of its tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    subprocess.run(command, shell=shell, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        print("warning: peak RSS not above an earlier child's; run each case in its own process", file=sys.stderr)
    return wall, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--case", choices=("audience-sync", "psql"), help="run one case only (own process)")
    args = parser.parse_args()
    ensure_table(args.customers)
    if args.case is None:  # each case in its own interpreter, so ru_maxrss is that case's own peak
        for case in ("psql", "audience-sync"):
            subprocess.run([sys.executable, __file__, "--customers", str(args.customers), "--case", case], check=True)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if args.case == "psql":
            dsn = sa.make_url(URL).set(drivername="postgresql").render_as_string(hide_password=False)
            wall, rss = measure(f"psql '{dsn}' -c \"\\copy ({QUERY}) TO STDOUT CSV HEADER\" | gzip -1 > {work}/out.gz",
                                shell=True)
        else:
            (work / "audience.sql").write_text(QUERY)
            (work / "schedules.toml").write_text(f"""
[warehouses.pg]
url = "{URL}"
[destinations.d]
environment = "sandbox"
entity = "bench"
files = {{ type = "local", path = "outbox" }}
[activations.bench]
sql = "audience.sql"
destination = "d"
identifier = "email"
file = {{ compression = "gzip" }}
""")
            exe = shutil.which("audience-sync") or f"{Path(sys.executable).parent}/audience-sync"
            wall, rss = measure([exe, "--config", str(work / "schedules.toml"), "run", "bench"])
        print(f"{args.case:14} customers={args.customers:>10,}  wall={wall:6.2f}s  peak_rss={rss:7.1f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
