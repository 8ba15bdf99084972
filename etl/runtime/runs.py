"""The life of one run, whatever the job kind: one process per activation, exactly one ledger row
with a final status, and an unexpected exception recorded as a readable failure, not a traceback."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo
from pathlib import Path
from typing import Any

from etl.config import ActivationBase, Config
from etl.errors import AudienceSyncError, LeaseLost, LockBusy
from etl.files import private_directory
from etl.runtime.leases import Lease, hold
from etl.logs import redact
from etl.runtime.ledger import StateStore
from etl.runtime.results import Delivery, RunResults, RunStatus

log = logging.getLogger("audience_sync.run")

#: recorded in ``details.checkpoint`` as reached, so the next run knows where a dead one stopped
CHECKPOINTS = ("extracted", "written", "delivered", "confirmed", "recorded")

#: tests only: SIGKILL the process at this checkpoint, ``chunk`` (first chunk) or ``posted`` (import
#: POST answered, its execution id not yet recorded)
KILL_AT_ENV = "AUDIENCE_SYNC_KILL_AT"
#: tests only: SIGSTOP (the lease heartbeat too) at the same points, a stalled run
STALL_AT_ENV = "AUDIENCE_SYNC_STALL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STALL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def data_time(activation: ActivationBase, started_at: datetime, as_of: date | None) -> datetime:
    """``started_at``, or ``as_of`` at the same wall-clock time in the activation's time zone (UTC)."""
    if as_of is None:
        return started_at
    zone = ZoneInfo(activation.schedule.timezone) if activation.schedule else UTC
    local = started_at.astimezone(zone)
    return datetime.combine(as_of, local.time(), tzinfo=zone).astimezone(UTC)


def new_run_id(started_at: datetime) -> str:
    """Sortable; the random suffix separates runs started in the same second."""
    return f"{started_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    """What a job kind's body sees."""

    config: Config
    activation: str
    run_id: str
    started_at: datetime
    dry_run: bool
    run_dir: Path
    progress: Callable[[str, dict[str, int]], None] = lambda activation, counts: None
    #: step name -> seconds
    steps: dict[str, float] = field(default_factory=dict)
    #: columns of the ledger row (rows_extracted, file_name, ...) set by the job
    results: dict[str, Any] = field(default_factory=dict)
    #: free-form facts kept in the ledger's details (files, locations, reject file ...)
    details: dict[str, Any] = field(default_factory=dict)
    #: set by a scheduler shutting down: the run stops at its next chunk, recorded as interrupted
    stop: threading.Event | None = None
    #: `run --force`: deliver even when a safety guard (e.g. the shrink guard) would stop the run
    force: bool = False
    #: the ledger, where checkpoints are recorded as they are reached
    store: StateStore | None = None
    #: the activation's lease this run holds (None for a preview)
    lease: Lease | None = None
    #: the destination's own account of what it delivered, set by the destination
    delivery: Delivery | None = None
    #: `run --as-of DATE`: the day the data is read and named for, instead of today (a backfill)
    as_of: date | None = None
    #: runs a part of this run (a fan-out's delivery to one destination) as an activation of its own, with
    #: this run's options, under its own lease and ledger entry; set by `execute`
    run_part: Callable[[Config, str, JobBody], RunOutcome] | None = None
    #: the parts' outcomes, in the order they ran
    parts: list[RunOutcome] = field(default_factory=list)
    #: `run --full`: compare with no snapshot, send every row, rebuild the snapshot from what was taken
    full: bool = False
    #: asked, with what a full run will send, before it sends anything; False: nothing is sent
    confirm: Callable[[str], bool] = lambda plan: True

    @property
    def data_time(self) -> datetime:
        """The time the query's :run_date / :run_at and the file name's date are taken from: the run's
        start, or with ``as_of`` that day at the same wall-clock time where the audience lives. Leases,
        the ledger and every wait stay on the real clock."""
        if self.as_of is None:  # an activation being retired may have left the configuration
            return self.started_at
        return data_time(self.config.activations[self.activation], self.started_at, self.as_of)

    def tick(self, counts: dict[str, int]) -> None:
        """Called between chunks: stops here if asked to, before anything is delivered."""
        if self.stop is not None and self.stop.is_set():
            raise RunInterrupted("stopped by a shutdown before it finished; nothing was delivered")
        if self.lease is not None and self.lease.lost.is_set():
            raise self.lease.lost_error(None)
        self.progress(self.activation, counts)
        kill_point("chunk")

    def confirm_full(self, plan: str) -> None:
        """Before a ``--full`` run sends ``plan`` (everything again): asked, and stopped here if declined."""
        if self.full and not self.dry_run and not self.confirm(plan):
            raise RunInterrupted(f"not confirmed: nothing was sent (it would have sent {plan})")

    def fault_point(self, name: str) -> None:
        """Where a destination lets the fault-injection variables crash or stall the run."""
        kill_point(name)

    def fence(self) -> None:
        """Before every irreversible step: renews the lease, or raises LeaseLost if another run took it."""
        if self.lease is not None:
            self.lease.fence()

    def checkpoint(self, name: str) -> None:
        """Written to the ledger at once, fenced: a run that lost its lease stops here."""
        self.details["checkpoint"] = name
        if self.store is not None:
            self.store.save_progress(self.run_id, {**self.details, "steps": self.steps}, fence=self.lease,
                                     **self.results)
        kill_point(name)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        log.info("step %s started", name, extra={"fields": {"activation": self.activation, "run_id": self.run_id}})
        try:
            yield
        finally:
            self.steps[name] = round(time.perf_counter() - began, 3)


