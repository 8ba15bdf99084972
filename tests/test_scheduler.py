"""The scheduler: DST-correct slots, one run per slot in the ledger, reload and shutdown by signal.

Times are Europe/Brussels around its 2026 transitions: spring forward on 2026-03-29 (02:00 -> 03:00)
and fall back on 2026-10-25 (03:00 -> 02:00). The in-process tests drive the real ``fire`` path with
the fire times the triggers produce; the subprocess tests run the real scheduler loop and signal it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from etl.runtime.leases import hold
from etl.config import load_config
from etl.errors import AudienceSyncError, ConfigError
from etl.runtime.scheduler import Scheduler, main
from etl.runtime.triggers import WholeDaysTrigger, build_triggers, next_runs, slot_key
from etl.runtime.ledger import StateStore, slots
from jobs import job_for

REPO = Path(__file__).resolve().parent.parent
BRUSSELS = ZoneInfo("Europe/Brussels")
SANTIAGO = ZoneInfo("America/Santiago")

#: a warehouse query that needs no table: :rows e-mail addresses, streamed chunk by chunk
GENERATOR_SQL = """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)
SELECT 'user' || i || '@example.com' AS email FROM n
"""

#: two days before each transition, at noon, to four days later
SPRING = (datetime(2026, 3, 27, 12, tzinfo=BRUSSELS), datetime(2026, 3, 31, 12, tzinfo=BRUSSELS))
AUTUMN = (datetime(2026, 10, 23, 12, tzinfo=BRUSSELS), datetime(2026, 10, 27, 12, tzinfo=BRUSSELS))

#: a subprocess running the scheduler as `audience-sync schedule` will, logging JSON lines
DRIVER = """
import logging, sys
from pathlib import Path
from etl.logs import configure_logging
from etl.runtime.scheduler import main
from jobs import job_for
configure_logging("json", logging.INFO)
sys.exit(main(Path(sys.argv[1]), job_for, preview=False))
"""


# --------------------------------------------------------------------------- helpers


def activation(name: str, schedule: str, *, rows: int = 5, timezone: str = "Europe/Brussels",
               enabled: bool = True) -> str:
    return f"""
[activations.{name}]
sql = "sql/gen.sql"
destination = "d"
identifier = "email"
file = {{ name = "{name}.csv" }}
params = {{ rows = {rows} }}
schedule = {{ {schedule}, timezone = "{timezone}" }}
enabled = {str(enabled).lower()}
"""


def write_config(root: Path, activations: str, settings: str = "") -> Path:
    """A project whose warehouse is an empty SQLite file and whose audiences come from GENERATOR_SQL."""
    (root / "warehouse.db").touch()
    (root / "sql").mkdir(exist_ok=True)
    (root / "sql" / "gen.sql").write_text(GENERATOR_SQL, encoding="utf-8")
    path = root / "schedules.toml"
    path.write_text(f"""
[settings]
state_dir = "state"
{settings}

[warehouses.w]
url = "sqlite:///warehouse.db"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {{ type = "local", path = "outbox" }}
{activations}""", encoding="utf-8")
    return path


def ledger(root: Path) -> StateStore:
    return StateStore.in_directory(root / "state")  # the same file the scheduler's default ledger uses


def claimed_slots(store: StateStore, name: str) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.select(slots.c.slot).where(slots.c.activation == name)).scalars())


def raw_fire_times(trigger: Any, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time APScheduler would hand the job between ``start`` and ``end``, duplicates included."""
    found: list[datetime] = []
    previous = None
    now = start
    while True:
        fire_time = trigger.get_next_fire_time(previous, now)
        if fire_time is None or fire_time.timestamp() > end.timestamp():
            return found
        found.append(fire_time)
        previous = now = fire_time


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def local(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M %z}"


# --------------------------------------------------------------------------- slots and DST


def test_slot_key_is_the_local_wall_clock_minute_without_offset() -> None:
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BRUSSELS)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BRUSSELS, fold=1)
    assert (first.utcoffset(), second.utcoffset()) == (timedelta(hours=2), timedelta(hours=1))
    assert slot_key(first) == slot_key(second) == "2026-10-25T02:30"
    assert slot_key(datetime(2026, 3, 29, 2, 30, 59, tzinfo=BRUSSELS)) == "2026-03-29T02:30"


