"""Benchmark: one audience query over a generated PostgreSQL warehouse, four ways to a gzip CSV file.

For each size N, ``bench_customers_N`` (N customers, with realistic dirt in the e-mails) is generated
in the local PostgreSQL (once: it is kept while its generator version matches), then the same
query is timed four ways, each in a process of its own so that its peak RSS is its own:

    psql           psql \\copy (query) TO STDOUT CSV | gzip -1           the floor: no Python at all
    audience-sync  python -m etl run: extract, validate, dedupe, gzip file, local delivery
    audience-sync-warehouse   the same with clean_in = "warehouse": PostgreSQL normalises and dedupes
    psql-warehouse the statement audience-sync-warehouse sends, through psql | gzip -1: the floor of
                   that mode, the warehouse's own work
    pandas         pandas.read_sql(query) then DataFrame.to_csv(gzip level 1)
    dlt            dlt sql_table (pyarrow backend) -> filesystem destination, csv (gzip)

Only audience-sync cleans the e-mails (normalise, validate, deduplicate, reject file, manifest);
the others copy the query's rows as they are. Wall time includes interpreter start and imports.

    python bench/pg_audience.py --customers 1000000 10000000 --repeat 3
    bench/run.sh                    # builds bench/.venv (project, pandas, dlt) and runs the above

``--audience-sync-src DIR`` times the audience-sync of another source tree (e.g. an older commit
unpacked with ``git archive``), for before/after comparisons.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUERY = "SELECT email FROM {table} WHERE newsletter_optin AND orders_count >= 1 ORDER BY customer_id"
#: warehouse mode's query, as the README advises: without the ORDER BY its grouping throws away
WAREHOUSE_QUERY = QUERY.removesuffix(" ORDER BY customer_id")
CASES = ("psql", "audience-sync", "audience-sync-warehouse", "psql-warehouse", "pandas", "dlt")
ROOT = Path(__file__).resolve().parent.parent
#: bump when GENERATE changes: a table made by another version is regenerated
GENERATOR_VERSION = 2

# Dirt, by customer number: missing (NULL, empty), not an address, unknown top-level domain, two dots,
# a case-and-spaces variant of a shared address, mailto: prefixes, exact duplicates, and upper-case
# copies of the previous customer's address (duplicates once lowercased).
GENERATE = """
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} AS
SELECT i AS customer_id,
       CASE
         WHEN i % 31 = 0 THEN NULL
         WHEN i % 53 = 0 THEN ''
         WHEN i % 37 = 0 THEN 'not-an-email-' || i
         WHEN i % 61 = 0 THEN 'someone' || i || '@example.invalidtld'
         WHEN i % 67 = 0 THEN 'two..dots' || i || '@example.com'
         WHEN i % 41 = 0 THEN '  Person.' || (i % 50000) || '@Example.COM '
         WHEN i % 43 = 0 THEN 'mailto:someone' || i || '@example.be'
         WHEN i % 47 = 0 THEN 'dup' || (i % 1000) || '@family.be'
         WHEN i % 59 = 0 THEN 'CUSTOMER' || (i - 1) || '@' || upper((ARRAY['gmail.com','outlook.be','skynet.be','yahoo.fr'])[1 + (i - 1) % 4])
         ELSE 'customer' || i || '@' || (ARRAY['gmail.com','outlook.be','skynet.be','yahoo.fr'])[1 + i % 4]
       END AS email,
       (i % 3 <> 0) AS newsletter_optin,
       (i % 7) AS orders_count
FROM generate_series(1, :n) AS i
"""


# --------------------------------------------------------------------------- the warehouse


def table_name(customers: int) -> str:
    """One table per size, so that alternating sizes (or two benchmarks at once) never regenerate them."""
    return f"bench_customers_{customers}"


def ensure_table(customers: int) -> int:
    """Make ``bench_customers_N`` hold N customers of this generator version; the query's row count."""
    table = table_name(customers)
    engine = sa.create_engine(URL)
    marker = f"audience-sync bench v{GENERATOR_VERSION} n={customers}"
    try:
        with engine.begin() as conn:
            current = conn.execute(sa.text(f"SELECT obj_description(to_regclass('{table}'), 'pg_class')")).scalar()
            if current != marker:
                print(f"generating {customers:,} customers ...", file=sys.stderr, flush=True)
                began = time.perf_counter()
                for statement in GENERATE.format(table=table).strip().split(";\n"):
                    conn.execute(sa.text(statement), {"n": customers})
                conn.execute(sa.text(f"COMMENT ON TABLE {table} IS '{marker}'"))
                generated = True
            else:
                generated = False
        if generated:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
            print(f"  {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM ({QUERY.format(table=table)}) q")).scalar() or 0)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- one case, in its own process


