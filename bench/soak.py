"""Soak: many scheduled runs with random injected faults in one process; a leak shows as growth.

A scheduler daemon lives for months, so whatever one run leaves behind — a warehouse or ledger
connection not handed back, a socket of a cut SFTP session, a thread of an HTTP pool, memory held
by a cache — adds up. This drives the scheduler's own run path (``Scheduler.fire`` → ledger slot →
``execute``) over demo-sized activations against real servers in this process (SFTP, FTPS, the
Actito sandbox), injects a seeded random fault into about half of the runs, and samples the
process's file descriptors, sockets, threads, checked-out SQLAlchemy connections and RSS.

    .venv/bin/python bench/soak.py                 # 200 runs, seed 7: the figures in docs/benchmarks.md
    .venv/bin/python bench/soak.py --runs 50 --seed 1

tests/test_soak.py runs a shorter one and asserts that nothing grows.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the real SFTP and FTPS servers the tests use

from dbservers import PoolWatch  # noqa: E402
from servers import PASSWORD, FtpsBehaviour, FtpsServer, SftpBehaviour, SftpServer, make_tls_certificate  # noqa: E402

from etl.destinations.filedrop.base import Deliverer  # noqa: E402
from etl.destinations.licence import IDLE_SECONDS  # noqa: E402
from etl.ops.announce import announce  # noqa: E402
from etl.runtime.scheduler import Scheduler  # noqa: E402
from jobs import job_for  # noqa: E402
from etl.runtime.ledger import StateStore  # noqa: E402
from etl.testing.actito.server import ActitoSandbox  # noqa: E402
from etl.testing.loopback import FaultStatus  # noqa: E402
from etl.testing.demo import ensure_demo_warehouse  # noqa: E402

ZONE = ZoneInfo("Europe/Brussels")
SANDBOX_KEY = "sandbox-demo-key"


# --------------------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Sample:
    runs: int
    fds: int
    sockets: int
    threads: int
    checked_out: int
    rss_mb: float


def sample(runs: int, pools: PoolWatch) -> Sample:
    """The process as it stands, once kept licence slots went back (etl.destinations.licence: after IDLE_SECONDS)
    and after a garbage collection (an unreachable socket is not a leak)."""
    time.sleep(2 * IDLE_SECONDS)
    gc.collect()
    fd_dir = Path("/proc/self/fd")
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(fd_dir / fd))
        except OSError:
            continue  # the descriptor listdir itself used, closed meanwhile
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return Sample(runs, len(targets), sum(t.startswith("socket:") for t in targets), threading.active_count(),
                  pools.checked_out, round(rss_kb / 1024, 1))


# --------------------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    """One thing that goes wrong during one run: ``inject`` before it, ``undo`` after it."""

    label: str
    inject: Callable[[], None]
    undo: Callable[[], None]


@dataclass
class Servers:
    sftp: SftpServer
    ftps: FtpsServer
    sandbox: ActitoSandbox

    def faults(self) -> dict[str, list[Fault]]:
        """Per activation: what may go wrong. A fault's run ends retried to success or in one failure."""
        sftp, ftps, sandbox = self.sftp.behaviour, self.ftps.behaviour, self.sandbox

        def cut(server: SftpBehaviour | FtpsBehaviour, times: int) -> Callable[[], None]:
            def inject() -> None:
                server.cut.after, server.cut.times = 1000, server.cut.count + times
            return inject

        def uncut() -> None:
            sftp.cut.after = ftps.cut.after = None

        def actito(status: FaultStatus, count: int, path: str) -> Fault:
            retry_after = 0 if isinstance(status, int) else None  # no pause: the soak is about what is left behind
            return Fault(f"actito {status} x{count} on {path}",
                         lambda: sandbox.inject_faults(status, count, path, retry_after=retry_after),
                         sandbox.clear_faults)

        def disk_full() -> None:
            ftps.write_limit = 100

        def disk_freed() -> None:
            ftps.write_limit = None

        return {
            "to_sftp": [Fault("sftp cut once", cut(sftp, 1), uncut), Fault("sftp cut every time", cut(sftp, 1000), uncut)],
            "to_ftps": [Fault("ftps cut once", cut(ftps, 1), uncut), Fault("ftps server disk full", disk_full, disk_freed)],
            "to_outbox": [],
            "profiles": [actito(429, 2, "/etl-executions"), actito(500, 2, "/etl-executions/"),
                         actito("timeout", 1, "/etl-executions"), actito("disconnect", 1, "/etl-executions"),
                         actito(401, 1, "/etl-executions"), actito(500, 1000, "/etl-executions")],
        }