def test_measured_apscheduler_traps_behind_the_design() -> None:
    """APScheduler 3.11.3 itself: the reasons for the slot ledger and for WholeDaysTrigger."""
    cron = CronTrigger.from_crontab("30 2 * * *", timezone=BRUSSELS)
    fall_back = [local(t) for t in raw_fire_times(cron, *AUTUMN) if t.day == 25]
    assert fall_back == ["2026-10-25 02:30 +0200", "2026-10-25 02:30 +0100"]  # fires twice

    drifting = IntervalTrigger(hours=24, start_date=datetime(2026, 10, 24, 2, 30, tzinfo=BRUSSELS))
    assert [f"{t:%H:%M}" for t in raw_fire_times(drifting, *AUTUMN)] == ["02:30", "02:30", "01:30", "01:30"]

    stock = CalendarIntervalTrigger(days=1, hour=2, minute=30, timezone=BRUSSELS, start_date=date(2026, 3, 27))
    days = [t.day for t in raw_fire_times(stock, datetime(2026, 3, 27, 0, tzinfo=BRUSSELS), SPRING[1])]
    assert days == [27, 28, 30, 31]  # the spring-forward day is silently skipped
    past = stock.get_next_fire_time(None, datetime(2026, 3, 27, 12, tzinfo=BRUSSELS))
    assert past == datetime(2026, 3, 27, 2, 30, tzinfo=BRUSSELS)  # a first time in the past


DAILY_CASES = {
    # schedule: (wall-clock time, spring-forward day's run, fall-back day's run)
    'cron = "30 2 * * *"': ("02:30", "2026-03-29 03:30 +0200", "2026-10-25 02:30 +0200"),
    'cron = "15 6 * * *"': ("06:15", "2026-03-29 06:15 +0200", "2026-10-25 06:15 +0100"),
    'every = "1d"': ("00:00", "2026-03-29 00:00 +0100", "2026-10-25 00:00 +0200"),
}


@pytest.mark.parametrize("schedule", DAILY_CASES)
@pytest.mark.parametrize("window", [SPRING, AUTUMN], ids=["spring-forward", "fall-back"])
def test_daily_schedules_run_exactly_once_every_local_day(
    tmp_path: Path, schedule: str, window: tuple[datetime, datetime]
) -> None:
    config = load_config(write_config(tmp_path, activation("daily", schedule)))
    wall, spring_day, autumn_day = DAILY_CASES[schedule]
    runs = next_runs(config, 6, window[0])["daily"]

    first_day = window[0].date() + timedelta(days=1 if wall < "12:00" else 0)
    assert [r.date() for r in runs] == [first_day + timedelta(days=i) for i in range(6)]  # none skipped, none doubled
    assert all(r.tzinfo == BRUSSELS for r in runs)
    transition = spring_day if window == SPRING else autumn_day
    assert transition in [local(r) for r in runs]
    others = [r for r in runs if local(r) != transition]
    assert {f"{r:%H:%M}" for r in others} == {wall}  # no drift across the change
    assert len(others) == 5


def test_the_spring_forward_0230_runs_at_0330_under_its_own_slot(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, activation("night", 'cron = "30 2 * * *"')))
    trigger = build_triggers(config)["night"]
    (scheduled,) = [t for t in raw_fire_times(trigger, *SPRING) if t.day == 29]
    assert slot_key(scheduled) == "2026-03-29T02:30"
    assert scheduled.timestamp() == datetime(2026, 3, 29, 3, 30, tzinfo=BRUSSELS).timestamp()
    assert scheduled.timestamp() == datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()


def test_whole_days_never_skip_a_day_whose_midnight_does_not_exist(tmp_path: Path) -> None:
    """America/Santiago springs forward at midnight (2026-09-06 00:00 does not exist) and falls back
    at midnight (2026-04-05 00:00 happens once, the hour before it twice)."""
    config = load_config(write_config(tmp_path, activation("cl", 'every = "1d"', timezone="America/Santiago")))
    spring = next_runs(config, 3, datetime(2026, 9, 5, 12, tzinfo=SANTIAGO))["cl"]
    assert [local(r) for r in spring] == ["2026-09-06 01:00 -0300", "2026-09-07 00:00 -0300", "2026-09-08 00:00 -0300"]
    autumn = next_runs(config, 3, datetime(2026, 4, 3, 12, tzinfo=SANTIAGO))["cl"]
    assert [local(r) for r in autumn] == ["2026-04-04 00:00 -0300", "2026-04-05 00:00 -0400", "2026-04-06 00:00 -0400"]


