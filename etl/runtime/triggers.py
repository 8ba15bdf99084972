"""When scheduled runs are due: one APScheduler trigger per schedule, the ledger slot each fire claims,
and the ``schedule --preview`` table. Kept apart from the daemon so planning can be read, tested and
benchmarked without the signal handling and threads of ``etl.runtime.scheduler``.

DST rules (pinned by tests/test_scheduler.py): ``cron`` runs a non-existent time at the shifted
instant and a repeated one once; whole-day ``every`` runs at 00:00 local on days counted from
``ANCHOR``; shorter ``every`` is elapsed time, so its repeated hour is a distinct slot (skipping it
would leave a hole).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from etl.config import Config, Schedule, parse_interval
from etl.errors import ConfigError

#: whole-day and interval schedules count their slots from this local date, the same in every process
ANCHOR = date(2000, 1, 1)

_DAY = 86_400


# --------------------------------------------------------------------------- slots and triggers


def slot_key(fire_time: datetime) -> str:
    """Local wall-clock minute, without offset. ``fire_time`` must *not* be normalized: both 02:30s
    of the fall-back night must give the same key, so the ledger lets only the first one run."""
    return fire_time.strftime("%Y-%m-%dT%H:%M")


def slot_of(trigger: BaseTrigger, fire_time: datetime) -> str:
    """``slot_key``, but an interval's second pass through a repeated hour is its own slot (distinct instants)."""
    key = slot_key(fire_time)
    if isinstance(trigger, IntervalTrigger) and fire_time.fold:
        key += fire_time.strftime("%z")
    return key


class WholeDaysTrigger(CalendarIntervalTrigger):  # type: ignore[misc]
    """``every = "Nd"`` at 00:00 local, days counted from ``ANCHOR`` (or at ``start_at``'s time, days counted
    from its date). Replaces the stock next-time rule, which skips a day whose time does not exist and
    returns a first time in the past."""

    def __init__(self, days: int, *, timezone: tzinfo, hour: int = 0, minute: int = 0,
                 start: date = ANCHOR) -> None:
        super().__init__(days=days, hour=hour, minute=minute, start_date=start, timezone=timezone)

    def _at(self, day: date) -> datetime:
        return datetime.combine(day, self._time)  # fold=0: first of two, or the pre-transition offset

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None:
            return self._at(previous_fire_time.date() + timedelta(days=self.days))
        today = now.astimezone(self.timezone).date()
        day = max(today - timedelta(days=(today - self.start_date).days % self.days), self.start_date)
        while self._at(day).timestamp() < now.timestamp():
            day += timedelta(days=self.days)
        return self._at(day)


def _trigger(name: str, schedule: Schedule, source: str) -> BaseTrigger:
    """``start_at`` both anchors the slots of ``every`` and is the earliest fire of any schedule: the
    triggers' own start dates do both, so a future start needs no check at fire time."""
    zone = ZoneInfo(schedule.timezone)
    start = schedule.start_at.replace(tzinfo=zone) if schedule.start_at is not None else None
    if schedule.cron is not None:
        if start is None:
            return CronTrigger.from_crontab(schedule.cron, timezone=zone)
        fields = dict(zip(("minute", "hour", "day", "month", "day_of_week"), schedule.cron.split(), strict=True))
        return CronTrigger(**fields, start_date=start, timezone=zone)  # from_crontab takes no start date
    assert schedule.every is not None  # validated: exactly one of cron, every
    seconds = parse_interval(schedule.every)
    if seconds < 60:
        raise ConfigError(
            [(f"[activations.{name}] schedule.every",
              f"{schedule.every!r} is shorter than a minute: scheduled slots are whole minutes (use at least '1m')")],
            source=source,
        )
    if seconds % _DAY == 0:
        if start is None:
            return WholeDaysTrigger(seconds // _DAY, timezone=zone)
        return WholeDaysTrigger(seconds // _DAY, timezone=zone, hour=start.hour, minute=start.minute,
                                start=start.date())
    return IntervalTrigger(seconds=seconds, start_date=start or datetime.combine(ANCHOR, datetime.min.time(), zone),
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
        key = slot_of(trigger, fire_time)
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


def describe(schedule: Schedule) -> str:
    """What the operator wrote, in words, so the preview can be checked against ``schedules.toml``."""
    start = schedule.start_at
    if schedule.cron is not None:
        text = f"cron {schedule.cron}"
    else:
        assert schedule.every is not None
        whole_days = parse_interval(schedule.every) % _DAY == 0
        text = f"every {schedule.every}" + (f" at {start or ANCHOR:%H:%M}" if whole_days else "")
    if start is not None:
        text += f", starts {start:%Y-%m-%d %H:%M} {schedule.timezone}"
    return text + (", runs once when created" if schedule.run_on_create else "")


def format_preview(config: Config, count: int, now: datetime) -> str:
    triggers = build_triggers(config)
    rows: list[list[str]] = []
    for name, entries in _upcoming_of(triggers, count, now).items():
        schedule = config.activations[name].schedule
        assert schedule is not None
        first = [name, describe(schedule), schedule.timezone]
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


def first_fire(trigger: BaseTrigger, now: datetime, grace_seconds: int) -> datetime | None:
    """The latest slot at most ``grace_seconds`` old, else the next one (the ledger says if it ran)."""
    fire_time: datetime | None = trigger.get_next_fire_time(None, now - timedelta(seconds=grace_seconds))
    while fire_time is not None and fire_time.timestamp() <= now.timestamp():
        following: datetime | None = trigger.get_next_fire_time(fire_time, fire_time)
        if following is None or following.timestamp() > now.timestamp():
            break
        fire_time = following
    return fire_time