@contextmanager
def servers(root: Path) -> Iterator[Servers]:
    with ExitStack() as stack:
        sftp = stack.enter_context(SftpServer(root / "sftp", behaviour=SftpBehaviour()))
        ftps = stack.enter_context(FtpsServer(root / "ftps", make_tls_certificate(root / "tls"),
                                              behaviour=FtpsBehaviour()))
        sandbox = stack.enter_context(ActitoSandbox(processing_seconds=0.02, fault_delay_seconds=0.2,
                                                    daily_imports_per_table=1_000_000))
        for server in (sftp, ftps):
            (server.root / "in").mkdir(parents=True, exist_ok=True)
        yield Servers(sftp, ftps, sandbox)


# --------------------------------------------------------------------------- the project


def write_project(root: Path, found: Servers) -> Path:
    """The demo warehouse, four activations (three audiences, one profiles import), every one scheduled."""
    sql = root / "sql"
    sql.mkdir(parents=True)
    for name in ("vip_customers", "newsletter_engaged", "lapsed_buyers", "qualifio_profiles"):
        (sql / f"{name}.sql").write_bytes((REPO / "sql" / f"{name}.sql").read_bytes())
    known_hosts = found.sftp.write_known_hosts(root / "known_hosts")
    os.environ["SOAK_PASSWORD"] = PASSWORD
    os.environ["SOAK_ACTITO_KEY"] = SANDBOX_KEY
    login = 'host = "127.0.0.1", username = "actito", password = "${SOAK_PASSWORD}", remote_dir = "/in", timeout = 5'
    path = root / "schedules.toml"
    path.write_text("\n".join([
        '[settings]\nstate_dir = "var/state"\nchunk_size = 1000',
        '[warehouses.demo]\nurl = "sqlite:///var/demo/warehouse.db"\ndemo = true',
        f'[destinations.actito]\nbase_url = "{found.sandbox.url}"\napi_key = "${{SOAK_ACTITO_KEY}}"\n'
        'entity = "demo"\ndaily_import_budget = 1000000',
        _files_destination("sftp", f'type = "sftp", port = {found.sftp.port}, {login}, known_hosts = "{known_hosts}"'),
        _files_destination("ftps", f'type = "ftps", port = {found.ftps.port}, {login}, ca_file = "{found.ftps.tls.cert}"'),
        _files_destination("outbox", 'type = "local", path = "var/outbox"'),
        _activation("to_sftp", "vip_customers", "sftp", 'identifier = "profileId"\nparams = { min_value = 500 }'),
        _activation("to_ftps", "newsletter_engaged", "ftps",
                    'identifier = "email"\nparams = { min_orders = 2 }\nfile = { compression = "gzip" }'),
        _activation("to_outbox", "lapsed_buyers", "outbox", 'identifier = "email"\n'
                    'params = { min_days = 180, max_days = 365 }\nfile = { compression = "zip" }'),
        _activation("profiles", "qualifio_profiles", "actito", 'kind = "profiles"\ntable = "customers"\npreset = "qualifio"'),
    ]), encoding="utf-8")
    return path


