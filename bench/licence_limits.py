"""One Actito licence, many import activations due at the same minute: wall time, peak in flight, 429s.

Actito counts 5 concurrent calls (a 6th gets 429) and 100 calls a minute *per licence*. This
benchmark generates a project of N ``profiles`` activations (50 rows each, one destination, hence one
licence) all scheduled ``* * * * *``, starts the Actito sandbox in this process (with a per-request
latency, as a real server has, so that concurrent calls really overlap), then starts one or more
``audience-sync schedule`` processes on it — several replicas share a ``--state-url`` ledger, as in
production — and waits until every activation's slot of that minute has run. Printed per repetition:

- **wall**: from the first run's start to the last run's end, as the ledger recorded them (the
  processes' own start-up is not in it);
- **peak in flight** and **429s**: what the sandbox counted for the licence;
- **tokens**: token requests the licence received; **calls**: every API request;
- **runs**: how the runs ended.

``--source DIR`` runs the schedulers from another checkout (e.g. ``git archive 68cbba8 | tar -x -C
/tmp/base`` for the code before licence-wide limits); the sandbox, the measuring instrument, is
always this checkout's.

Usage: ``python bench/licence_limits.py [--activations 16] [--replicas 1] [--state-url URL]
[--source DIR] [--repeat 3] [--latency 0.05]``. The tests import `write_project` and `run_case`
(tests/test_licence_limits.py), so the benchmark and the attack measure the same thing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from etl.testing.actito.server import ActitoSandbox  # noqa: E402  (this checkout's sandbox, whatever --source is)

#: the scheduler as `audience-sync schedule` runs it, logging JSON lines
DRIVER = """
import inspect, logging, sys
from pathlib import Path
from etl.logs import configure_logging
try:
    from etl.runtime.scheduler import main
except ImportError:  # a --source from before the runtime package
    from etl.scheduler import main
configure_logging("json", logging.INFO)
if "job_for" in inspect.signature(main).parameters:  # the CLI hands the scheduler its jobs
    from jobs import job_for
    sys.exit(main(Path(sys.argv[1]), job_for, preview=False))
