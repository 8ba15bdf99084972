"""``after``: an activation runs after the ones it names when they run together — one `run` command, one
scheduler slot — and is skipped, with the reason, when one of them did not succeed. The CLI runs as a
user runs it (a subprocess, on a copy of the shipped demo); the scheduler through its real ``fire`` path."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REPO
from etl.runtime.ledger import StateStore
from etl.runtime.scheduler import Scheduler
from jobs import job_for
from test_scheduler import BRUSSELS, activation, ledger, write_config

PROFILES, PARTICIPATIONS, CONSENTS = "qualifio_profiles", "qualifio_participations", "didomi_consents"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    shutil.copy(REPO / "schedules.toml", tmp_path / "schedules.toml")
    return tmp_path / "schedules.toml"


def audience_sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300, cwd=config.parent)


def edited(config: Path, old: str, new: str) -> Path:
    text = config.read_text(encoding="utf-8")
    assert old in text
    config.write_text(text.replace(old, new, 1), encoding="utf-8")
    return config


# --------------------------------------------------------------------------- one run command


def test_the_demo_runs_participations_and_consents_after_profiles_whatever_the_order_named(demo: Path) -> None:
    done = audience_sync(demo, "run", CONSENTS, PARTICIPATIONS, PROFILES)
    assert done.returncode == 0, done.stdout + done.stderr
    store = StateStore.in_directory(demo.parent / "var" / "state")
    try:
        (profiles,) = store.runs(PROFILES)
        for dependent in (PARTICIPATIONS, CONSENTS):
            (run,) = store.runs(dependent)
            assert run.status == "succeeded"
            assert profiles.finished_at is not None and run.started_at >= profiles.finished_at, dependent
    finally:
        store.close()
    summary = [line.split()[0] for line in done.stdout.splitlines()[2:5]]
    assert summary == [PROFILES, CONSENTS, PARTICIPATIONS]  # moved after profiles, otherwise as named


def test_a_failed_dependency_skips_its_dependents_with_the_reason_and_others_still_run(demo: Path) -> None:
    (demo.parent / "sql" / "qualifio_profiles.sql").write_text("SELECT email FROM no_such_table\n", encoding="utf-8")
    done = audience_sync(demo, "run", "--all")
    assert done.returncode == 1  # the code of the activation that failed; a skip adds none of its own
    for dependent in (PARTICIPATIONS, CONSENTS):
        assert f"– {dependent}: skipped: after {PROFILES}, which failed" in done.stdout
        assert any(line.split()[:2] == [dependent, "skipped"] for line in done.stdout.splitlines())
    assert f"✗ {PROFILES}: " in done.stdout and "✓ vip_customers" in done.stdout
    store = StateStore.in_directory(demo.parent / "var" / "state")
    try:
        assert [r.status for r in store.runs(PROFILES)] == ["failed"]
        assert store.runs(PARTICIPATIONS) == [] and store.runs(CONSENTS) == []  # never started: not in the ledger
        assert [r.status for r in store.runs("openfield_profiles")] == ["succeeded"]  # no `after`: unaffected
    finally:
        store.close()

    as_json = audience_sync(demo, "--log-format", "json", "run", PARTICIPATIONS, PROFILES)
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(line["activation"], line["status"]) for line in lines] == [(PROFILES, "failed"),
                                                                        (PARTICIPATIONS, "skipped")]
    assert lines[1]["error"] == f"after {PROFILES}, which failed" and lines[1]["run_id"] is None
    assert as_json.returncode == 1


def test_a_dependency_not_named_is_not_waited_for(demo: Path) -> None:
    (demo.parent / "sql" / "qualifio_profiles.sql").write_text("SELECT email FROM no_such_table\n", encoding="utf-8")
    done = audience_sync(demo, "run", PARTICIPATIONS)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- validate


def test_validate_refuses_an_unknown_name_with_the_one_meant(demo: Path) -> None:
    edited(demo, f'after = ["{PROFILES}"]', 'after = ["qualifio_profile"]')
    done = audience_sync(demo, "validate")
    assert done.returncode == 2
    assert (f"[activations.{PARTICIPATIONS}] after: no activation 'qualifio_profile': "
            f"did you mean '{PROFILES}'?") in done.stderr


def test_validate_refuses_a_cycle_and_names_it(demo: Path) -> None:
    edited(demo, 'mode = "CREATE_UPDATE"', f'mode = "CREATE_UPDATE"\nafter = ["{CONSENTS}"]')
    done = audience_sync(demo, "validate")
    assert done.returncode == 2
    assert (f"[activations.{PROFILES}] after: {PROFILES} → {CONSENTS} → {PROFILES} is a cycle") in done.stderr
    assert done.stderr.count("is a cycle") == 1

    edited(demo, f'after = ["{CONSENTS}"]', f'after = ["{PROFILES}"]')
    itself = audience_sync(demo, "validate")
    assert itself.returncode == 2 and f"{PROFILES} → {PROFILES} is a cycle" in itself.stderr


def test_after_a_disabled_activation_is_a_warning_and_the_dependent_runs_alone(demo: Path) -> None:
    edited(demo, 'mode = "CREATE_UPDATE"', 'mode = "CREATE_UPDATE"\nenabled = false')
    done = audience_sync(demo, "validate")
    assert done.returncode == 0
    assert (f"[activations.{PARTICIPATIONS}] after: {PROFILES} is disabled (enabled = false), so "
            f"{PARTICIPATIONS} runs without waiting for it") in done.stderr


# --------------------------------------------------------------------------- the scheduler


def scheduled(root: Path, *, broken: bool = False) -> Path:
    """``first`` and ``second`` (after first) hourly, ``alone`` hourly with no ``after``, ``often`` every
    15 minutes after first; ``first`` reads a broken query when asked."""
    path = write_config(root, activation("first", 'every = "1h"', rows=50_000)
                        + activation("second", 'every = "1h"', rows=3) + 'after = ["first"]\n'
                        + activation("alone", 'every = "1h"', rows=4)
                        + activation("often", 'cron = "*/15 * * * *"', rows=6) + 'after = ["first"]\n')
    if broken:
        (root / "sql" / "broken.sql").write_text("SELECT email FROM no_such_table WHERE 1 = :rows\n")
        edited(path, 'sql = "sql/gen.sql"', 'sql = "sql/broken.sql"')
    return path


def test_the_scheduler_runs_one_slot_in_order_started_by_the_first(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="audience_sync")
    scheduler = Scheduler(scheduled(tmp_path), job_for)
    scheduler.start(paused=True)
    at = datetime(2026, 10, 26, 10, 0, tzinfo=BRUSSELS)
    try:
        for name in ("often", "second", "alone", "first"):  # the dependents' fires come first
            scheduler.fire(name, at)
        scheduler.fire("often", datetime(2026, 10, 26, 10, 15, tzinfo=BRUSSELS))  # first is not due: alone
        store = ledger(tmp_path)
        (first,) = store.runs("first")
        assert first.finished_at is not None
        for name in ("second", "often"):
            runs = store.runs(name)
            assert [r.status for r in runs] == ["succeeded"] * (2 if name == "often" else 1)
            assert runs[-1].started_at >= first.finished_at, name
        assert [r.status for r in store.runs("alone")] == ["succeeded"]
        store.close()
        assert "slot 2026-10-26T10:00 of second: started by the slot of first" in caplog.text
    finally:
        scheduler.close()


def test_a_slot_whose_first_fails_skips_its_dependents_and_says_why(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="audience_sync")
    scheduler = Scheduler(scheduled(tmp_path, broken=True), job_for)
    scheduler.start(paused=True)
    at = datetime(2026, 10, 26, 10, 0, tzinfo=BRUSSELS)
    try:
        for name in ("first", "second", "alone", "often"):
            scheduler.fire(name, at)
        store = ledger(tmp_path)
        assert [r.status for r in store.runs("first")] == ["failed"]
        assert store.runs("second") == [] and store.runs("often") == []
        assert [r.status for r in store.runs("alone")] == ["succeeded"]
        store.close()
        assert "slot 2026-10-26T10:00 of second skipped: after first, which failed" in caplog.text
        assert "slot 2026-10-26T10:00 of often skipped: after first, which failed" in caplog.text
    finally:
        scheduler.close()


# --------------------------------------------------------------------------- Kubernetes


def test_cronjobs_say_that_they_do_not_wait_for_each_other(demo: Path, caplog: pytest.LogCaptureFixture) -> None:
    from etl.config import load_config
    from etl.ops.k8s import K8sOptions, cronjob_manifests, scheduled_names

    config = load_config(demo)
    manifests = cronjob_manifests(config, scheduled_names(config), K8sOptions(state_volume_claim="state",
                                                                            ephemeral_state=True))
    notes = {m["metadata"]["name"]: m["metadata"]["annotations"].get("audience-sync/after-not-enforced")
             for m in manifests}
    assert notes["qualifio-participations"] == notes["didomi-consents"] == PROFILES
    assert notes["qualifio-profiles"] is None
    assert "`after` does not order them (qualifio_participations after qualifio_profiles; didomi_consents after " \
           "qualifio_profiles)" in caplog.text