def test_sub_day_intervals_are_elapsed_time_and_keep_both_passes_of_the_repeated_hour(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, activation("hourly", 'every = "1h"')))
    trigger = build_triggers(config)["hourly"]
    assert isinstance(trigger, IntervalTrigger)
    fall_back_day = [t for t in raw_fire_times(trigger, *AUTUMN) if t.date() == date(2026, 10, 25)]
    spring_day = [t for t in raw_fire_times(trigger, *SPRING) if t.date() == date(2026, 3, 29)]
    assert (len(fall_back_day), len(spring_day)) == (25, 23)  # every elapsed hour, nothing doubled or lost
    runs = next_runs(config, 30, datetime(2026, 10, 25, 0, 30, tzinfo=BRUSSELS))["hourly"]
    assert [local(r) for r in runs[1:4]] == ["2026-10-25 02:00 +0200", "2026-10-25 02:00 +0100", "2026-10-25 03:00 +0100"]


def test_replicas_and_restarts_agree_on_interval_slots(tmp_path: Path) -> None:
    config = load_config(write_config(
        tmp_path, activation("every2d", 'every = "2d"') + activation("every7h", 'every = "7h"', rows=6)
    ))
    now = datetime(2026, 10, 23, 12, tzinfo=BRUSSELS)
    first = next_runs(config, 5, now)
    time.sleep(0.01)  # another process, built a little later: the same slots
    assert next_runs(config, 5, now) == first
    later = next_runs(config, 3, first["every2d"][1] - timedelta(minutes=1))
    assert later["every2d"] == first["every2d"][1:4]
    assert {f"{r:%H:%M}" for r in first["every2d"]} == {"00:00"}
    assert [(b - a).days for a, b in zip(first["every2d"], first["every2d"][1:])] == [2, 2, 2, 2]


def test_triggers_per_schedule_kind_and_a_sub_minute_interval_is_refused(tmp_path: Path) -> None:
    config = load_config(write_config(
        tmp_path,
        activation("c", 'cron = "0 7 * * 1"') + activation("i", 'every = "6h"', rows=6)
        + activation("w", 'every = "48h"', rows=7) + activation("off", 'every = "1h"', rows=8, enabled=False),
    ))
    triggers = build_triggers(config)
    assert set(triggers) == {"c", "i", "w"}
    assert isinstance(triggers["c"], CronTrigger) and isinstance(triggers["i"], IntervalTrigger)
    assert isinstance(triggers["w"], WholeDaysTrigger) and triggers["w"].days == 2

    broken = load_config(write_config(tmp_path, activation("fast", 'every = "30s"')))
    with pytest.raises(ConfigError) as caught:
        build_triggers(broken)
    assert "[activations.fast] schedule.every" in caught.value.message()


# --------------------------------------------------------------------------- the fire path


def test_fire_runs_one_run_per_local_day_across_both_transitions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, activation("night", 'cron = "30 2 * * *"')
                        + activation("morning", 'cron = "15 6 * * *"', rows=6)
                        + activation("daily", 'every = "1d"', rows=7))
    caplog.set_level(logging.INFO, logger="audience_sync")
    scheduler = Scheduler(path, job_for)
    scheduler.start(paused=True)
    try:
        fired: dict[str, int] = {}
        for name, trigger in build_triggers(scheduler.config).items():
            for window in (SPRING, AUTUMN):
                for scheduled in raw_fire_times(trigger, *window):
                    scheduler.fire(name, scheduled)
                    fired[name] = fired.get(name, 0) + 1
        assert fired == {"night": 9, "morning": 8, "daily": 8}  # the cron's fall-back 02:30 fires twice

        store = ledger(tmp_path)
        for name, wall in (("night", "02:30"), ("morning", "06:15"), ("daily", "00:00")):
            runs = store.runs(name, limit=100)
            assert len(runs) == 8 and {r.status for r in runs} == {"succeeded"}, name
            days = [f"2026-03-{d}" for d in (28, 29, 30, 31)] + [f"2026-10-{d}" for d in (24, 25, 26, 27)]
            assert claimed_slots(store, name) == [f"{day}T{wall}" for day in days]
        store.close()
        assert "slot 2026-10-25T02:30 of night already claimed: nothing to do" in caplog.text
    finally:
        scheduler.close()