sys.exit(main(Path(sys.argv[1]), preview=False))
"""
GENERATOR_SQL = """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
SELECT :prefix || i || '@example.com' AS emailAddress, 'First' || i AS firstName FROM n
"""
#: the sandbox fixture's API key, passed through the environment as a real key would be
KEY_VARIABLE = "BENCH_ACTITO_KEY"
SANDBOX_KEY = "sandbox-demo-key"
#: start the schedulers only this early in a minute, so that the start-up slot's runs end before the next one
LATEST_START_SECOND = 40


def write_project(root: Path, sandbox_url: str, activations: range, *, state_url: str | None = None,
                  rows: int = 50, name: str = "schedules.toml") -> Path:
    """A configuration ``name`` (and its SQL) of profiles imports into one licence, every minute:
    ``import_NN`` for each NN of ``activations``."""
    (root / "sql").mkdir(parents=True, exist_ok=True)
    (root / "warehouse.db").touch()
    (root / "sql" / "gen.sql").write_text(GENERATOR_SQL, encoding="utf-8")
    ledger = f'state_url = "{state_url}"' if state_url else ""
    lines = ["[settings]", 'state_dir = "state"', ledger, "", "[warehouses.w]", 'url = "sqlite:///warehouse.db"', "",
             "[destinations.d]", f'base_url = "{sandbox_url}"', f'api_key = "${{{KEY_VARIABLE}}}"', 'entity = "demo"', ""]
    for index in activations:
        lines += [f"[activations.import_{index:02d}]", 'kind = "profiles"', 'sql = "sql/gen.sql"',
                  'destination = "d"', 'table = "customers"', f'params = {{ rows = {rows}, prefix = "a{index}-" }}',
                  'schedule = { cron = "* * * * *", timezone = "Europe/Brussels" }', ""]
    path = root / name
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Case:
    """What one measurement found."""

    wall_s: float
    statuses: dict[str, int]
    peak_in_flight: int
    refused: int
    tokens: int
    calls: int
    activations_run: int
    #: the error of each run that failed
    errors: list[str]
    logs: list[str]


def run_case(root: Path, sandbox: ActitoSandbox, activations: int, *, replicas: int = 1,
             state_url: str | None = None, source: Path = REPO, timeout: float = 150) -> Case:
    """Start ``replicas`` schedulers on a fresh project and wait for every activation's first run.

    Several replicas are several deployments sharing the licence and the ledger (CronJobs or teams
    with their own schedules.toml): each gets its share of the activations, so that all of them run
    at once — replicas of one configuration would race for the same slots and one might run them all."""
    configs = [write_project(root, sandbox.url, range(i, activations, replicas), state_url=state_url,
                             name=f"schedules-{i}.toml") for i in range(replicas)]
    ledger_url = state_url or f"sqlite:///{root / 'state' / 'state.db'}"
    if datetime.now().second > LATEST_START_SECOND:  # bounded: at most ~20 s
        time.sleep(61 - datetime.now().second)
    sandbox.reset_limits()
    env = {**os.environ, "PYTHONPATH": str(source), KEY_VARIABLE: SANDBOX_KEY}
    log_paths = [root / f"scheduler{i}.log" for i in range(replicas)]
    handles = [path.open("w") for path in log_paths]
    processes = [subprocess.Popen([sys.executable, "-c", DRIVER, str(config)], cwd=root, stdout=h, stderr=h, env=env)
                 for config, h in zip(configs, handles, strict=True)]
    try:
        first = _first_runs(ledger_url, activations, timeout, processes)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for handle in handles:
            handle.close()
    counted = sandbox.limits().get("demo", {})
    statuses: dict[str, int] = {}
    for run in first.values():
        statuses[run.status] = statuses.get(run.status, 0) + 1
    wall = (max(run.finished for run in first.values()) - min(run.started for run in first.values())).total_seconds()
    return Case(round(wall, 2), statuses, counted.get("peak_in_flight", 0), counted.get("refused", 0),
                counted.get("tokens", 0), counted.get("calls", 0), len(first),
                [run.error for run in first.values() if run.error], [path.read_text() for path in log_paths])


@dataclass(frozen=True)
class _Run:
    status: str
    started: datetime
    finished: datetime
    error: str | None


def _first_runs(ledger_url: str, activations: int, timeout: float,
                processes: list[subprocess.Popen[bytes]]) -> dict[str, _Run]:
    """activation -> its first finished run, once every activation has one."""
    deadline = time.monotonic() + timeout
    engine = sa.create_engine(ledger_url)
    query = sa.text("SELECT activation, status, started_at, finished_at, error FROM runs "
                    "WHERE finished_at IS NOT NULL ORDER BY started_at")
    found: dict[str, _Run] = {}
    try:
        while time.monotonic() < deadline and all(p.poll() is None for p in processes):
            try:
                with engine.connect() as conn:
                    rows = conn.execute(query).all()
            except sa.exc.SQLAlchemyError:  # the schedulers have not created the ledger yet
                rows = []
            found = {}
            for activation, status, started, finished, error in rows:
                found.setdefault(activation, _Run(status, _when(started), _when(finished), error))
            if len(found) >= activations:
                return found
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise RuntimeError(f"only {len(found)} of {activations} activations ran within {timeout:g} s")


def _when(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activations", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1, help="scheduler processes sharing the licence and ledger")
    parser.add_argument("--state-url", help="a shared ledger (PostgreSQL); default: the SQLite file of one state_dir")
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout whose scheduler runs (default: this one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each sandbox request takes (default 0.05)")
    args = parser.parse_args(argv)
    print(f"source {args.source}, {args.activations} activations, {args.replicas} scheduler process(es), "
          f"sandbox latency {args.latency:g} s")
    print("| rep | wall (s) | peak in flight | 429s | tokens | calls | runs |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    walls: list[float] = []
    for repetition in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory(prefix="licence-bench-") as directory, \
                ActitoSandbox(latency_seconds=args.latency) as sandbox:
            state_url = _fresh_schema(args.state_url) if args.state_url else None
            case = run_case(Path(directory), sandbox, args.activations, replicas=args.replicas,
                            state_url=state_url, source=args.source)
        walls.append(case.wall_s)
        runs = ", ".join(f"{count} {status}" for status, count in sorted(case.statuses.items()))
        print(f"| {repetition} | {case.wall_s:.2f} | {case.peak_in_flight} | {case.refused} | {case.tokens} | "
              f"{case.calls} | {runs} |", flush=True)
    print(f"median wall: {statistics.median(walls):.2f} s")
    return 0


def _fresh_schema(base_url: str) -> str:
    """A state_url whose tables live in a new schema of ``base_url``'s PostgreSQL (left for inspection)."""
    schema = f"licbench_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    engine = sa.create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{base_url}?options=-csearch_path%3D{schema}"


if __name__ == "__main__":
    sys.exit(main())
