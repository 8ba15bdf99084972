"""What ``audience-sync schedule --listen HOST:PORT`` serves: ``/healthz``, ``/readyz``, ``/metrics`` and a
status page at ``/``, so an orchestrator can probe the daemon and a person can see it without the ledger.

It lives in etl.ops, above the runtime: the CLI binds it before the scheduler starts (a port in use is a
usage error, exit 2, before any run) and hands it the scheduler through ``main(on_start=...)``. Requests
are answered from threads of their own, reading what the scheduler publishes; none takes a lock a run
holds, so a slow page never delays a run. The page shows counts and statuses only: run errors may quote
a row, so they stay in the ledger (``audience-sync show RUN_ID``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from etl.errors import UsageError
from etl.logs import redact
from etl.ops.metrics import FAMILIES, ledger_samples
from etl.ops.status_page import render_page
from etl.runtime.ledger import StateStore
from etl.runtime.scheduler import Scheduler

log = logging.getLogger("audience_sync.scheduler.status")  # at INFO with the scheduler's own lines

DEFAULT_PORT = 9108
DEFAULT_HOST = "127.0.0.1"
#: the main loop turns every 0.1 s; a reload (config + ledger) may hold it a while, not this long
HEARTBEAT_STALE_SECONDS = 30.0
#: how long /readyz waits for the ledger: a probe's own timeout is usually a few seconds
READY_TIMEOUT_SECONDS = 2.0
ROUTES = ("/healthz", "/readyz", "/metrics", "/")

Answer = tuple[int, str, bytes]  # status, content type, body


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (loopback: a status page is not published by accident)."""
    host, sep, port_text = text.strip().rpartition(":")
    hint = f"write HOST:PORT or :PORT, e.g. --listen 127.0.0.1:{DEFAULT_PORT} (0.0.0.0:{DEFAULT_PORT} in a container)"
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{text!r} is not an address to listen on", where="--listen", hint=hint)
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if ":" in host or bracketed:
        try:
            ipaddress.IPv6Address(host)
            if not bracketed:
                raise ValueError(host)
        except ValueError:
            raise UsageError(f"{text!r}: {host!r} is not a host (an IPv6 address goes in brackets: [::1]:PORT)",
                             where="--listen", hint=hint) from None
    return host or DEFAULT_HOST, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that never reads does not hold the daemon's exit
    status: StatusServer


class StatusServer:
    """Bound at construction (errors are the caller's to report), serving once ``attach`` gives it a scheduler."""

    def __init__(self, host: str, port: int) -> None:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
        shown_host = f"[{host}]" if ":" in host else host
        try:
            self._http = server_class((host, port), _Handler)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {shown_host}:{port}: {exc.strerror or exc}", where="--listen",
                hint="choose a free port (another daemon may hold this one) and a host of this machine",
            ) from None
        self._http.status = self
        self.address = f"{shown_host}:{self._http.server_address[1]}"
        self.scheduler: Scheduler | None = None
        self._probe = _LedgerProbe()
        self._thread: threading.Thread | None = None

    def attach(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._thread = threading.Thread(target=self._http.serve_forever, name="status-server", daemon=True)
        self._thread.start()
        log.info("serving /healthz, /readyz, /metrics and the status page on http://%s/", self.address,
                 extra={"fields": {"listen": self.address}})
        if not _loopback(self._http.server_address[0]):
            log.warning("the status server listens beyond this machine (%s) and has no authentication: keep the "
                        "port inside the cluster or behind a proxy", self.address)

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout=5)
        self._http.server_close()

    def answer(self, path: str) -> Answer:
        route = path.split("?", 1)[0]
        scheduler = self.scheduler
        if route not in ROUTES:
            return _json(HTTPStatus.NOT_FOUND, {"status": "not found", "routes": list(ROUTES)})
        if scheduler is not None and route == "/healthz":
            return health(scheduler)
        if scheduler is not None and route == "/readyz":
            return readiness(scheduler, self._probe)
        if scheduler is None or not scheduler.loaded:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "starting"})
        if route == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE_LATEST, metrics_text(scheduler)
        return HTTPStatus.OK, "text/html; charset=utf-8", render_page(scheduler, self._probe.problem).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "audience-sync"
    sys_version = ""  # the Python version is nobody's business

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._reply(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(with_body=False)

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "application/json",
                   json.dumps({"status": "method not allowed", "allowed": ["GET", "HEAD"]}).encode(),
                   with_body=True, allow=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

    def _reply(self, *, with_body: bool) -> None:
        try:
            status, content_type, body = self.server.status.answer(self.path)
        except Exception as exc:  # a page that fails must not take the server down
            log.error("status server: %s answering %s: %s", type(exc).__name__, self.path.split("?", 1)[0],
                      redact(str(exc).splitlines()[0] if str(exc) else ""))
            status, content_type, body = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"status": "error"})
        self._send(status, content_type, body, with_body=with_body)

    def _send(self, status: int, content_type: str, body: bytes, *, with_body: bool, allow: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("status server: " + format, *args)  # probes every few seconds would flood the log


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, "application/json", (json.dumps(body, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------- health and readiness


def health(scheduler: Scheduler) -> Answer:
    """Alive: the main loop turns (it handles the signals) and APScheduler's thread runs (it fires)."""
    age = scheduler.heartbeat_age
    body: dict[str, Any] = {"running": len(scheduler.running), "stopping": scheduler.stopping,
                            "heartbeat_age_seconds": None if age is None else round(age, 3)}
    if age is None:
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {**body, "status": "starting"})
    if age > HEARTBEAT_STALE_SECONDS:
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {**body, "status": "stuck",
                                                      "reason": f"the scheduler loop has not turned for {age:.0f}s"})
    if not scheduler.firing:
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {**body, "status": "stopped",
                                                      "reason": "the scheduler's timer thread is not running"})
    return _json(HTTPStatus.OK, {**body, "status": "ok"})


