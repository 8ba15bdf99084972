"""The long-running scheduler: ``audience-sync schedule`` (and ``--preview``).

APScheduler decides *when*; the ledger decides *whether*: every fire claims its slot (activation +
scheduled local wall-clock time) with ``StateStore.claim_slot`` and only the first claimer runs. That
one rule covers the fall-back night's double cron fire, a second replica, and a restart's catch-up.

DST rules (pinned by tests/test_scheduler.py): ``cron`` runs a non-existent time at the shifted
instant and a repeated one once; whole-day ``every`` runs at 00:00 local on days counted from
``ANCHOR``; shorter ``every`` is elapsed time, so its repeated hour is a distinct slot (skipping it
would leave a hole). No persistent job store: it pickles jobs and cannot be shared.
``misfire_grace_time`` comes from settings: APScheduler's 1 s default drops a run 2 s late.
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
from etl.runtime.order import dependencies, linked, run_in_order
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
    """Local wall-clock minute, without offset. ``fire_time`` must *not* be normalized: both 02:30s
    of the fall-back night must give the same key, so the ledger lets only the first one run."""
    return fire_time.strftime("%Y-%m-%dT%H:%M")


def _slot_of(trigger: BaseTrigger, fire_time: datetime) -> str:
    """``slot_key``, but an interval's second pass through a repeated hour is its own slot (distinct instants)."""
    key = slot_key(fire_time)
    if isinstance(trigger, IntervalTrigger) and fire_time.fold:
        key += fire_time.strftime("%z")
    return key


class WholeDaysTrigger(CalendarIntervalTrigger):  # type: ignore[misc]
    """``every = "Nd"`` at 00:00 local, days counted from ``ANCHOR``. Replaces the stock next-time
    rule, which skips a day whose midnight does not exist and returns a first time in the past."""

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
    """One trigger per scheduled activation; ConfigError lists every schedule that cannot be honoured."""
    triggers: dict[str, BaseTrigger] = {}
    problems: list[tuple[str, str]] = []
    # triggers are stateless, so activations with the same schedule share one
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
    """The next ``count`` real instants of each scheduled activation, one per slot (as the ledger runs them)."""
    upcoming = _upcoming_of(build_triggers(config), count, now)
    return {name: [entry.at for entry in entries] for name, entries in upcoming.items()}


def _upcoming_of(triggers: dict[str, BaseTrigger], count: int, now: datetime) -> dict[str, list[Upcoming]]:
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
    """A job whose call also passes the time it was scheduled for."""

    def __init__(self, job: Job, scheduled: datetime) -> None:
        self._job = job
        self.kwargs = {**job.kwargs, "scheduled": scheduled}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


