"""``audience-sync schedule --listen``: health, readiness, Prometheus metrics and the status page of the real
daemon (a subprocess of the real CLI on a loopback port), while a run is in flight, after a failure, after a
SIGHUP reload, with its ledger gone; and the flag's errors. Runs start at once through ``run_on_create``
on schedules that would not fire for months, so every run seen is one the test asked for."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from dbservers import in_ci, postgres_url
from etl.errors import UsageError
from etl.ops.status_server import DEFAULT_HOST, ROUTES, StatusServer, health, parse_listen
from etl.runtime.scheduler import Scheduler
from jobs import job_for
from test_scheduler import REPO, Running, activation, ledger, wait_for, write_config

FAR_CRON = 'cron = "0 3 1 1 *"'
NEW = f"{FAR_CRON}, run_on_create = true"
#: an e-mail address, as the generator's rows hold (user1@example.com); CSS's "@media" is not one
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serving(Running):
    """The daemon as an operator starts it: ``audience-sync schedule --listen 127.0.0.1:PORT``."""

    def __init__(self, config: Path) -> None:  # noqa: D107 (Running's log handling, another command line)
        self.port = free_port()
        self.log_path = config.parent / "scheduler.log"
        self._log = self.log_path.open("w")
        command = [sys.executable, "-m", "etl", "--log-format", "json", "--config", str(config), "schedule",
                   "--listen", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(command, cwd=config.parent, stdout=self._log, stderr=self._log,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})

    def get(self, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    def json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.get(path)
        return status, json.loads(body)

    def serving(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return self.json("/healthz")[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Sample name -> labels -> value, parsed by prometheus_client's own parser."""
        status, body, headers = self.get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return found


@pytest.fixture
def serve() -> Any:
    started: list[Serving] = []

    def start(config: Path) -> Serving:
        started.append(Serving(config))
        wait_for(started[-1].serving, 30, "the status server to answer /healthz")
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def assert_private(page: str) -> None:
    assert not EMAIL.findall(page), EMAIL.findall(page)
    assert set(re.findall(r"@\w+", page)) <= {"@media"}


def stop(daemon: Serving) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0, daemon.log_path.read_text()
    with pytest.raises(OSError):  # the server went with the daemon
        daemon.get("/healthz")


# --------------------------------------------------------------------------- a run in flight, a failure


def in_flight_and_failed(tmp_path: Path) -> Path:
    broken = activation("broken", NEW).replace("sql/gen.sql", "sql/broken.sql")
    config = write_config(tmp_path, activation("slow", NEW, rows=50_000_000) + broken + activation("idle", FAR_CRON),
                          settings="chunk_size = 100\nshutdown_grace_seconds = 0")
    (tmp_path / "sql" / "broken.sql").write_text("SELECT email FROM no_such_table\n", encoding="utf-8")
    return config