def test_two_fires_of_the_fall_back_slot_record_one_run(tmp_path: Path) -> None:
    scheduler = Scheduler(write_config(tmp_path, activation("night", 'cron = "30 2 * * *"')), job_for)
    scheduler.start(paused=True)
    try:
        first = datetime(2026, 10, 25, 2, 30, tzinfo=BRUSSELS)
        second = datetime(2026, 10, 25, 2, 30, tzinfo=BRUSSELS, fold=1)
        scheduler.fire("night", first)
        scheduler.fire("night", second)
        store = ledger(tmp_path)
        assert [r.status for r in store.runs("night")] == ["succeeded"]
        assert claimed_slots(store, "night") == ["2026-10-25T02:30"]
        store.close()
    finally:
        scheduler.close()


def test_a_slot_whose_activation_is_locked_elsewhere_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="audience_sync")
    scheduler = Scheduler(write_config(tmp_path, activation("night", 'cron = "30 2 * * *"')), job_for)
    scheduler.start(paused=True)
    other = ledger(tmp_path)
    try:
        with hold(other, "night", "other-replica-run", timedelta(minutes=5)):  # another replica is running it
            scheduler.fire("night", datetime(2026, 10, 26, 2, 30, tzinfo=BRUSSELS))
        assert other.runs("night") == []
        assert "slot 2026-10-26T02:30 of night skipped: another process is running it" in caplog.text
    finally:
        other.close()
        scheduler.close()


def test_jobs_carry_coalesce_max_instances_and_the_configured_misfire_grace(tmp_path: Path) -> None:
    path = write_config(tmp_path, activation("night", 'cron = "30 2 * * *"')
                        + activation("hourly", 'every = "1h"', rows=6), settings="misfire_grace_seconds = 42")
    scheduler = Scheduler(path, job_for, clock=lambda: datetime(2026, 10, 25, 0, 10, tzinfo=BRUSSELS))
    scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.jobs}
        assert set(jobs) == {"night", "hourly"}
        for job in jobs.values():
            assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 42)
        assert local(jobs["night"].next_run_time) == "2026-10-25 02:30 +0200"
        assert local(jobs["hourly"].next_run_time) == "2026-10-25 01:00 +0200"
    finally:
        scheduler.close()


def test_a_start_catches_up_the_slot_just_missed_and_the_real_loop_passes_its_time(tmp_path: Path) -> None:
    """A real APScheduler loop, not paused: ``* * * * *`` fires the current minute's slot at once
    (it is within the misfire grace), and the job receives that slot's time."""
    scheduler = Scheduler(write_config(tmp_path, activation("minutely", 'cron = "* * * * *"')), job_for)
    before = datetime.now(BRUSSELS)
    scheduler.start()
    try:
        store = ledger(tmp_path)
        runs = wait_for(lambda: [r for r in store.runs("minutely") if r.status == "succeeded"], 15, "a run")
        after = datetime.now(BRUSSELS)
        slots_now = claimed_slots(store, "minutely")
        assert slot_key(before) in slots_now or slot_key(after) in slots_now
        assert set(slots_now) <= {slot_key(before), slot_key(after)} and len(runs) >= 1
        store.close()
    finally:
        scheduler.close()


# --------------------------------------------------------------------------- reload