class _SlotExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """APScheduler 3 does not tell a job its run time, and the slot needs it (coalesced: the latest)."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        super()._do_submit_job(_ScheduledJob(job, run_times[-1]), run_times[-1:])


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Runs the scheduled activations until SIGTERM/SIGINT; SIGHUP reloads ``schedules.toml``.
    ``job_for`` and ``finishers`` come from the caller because job kinds and alerts sit above the runtime;
    ``clock`` drives catch-up and run start times only (APScheduler's loop follows the real clock)."""

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
        self._stopping = False
        self._running: dict[str, str] = {}  # activation -> slot
        self._signals: list[int] = []  # appended by handlers, read by the main loop

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
        """``paused``: jobs are scheduled but nothing fires by itself (tests call ``fire``)."""
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
        """An invalid file is refused and the current jobs keep running; runs in progress keep their configuration."""
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
        """A new or changed schedule starts from the latest slot within the misfire grace; an unchanged
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

    def _fired(self, name: str, scheduled: datetime | None = None) -> None:
        """``scheduled`` defaults to None because APScheduler checks the signature before any run time exists."""
        if scheduled is None:
            raise RuntimeError("a scheduled job ran without its scheduled time (not through _SlotExecutor)")
        self.fire(name, scheduled)

    def fire(self, name: str, scheduled: datetime) -> None:
        """Claim the slot and run only if this process claimed it. Never raises for a failed run. Activations
        due at the same instant and tied by ``after`` run as one group, started by the first one's fire."""
        config, store = self.config, self._store
        assert store is not None
        trigger = self._triggers.get(name)
        slot = _slot_of(trigger, scheduled) if trigger is not None else slot_key(scheduled)
        fields: dict[str, Any] = {"activation": name, "slot": slot, "replica": self._identity}
        activation = config.activations.get(name)
        if activation is None or not activation.enabled or activation.schedule is None:
            log.info("slot %s of %s not started: no longer scheduled", slot, name, extra={"fields": fields})
            return
        group, after = self._slot_group(config, name, scheduled, slot)
        leader = next(iter(group))
        if leader != name:
            log.info("slot %s of %s: started by the slot of %s, which `after` ties it to", slot, name, leader,
                     extra={"fields": fields})
        elif len(group) == 1:
            self._start(config, store, name, slot)
        elif self._claim(store, name, slot, fields):  # the leader's claim is the whole group's, across replicas
            log.info("slot %s: %s run in order (after)", slot, ", ".join(group), extra={"fields": fields})
            run_in_order(list(group), after,
                         lambda member: self._start(config, store, member, group[member], claimed=member == name),
                         lambda member, reason: self._skip(member, group[member], reason), str, parallel=True)

    def _slot_group(self, config: Config, name: str, scheduled: datetime, slot: str
                    ) -> tuple[dict[str, str], dict[str, list[str]]]:
        """``name`` and the activations due at the same instant tied to it by ``after``, in order, with their
        slots (the first waits for none of them and runs the group), and what each waits for."""
        every = list(self._triggers)
        due = {name: slot}
        for other in linked(every, dependencies(config, every), name):
            fire_time = self._triggers[other].get_next_fire_time(None, scheduled) if other != name else None
            if fire_time is not None and fire_time.timestamp() == scheduled.timestamp():
                due[other] = _slot_of(self._triggers[other], fire_time)
        after = dependencies(config, list(due))
        return {member: due[member] for member in linked(list(due), after, name)}, after

    def _start(self, config: Config, store: StateStore, name: str, slot: str, *, claimed: bool = False) -> str:
        """Claim the slot (unless ``claimed``) and run; the status the run ended with ("locked": another's slot)."""
        fields: dict[str, Any] = {"activation": name, "slot": slot, "replica": self._identity}
        with self._state_lock:
            if self._stopping:
                log.info("slot %s of %s not started: the scheduler is stopping", slot, name,
                         extra={"fields": fields})
                return RunStatus.INTERRUPTED
            self._running[name] = slot
        try:
            if not claimed and not self._claim(store, name, slot, fields):
                return RunStatus.LOCKED
            return self._run(config, store, name, slot, fields)
        finally:
            with self._state_lock:
                self._running.pop(name, None)

    def _skip(self, name: str, slot: str, reason: str) -> str:
        log.warning("slot %s of %s skipped: %s", slot, name, reason,
                    extra={"fields": {"activation": name, "slot": slot, "replica": self._identity}})
        return RunStatus.SKIPPED

    def _claim(self, store: StateStore, name: str, slot: str, fields: dict[str, Any]) -> bool:
        try:
            if not store.claim_slot(name, slot, self._identity):
                log.info("slot %s of %s already claimed: nothing to do", slot, name, extra={"fields": fields})
                return False
        except AudienceSyncError as exc:  # the ledger itself failed: nothing ran, nothing to record it in
            log.error("slot %s of %s not run: %s", slot, name, exc.message(), extra={"fields": fields})
            return False
        log.info("slot %s of %s claimed: running", slot, name, extra={"fields": fields})
        return True

    def _run(self, config: Config, store: StateStore, name: str, slot: str, fields: dict[str, Any]) -> str:
        try:
            outcome = execute(config, store, name, config.activations[name].kind,
                              self._job_for(config.activations[name].kind), stop=self._stop_event,
                              now=self._clock(), finishers=self._finishers)
        except AudienceSyncError as exc:  # the ledger itself failed: nothing ran, nothing to record it in
            log.error("slot %s of %s not run: %s", slot, name, exc.message(), extra={"fields": fields})
            return RunStatus.FAILED
        if outcome.status == RunStatus.LOCKED:
            log.info("slot %s of %s skipped: another process is running it", slot, name, extra={"fields": fields})
        return outcome.status

    def run_forever(self) -> int:
        """First stop signal: no new runs, running ones get the shutdown grace, then ``stop``. A second one
        sets ``stop`` at once and abandons runs still alive after ``ESCALATION_WAIT`` (their leases expire)."""
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
    """The latest slot at most ``grace_seconds`` old, else the next one (the ledger says if it ran)."""
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
    """``audience-sync schedule``; errors are left to the CLI to print."""
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