def _files_destination(name: str, files: str) -> str:
    return f'[destinations.{name}]\nenvironment = "sandbox"\nentity = "demo"\nfiles = {{ {files} }}'


def _activation(name: str, sql: str, destination: str, options: str) -> str:
    return (f'[activations.{name}]\nsql = "sql/{sql}.sql"\ndestination = "{destination}"\n{options}\n'
            'schedule = { every = "1h", timezone = "Europe/Brussels" }')


def touch_the_participants(root: Path, rng: random.Random) -> None:
    """Change every participant's town, so that each profiles run has an import to send (and a fault to meet)."""
    warehouse = root / "var" / "demo" / "warehouse.db"
    ensure_demo_warehouse(f"sqlite:///{warehouse}")  # the first run may be this one
    db = sqlite3.connect(warehouse)
    try:
        with db:
            db.execute("UPDATE qualifio_participations SET locality = ?", (f"Town {rng.randrange(10**6)}",))
    finally:
        db.close()


# --------------------------------------------------------------------------- the soak


@dataclass
class Report:
    runs: int
    seconds: float = 0.0
    #: (fault label or "no fault", final status) -> runs
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{self.runs} scheduled runs in {self.seconds:.0f} s", "",
                 "| fault injected | runs | succeeded | failed |", "|---|---:|---:|---:|"]
        for label in sorted({label for label, _ in self.outcomes}, key=lambda text: (text != "no fault", text)):
            done = {status: count for (fault, status), count in self.outcomes.items() if fault == label}
            lines.append(f"| {label} | {sum(done.values())} | {done.get('succeeded', 0)} | {done.get('failed', 0)} |")
        lines += ["", "| after runs | fds | sockets | threads | pool checked out | RSS (MB) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {s.runs} | {s.fds} | {s.sockets} | {s.threads} | {s.checked_out} | {s.rss_mb:.1f} |"
                  for s in self.samples]
        return "\n".join(lines)


def soak(runs: int, *, seed: int, checkpoints: Sequence[int], root: Path) -> Report:
    """``runs`` fires of the scheduler, each a random activation with (half the time) a random fault."""
    rng = random.Random(seed)
    report = Report(runs)
    began = time.perf_counter()
    with servers(root / "servers") as found, PoolWatch() as pools:
        scheduler = Scheduler(write_project(root / "project", found), job_for, finishers=(announce,))
        scheduler.start(paused=True)
        ledger = StateStore.in_directory(root / "project" / "var" / "state")
        faults = found.faults()
        first_slot = datetime(2026, 1, 5, 0, 0, tzinfo=ZONE)
        try:
            report.samples.append(sample(0, pools))
            for number in range(1, runs + 1):
                name = rng.choice(sorted(faults))
                fault = rng.choice(faults[name]) if faults[name] and rng.random() < 0.5 else None
                if name == "profiles":
                    touch_the_participants(root / "project", rng)
                if fault is not None:
                    fault.inject()
                try:
                    scheduler.fire(name, first_slot + timedelta(hours=number))
                finally:
                    if fault is not None:
                        fault.undo()
                (last,) = ledger.runs(name, limit=1)
                report.outcomes[(fault.label if fault else "no fault", last.status)] += 1
                if number in checkpoints:
                    report.samples.append(sample(number, pools))
        finally:
            ledger.close()
            scheduler.close()
    report.seconds = time.perf_counter() - began
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger().handlers[0].setLevel(logging.CRITICAL)  # the runs' warnings (and the test servers') are expected
    # the shipped retry budget (3 attempts), with pauses that do not dominate the soak's time
    Deliverer.retry = replace(Deliverer.retry, first_pause=0.01)
    checkpoints = sorted({n for n in (10, 50, 100, 150) if n < args.runs} | {args.runs})
    with tempfile.TemporaryDirectory(prefix="audience-sync-soak-") as directory:
        report = soak(args.runs, seed=args.seed, checkpoints=checkpoints, root=Path(directory))
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