def measure(
    command: list[str] | str, *, env: dict[str, str] | None = None, shell: bool = False, cwd: Path | None = None
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process tree (its largest process)."""
    began = time.perf_counter()
    subprocess.run(command, shell=shell, check=True, stdout=subprocess.DEVNULL, env=env, cwd=cwd,
                   executable="/bin/bash" if shell else None)  # fmt: skip
    wall = time.perf_counter() - began
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


PANDAS_SCRIPT = """
import sys
import pandas as pd
import sqlalchemy as sa

url, query, out = sys.argv[1:4]
engine = sa.create_engine(url)
frame = pd.read_sql(sa.text(query), engine)
frame.to_csv(out, index=False, compression={"method": "gzip", "compresslevel": 1})
"""

DLT_SCRIPT = """
import sys
from pathlib import Path
import dlt
import sqlalchemy as sa
from dlt.sources.sql_database import sql_table

url, query, work, table = sys.argv[1:5]
work = Path(work)
engine = sa.create_engine(url)
rows = sql_table(
    engine,
    table=table,
    backend="pyarrow",
    chunk_size=50_000,
    reflection_level="minimal",
    included_columns=["email"],
    query_adapter_callback=lambda select, table: sa.text(query),
)
pipeline = dlt.pipeline(
    pipeline_name="bench",
    pipelines_dir=str(work / "pipelines"),
    destination=dlt.destinations.filesystem(bucket_url=(work / "out").as_uri()),
    dataset_name="bench",
)
pipeline.run(rows, loader_file_format="csv")
"""

AUDIENCE_CONFIG = """
[warehouses.pg]
url = "{url}"

[destinations.d]
environment = "sandbox"
entity = "bench"
files = {{ type = "local", path = "outbox" }}

[activations.bench]
sql = "audience.sql"
destination = "d"
identifier = "email"
file = {{ compression = "gzip" }}
clean_in = "{clean_in}"
"""


def pushed_down(query: str, source: Path) -> str:
    """The statement ``clean_in = "warehouse"`` of the tree ``source`` sends for ``query``, its literals
    inlined for psql."""
    from sqlalchemy.dialects import postgresql

    sys.path.insert(0, str(source))

    from etl.extract.pushdown import audience_statement

    statement = audience_statement(query, "email", "postgresql")
    return str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def run_case(case: str, source: Path, table: str) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{case}-"))
    query = (WAREHOUSE_QUERY if case.endswith("-warehouse") else QUERY).format(table=table)
    env = dict(os.environ)
    dsn = sa.make_url(URL).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        if case == "psql":
            command = f"set -o pipefail; psql -X -q '{dsn}' -c \"\\copy ({query}) TO STDOUT CSV HEADER\" | gzip -1 > {work}/out.csv.gz"
            wall, rss = measure(command, shell=True)
        elif case == "psql-warehouse":
            # a file, not -c: the statement holds quotes and Unicode spaces a shell line would mangle
            (work / "copy.sql").write_text(f"COPY ({pushed_down(query, source)}) TO STDOUT CSV HEADER;\n", encoding="utf-8")
            command = f"set -o pipefail; psql -X -q -v ON_ERROR_STOP=1 '{dsn}' -f {work}/copy.sql | gzip -1 > {work}/out.csv.gz"
            wall, rss = measure(command, shell=True)
        elif case.startswith("audience-sync"):
            (work / "audience.sql").write_text(query + "\n")
            clean_in = "warehouse" if case.endswith("-warehouse") else "client"
            (work / "schedules.toml").write_text(AUDIENCE_CONFIG.format(url=URL, clean_in=clean_in))
            # the tree to time, ahead of any installed copy (and run from elsewhere: -m puts the cwd first)
            env["PYTHONPATH"] = str(source)
            command = [sys.executable, "-m", "etl", "--config", str(work / "schedules.toml"), "run", "bench"]
            wall, rss = measure(command, env=env, cwd=work)
        elif case == "pandas":
            (work / "case.py").write_text(PANDAS_SCRIPT)
            wall, rss = measure([sys.executable, str(work / "case.py"), URL, query, str(work / "out.csv.gz")], env=env)
        elif case == "dlt":
            (work / "case.py").write_text(DLT_SCRIPT)
            env.update(RUNTIME__DLTHUB_TELEMETRY="false", DLT_DATA_DIR=str(work / "dlt-data"))
            wall, rss = measure([sys.executable, str(work / "case.py"), URL, query, str(work), table], env=env)
        else:
            raise SystemExit(f"unknown case {case}")
        return {"wall": wall, "rss": rss}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    engine = sa.create_engine(URL)
    try:
        with engine.connect() as conn:
            server = str(conn.execute(sa.text("SHOW server_version")).scalar())
    finally:
        engine.dispose()
    versions = []
    for name in ("pyarrow", "pandas", "psycopg", "sqlalchemy", "numpy", "dlt"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} (not installed)")
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; {platform.system()} {platform.release()}; "
        f"PostgreSQL {server} on the same machine; Python {platform.python_version()}; " + ", ".join(versions)
    )


def table(results: list[dict[str, object]]) -> str:
    """Each case against psql's copy of the query; warehouse mode also against psql's copy of the
    statement it sends (its floor: what PostgreSQL itself takes to clean and group)."""
    lines = [
        "| customers | rows | case | wall (s) | peak RSS (MB) | wall / psql | wall / psql-warehouse "
        "| RSS / same case at smallest size |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    smallest = min(int(r["customers"]) for r in results)  # type: ignore[call-overload]
    base_rss = {r["case"]: float(r["rss"]) for r in results if r["customers"] == smallest}  # type: ignore[arg-type]

    def wall_of(case: object, customers: object) -> float | None:
        return next((float(p["wall"]) for p in results  # type: ignore[arg-type]
                     if p["customers"] == customers and p["case"] == case), None)

    for r in results:
        psql = wall_of("psql", r["customers"]) or float("nan")
        floor = wall_of("psql-warehouse", r["customers"]) if str(r["case"]).endswith("-warehouse") else None
        wall, rss = float(r["wall"]), float(r["rss"])  # type: ignore[arg-type]
        growth = "" if r["customers"] == smallest else f"{rss / base_rss[r['case']]:.2f}×"
        lines.append(
            f"| {int(r['customers']):,} | {int(r['rows']):,} | {r['case']} | {wall:.2f} | {rss:.0f} | "  # type: ignore[call-overload]
            f"{wall / psql:.1f}× | {'' if floor is None else f'{wall / floor:.1f}×'} | {growth} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[5_000_000], help="sizes to run (default 5M)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the median is reported")
    parser.add_argument("--audience-sync-src", type=Path, default=ROOT, help="source tree of the audience-sync to time")
    parser.add_argument("--output", type=Path, help="also write the report (markdown) to this file")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--table", help=argparse.SUPPRESS)  # internal: the table of that case
    args = parser.parse_args()

    if args.case is not None:
        print(json.dumps(run_case(args.case, args.audience_sync_src.resolve(), args.table)))
        return
    if "psql" not in args.cases:
        args.cases.insert(0, "psql")  # the reference of the ratios
    if any(case.startswith("audience-sync") for case in args.cases):
        # bytecode, as an installed package has it (pip compiles at install time): a tree run in place
        # is otherwise compiled at every start when PYTHONDONTWRITEBYTECODE is set (0.2-0.6 s)
        for package in ("etl", "jobs"):
            compileall.compile_dir(args.audience_sync_src / package, quiet=1)
    results: list[dict[str, object]] = []
    for customers in args.customers:
        rows = ensure_table(customers)
        for case in args.cases:
            runs = []
            for _ in range(args.repeat):
                # each run in a fresh interpreter: ru_maxrss of its children is that run's own peak
                done = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--table", table_name(customers),
                     "--audience-sync-src", str(args.audience_sync_src)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            wall = statistics.median(run["wall"] for run in runs)
            rss = statistics.median(run["rss"] for run in runs)
            walls = ", ".join(f"{run['wall']:.2f}" for run in runs)
            print(f"{customers:>11,} {case:14} wall {wall:7.2f} s  peak RSS {rss:7.1f} MB  (runs: {walls})",
                  file=sys.stderr, flush=True)  # fmt: skip
            results.append({"customers": customers, "rows": rows, "case": case, "wall": wall, "rss": rss})
    report = (
        f"Machine: {machine()}\n\n"
        f"Query: `{QUERY.format(table='bench_customers_N')}` (warehouse mode: without its ORDER BY); "
        f"median of {args.repeat} run(s) per case.\n\n"
        f"{table(results)}\n"
    )
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)


if __name__ == "__main__":
    main()
