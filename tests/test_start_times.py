"""Start times (issue 16): ``start_at`` anchors and holds back a schedule; ``run_on_create`` runs a new
activation at once, once, even with two scheduler replicas on one ledger.

Slots are checked on the real triggers across both 2026 DST changes in Brussels; the preview through
the real CLI under ``faketime``; run_on_create with real ``audience-sync schedule`` daemons whose
schedules would not fire for months, so a run within seconds can only be the creation run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbservers import faketime
from etl.config import load_config
from etl.errors import ConfigError
from etl.ops.k8s import K8sOptions, cronjob_manifests, scheduled_names
from etl.runtime.ledger import StateStore
from etl.runtime.scheduler import CREATED_SLOT
from etl.runtime.triggers import build_triggers, next_runs, slot_of
from test_k8s import SECRET_VALUES, WITH_SECRETS
from test_scheduler import BRUSSELS, REPO, Running, activation, claimed_slots, ledger, wait_for, write_config
from test_scheduler_replicas import shared_ledger  # noqa: F401 (a fixture)
from test_scheduler_replicas import write_config as write_shared_config

#: a cron slot no test lives to see (03:00 on 1 January), so a run within seconds is the creation run
FAR_CRON = 'cron = "0 3 1 1 *"'


def local(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M %z}"


def planned(tmp_path: Path, schedule: str, now: datetime, count: int = 6) -> list[str]:
    config = load_config(write_config(tmp_path, activation("a", schedule)))
    return [local(at) for at in next_runs(config, count, now)["a"]]


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("written", "read"), [
    ('"2026-12-05T08:00"', datetime(2026, 12, 5, 8, 0)),
    ('"2026-12-05"', datetime(2026, 12, 5)),  # a date alone is its midnight
    ("2026-12-05T08:00:00", datetime(2026, 12, 5, 8, 0)),  # TOML's own local date-time
    ("2026-12-05", datetime(2026, 12, 5)),  # TOML's own local date
    ('"2026-12-05T08:00+01:00"', datetime(2026, 12, 5, 8, 0)),  # the offset Brussels has then: dropped
    ('"2026-07-05T08:00+02:00"', datetime(2026, 7, 5, 8, 0)),
])
def test_a_good_start_at_is_read_as_local_wall_clock_time(tmp_path: Path, written: str, read: datetime) -> None:
    config = load_config(write_config(tmp_path, activation("a", f'every = "6h", start_at = {written}')))
    schedule = config.activations["a"].schedule
    assert schedule is not None and schedule.start_at == read and schedule.start_at.tzinfo is None


@pytest.mark.parametrize(("written", "expected"), [
    ('"soon"', "'soon' is not a date-time"),
    ('""', "'' is not a date-time"),
    ("5", "5 is not a date-time"),
    ('"2026-12-05T08:00:30"', "has seconds: slots are whole minutes, write '2026-12-05T08:00'"),
    ('"2026-07-05T08:00+01:00"', 'Europe/Brussels does not have at that time (2026-07-05T09:00+02:00): write the '
                                 'local time without an offset, e.g. start_at = "2026-07-05T09:00"'),
    ('"2026-12-05T08:00Z"', "has an offset that Europe/Brussels does not have"),
])
def test_a_bad_start_at_is_a_config_error_naming_the_key(tmp_path: Path, written: str, expected: str) -> None:
    path = write_config(tmp_path, activation("a", f'every = "6h", start_at = {written}'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0][0] == "[activations.a] schedule.start_at"
    assert expected in caught.value.problems[0][1]
    assert "schedules.toml" in caught.value.message()


# --------------------------------------------------------------------------- slots


def test_every_6h_is_anchored_on_start_at_and_nothing_fires_before_it(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert planned(tmp_path, 'every = "6h", start_at = "2026-12-05T08:00"', now, 4) == [
        "2026-12-05 08:00 +0100", "2026-12-05 14:00 +0100", "2026-12-05 20:00 +0100", "2026-12-06 02:00 +0100"]


def test_a_start_at_in_the_past_only_anchors(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)  # 13:00 in Brussels
    assert planned(tmp_path, 'every = "6h", start_at = "2020-01-01T08:00"', now, 3) == [
        "2026-12-01 14:00 +0100", "2026-12-01 20:00 +0100", "2026-12-02 02:00 +0100"]
    assert planned(tmp_path, 'every = "2d", start_at = "2026-11-28T07:30"', now, 3) == [
        "2026-12-02 07:30 +0100", "2026-12-04 07:30 +0100", "2026-12-06 07:30 +0100"]


def test_every_6h_from_start_at_is_elapsed_time_across_the_spring_change(tmp_path: Path) -> None:
    """As every sub-day interval: six real hours apart, so 02:00 CET becomes 03:00 CEST, then 09:00."""
    now = datetime(2026, 3, 20, tzinfo=UTC)
    assert planned(tmp_path, 'every = "6h", start_at = "2026-03-28T08:00"', now) == [
        "2026-03-28 08:00 +0100", "2026-03-28 14:00 +0100", "2026-03-28 20:00 +0100",
        "2026-03-29 03:00 +0200", "2026-03-29 09:00 +0200", "2026-03-29 15:00 +0200"]


def test_an_hourly_start_at_gives_the_repeated_hour_of_the_fall_back_night_its_own_slot(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, activation("a", 'every = "1h", start_at = "2026-10-25T00:30"')))
    trigger = build_triggers(config)["a"]
    fire, slots = None, []
    for _ in range(4):
        fire = trigger.get_next_fire_time(fire, fire or datetime(2026, 10, 24, tzinfo=UTC))
        slots.append(slot_of(trigger, fire))
    assert slots == ["2026-10-25T00:30", "2026-10-25T01:30", "2026-10-25T02:30", "2026-10-25T02:30+0100"]


def test_whole_days_from_start_at_keep_its_wall_clock_time_across_both_changes(tmp_path: Path) -> None:
    spring = planned(tmp_path, 'every = "1d", start_at = "2026-03-27T02:30"', datetime(2026, 3, 1, tzinfo=UTC), 4)
    assert spring == ["2026-03-27 02:30 +0100", "2026-03-28 02:30 +0100",
                      "2026-03-29 03:30 +0200",  # 02:30 does not exist that day: the shifted instant
                      "2026-03-30 02:30 +0200"]
    autumn = planned(tmp_path, 'every = "1d", start_at = "2026-10-24T06:00"', datetime(2026, 10, 1, tzinfo=UTC), 3)
    assert autumn == ["2026-10-24 06:00 +0200", "2026-10-25 06:00 +0100", "2026-10-26 06:00 +0100"]


def test_cron_start_at_is_the_earliest_slot(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert planned(tmp_path, 'cron = "0 */4 * * *", start_at = "2026-12-05T09:00"', now, 3) == [
        "2026-12-05 12:00 +0100", "2026-12-05 16:00 +0100", "2026-12-05 20:00 +0100"]
    assert planned(tmp_path, 'cron = "0 12 * * *", start_at = "2026-12-05"', now, 2) == [
        "2026-12-05 12:00 +0100", "2026-12-06 12:00 +0100"]


# --------------------------------------------------------------------------- preview (the real CLI)


def test_preview_shows_the_start_and_run_on_create_and_runs_from_the_start(tmp_path: Path) -> None:
    clock = faketime("the preview's clock cannot be pinned")
    write_config(tmp_path, activation("a", 'every = "6h", start_at = "2026-12-05T08:00", run_on_create = true')
                 + activation("b", 'every = "1d"'))
    shown = subprocess.run(
        [clock, "-f", "@2026-12-01 12:00:00", sys.executable, "-m", "etl", "--config", "schedules.toml",
         "schedule", "--preview", "--count", "3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "TZ": "UTC",
                                                                         "PYTHONPATH": str(REPO)})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    row = next(line for line in lines if line.startswith("a "))
    assert "every 6h, starts 2026-12-05 08:00 Europe/Brussels, runs once when created" in row
    assert row.rstrip().endswith("2026-12-05 08:00 +0100")
    after = lines[lines.index(row) + 1:lines.index(row) + 3]
    assert [line.split()[-2] + " " + line.split()[-1] for line in after] == ["14:00 +0100", "20:00 +0100"]
    assert any(line.startswith("b ") and "every 1d at 00:00" in line and "2026-12-02 00:00 +0100" in line
               for line in lines)  # the fake clock is honoured: Brussels has just passed 13:00 on the 1st


# --------------------------------------------------------------------------- run_on_create (real daemons)


def test_a_new_activation_runs_at_once_and_only_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, activation("fresh", f"{FAR_CRON}, run_on_create = true")
                          + activation("old", FAR_CRON))
    daemon = Running(config)
    try:
        store = ledger(tmp_path)
        runs = wait_for(lambda: [r for r in store.runs("fresh") if r.status == "succeeded"], 20,
                        "the creation run")
        assert len(runs) == 1 and claimed_slots(store, "fresh") == [CREATED_SLOT]
        assert store.runs("old") == [] and claimed_slots(store, "old") == []
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        daemon.stop()

    again = Running(config)  # a restart: "fresh" has run, so it is not new any more
    try:
        wait_for(lambda: again.logged("has run before: run_on_create does nothing"), 20, "the restart's decision")
        again.signal(signal.SIGTERM)
        assert again.wait(15) == 0
    finally:
        again.stop()
    assert len(ledger(tmp_path).runs("fresh")) == 1


def test_an_activation_added_by_a_reload_runs_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, activation("old", FAR_CRON))
    daemon = Running(config)
    try:
        wait_for(lambda: daemon.logged("scheduler started"), 20, "the scheduler to start")
        text = config.read_text(encoding="utf-8") + activation("added", f"{FAR_CRON}, run_on_create = true")
        config.write_text(text, encoding="utf-8")
        started = time.monotonic()
        daemon.signal(signal.SIGHUP)
        store = ledger(tmp_path)
        wait_for(lambda: [r for r in store.runs("added") if r.status == "succeeded"], 20, "the creation run")
        assert time.monotonic() - started < 20
        assert claimed_slots(store, "added") == [CREATED_SLOT] and store.runs("old") == []
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        daemon.stop()


def test_run_on_create_does_not_wait_for_a_future_start_at(tmp_path: Path) -> None:
    config = write_config(tmp_path, activation(
        "later", 'every = "6h", start_at = "2099-01-01T08:00", run_on_create = true'))
    daemon = Running(config)
    try:
        store = ledger(tmp_path)
        wait_for(lambda: [r for r in store.runs("later") if r.status == "succeeded"], 20, "the creation run")
        assert wait_for(lambda: daemon.logged("first slot 2099-01-01T08:00"), 5, "the first slot logged")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        daemon.stop()


@pytest.mark.postgres
def test_two_replicas_on_one_ledger_run_the_new_activation_once(
    tmp_path: Path, shared_ledger: str  # noqa: F811 (the fixture imported above)
) -> None:
    config = write_shared_config(tmp_path, shared_ledger)
    text = config.read_text(encoding="utf-8").replace('cron = "* * * * *"', f"{FAR_CRON}, run_on_create = true")
    config.write_text(text, encoding="utf-8")
    replicas = [Running(config, log_name=f"replica{i}.log") for i in (1, 2)]
    store = StateStore(shared_ledger)
    try:
        def both_decided() -> bool:
            return all(r.logged("claimed: running") or r.logged("already claimed") or r.logged("has run before")
                       for r in replicas)

        wait_for(both_decided, 30, "both replicas to decide about the creation run")
        wait_for(lambda: [r for r in store.runs("minutely") if r.status == "succeeded"], 30, "the creation run")
        assert sum(bool(r.logged("claimed: running")) for r in replicas) == 1
        for replica in replicas:
            replica.signal(signal.SIGTERM)
        assert [replica.wait(15) for replica in replicas] == [0, 0]
        assert len(store.runs("minutely")) == 1 and claimed_slots(store, "minutely") == [CREATED_SLOT]
    finally:
        store.close()
        for replica in replicas:
            replica.stop()



# --------------------------------------------------------------------------- Kubernetes CronJobs


def test_kubernetes_refuses_start_at_and_warns_of_run_on_create(
    project: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A CronJob has no start time and no first run of its own: one would be wrong, the other is missing."""
    started = WITH_SECRETS.replace('schedule = { every = "15m" }',
                                   'schedule = { every = "15m", start_at = "2026-12-05T08:00" }')
    config = load_config(project(started), environ=SECRET_VALUES)
    with pytest.raises(ConfigError, match=r"\[activations.every_quarter_hour\] schedule.start_at: a CronJob has no "
                                          r"start time"):
        cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))

    created = WITH_SECRETS.replace('schedule = { every = "15m" }', 'schedule = { every = "15m", run_on_create = true }')
    config = load_config(project(created), environ=SECRET_VALUES)
    with caplog.at_level(logging.WARNING):
        assert len(cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))) == 2
    assert "run_on_create is not honoured (every_quarter_hour)" in caplog.text
