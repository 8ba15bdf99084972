"""The long-running scheduler: ``audience-sync schedule`` (and ``--preview``).

APScheduler 3 decides *when*; our own ledger decides *whether*. Every fire claims a logical slot —
the activation plus the scheduled local wall-clock time — with ``StateStore.claim_slot``, and only
the first claimer runs. That one rule covers the cases APScheduler cannot: a daily ``CronTrigger``
fires twice on the autumn fall-back night (both fires carry the same wall-clock slot), a second
scheduler replica on the same shared ledger fires the same slot, and a restarted scheduler that
catches up a recent slot finds it already done.

Decisions, pinned with Europe/Brussels by tests/test_scheduler.py:

* ``cron``: ``CronTrigger.from_crontab`` in the activation's zone. On the spring-forward day a
  daily ``30 2 * * *`` still runs once: APScheduler yields the non-existent 02:30 with the winter
  offset, i.e. the instant 03:30 CEST, and the slot stays ``...T02:30``. On the fall-back night it
  yields 02:30 +02:00 and 02:30 +01:00; both are slot ``...T02:30``, so the first one runs and the
  second is a logged no-op. Sub-daily cron patterns behave like cron: minutes of the skipped hour do
  not run, the repeated hour runs once.
* ``every`` of whole days (``1d``, ``2d``, ``48h``): at 00:00 local time on days counted from
  2000-01-01, so it never drifts across DST and every replica agrees on the days. It is a
  ``CalendarIntervalTrigger`` whose next-time rule is replaced: the stock one silently skips a day
  whose time does not exist (midnight in zones that change at 00:00, e.g. America/Santiago) and
  returns a first time in the past. A non-existent midnight runs at the shifted instant, as cron does.
  For another time of day, use ``cron = "M H * * *"``.
* ``every`` shorter than a day (or not whole days): ``IntervalTrigger``, elapsed time counted from
  2000-01-01 00:00 local, so replicas and restarts agree on the slots. Being elapsed time, its local
  times shift by an hour across DST, and on the fall-back night the repeated hour is a *different*
  slot (suffixed with its offset) — skipping it would leave a one-hour hole in an hourly sync.
  Slots are minutes, so intervals under a minute are refused.
* No persistent job store (it pickles jobs and cannot be shared): jobs are rebuilt from
  ``schedules.toml`` at start and on SIGHUP; at start, the most recent slot still within
  ``misfire_grace_seconds`` is fired too, and the ledger says whether it already ran.
* Job options: ``coalesce=True``, ``max_instances=1``, ``misfire_grace_time`` from the settings
  (APScheduler's default of 1 s silently drops a run that is 2 s late).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from etl.config import Config, Schedule, load_config, parse_interval
from etl.config import config_path as resolve_config_path
from etl.errors import AudienceSyncError, ConfigError
from etl.runtime.ledger import StateStore, open_store
from etl.runtime.results import RunStatus
from etl.runtime.runs import Finisher, JobBody, execute

log = logging.getLogger("audience_sync.scheduler")

#: whole-day and interval schedules count their slots from this local date, the same in every process
ANCHOR = date(2000, 1, 1)
#: runs that may execute at once (threads are created only when needed)
MAX_WORKERS = 16
#: after a second SIGTERM/SIGINT, how long running runs get to record themselves interrupted
ESCALATION_WAIT = 5.0
#: how often the main thread looks at the signals it received (handlers only set flags)
POLL_SECONDS = 0.1
#: the CLI's exit code for an interrupted command, used when runs had to be abandoned
EXIT_INTERRUPTED = 130

_DAY = 86_400


# --------------------------------------------------------------------------- slots and triggers


def slot_key(fire_time: datetime) -> str:
    """The slot a fire belongs to: its scheduled local wall-clock time, to the minute, without offset.

    ``fire_time`` is what the trigger produced, in the activation's zone and *not* normalized: the
    spring-forward day's non-existent 02:30 stays ``...T02:30`` (it runs at 03:30), and both 02:30s
    of the fall-back night give the same key, so the ledger lets only the first one run.
    """
    return fire_time.strftime("%Y-%m-%dT%H:%M")


def _slot_of(trigger: BaseTrigger, fire_time: datetime) -> str:
    """``slot_key``, except that an elapsed-time interval's second pass through a repeated hour is its
    own slot: those are distinct instants an hour apart, not one wall-clock time fired twice."""
    key = slot_key(fire_time)
    if isinstance(trigger, IntervalTrigger) and fire_time.fold:
        key += fire_time.strftime("%z")
    return key


class WholeDaysTrigger(CalendarIntervalTrigger):  # type: ignore[misc]
    """``every = "Nd"``: every N days at a fixed local time (00:00), days counted from ``ANCHOR``.

    Keeps CalendarIntervalTrigger's fields and repr, replaces its next-time rule: the stock rule
    skips a date whose time does not exist and, without a previous fire, returns ``start_date``'s
    time even when it is long past. Here a non-existent time yields the wall-clock time with the
    pre-transition offset — the instant one hour later, as CronTrigger does — and an ambiguous one
    its first occurrence.
    """

    def __init__(self, days: int, *, timezone: tzinfo, hour: int = 0, minute: int = 0) -> None:
        super().__init__(days=days, hour=hour, minute=minute, start_date=ANCHOR, timezone=timezone)

    def _at(self, day: date) -> datetime:
        return datetime.combine(day, self._time)  # fold=0: first of two, or the pre-transition offset

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None:
            return self._at(previous_fire_time.date() + timedelta(days=self.days))
        today = now.astimezone(self.timezone).date()
        day = today - timedelta(days=(today - self.start_date).days % self.days)
        while self._at(day).timestamp() < now.timestamp():
            day += timedelta(days=self.days)
        return self._at(day)


def _trigger(name: str, schedule: Schedule, source: str) -> BaseTrigger:
    zone = ZoneInfo(schedule.timezone)
    if schedule.cron is not None:
        return CronTrigger.from_crontab(schedule.cron, timezone=zone)
    assert schedule.every is not None  # validated: exactly one of cron, every
    seconds = parse_interval(schedule.every)
    if seconds < 60:
        raise ConfigError(
            [(f"[activations.{name}] schedule.every",
              f"{schedule.every!r} is shorter than a minute: scheduled slots are whole minutes (use at least '1m')")],
            source=source,
        )
    if seconds % _DAY == 0:
        return WholeDaysTrigger(seconds // _DAY, timezone=zone)
    return IntervalTrigger(seconds=seconds, start_date=datetime.combine(ANCHOR, datetime.min.time(), zone),
                           timezone=zone)


def build_triggers(config: Config) -> dict[str, BaseTrigger]:
    """One trigger per enabled activation that has a schedule; raises ConfigError listing every
    schedule the scheduler cannot honour (the configuration itself already validated)."""
    triggers: dict[str, BaseTrigger] = {}
    problems: list[tuple[str, str]] = []
    # triggers keep no state (each fire time is computed from the previous one), so activations with
    # the same schedule share one: a thousand activations use a few dozen schedules
    shared: dict[Schedule, BaseTrigger] = {}
    for name, activation in config.activations.items():
        if not activation.enabled or activation.schedule is None:
            continue
        try:
            if activation.schedule not in shared:
                shared[activation.schedule] = _trigger(name, activation.schedule, config.source)
            triggers[name] = shared[activation.schedule]
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, source=config.source)
    return triggers


@dataclass(frozen=True)
class Upcoming:
    """One future run: its slot, the real instant (normalized, in the activation's zone), and a note."""

    slot: str
    at: datetime
    note: str = ""


def _upcoming(trigger: BaseTrigger, count: int, now: datetime) -> list[Upcoming]:
    """Walk the trigger as APScheduler does (each fire becomes the next ``previous``), one entry per slot."""
    found: list[Upcoming] = []
    repeated: set[str] = set()
    previous: datetime | None = None
    cursor = now
    for _ in range(count * 3 + 10):  # duplicates are rare: at most one per slot
        if len(found) >= count:
            break
        fire_time: datetime | None = trigger.get_next_fire_time(previous, cursor)
        if fire_time is None:
            break
        key = _slot_of(trigger, fire_time)
        if any(entry.slot == key for entry in found):
            repeated.add(key)
        else:
            found.append(Upcoming(key, datetime.fromtimestamp(fire_time.timestamp(), fire_time.tzinfo)))
        previous = cursor = fire_time
    return [_annotated(entry, entry.slot in repeated) for entry in found]


def _annotated(entry: Upcoming, repeated: bool) -> Upcoming:
    wall = entry.slot[11:16]
    if entry.at.strftime("%H:%M") != wall:
        return Upcoming(entry.slot, entry.at, f"{wall} does not exist that day (clocks go forward)")
    if repeated:
        return Upcoming(entry.slot, entry.at, f"{wall} happens twice that night: runs once")
    return entry


def next_runs(config: Config, count: int, now: datetime) -> dict[str, list[datetime]]:
    """The next ``count`` runs of each scheduled activation, as aware datetimes in its time zone.

    The real instants (the spring-forward day's 02:30 shows as 03:30 +02:00), one per slot (the
    fall-back night's second 02:30 is not listed: the ledger would not run it)."""
    upcoming = _upcoming_of(build_triggers(config), count, now)
    return {name: [entry.at for entry in entries] for name, entries in upcoming.items()}


def _upcoming_of(triggers: dict[str, BaseTrigger], count: int, now: datetime) -> dict[str, list[Upcoming]]:
    """``_upcoming`` of each activation, walked once per shared trigger."""
    walked: dict[int, list[Upcoming]] = {}
    for trigger in triggers.values():
        if id(trigger) not in walked:
            walked[id(trigger)] = _upcoming(trigger, count, now)
    return {name: walked[id(trigger)] for name, trigger in triggers.items()}


# --------------------------------------------------------------------------- preview


def _describe(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron}"
    assert schedule.every is not None
    whole_days = parse_interval(schedule.every) % _DAY == 0
    return f"every {schedule.every}" + (" at 00:00" if whole_days else "")


def format_preview(config: Config, count: int, now: datetime) -> str:
    """What ``schedule --preview`` prints: a table of each activation's next runs with UTC offsets."""
    triggers = build_triggers(config)
    rows: list[list[str]] = []
    for name, entries in _upcoming_of(triggers, count, now).items():
        schedule = config.activations[name].schedule
        assert schedule is not None
        first = [name, _describe(schedule), schedule.timezone]
        for index, entry in enumerate(entries):
            cells = first if index == 0 else ["", "", ""]
            rows.append([*cells, f"{entry.at:%Y-%m-%d %H:%M %z}", entry.note])
    headers = ["activation", "schedule", "time zone", "next runs", ""]
    widths = [max([len(headers[i]), *(len(row[i]) for row in rows)]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths[:4])]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if not rows:
        lines = ["no activation is scheduled"]
    idle = [f"{name} ({'disabled' if not a.enabled else 'no schedule'})"
            for name, a in config.activations.items() if name not in triggers]
    if idle:
        lines += ["", "not scheduled: " + ", ".join(idle)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the scheduler


class _ScheduledJob:
    """An APScheduler job as seen by one execution: calling it also passes the time it was scheduled for."""

    def __init__(self, job: Job, scheduled: datetime) -> None:
        self._job = job
        self.kwargs = {**job.kwargs, "scheduled": scheduled}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


class _SlotExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """APScheduler 3 does not tell a job function which run time it executes for; the slot needs it.
    Jobs are coalesced, so there is one run time per submission: the latest one."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        super()._do_submit_job(_ScheduledJob(job, run_times[-1]), run_times[-1:])


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Runs the scheduled activations until SIGTERM/SIGINT; SIGHUP reloads ``schedules.toml``.

    ``job_for`` gives a job kind's body and ``finishers`` are told of every run: both come from the
    caller, as job kinds and alerts sit above the runtime. ``clock`` gives "now" for the catch-up of
    recent slots and the runs' start time (tests pin it; APScheduler's own loop always follows the
    real clock). ``stop_grace`` overrides ``settings.shutdown_grace_seconds``.
    """

    def __init__(
        self,
        config_path: Path,
        job_for: Callable[[str], JobBody],
        *,
        finishers: Sequence[Finisher] = (),
        clock: Callable[[], datetime] | None = None,
        stop_grace: float | None = None,
    ) -> None:
        self.config_path = config_path
        self._job_for = job_for
        self._finishers = finishers
        self._clock = clock or _utcnow
        self._stop_grace = stop_grace
        self._identity = f"{socket.gethostname()}:{os.getpid()}"
        self._config: Config | None = None
        self._store: StateStore | None = None
        self._old_stores: list[StateStore] = []  # replaced by a reload; runs may still use them
        self._triggers: dict[str, BaseTrigger] = {}
        # UTC, not a local zone: aware datetimes sharing one tzinfo compare by wall clock, ignoring fold
        self._aps = BackgroundScheduler(timezone=UTC, executors={"default": _SlotExecutor(MAX_WORKERS)})
        #: set when running runs must stop at their next chunk (they end "interrupted")
        self._stop_event = threading.Event()
        self._state_lock = threading.Lock()
        self._stopping = False  # no new runs once set
        self._running: dict[str, str] = {}  # activation -> slot
        self._signals: list[int] = []  # appended by handlers, read by the main loop

    # ------------------------------------------------------------------ life cycle

    @property
    def config(self) -> Config:
        if self._config is None:
            raise RuntimeError("the scheduler is not started")
        return self._config

    @property
    def jobs(self) -> list[Job]:
        return list(self._aps.get_jobs())

    @property
    def running(self) -> dict[str, str]:
        with self._state_lock:
            return dict(self._running)

    def start(self, *, paused: bool = False) -> None:
        """Load the configuration, open the ledger and schedule the jobs; raises ConfigError.
        ``paused``: jobs are scheduled but nothing fires by itself (tests call ``fire``)."""
        config = load_config(self.config_path)
        triggers = build_triggers(config)
        self._store = open_store(config)
        self._config = config
        self._aps.start(paused=True)
        self._install(triggers)
        if not paused:
            self._aps.resume()
        log.info("scheduler started: %d scheduled activations", len(triggers),
                 extra={"fields": {"config": str(self.config_path), "replica": self._identity}})

    def reload(self) -> bool:
        """Re-read ``schedules.toml`` and rebuild the jobs; an invalid file is refused with its full
        message and the current jobs keep running. Runs in progress keep the configuration they began with."""
        try:
            config = load_config(self.config_path)
            triggers = build_triggers(config)
            store = self._store if self._same_ledger(config) else open_store(config)
        except AudienceSyncError as exc:
            log.error("configuration reload refused, the %d current schedules keep running: %s",
                      len(self._triggers), exc.message(), extra={"fields": {"kept": sorted(self._triggers)}})
            return False
        if store is not self._store and self._store is not None:
            self._old_stores.append(self._store)
        self._store, self._config = store, config
        self._install(triggers)
        log.info("configuration reloaded: %d scheduled activations", len(triggers),
                 extra={"fields": {"scheduled": sorted(triggers)}})
        return True

    def close(self) -> None:
        """Stop APScheduler and close the ledgers (after the runs ended)."""
        if self._aps.running:
            self._aps.shutdown(wait=True)
        for store in [*self._old_stores, *([self._store] if self._store else [])]:
            store.close()
        self._old_stores.clear()

    def _same_ledger(self, config: Config) -> bool:
        old = self._config
        if old is None:
            return False
        url = config.settings.state_url.get_secret_value() if config.settings.state_url else None
        old_url = old.settings.state_url.get_secret_value() if old.settings.state_url else None
        return url == old_url and (url is not None or config.state_dir == old.state_dir)

    def _install(self, triggers: dict[str, BaseTrigger]) -> None:
        """Make the APScheduler jobs match ``triggers``. A new or changed schedule starts from the most
        recent slot within the misfire grace (the ledger says whether it already ran); an unchanged
        one keeps its next run time."""
        config = self.config
        grace = config.settings.misfire_grace_seconds
        options: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": grace}
        for job in self._aps.get_jobs():
            if job.id not in triggers:
                job.remove()
                log.info("unscheduled", extra={"fields": {"activation": job.id}})
        now = self._clock()
        for name, trigger in triggers.items():
            existing = self._aps.get_job(name)
            if existing is not None and repr(self._triggers.get(name)) == repr(trigger):
                existing.modify(**options)
                continue
            first = _first_fire(trigger, now, grace)
            if first is None:
                log.warning("no future run: not scheduled", extra={"fields": {"activation": name}})
                continue
            self._aps.add_job(self._fired, trigger=trigger, args=(name,), id=name, name=name,
                              replace_existing=True, next_run_time=first, **options)
            schedule = config.activations[name].schedule
            assert schedule is not None
            log.info("scheduled %s: %s (%s), first slot %s", name, _describe(schedule), schedule.timezone,
                     _slot_of(trigger, first), extra={"fields": {"activation": name}})
        self._triggers = {name: trigger for name, trigger in triggers.items() if self._aps.get_job(name)}

    # ------------------------------------------------------------------ one fire

    def _fired(self, name: str, scheduled: datetime | None = None) -> None:
        """What APScheduler calls; ``scheduled`` is filled in by ``_SlotExecutor`` (APScheduler checks
        the job function's signature when the job is added, before any run time is known)."""
        if scheduled is None:
            raise RuntimeError("a scheduled job ran without its scheduled time (not through _SlotExecutor)")
        self.fire(name, scheduled)

    def fire(self, name: str, scheduled: datetime) -> None:
        """The job function: claim the slot in the ledger, and run only if this process claimed it.

        An already claimed slot (the fall-back night's second fire, another replica, a catch-up of a
        slot that ran) is logged and does nothing. A run whose lock another process holds is skipped
        by ``execute`` (recorded nowhere, logged). Never raises for a failed run.
        """
        config, store = self.config, self._store
        assert store is not None
        trigger = self._triggers.get(name)
        slot = _slot_of(trigger, scheduled) if trigger is not None else slot_key(scheduled)
        fields: dict[str, Any] = {"activation": name, "slot": slot, "replica": self._identity}
        activation = config.activations.get(name)
        if activation is None or not activation.enabled or activation.schedule is None:
            log.info("slot %s of %s not started: no longer scheduled", slot, name, extra={"fields": fields})
            return
        with self._state_lock:
            if self._stopping:
                log.info("slot %s of %s not started: the scheduler is stopping", slot, name,
                         extra={"fields": fields})
                return
            self._running[name] = slot
        try:
            self._claim_and_run(config, store, name, activation.kind, slot, fields)
        finally:
            with self._state_lock:
                self._running.pop(name, None)

    def _claim_and_run(self, config: Config, store: StateStore, name: str, kind: str, slot: str,
                       fields: dict[str, Any]) -> None:
        try:
            if not store.claim_slot(name, slot, self._identity):
                log.info("slot %s of %s already claimed: nothing to do", slot, name, extra={"fields": fields})
                return
            log.info("slot %s of %s claimed: running", slot, name, extra={"fields": fields})
            outcome = execute(config, store, name, kind, self._job_for(kind), stop=self._stop_event,
                              now=self._clock(), finishers=self._finishers)
        except AudienceSyncError as exc:  # the ledger itself failed: nothing ran, nothing to record it in
            log.error("slot %s of %s not run: %s", slot, name, exc.message(), extra={"fields": fields})
            return
        if outcome.status == RunStatus.LOCKED:
            log.info("slot %s of %s skipped: another process is running it", slot, name, extra={"fields": fields})

    # ------------------------------------------------------------------ signals and the main loop

    def run_forever(self) -> int:
        """Run until SIGTERM/SIGINT, then stop cleanly; returns the exit code (0 after a clean stop).

        Handlers only record the signal; this thread acts on it. First SIGTERM/SIGINT: no new runs, the
        running ones get the shutdown grace, then their ``stop`` event is set and they end "interrupted"
        at their next chunk. A second one sets ``stop`` at once; runs that still do not end within
        ``ESCALATION_WAIT`` are abandoned (the process exits 130; their ledger rows stay "running"
        and their leases expire). SIGHUP reloads the configuration.
        """
        previous = self._install_handlers()
        try:
            self.start()
            return self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_handlers(self) -> dict[int, Any]:
        def record(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)

        wanted = [signal.SIGTERM, signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
        return {signum: signal.signal(signum, record) for signum in wanted}

    def _loop(self) -> int:
        seen = 0
        stops = 0
        grace_ends: float | None = None
        give_up_at: float | None = None
        while True:
            time.sleep(POLL_SECONDS)
            while seen < len(self._signals):
                signum = self._signals[seen]
                seen += 1
                if signum == getattr(signal, "SIGHUP", None):
                    if stops == 0:
                        self.reload()
                    continue
                stops += 1
                if stops == 1:
                    grace_ends = time.monotonic() + self._begin_stop(signum)
                elif stops == 2:
                    log.warning("second stop signal: stopping the running runs now",
                                extra={"fields": {"running": self.running}})
                    self._stop_event.set()
                    give_up_at = time.monotonic() + ESCALATION_WAIT
            if stops == 0:
                continue
            if not self.running:
                break
            if grace_ends is not None and time.monotonic() >= grace_ends and not self._stop_event.is_set():
                log.warning("shutdown grace over: running runs stop at their next chunk (recorded interrupted)",
                            extra={"fields": {"running": self.running}})
                self._stop_event.set()
            if give_up_at is not None and time.monotonic() >= give_up_at:
                self._abandon()
        self.close()
        log.info("scheduler stopped")
        return 0

    def _begin_stop(self, signum: int) -> float:
        with self._state_lock:
            self._stopping = True
            running = dict(self._running)
        self._aps.pause()
        grace = float(self._stop_grace if self._stop_grace is not None
                      else self.config.settings.shutdown_grace_seconds)
        log.warning("%s: stopping, no new runs; %d running get %gs to finish", signal.Signals(signum).name,
                    len(running), grace, extra={"fields": {"running": running}})
        if grace <= 0 and running:
            self._stop_event.set()
        return grace

    def _abandon(self) -> None:
        log.error("runs still in progress after the second stop signal: exiting without them "
                  "(their ledger rows stay 'running'; their leases expire after settings.lock_ttl_minutes)",
                  extra={"fields": {"running": self.running}})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)  # worker threads would otherwise be joined at interpreter exit


def _first_fire(trigger: BaseTrigger, now: datetime, grace_seconds: int) -> datetime | None:
    """The latest slot at most ``grace_seconds`` old, else the next one: a (re)started scheduler
    catches up a slot it just missed, and the ledger tells whether that slot already ran."""
    fire_time: datetime | None = trigger.get_next_fire_time(None, now - timedelta(seconds=grace_seconds))
    while fire_time is not None and fire_time.timestamp() <= now.timestamp():
        following: datetime | None = trigger.get_next_fire_time(fire_time, fire_time)
        if following is None or following.timestamp() > now.timestamp():
            break
        fire_time = following
    return fire_time


# --------------------------------------------------------------------------- the command


def main(config_path: Path | None, job_for: Callable[[str], JobBody], *, preview: bool, count: int = 5,
         now: datetime | None = None, finishers: Sequence[Finisher] = ()) -> int:
    """``audience-sync schedule [--preview] [--count N]``: run the scheduler, or print the next runs.

    Errors are AudienceSyncError (a ConfigError exits 2), left to the CLI to print. ``now`` pins the
    preview's starting point (tests).
    """
    path = Path(resolve_config_path(config_path))
    if count < 1:
        raise AudienceSyncError("--count must be at least 1", where="schedule")
    if preview:
        config = load_config(path)
        print(format_preview(config, count, now or _utcnow()))
        return 0
    for name in (log.name, "audience_sync.run"):  # a service's fires and runs are its output, even at -q
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    return Scheduler(path, job_for, finishers=finishers).run_forever()