def readiness(scheduler: Scheduler, probe: _LedgerProbe) -> Answer:
    """Ready: configuration loaded, ledger answering (every run starts by claiming its slot there)."""
    store = scheduler.store
    if not scheduler.loaded or store is None:
        return _not_ready("the configuration is not loaded yet")
    if scheduler.stopping:
        return _not_ready("stopping: no new runs start")
    reason = probe.check(store)
    if reason is not None:
        return _not_ready(reason)
    return _json(HTTPStatus.OK, {"status": "ready", "scheduled": len(scheduler.jobs)})


def _not_ready(reason: str) -> Answer:
    return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not ready", "reason": reason})


class _LedgerProbe:
    """One cheap ledger query at a time, waited for READY_TIMEOUT_SECONDS: a ledger that hangs (a firewall
    dropping packets) answers "not ready" in time, and probes do not pile threads up behind it. The query
    runs in a daemon thread (an executor's would be joined at exit: a hung query would hold the daemon)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Future[object] | None = None
        self.problem: str | None = None  # the latest check's, shown on the page without asking again

    def check(self, store: StateStore) -> str | None:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = Future()
                threading.Thread(target=_query, args=(store, self._pending), name="ledger-probe", daemon=True).start()
            pending = self._pending
        try:
            pending.result(timeout=READY_TIMEOUT_SECONDS)
            self.problem = None
        except FutureTimeout:
            self.problem = f"the ledger ({store.shown()}) did not answer within {READY_TIMEOUT_SECONDS:g}s"
        except Exception as exc:
            self.problem = f"the ledger is unreachable: {redact(_first_line(exc))}"
        return self.problem


def _query(store: StateStore, answer: Future[object]) -> None:
    try:
        answer.set_result(store.runs(limit=1))
    except Exception as exc:
        answer.set_exception(exc)


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


# --------------------------------------------------------------------------- metrics

RUNNING = "audience_sync_scheduler_runs_in_flight"
NEXT_RUN = "audience_sync_scheduler_next_run_timestamp_seconds"
LAG = "audience_sync_scheduler_lag_seconds"
LEDGER_UP = "audience_sync_scheduler_ledger_up"


def metrics_text(scheduler: Scheduler) -> bytes:
    """A registry of its own per scrape: the values are the ledger's and the scheduler's now, nothing is kept."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(list(_families(scheduler))))  # type: ignore[arg-type]
    return generate_latest(registry)


class _Snapshot:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _families(scheduler: Scheduler) -> Iterator[Metric]:
    """The textfile's families (from the ledger; absent, with ledger_up 0, when it cannot be read), then the
    daemon's own."""
    names = list(scheduler.config.activations) if scheduler.loaded else []
    store = scheduler.store
    try:
        samples = ledger_samples(store, names) if store is not None else {}
        up = store is not None
    except Exception as exc:
        log.warning("metrics: cannot read the ledger: %s", redact(_first_line(exc)))
        samples, up = {}, False
    for family, (kind, help_text) in FAMILIES.items():
        series = samples.get(family)
        if series:
            yield _family(family, kind, help_text, ((dict(labels), value) for labels, value in series.items()))
    yield _family(LEDGER_UP, "gauge", "1 when the scheduler could read the ledger for this scrape, else 0.",
                  [({}, 1.0 if up else 0.0)])
    running = scheduler.running
    yield _family(RUNNING, "gauge", "1 while the scheduler runs the activation, else 0.",
                  [({"activation": name}, 1.0 if name in running else 0.0) for name in sorted({*names, *running})])
    next_runs = [({"activation": job.id}, job.next_run_time.timestamp()) for job in scheduler.jobs
                 if job.next_run_time is not None]
    yield _family(NEXT_RUN, "gauge", "When the scheduler next fires the activation, as a Unix timestamp.",
                  sorted(next_runs, key=lambda item: item[0]["activation"]))
    if scheduler.lag is not None:
        yield _family(LAG, "gauge", "How late the scheduler's latest fire started after its scheduled time, "
                      "in seconds.", [({}, scheduler.lag)])


def _family(name: str, kind: str, help_text: str, series: Iterable[tuple[dict[str, str], float]]) -> Metric:
    rows = list(series)
    labels = sorted(rows[0][0]) if rows else []
    family: Metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=labels)
    for values, value in rows:
        family.add_metric([values[label] for label in labels], value)  # type: ignore[attr-defined]
    return family

