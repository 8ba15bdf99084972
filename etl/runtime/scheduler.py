"""The long-running scheduler: ``audience-sync schedule`` (and ``--preview``).

APScheduler decides *when*; the ledger decides *whether*: every fire claims its slot (activation +
scheduled local wall-clock time) with ``StateStore.claim_slot`` and only the first claimer runs. That
one rule covers the fall-back night's double cron fire, a second replica, and a restart's catch-up.
``run_on_create``'s first run uses the same claim, with the slot ``created``.

When a slot is due (and its DST rules) is etl.runtime.triggers' business. No persistent job store: it
pickles jobs and cannot be shared.
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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from etl.config import Config, load_config
from etl.config import config_path as resolve_config_path
from etl.errors import AudienceSyncError
from etl.runtime.ledger import StateStore, open_store
from etl.runtime.order import dependencies, linked, run_in_order
from etl.runtime.results import RunStatus
from etl.runtime.runs import Finisher, JobBody, execute
from etl.runtime.triggers import build_triggers, describe, first_fire, format_preview, slot_key, slot_of

log = logging.getLogger("audience_sync.scheduler")

#: runs that may execute at once (threads are created only when needed)
MAX_WORKERS = 16
#: after a second SIGTERM/SIGINT, how long running runs get to record themselves interrupted
ESCALATION_WAIT = 5.0
#: how often the main thread looks at the signals it received (handlers only set flags)
POLL_SECONDS = 0.1
#: the CLI's exit code for an interrupted command, used when runs had to be abandoned
EXIT_INTERRUPTED = 130
#: the ledger slot of a ``run_on_create`` run: one per activation, ever, whichever replica claims it first
CREATED_SLOT = "created"


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
        self._created_checked: set[str] = set()  # run_on_create activations this process has looked at
        self._automatic = True  # False when started paused: nothing runs unless a test fires it
        self._signals: list[int] = []  # appended by handlers, read by the main loop
        self._heartbeat: float | None = None  # time.monotonic() of the main loop's latest turn
        self._lag: float | None = None  # seconds between the latest fire's scheduled time and its start
        self.loaded_at: datetime | None = None  # when the configuration in use was (re)loaded

    @property
    def config(self) -> Config:
        if self._config is None:
            raise RuntimeError("the scheduler is not started")
        return self._config

    @property
    def loaded(self) -> bool:
        return self._config is not None

    @property
    def store(self) -> StateStore | None:
        """The ledger new runs use (a reload may replace it); None before ``start``."""
        return self._store

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def firing(self) -> bool:
        """APScheduler's timer thread is alive (paused while stopping counts: it is there)."""
        thread = getattr(self._aps, "_thread", None)
        return bool(self._aps.running) and (thread is None or thread.is_alive())

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the main loop's latest turn (it turns every POLL_SECONDS): a loop stuck or dead
        handles no signal, so a probe reads this rather than trusting that the process answers."""
        return None if self._heartbeat is None else time.monotonic() - self._heartbeat

    @property
    def lag(self) -> float | None:
        """How late the latest fire started after its scheduled time (a saturated pool or host shows here)."""
        return self._lag

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
        self._config, self.loaded_at = config, _utcnow()
        self._aps.start(paused=True)
        self._install(triggers)
        self._automatic = not paused
        if not paused:
            self._aps.resume()
            self.run_created()
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
        self._store, self._config, self.loaded_at = store, config, _utcnow()
        self._install(triggers)
        log.info("configuration reloaded: %d scheduled activations", len(triggers),
                 extra={"fields": {"scheduled": sorted(triggers)}})
        if self._automatic:
            self.run_created()
        return True

    def run_created(self) -> list[str]:
        """``run_on_create``: start each new scheduled activation now (in a thread, so that start-up and reloads
        do not wait for it). "New" is read in the ledger, not in this process's memory, so a restart or a second
        replica does not run it again; the ``created`` claim settles the race when both look at once. Returns
        the activations started. ``start_at`` does not hold it back: it governs the schedule, this is no slot."""
        config, store = self.config, self._store
        assert store is not None
        started: list[str] = []
        for name in self._triggers:
            schedule = config.activations[name].schedule
            if schedule is None or not schedule.run_on_create or name in self._created_checked:
                continue
            self._created_checked.add(name)
            fields: dict[str, Any] = {"activation": name, "slot": CREATED_SLOT, "replica": self._identity}
            try:
                ran_before = bool(store.runs(name, limit=1, include_dry_runs=False))
            except AudienceSyncError as exc:
                log.error("%s not run on creation: %s", name, exc.message(), extra={"fields": fields})
                continue
            if ran_before:
                log.info("%s has run before: run_on_create does nothing", name, extra={"fields": fields})
                continue
            log.info("%s is new (no run in the ledger): running it once now (run_on_create)", name,
                     extra={"fields": fields})
            threading.Thread(target=self._start, args=(config, store, name, CREATED_SLOT),
                             name=f"created-{name}", daemon=True).start()
            started.append(name)
        return started

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
            first = first_fire(trigger, now, grace)
            if first is None:
                log.warning("no future run: not scheduled", extra={"fields": {"activation": name}})
                continue
            self._aps.add_job(self._fired, trigger=trigger, args=(name,), id=name, name=name,
                              replace_existing=True, next_run_time=first, **options)
            schedule = config.activations[name].schedule
            assert schedule is not None
            log.info("scheduled %s: %s (%s), first slot %s", name, describe(schedule), schedule.timezone,
                     slot_of(trigger, first), extra={"fields": {"activation": name}})
        self._triggers = {name: trigger for name, trigger in triggers.items() if self._aps.get_job(name)}

    def _fired(self, name: str, scheduled: datetime | None = None) -> None:
        """``scheduled`` defaults to None because APScheduler checks the signature before any run time exists."""
        if scheduled is None:
            raise RuntimeError("a scheduled job ran without its scheduled time (not through _SlotExecutor)")
        self._lag = max(0.0, (_utcnow() - scheduled).total_seconds())
        self.fire(name, scheduled)

    def fire(self, name: str, scheduled: datetime) -> None:
        """Claim the slot and run only if this process claimed it. Never raises for a failed run. Activations
        due at the same instant and tied by ``after`` run as one group, started by the first one's fire."""
        config, store = self.config, self._store
        assert store is not None
        trigger = self._triggers.get(name)
        slot = slot_of(trigger, scheduled) if trigger is not None else slot_key(scheduled)
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
                due[other] = slot_of(self._triggers[other], fire_time)
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
            self._heartbeat = time.monotonic()
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


# --------------------------------------------------------------------------- the command


def main(config_path: Path | None, job_for: Callable[[str], JobBody], *, preview: bool, count: int = 5,
         now: datetime | None = None, finishers: Sequence[Finisher] = (),
         on_start: Callable[[Scheduler], None] | None = None) -> int:
    """``audience-sync schedule``; errors are left to the CLI to print. ``on_start`` receives the scheduler
    before it starts: what watches it (the status server, in etl.ops) sits above the runtime."""
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
    scheduler = Scheduler(path, job_for, finishers=finishers)
    if on_start is not None:
        on_start(scheduler)
    return scheduler.run_forever()