def test_every_route_while_a_run_is_in_flight_and_after_a_failure(tmp_path: Path, serve: Any) -> None:
    daemon = serve(in_flight_and_failed(tmp_path))
    store = ledger(tmp_path)
    wait_for(lambda: [r for r in store.runs("broken") if r.status == "failed"], 30, "the broken run to fail")
    wait_for(lambda: [r for r in store.runs("slow") if r.status == "running"], 30, "the slow run to start")
    (failed,) = store.runs("broken")

    assert daemon.logged(f"status page on http://127.0.0.1:{daemon.port}/")
    # the failed run is recorded before its thread ends (alerts, metrics): it leaves "running" just after
    wait_for(lambda: daemon.json("/healthz")[1]["running"] == 1, 10, "the failed run to leave the running ones")
    status, health = daemon.json("/healthz")
    assert status == 200 and health["status"] == "ok" and health["running"] == 1
    assert 0 <= health["heartbeat_age_seconds"] < 5
    assert daemon.json("/readyz") == (200, {"status": "ready", "scheduled": 3})

    metrics = daemon.metrics()
    assert metrics["audience_sync_scheduler_runs_in_flight"] == {
        (("activation", "broken"),): 0, (("activation", "idle"),): 0, (("activation", "slow"),): 1}
    assert metrics["audience_sync_last_run_status"][(("activation", "broken"), ("status", "failed"))] == 1
    assert metrics["audience_sync_failures_total"][(("activation", "broken"),)] == 1
    assert set(metrics["audience_sync_scheduler_next_run_timestamp_seconds"]) == {
        (("activation", name),) for name in ("broken", "idle", "slow")}
    assert metrics["audience_sync_scheduler_ledger_up"] == {(): 1}
    assert (("activation", "slow"),) not in metrics.get("audience_sync_last_run_timestamp_seconds", {})

    status, page, headers = daemon.get("/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script" not in page and "Running now" in page and "<strong>slow</strong> (slot created)" in page
    assert "s-failed" in page and failed.run_id in page and "idle" in page and "never run" in page
    assert "no such table" in (failed.error or "") and "no such table" not in page  # errors stay in the ledger
    assert_private(page)

    assert daemon.get("/", method="HEAD")[:2] == (200, "")
    status, body, headers = daemon.get("/", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD") and json.loads(body)["status"] == "method not allowed"
    assert daemon.get("/nope")[0] == 404 and daemon.get("/metrics/x")[0] == 404
    stop(daemon)
    assert [r.status for r in store.runs("slow")] == ["interrupted"]
    store.close()


def test_a_headless_browser_renders_the_status_page(tmp_path: Path, serve: Any) -> None:
    """The page as a person sees it (STATUS_PAGE_SCREENSHOT=/tmp/status.png keeps the picture)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        message = "chromium is not on PATH (Debian: apt-get install chromium): no screenshot of the status page"
        if in_ci():
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message + "; the other tests check its HTML")
    daemon = serve(in_flight_and_failed(tmp_path))
    store = ledger(tmp_path)
    wait_for(lambda: [r for r in store.runs("broken") if r.status == "failed"], 30, "the broken run to fail")
    image = tmp_path / "status.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={image}",
                    "--window-size=1200,800", f"http://127.0.0.1:{daemon.port}/"],
                   check=True, capture_output=True, timeout=90)
    data = image.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000, len(data)
    if os.environ.get("STATUS_PAGE_SCREENSHOT"):
        shutil.copyfile(image, os.environ["STATUS_PAGE_SCREENSHOT"])
    stop(daemon)
    store.close()


# --------------------------------------------------------------------------- a reload


def test_a_reload_that_adds_an_activation_shows_on_the_page_and_in_the_metrics(tmp_path: Path, serve: Any) -> None:
    config = write_config(tmp_path, activation("old", FAR_CRON))
    daemon = serve(config)
    _, page, _ = daemon.get("/")
    assert "added" not in page
    config.write_text(config.read_text(encoding="utf-8") + activation("added", NEW, rows=7), encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    store = ledger(tmp_path)
    wait_for(lambda: [r for r in store.runs("added") if r.status == "succeeded"], 30, "the added activation's run")

    def added_row() -> str | None:
        """The run is in the ledger a moment before the scheduler has let its slot go: the page is awaited."""
        _, page, _ = daemon.get("/")
        return next((line for line in page.splitlines() if ">added<" in line and "s-succeeded" in line), None)

    row = wait_for(added_row, 10, "the added activation's succeeded row on the page")
    assert ">7<" in row  # its audience size
    _, page, _ = daemon.get("/")
    metrics = daemon.metrics()
    assert metrics["audience_sync_rows"][(("activation", "added"), ("stage", "delivered"))] == 7
    assert (("activation", "added"),) in metrics["audience_sync_scheduler_next_run_timestamp_seconds"]
    assert daemon.json("/healthz")[0] == 200 and daemon.json("/readyz")[0] == 200
    assert_private(page)
    stop(daemon)
    store.close()


# --------------------------------------------------------------------------- the ledger gone


def test_readiness_fails_with_its_reason_when_the_ledger_cannot_be_read(tmp_path: Path, serve: Any) -> None:
    daemon = serve(write_config(tmp_path, activation("old", FAR_CRON)))
    wait_for(lambda: daemon.json("/readyz")[0] == 200, 20, "readiness")
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("DROP TABLE runs")
    status, body = daemon.json("/readyz")
    assert status == 503 and body["status"] == "not ready" and "no such table: runs" in body["reason"]
    assert daemon.json("/healthz")[0] == 200  # alive: restarting it would not bring the ledger back
    assert daemon.metrics()["audience_sync_scheduler_ledger_up"] == {(): 0}
    status, page, _ = daemon.get("/")
    assert status == 200 and "class=\"banner\"" in page and "ledger" in page
    stop(daemon)


@pytest.mark.postgres
def test_readiness_fails_when_the_postgresql_ledger_is_dropped(tmp_path: Path, serve: Any) -> None:
    base = postgres_url()
    database = f"status_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {database}"))
    url = sa.make_url(base).set(database=database).render_as_string(hide_password=False)
    try:
        daemon = serve(write_config(tmp_path, activation("old", FAR_CRON), settings=f'state_url = "{url}"'))
        wait_for(lambda: daemon.json("/readyz")[0] == 200, 20, "readiness")
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {database} WITH (FORCE)"))
        status, body = daemon.json("/readyz")
        assert status == 503 and body["status"] == "not ready"
        assert "ledger is unreachable" in body["reason"] and database in body["reason"]
        assert daemon.json("/healthz")[0] == 200
        stop(daemon)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


# --------------------------------------------------------------------------- in process: start-up and lag


def test_a_scheduler_whose_loop_has_not_turned_is_not_healthy_and_a_late_fire_shows_its_lag(tmp_path: Path) -> None:
    server = StatusServer("127.0.0.1", 0)
    scheduler = Scheduler(write_config(tmp_path, activation("quick", FAR_CRON)), job_for)
    try:
        for route in ROUTES:  # bound, no scheduler yet
            assert server.answer(route)[0] == 503
        server.scheduler = scheduler
        assert server.answer("/")[0] == 503 and server.answer("/metrics")[0] == 503  # nothing loaded
        scheduler.start(paused=True)  # loaded, but run_forever's loop never turns
        status, _, body = health(scheduler)
        assert status == 503 and json.loads(body)["status"] == "starting"
        assert server.answer("/readyz")[0] == 200 and server.answer("/")[0] == 200

        (job,) = scheduler.jobs  # APScheduler's own call, 90 s late
        job.func(*job.args, scheduled=datetime.now(UTC) - timedelta(seconds=90))
        families = {f.name: f for f in text_string_to_metric_families(server.answer("/metrics")[2].decode())}
        (lag,) = families["audience_sync_scheduler_lag_seconds"].samples
        assert 90 <= lag.value < 120
    finally:
        scheduler.close()
        server.close()


# --------------------------------------------------------------------------- the flag


@pytest.mark.parametrize(("written", "expected"), [
    (":9108", (DEFAULT_HOST, 9108)), ("127.0.0.1:9108", ("127.0.0.1", 9108)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9108", ("::1", 9108)), ("localhost:1", ("localhost", 1)),
])
def test_listen_values(written: str, expected: tuple[str, int]) -> None:
    assert parse_listen(written) == expected


@pytest.mark.parametrize("written", ["9108", "host:", ":0", ":65536", ":http", "::1:9108", ""])
def test_bad_listen_values_are_usage_errors(written: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(written)


def schedule(tmp_path: Path, listen: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, activation("fresh", NEW))
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), "schedule", "--listen", listen],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_port_in_use_is_exit_2_before_any_run(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = schedule(tmp_path, f"127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    assert f"--listen: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "choose a free port" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()  # nothing started: not even the ledger was opened


def test_a_bad_listen_value_is_exit_2_with_the_way_to_write_it(tmp_path: Path) -> None:
    done = schedule(tmp_path, "localhost")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--listen: 'localhost' is not an address to listen on — write HOST:PORT or :PORT" in done.stderr
