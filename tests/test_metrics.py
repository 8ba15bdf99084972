"""Prometheus metrics: the node_exporter textfile (read back with prometheus_client's own parser) and
pushes to a Pushgateway stand-in (a real HTTP server on 127.0.0.1 recording what it is sent)."""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import HOST, unused_port

from etl.ops import metrics as metrics_module
from etl.config import Metrics
from etl.errors import MetricsError
from etl.ops.metrics import push, write_textfile
from etl.ops.webhook import WEBHOOK_RETRY
from etl.runtime.runs import RunOutcome
from etl.runtime.ledger import StateStore

T0 = 1_760_000_000.0


#: the push's retry budget as shipped, without its pause
NO_PAUSE = replace(WEBHOOK_RETRY, sleep=lambda seconds: None)


def succeeded(name: str = "vip", delivered: int = 900, run_id: str = "r-ok", duration: float = 12.5) -> RunOutcome:
    results = {"rows_extracted": delivered + 100, "rows_rejected": 60, "rows_duplicate": 40,
               "rows_delivered": delivered}
    return RunOutcome(name, run_id, "succeeded", False, duration, results, {}, None)


def failed(name: str = "vip", run_id: str = "r-ko") -> RunOutcome:
    return RunOutcome(name, run_id, "failed", False, 3.25, {"rows_extracted": 10}, {}, "the warehouse is down")


def samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the file, parsed by the reference parser."""
    found = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def textfile(tmp_path: Path) -> Metrics:
    return Metrics(textfile=tmp_path / "textfile" / "audience_sync.prom")


# --------------------------------------------------------------------------- textfile


def test_the_textfile_parses_and_holds_every_series(textfile: Metrics) -> None:
    path = write_textfile(textfile, [succeeded(), failed("lapsed")], now=T0)
    assert path == textfile.textfile and path is not None
    found = samples(path)
    assert value(found, "audience_sync_rows", activation="vip", stage="delivered") == 900
    assert value(found, "audience_sync_rows", activation="vip", stage="extracted") == 1000
    assert value(found, "audience_sync_rows", activation="vip", stage="rejected") == 60
    assert value(found, "audience_sync_rows", activation="vip", stage="duplicate") == 40
    assert value(found, "audience_sync_run_duration_seconds", activation="vip") == 12.5
    assert value(found, "audience_sync_last_success_timestamp_seconds", activation="vip") == T0
    assert value(found, "audience_sync_last_run_timestamp_seconds", activation="lapsed") == T0
    assert value(found, "audience_sync_last_run_status", activation="vip", status="succeeded") == 1
    assert value(found, "audience_sync_last_run_status", activation="vip", status="failed") == 0
    assert value(found, "audience_sync_last_run_status", activation="lapsed", status="failed") == 1
    assert value(found, "audience_sync_failures_total", activation="lapsed") == 1
    assert value(found, "audience_sync_failures_total", activation="vip") == 0
    # a failed run that never succeeded has no rows and no last success
    assert value(found, "audience_sync_last_success_timestamp_seconds", activation="lapsed") is None
    assert not [k for k in found if k[0] == "audience_sync_rows" and ("activation", "lapsed") in k[1]]
    types = {f.name: f.type for f in text_string_to_metric_families(path.read_text())}
    assert types["audience_sync_failures"] == "counter" and types["audience_sync_rows"] == "gauge"
    text = path.read_text()
    assert text.count("# TYPE audience_sync_rows gauge") == 1 and text.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_the_last_success_and_the_rows_are_kept_across_a_failure(textfile: Metrics) -> None:
    write_textfile(textfile, [succeeded(delivered=900)], now=T0)
    path = write_textfile(textfile, [failed()], now=T0 + 3600)
    assert path is not None
    found = samples(path)
    assert value(found, "audience_sync_last_success_timestamp_seconds", activation="vip") == T0
    assert value(found, "audience_sync_last_run_timestamp_seconds", activation="vip") == T0 + 3600
    assert value(found, "audience_sync_rows", activation="vip", stage="delivered") == 900
    assert value(found, "audience_sync_run_duration_seconds", activation="vip") == 3.25
    assert value(found, "audience_sync_last_run_status", activation="vip", status="failed") == 1
    assert value(found, "audience_sync_last_run_status", activation="vip", status="succeeded") == 0
    assert value(found, "audience_sync_failures_total", activation="vip") == 1

    write_textfile(textfile, [failed()], now=T0 + 7200)
    write_textfile(textfile, [succeeded(delivered=950)], now=T0 + 9000)
    found = samples(path)
    assert value(found, "audience_sync_failures_total", activation="vip") == 2  # a counter: never goes back
    assert value(found, "audience_sync_last_success_timestamp_seconds", activation="vip") == T0 + 9000
    assert value(found, "audience_sync_rows", activation="vip", stage="delivered") == 950


def test_activations_not_in_this_invocation_keep_their_series(textfile: Metrics) -> None:
    write_textfile(textfile, [succeeded("vip", delivered=900)], now=T0)
    path = write_textfile(textfile, [succeeded("lapsed", delivered=40)], now=T0 + 60)
    assert path is not None
    found = samples(path)
    assert value(found, "audience_sync_rows", activation="vip", stage="delivered") == 900
    assert value(found, "audience_sync_rows", activation="lapsed", stage="delivered") == 40
    assert value(found, "audience_sync_last_success_timestamp_seconds", activation="vip") == T0


def test_dry_runs_and_locked_runs_are_not_reported(textfile: Metrics) -> None:
    write_textfile(textfile, [succeeded(delivered=900)], now=T0)
    dry = RunOutcome("vip", "r-dry", "failed", True, 1.0, {}, {}, "boom")
    locked = RunOutcome("vip", None, "locked", False, 0.0, {}, {}, "already running")
    path = write_textfile(textfile, [dry, locked], now=T0 + 60)
    assert path is not None
    found = samples(path)
    assert value(found, "audience_sync_last_run_status", activation="vip", status="succeeded") == 1
    assert value(found, "audience_sync_failures_total", activation="vip") == 0


def test_with_the_ledger_failures_are_counted_there_and_a_lost_file_is_refilled(
    textfile: Metrics, tmp_path: Path
) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    started = datetime(2025, 10, 1, 6, 30)
    finished = datetime(2025, 10, 1, 6, 31)
    store.start_run("r1", "vip", "audience", dry_run=False, started_at=started)
    store.finish_run("r1", "succeeded", finished_at=finished, duration_s=60.0, rows_extracted=1000,
                     rows_rejected=60, rows_duplicate=40, rows_delivered=900)
    for i, dry in enumerate([False, False, True]):
        store.start_run(f"f{i}", "vip", "audience", dry_run=dry, started_at=datetime(2025, 10, 2, 6, i))
        store.finish_run(f"f{i}", "failed", error="boom")
    # no textfile yet (a new node, a wiped directory): the ledger knows the last success
    path = write_textfile(textfile, [failed(run_id="f1")], store, now=T0)
    store.close()
    assert path is not None
    found = samples(path)
    assert value(found, "audience_sync_failures_total", activation="vip") == 2  # not the dry run
    assert value(found, "audience_sync_last_success_timestamp_seconds", activation="vip") == \
        finished.replace(tzinfo=UTC).timestamp()
    assert value(found, "audience_sync_rows", activation="vip", stage="delivered") == 900


def test_the_file_is_replaced_atomically_even_with_writers_racing(textfile: Metrics) -> None:
    path = write_textfile(textfile, [succeeded("a"), succeeded("b")], now=T0)
    assert path is not None
    stop = threading.Event()
    seen: list[int] = []
    broken: list[str] = []

    def read() -> None:
        while not stop.is_set():
            text = path.read_text(encoding="utf-8")
            try:
                parsed = list(text_string_to_metric_families(text))
            except Exception as exc:  # a torn file would not parse
                broken.append(repr(exc))
                continue
            if not text.endswith("\n") or len(parsed) != 6:
                broken.append(text)
            seen.append(1)

    def write(name: str) -> None:
        for i in range(40):
            write_textfile(textfile, [succeeded(name, delivered=i) if i % 2 else failed(name)], now=T0 + i)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()
    assert broken == [] and len(seen) > 0
    found = samples(path)
    # both writers' last updates are there: neither overwrote the other with a stale copy
    for name in ("a", "b"):
        assert value(found, "audience_sync_last_run_timestamp_seconds", activation=name) == T0 + 39
        assert value(found, "audience_sync_failures_total", activation=name) == 20
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_write_leaves_the_previous_file_whole(textfile: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_textfile(textfile, [succeeded(delivered=900)], now=T0)
    assert path is not None
    before = path.read_text()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics_module.os, "fsync", disk_full)
    with pytest.raises(MetricsError, match="No space left on device"):
        write_textfile(textfile, [failed()], now=T0 + 60)
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_series_of_other_programs_and_junk_lines_are_dropped_not_fatal(textfile: Metrics) -> None:
    assert textfile.textfile is not None
    textfile.textfile.parent.mkdir(parents=True)
    textfile.textfile.write_text('garbage line\nother_metric{x="1"} 3\naudience_sync_rows{activation="old",'
                                 'stage="delivered"} 12\naudience_sync_rows{broken 1\n')
    path = write_textfile(textfile, [succeeded()], now=T0)
    assert path is not None
    found = samples(path)
    assert value(found, "audience_sync_rows", activation="old", stage="delivered") == 12
    assert not [k for k in found if k[0] == "other_metric"]


def test_no_textfile_configured_writes_nothing() -> None:
    assert write_textfile(Metrics(), [succeeded()]) is None


# --------------------------------------------------------------------------- Pushgateway


@dataclass
class Pushed:
    method: str
    path: str
    headers: dict[str, str]
    body: str


class Pushgateway:
    """Records what it is sent; answers the queued statuses, then 200."""

    def __init__(self) -> None:
        self.received: list[Pushed] = []
        self.statuses: list[int] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._record()

            def do_PUT(self) -> None:
                self._record()

            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                gateway.received.append(Pushed(self.command, self.path, dict(self.headers), body))
                self.send_response(gateway.statuses.pop(0) if gateway.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Pushgateway]:
    server = Pushgateway()
    yield server
    server.close()


def pushed_samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_push_adds_each_activation_under_its_grouping_key(gateway: Pushgateway) -> None:
    metrics = Metrics(pushgateway_url=gateway.url + "/", job="audience_sync")
    assert push(metrics, [succeeded("vip"), failed("lapsed")], now=T0, retry=NO_PAUSE) == []
    assert [(p.method, p.path) for p in gateway.received] == [
        ("POST", "/metrics/job/audience_sync/activation/vip"),
        ("POST", "/metrics/job/audience_sync/activation/lapsed"),
    ]
    assert gateway.received[0].headers["Content-Type"].startswith("text/plain; version=0.0.4")
    ok, ko = (pushed_samples(p.body) for p in gateway.received)
    assert ok[("audience_sync_last_success_timestamp_seconds", frozenset())] == T0
    assert ok[("audience_sync_rows", frozenset({("stage", "delivered")}))] == 900
    assert ok[("audience_sync_last_run_status", frozenset({("status", "succeeded")}))] == 1
    # a failure pushes no last success and no rows: push-add keeps the gateway's previous values
    assert not [k for k in ko if k[0] in ("audience_sync_last_success_timestamp_seconds", "audience_sync_rows")]
    assert ko[("audience_sync_last_run_status", frozenset({("status", "failed")}))] == 1
    assert ko[("audience_sync_run_duration_seconds", frozenset())] == 3.25
    # the grouping key carries activation and job: the Pushgateway refuses them in the body
    assert "activation=" not in gateway.received[0].body and "job=" not in gateway.received[0].body
    assert "audience_sync_failures_total" not in gateway.received[1].body  # no ledger to count in


def test_push_with_the_ledger_sends_the_failure_count(gateway: Pushgateway, tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    for run_id in ("f1", "f2"):
        store.start_run(run_id, "vip", "audience", dry_run=False, started_at=datetime(2025, 10, 2, 6, 0))
        store.finish_run(run_id, "failed", error="boom")
    assert push(Metrics(pushgateway_url=gateway.url), [failed(run_id="f2")], store, now=T0, retry=NO_PAUSE) == []
    store.close()
    assert pushed_samples(gateway.received[0].body)[("audience_sync_failures_total", frozenset())] == 2


def test_push_problems_are_returned_not_raised_and_hide_credentials(gateway: Pushgateway) -> None:
    dead = unused_port()
    problems = push(Metrics(pushgateway_url=f"http://{HOST}:{dead}"), [succeeded(), failed("lapsed")], now=T0,
                    retry=NO_PAUSE)
    assert len(problems) == 2
    assert problems[0].startswith(f"metrics of vip not pushed: cannot reach http://{HOST}:{dead} ")

    gateway.statuses = [400]
    secret_url = gateway.url.replace("http://", "http://pusher:s3cret-pa55@")
    problems = push(Metrics(pushgateway_url=secret_url), [succeeded()], now=T0, retry=NO_PAUSE)
    assert problems == [f"metrics of vip not pushed: {gateway.url} answered HTTP 400"]
    expected = "Basic " + base64.b64encode(b"pusher:s3cret-pa55").decode()
    assert gateway.received[0].headers["Authorization"] == expected

    gateway.statuses = [503]  # retried once
    assert push(Metrics(pushgateway_url=gateway.url), [succeeded()], now=T0, retry=NO_PAUSE) == []
    assert len(gateway.received) == 3


def test_dry_runs_are_not_pushed_and_no_gateway_means_nothing(gateway: Pushgateway) -> None:
    dry = RunOutcome("vip", "r", "succeeded", True, 1.0, {"rows_delivered": 3}, {}, None)
    assert push(Metrics(pushgateway_url=gateway.url), [dry]) == [] and gateway.received == []
    assert push(Metrics(), [succeeded()]) == []


def test_a_textfile_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(MetricsError, match="metrics.textfile"):
        write_textfile(Metrics(textfile=blocker / "audience_sync.prom"), [succeeded()])
    assert os.listdir(tmp_path) == ["not-a-directory"]