def test_reload_refuses_a_broken_configuration_and_keeps_the_old_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, activation("a", 'cron = "0 5 * * *"') + activation("b", 'every = "2h"', rows=6))
    scheduler = Scheduler(path, job_for)
    scheduler.start(paused=True)
    try:
        before = {job.id: (repr(job.trigger), job.next_run_time) for job in scheduler.jobs}
        good = path.read_text()
        path.write_text(good.replace('cron = "0 5 * * *"', 'cron = "0 25 * * *"').replace("rows = 6", "rowz = 6"))
        caplog.set_level(logging.INFO, logger="audience_sync.scheduler")

        assert scheduler.reload() is False
        assert {job.id: (repr(job.trigger), job.next_run_time) for job in scheduler.jobs} == before
        refused = [r for r in caplog.records if "reload refused" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelno == logging.ERROR
        message = refused[0].getMessage()
        assert "2 current schedules keep running" in message
        assert "2 problems in the configuration" in message  # the full ConfigError, every problem listed (rowz: a warning)
        assert "[activations.a] schedule.cron" in message and "[activations.b] params" in message

        path.write_text(good.replace('cron = "0 5 * * *"', 'cron = "0 6 * * *"')
                        + activation("c", 'every = "1d"', rows=7))
        assert scheduler.reload() is True
        after = {job.id: (repr(job.trigger), job.next_run_time) for job in scheduler.jobs}
        assert set(after) == {"a", "b", "c"}
        assert after["b"] == before["b"]  # unchanged schedule: same next run
        assert f"{after['a'][1].astimezone(BRUSSELS):%H:%M}" == "06:00"
    finally:
        scheduler.close()


# --------------------------------------------------------------------------- preview


def test_preview_prints_the_next_runs_with_their_utc_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, activation("night", 'cron = "30 2 * * *"')
                        + activation("daily", 'every = "1d"', rows=6)
                        + activation("paused", 'every = "1h"', rows=7, enabled=False))
    assert main(path, job_for, preview=True, count=3, now=datetime(2026, 10, 24, 12, tzinfo=UTC)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["activation", "schedule", "time", "zone", "next", "runs"]
    assert lines[2].startswith("night") and "cron 30 2 * * *" in lines[2] and "Europe/Brussels" in lines[2]
    assert "2026-10-25 02:30 +0200  02:30 happens twice that night: runs once" in lines[2]
    assert lines[3].strip() == "2026-10-26 02:30 +0100"
    assert "2026-10-25 02:30 +0100" not in out
    assert "every 1d at 00:00" in out and "2026-10-25 00:00 +0200" in out and "2026-10-26 00:00 +0100" in out
    assert out.rstrip().endswith("not scheduled: paused (disabled)")

    assert main(path, job_for, preview=True, count=2, now=datetime(2026, 3, 28, 12, tzinfo=UTC)) == 0
    spring = capsys.readouterr().out
    assert "2026-03-29 03:30 +0200  02:30 does not exist that day (clocks go forward)" in spring

    with pytest.raises(AudienceSyncError):
        main(path, job_for, preview=True, count=0)


# --------------------------------------------------------------------------- signals (subprocesses)


class Running:
    """The scheduler in a subprocess, its JSON log lines collected in a file."""

    def __init__(self, config: Path, *, log_name: str = "scheduler.log") -> None:
        self.log_path = config.parent / log_name  # replicas in one directory need a log each
        self._log = self.log_path.open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(config)], cwd=config.parent, stdout=self._log, stderr=self._log, env=env
        )

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                found.append({"message": line})
        return found

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if text in str(e.get("message", ""))]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def running() -> Iterator[Callable[[Path], Running]]:
    started: list[Running] = []

    def start(config: Path) -> Running:
        started.append(Running(config))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def run_in_progress(store: StateStore, name: str, process: Running) -> Any:
    def check() -> Any:
        assert process.process.poll() is None, process.log_path.read_text()
        return [r for r in store.runs(name) if r.status == "running"]

    return wait_for(check, 15, "the run to start")


def test_sigterm_with_no_grace_interrupts_the_run_and_delivers_nothing(
    tmp_path: Path, running: Callable[[Path], Running]
) -> None:
    config = write_config(tmp_path, activation("slow", 'cron = "* * * * *"', rows=50_000_000),
                          settings="chunk_size = 100\nshutdown_grace_seconds = 0")
    scheduler = running(config)
    store = ledger(tmp_path)
    run_in_progress(store, "slow", scheduler)

    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait(timeout=10) == 0, scheduler.log_path.read_text()
    (run,) = store.runs("slow")
    assert run.status == "interrupted", run
    assert "nothing was delivered" in (run.error or "")
    outbox = tmp_path / "outbox"
    assert not outbox.exists() or list(outbox.iterdir()) == []
    assert scheduler.logged("scheduler stopped")
    store.close()


