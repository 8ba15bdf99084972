"""`run --jobs N`: activations side by side, through the real CLI on the demo.

What a parallel run must not change: the files delivered, the ledger's statuses, the summary's rows and
the exit code are those of a sequential run; `after` still orders; and the shared limits hold: one
licence's concurrent calls (Actito refuses a 6th) and a warehouse's ``max_connections``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from etl.runtime.order import run_in_order

REPO = Path(__file__).resolve().parent.parent
#: the manifest's fields that name the run or its time: every other byte of the outboxes is the same
VOLATILE = ("run_id", "generated_at")


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, cwd=config.parent, env=env)


def demo_in(directory: Path) -> Path:
    shutil.copytree(REPO / "sql", directory / "sql")
    shutil.copy(REPO / "schedules.toml", directory / "schedules.toml")
    return directory / "schedules.toml"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return demo_in(tmp_path)


def history(config: Path) -> list[dict[str, Any]]:
    done = cli(config, "--log-format", "json", "history", "--limit", "100")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def finished(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event"')]
    return {line["activation"]: line for line in lines}


def outboxes(config: Path) -> dict[str, Any]:
    """Every delivered file by path: its bytes, or a manifest's JSON without the run's id and time."""
    seen: dict[str, Any] = {}
    for outbox in ("outbox", "outbox_fr"):
        for path in sorted((config.parent / "var" / outbox).iterdir()):
            key = f"{outbox}/{path.name}"
            if path.name.endswith(".manifest.json"):
                manifest = json.loads(path.read_text("utf-8"))
                seen[key] = {k: v for k, v in manifest.items() if k not in VOLATILE}
            else:
                seen[key] = path.read_bytes()
    return seen


def summary_rows(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    """(activation, status) of each row of the summary table, in the order printed."""
    lines = done.stdout.split("\n\n")[0].splitlines()[2:]
    return [(line.split()[0], line.split()[1]) for line in lines]


def test_jobs_3_delivers_what_a_sequential_run_delivers(tmp_path: Path) -> None:
    one, three = demo_in(tmp_path / "one"), demo_in(tmp_path / "three")
    sequential = cli(one, "run", "--all")
    parallel = cli(three, "run", "--all", "--jobs", "3")
    assert sequential.returncode == parallel.returncode == 0, parallel.stdout + parallel.stderr
    assert summary_rows(parallel) == summary_rows(sequential)  # same rows, same order
    assert len(summary_rows(parallel)) >= 10
    assert outboxes(three) == outboxes(one)
    statuses = {(r["activation"], r["status"]) for r in history(three)}
    assert statuses == {(r["activation"], r["status"]) for r in history(one)}
    assert {status for _, status in statuses} == {"succeeded"}


def test_after_is_kept_in_parallel(demo: Path) -> None:
    done = cli(demo, "--log-format", "json", "run", "--all", "--jobs", "3")
    assert done.returncode == 0, done.stderr
    runs = {r["activation"]: r for r in history(demo)}

    def at(record: dict[str, Any], key: str) -> datetime:
        return datetime.fromisoformat(record[key])

    profiles = runs["qualifio_profiles"]
    for dependent in ("qualifio_participations", "didomi_consents"):  # both run after qualifio_profiles
        assert at(runs[dependent], "started_at") >= at(profiles, "finished_at")
    # each run_finished line whole and once: a fan-out's deliveries are lines of their own
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert all(json.loads(line)["event"] == "run_finished" for line in lines)
    assert len(lines) == len(finished(done)) == len(runs)


def test_a_failing_activation_fails_the_command_not_the_others(demo: Path) -> None:
    (demo.parent / "sql" / "lapsed_buyers.sql").write_text(
        'SELECT email AS "emailAddress" FROM no_such_table WHERE :run_date IS NOT NULL AND :min_days > 0 '
        "AND :max_days > 0\n", "utf-8")
    done = cli(demo, "--log-format", "json", "run", "--all", "--jobs", "3")
    assert done.returncode == 1, done.stdout + done.stderr  # EXIT_FAILED: README, "Exit codes"
    runs = finished(done)
    assert runs["lapsed_buyers"]["status"] == "failed" and "no_such_table" in runs["lapsed_buyers"]["error"]
    assert {name: run["status"] for name, run in runs.items() if name != "lapsed_buyers"} == dict.fromkeys(
        set(runs) - {"lapsed_buyers"}, "succeeded")


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_jobs_below_one_is_a_usage_error(demo: Path, jobs: str) -> None:
    done = cli(demo, "run", "--all", "--jobs", jobs)
    assert done.returncode == 2
    assert "--jobs" in done.stderr and "1 or more" in done.stderr
    assert not (demo.parent / "var" / "outbox").exists()  # nothing ran


def test_one_warehouse_connection_at_a_time_with_max_connections_1(demo: Path) -> None:
    text = demo.read_text("utf-8").replace("demo = true\n", "demo = true\nmax_connections = 1\n", 1)
    demo.write_text(text, "utf-8")
    done = cli(demo, "-v", "--log-format", "json", "run", "--all", "--jobs", "3")
    assert done.returncode == 0, done.stderr
    assert {run["status"] for run in finished(done).values()} == {"succeeded"}
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    budget = [line for line in logs if line.get("warehouse") == "demo" and "in_use" in line]
    taken = [line for line in budget if line["message"] == "warehouse connection taken"]
    assert len(taken) >= 10 and {line["in_use"] for line in taken} == {1}
    open_now = 0  # the log's order is the budget's: taken and given back alternate
    for line in budget:
        open_now += 1 if line["message"] == "warehouse connection taken" else -1
        assert open_now in (0, 1)
    assert open_now == 0


@pytest.fixture
def sandbox(tmp_path: Path) -> Any:
    """An Actito sandbox of its own process, whose requests take 50 ms: concurrent calls really overlap,
    and its limits (peak in flight, 429s refused) are read after the run."""
    process = subprocess.Popen([sys.executable, "-m", "etl", "sandbox", "--port", "0", "--latency-seconds", "0.05"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"listening on (\S+)", first)
        assert match, first + (process.stderr.read() if process.stderr else "")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def limits(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_sandbox/limits", timeout=30) as answer:
        report: dict[str, Any] = json.loads(answer.read())["licences"]
    return report


def on_sandbox(config: Path, url: str, copies: int) -> list[str]:
    """actito_demo on the sandbox at ``url``, and ``copies`` more consents activations on its licence."""
    text = config.read_text("utf-8").replace(
        '[destinations.actito_demo]\nenvironment = "sandbox"',
        f'[destinations.actito_demo]\nbase_url = "{url}"\napi_key = "${{ACTITO_API_KEY}}"', 1)
    table = text.split("[activations.didomi_consents]\n", 1)[1].split("\n\n", 1)[0]
    names = [f"consents_{n}" for n in range(copies)]
    text += "".join(f"\n[activations.{name}]\n{table}\n" for name in names)
    config.write_text(text, "utf-8")
    return ["qualifio_profiles", "didomi_consents", "vip_members", *names]


def test_parallel_imports_share_the_licences_concurrency_limit(demo: Path, sandbox: str) -> None:
    names = on_sandbox(demo, sandbox, copies=5)
    env = {**os.environ, "ACTITO_API_KEY": "sandbox-demo-key"}
    done = cli(demo, "--log-format", "json", "run", *names, "--jobs", "8", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {run["status"] for run in finished(done).values()} == {"succeeded"}
    (licence,) = limits(sandbox).values()
    assert licence["refused"] == 0  # never a 429 for a 6th concurrent call
    assert 2 <= licence["peak_in_flight"] <= 5  # side by side, within Actito's limit


def test_sigterm_stops_the_running_and_starts_no_more(demo: Path, sandbox: str) -> None:
    names = on_sandbox(demo, sandbox, copies=4)
    env = {**os.environ, "ACTITO_API_KEY": "sandbox-demo-key"}
    process = subprocess.Popen([sys.executable, "-m", "etl", "--config", str(demo), "--log-format", "json", "run",
                                *names, "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=demo.parent, env=env)
    deadline = time.monotonic() + 120
    while not (demo.parent / "var" / "state" / "runs").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first run has started
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stdout + stderr  # EXIT_INTERRUPTED: README, "Exit codes"
    ended = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event"')]
    assert 1 <= len(ended) < len(names)  # the ones not started yet were left out
    assert all(record["status"] != "running" for record in history(demo))  # each run that started is recorded


def test_at_most_n_run_at_once_and_waiting_for_after_holds_no_place() -> None:
    lock, running, peak = threading.Lock(), [0], [0]

    def run(name: str) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return "succeeded"

    names = ["a", "b", "c", "d", "e", "f"]
    after = {"b": ["a"], "c": ["b"], "f": ["a"]}  # with one place, a waiting b must not keep a from running
    for at_most in (1, 2):
        peak[0] = 0
        done = run_in_order(names, after, lambda name: (name, run(name)), lambda name, reason: (name, "skipped"),
                            lambda result: result[1], parallel=True, at_most=at_most)
        assert [name for name, _ in done] == names and peak[0] == at_most