class RunInterrupted(Exception):
    """A run asked to stop (scheduler shutdown) stops between chunks, before delivering anything."""


@dataclass(frozen=True)
class RunOutcome:
    activation: str
    run_id: str | None
    status: RunStatus
    dry_run: bool
    duration_s: float
    results: RunResults
    details: dict[str, Any]
    error: str | None = None
    #: a fan-out's deliveries, each recorded under its own name (`delivery_name`)
    parts: tuple[RunOutcome, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    @property
    def delivery(self) -> Delivery | None:
        return Delivery.from_details(self.details.get("delivery"))


JobBody = Callable[[RunContext], None]
#: told of every recorded run (alerts, metrics): given by the caller, as the runtime sits below etl.ops
Finisher = Callable[[Config, StateStore, RunOutcome], None]


def execute(
    config: Config,
    store: StateStore,
    activation: str,
    kind: str,
    body: JobBody,
    *,
    dry_run: bool = False,
    progress: Callable[[str, dict[str, int]], None] | None = None,
    now: datetime | None = None,
    stop: threading.Event | None = None,
    force: bool = False,
    finishers: Sequence[Finisher] = (),
    shown: bool = False,
    as_of: date | None = None,
    full: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> RunOutcome:
    """Finishers are not called for a run that found the lock taken; never raises for a failed run.

    ``shown``: the caller prints the outcome itself (``run`` on a terminal), so its error is not logged too:
    said once. The scheduler and JSON logs keep it as an error record."""
    started_at = now or datetime.now(UTC)
    run_id = new_run_id(started_at)
    ttl = timedelta(minutes=config.settings.lock_ttl_minutes)
    began = time.perf_counter()
    try:
        with hold(store, activation, run_id, ttl) as lease:
            context = RunContext(config, activation, run_id, started_at, dry_run,
                                 config.state_dir / "runs" / activation / run_id, stop=stop, force=force,
                                 store=store, lease=lease, as_of=as_of, full=full)
            if confirm is not None:
                context.confirm = confirm
            if full:
                context.details["full"] = True
            if as_of is not None:
                context.details["as_of"] = as_of.isoformat()
            if progress is not None:
                context.progress = progress

            def run_part(part_config: Config, part: str, part_body: JobBody) -> RunOutcome:
                return execute(part_config, store, part, kind, part_body, dry_run=dry_run, progress=progress,
                               stop=stop, force=force, finishers=finishers, shown=shown, as_of=as_of, full=full,
                               confirm=confirm)

            context.run_part = run_part
            return _run_locked(context, store, kind, body, began, finishers, shown)
    except LockBusy as busy:
        if not shown:
            log.warning(busy.message(), extra={"fields": {"activation": activation}})
        return RunOutcome(activation, None, RunStatus.LOCKED, dry_run, 0.0, RunResults(), {}, busy.message())


def _run_locked(context: RunContext, store: StateStore, kind: str, body: JobBody, began: float,
                finishers: Sequence[Finisher], shown: bool) -> RunOutcome:
    config, activation, run_id, dry_run = context.config, context.activation, context.run_id, context.dry_run
    run_dir, stop = context.run_dir, context.stop
    recovered = mark_dead_runs(store, activation, run_id, run_dir.parent)
    store.start_run(run_id, activation, kind, dry_run=dry_run, started_at=context.started_at.replace(tzinfo=None))
    if recovered:
        context.details["recovered"] = recovered
    fields = {"activation": activation, "run_id": run_id}
    status, error = _run_body(context, body, fields)
    pruned = prune_runs(store, config, activation, run_dir.parent, current=run_id)
    if pruned:
        context.details["pruned_runs"] = pruned
    duration = round(time.perf_counter() - began, 3)
    context.details["steps"] = context.steps
    if status == RunStatus.SUCCEEDED:
        context.details["checkpoint"] = "recorded"
    if context.delivery is not None:
        context.details["delivery"] = context.delivery.as_details()
    results = RunResults.from_columns(context.results)
    status, error = _record(context, results, status, error, duration)
    kill_point("recorded")
    level = logging.INFO if status == RunStatus.SUCCEEDED or shown else logging.ERROR
    said = f": {error}" if error and not shown else ""
    log.log(level, "run %s%s", status, said, extra={"fields": {**fields, **results}})
    outcome = RunOutcome(activation, run_id, status, dry_run, duration, results, context.details, error,
                         tuple(context.parts))
    for finish in finishers:
        finish(config, store, outcome)
    if status == RunStatus.INTERRUPTED and stop is None:  # Ctrl-C on a one-shot run ends the command too
        raise KeyboardInterrupt
    return outcome


def _run_body(context: RunContext, body: JobBody, fields: dict[str, str]) -> tuple[RunStatus, str | None]:
    try:
        private_directory(context.run_dir, root=context.config.state_dir)
        body(context)
    except AudienceSyncError as exc:
        return RunStatus.FAILED, redact(exc.message())
    except RunInterrupted as exc:
        return RunStatus.INTERRUPTED, str(exc)
    except KeyboardInterrupt:
        return RunStatus.INTERRUPTED, "interrupted by the user or a signal"
    except Exception as exc:  # a bug of ours: record it, keep the traceback in the log, not on the user's screen
        log.debug("internal error", exc_info=True, extra={"fields": fields})
        return RunStatus.FAILED, redact(_unexpected(exc))
    return RunStatus.SUCCEEDED, None


def _record(context: RunContext, results: RunResults, status: RunStatus, error: str | None,
            duration: float) -> tuple[RunStatus, str | None]:
    """A run that lost its lease is recorded as such, never as succeeded, whatever it then failed on."""
    store, lease = context.store, context.lease
    assert store is not None and lease is not None
    values: dict[str, Any] = {"finished_at": datetime.now(UTC).replace(tzinfo=None), "duration_s": duration,
                              "details": context.details, **results}
    try:
        store.finish_run(context.run_id, status, fence=lease, error=error, **values)
    except LeaseLost as lost:
        status, error = RunStatus.FAILED, lost.message()
        context.details["lease"] = "lost"
        store.finish_run(context.run_id, status, error=error, **values)
    return status, error


#: a write that fails for one of these is the machine's state, not a bug: said so wherever it happens
_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only"}


def _unexpected(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"{_DISK_ERRNOS[exc.errno]} ({exc.strerror}{where}) — free some space or fix the volume, then run again"
    return f"internal error ({type(exc).__name__}: {exc}) — please report it"


def mark_dead_runs(store: StateStore, activation: str, run_id: str, runs_dir: Path) -> list[str]:
    """Called with the lock held, so a run still marked running is dead. What it left in flight
    elsewhere is the job's to resolve."""
    dead_ids: list[str] = []
    for dead in store.unfinished_runs(activation):
        stopped = dead.details.get("checkpoint") or "starting"
        error = (f"the process died after '{stopped}' (killed or crashed) or stalled past its lease; "
                 f"run {run_id} recovered it")
        store.finish_run(dead.run_id, RunStatus.INTERRUPTED, finished_at=datetime.now(UTC).replace(tzinfo=None),
                         error=error, details={**dead.details, "recovered_by": run_id})
        _remove_partial_files(runs_dir / dead.run_id)
        log.warning("run %s of %s had died: %s", dead.run_id, activation, error,
                    extra={"fields": {"activation": activation, "run_id": run_id, "dead_run_id": dead.run_id}})
        dead_ids.append(dead.run_id)
    return dead_ids


def prune_runs(store: StateStore, config: Config, activation: str, runs_dir: Path, *, current: str) -> list[str]:
    """Data minimisation: run directories hold personal data. Keeps the last ``keep_runs``, running ones,
    and those with an import of unknown outcome (the successor needs its rows). Never fails the run."""
    settings = config.settings
    cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=settings.run_retention_days)
    try:
        records = store.runs(activation, limit=100_000)
        needed = {current, *(r.run_id for r in records[: settings.keep_runs])}
        needed |= {r.run_id for r in records if r.status == RunStatus.RUNNING}
        needed |= {i.run_id for i in store.unfinished_imports(activation, excluding_run=current)}
        started = {r.run_id: r.started_at for r in records}
        pruned = []
        for path in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
            if path.name in needed or path.is_symlink() or not path.is_dir():
                continue
            when = started.get(path.name) or datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)
            if when < cutoff:
                shutil.rmtree(path)
                pruned.append(path.name)
    except (OSError, AudienceSyncError) as exc:
        log.warning("old runs' files not pruned: %s", exc, extra={"fields": {"activation": activation}})
        return []
    if pruned:
        log.info("removed the files of %d run(s) older than %g days", len(pruned), settings.run_retention_days,
                 extra={"fields": {"activation": activation}})
    return pruned


def _remove_partial_files(run_dir: Path) -> None:
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if path.name.startswith(".") and path.name.endswith((".partial", ".tmp", ".repack")):
            path.unlink(missing_ok=True)