def test_sigterm_with_a_generous_grace_lets_the_run_finish(
    tmp_path: Path, running: Callable[[Path], Running]
) -> None:
    config = write_config(tmp_path, activation("medium", 'cron = "* * * * *"', rows=300_000),
                          settings="chunk_size = 100\nshutdown_grace_seconds = 60")
    scheduler = running(config)
    store = ledger(tmp_path)
    run_in_progress(store, "medium", scheduler)

    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait(timeout=18) == 0, scheduler.log_path.read_text()
    (stopping,) = scheduler.logged("SIGTERM: stopping")
    assert stopping["running"] == {"medium": stopping["running"]["medium"]}  # it was running when signalled
    (run,) = store.runs("medium")
    assert (run.status, run.rows_delivered) == ("succeeded", 300_000)
    assert (tmp_path / "outbox" / "medium.csv").is_file()
    store.close()


def test_a_second_sigterm_stops_the_run_at_once(tmp_path: Path, running: Callable[[Path], Running]) -> None:
    config = write_config(tmp_path, activation("slow", 'cron = "* * * * *"', rows=50_000_000),
                          settings="chunk_size = 100\nshutdown_grace_seconds = 600")
    scheduler = running(config)
    store = ledger(tmp_path)
    run_in_progress(store, "slow", scheduler)

    scheduler.signal(signal.SIGTERM)
    wait_for(lambda: scheduler.logged("SIGTERM: stopping"), 10, "the first signal to be handled")
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait(timeout=10) == 0, scheduler.log_path.read_text()
    assert [r.status for r in store.runs("slow")] == ["interrupted"]
    assert scheduler.logged("second stop signal")
    store.close()


def test_sighup_refuses_a_broken_configuration_then_applies_a_valid_one(
    tmp_path: Path, running: Callable[[Path], Running]
) -> None:
    config = write_config(tmp_path, activation("quick", 'cron = "* * * * *"'))
    good = config.read_text()
    scheduler = running(config)
    store = ledger(tmp_path)
    wait_for(lambda: [r for r in store.runs("quick") if r.status == "succeeded"], 15, "the first run")

    config.write_text(good.replace('cron = "* * * * *"', 'cron = "not a cron"'))
    scheduler.signal(signal.SIGHUP)
    (refused,) = wait_for(lambda: scheduler.logged("reload refused"), 10, "the reload to be refused")
    assert refused["level"] == "error" and refused["kept"] == ["quick"]
    assert "1 problem in the configuration:\n  - [activations.quick] schedule.cron: 'not a cron'" in refused["message"]
    assert scheduler.process.poll() is None

    config.write_text(good + activation("second", 'every = "1h"', rows=6))
    scheduler.signal(signal.SIGHUP)
    (reloaded,) = wait_for(lambda: scheduler.logged("configuration reloaded"), 10, "the valid reload")
    assert reloaded["scheduled"] == ["quick", "second"]

    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait(timeout=10) == 0, scheduler.log_path.read_text()
    assert {r.status for r in store.runs()} <= {"succeeded"}
    store.close()


def test_a_run_that_cannot_stop_is_abandoned_after_the_second_signal(
    tmp_path: Path, running: Callable[[Path], Running]
) -> None:
    """A query that sorts 50M rows yields no chunk for a long time, so it never reaches a point where
    it could stop: after the second signal the process exits 130 without it (its row stays "running")."""
    config = write_config(tmp_path, activation("stuck", 'cron = "* * * * *"', rows=50_000_000),
                          settings="shutdown_grace_seconds = 600")
    (tmp_path / "sql" / "gen.sql").write_text(GENERATOR_SQL.rstrip() + " ORDER BY random()\n", encoding="utf-8")
    scheduler = running(config)
    store = ledger(tmp_path)
    run_in_progress(store, "stuck", scheduler)

    scheduler.signal(signal.SIGTERM)
    wait_for(lambda: scheduler.logged("SIGTERM: stopping"), 10, "the first signal to be handled")
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait(timeout=15) == 130, scheduler.log_path.read_text()
    assert scheduler.logged("exiting without them")
    assert [r.status for r in store.runs("stuck")] == ["running"]
    store.close()
