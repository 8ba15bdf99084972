"""The Actito sandbox's server: one request from socket to answer, faults and limits, and the test's controls."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, cast

from etl.testing.actito.engine import ImportEngine
from etl.testing.actito.model import moment
from etl.testing.actito.routes import ApiRoutes
from etl.testing.actito.state import DEFAULT_FIXTURE, MAX_FILE_BYTES, SandboxState, Settings, read_fixture
from etl.testing.actito.wire import ClientGone, HttpError, Request, Response, check_accept
from etl.testing.loopback import Fault, FaultQueue, FaultStatus, LoopbackHandler, LoopbackServer, \
    loopback_address, send_json

_CONTROL_BODY_LIMIT = 1_000_000


class ActitoSandbox:
    """Actito's API on loopback, stateful, with faults and a clock tests can control; one lock guards all
    state. `profiles`, `records` and `executions` read back what imports did (``GET /_sandbox/state``
    for another process)."""

    def __init__(self, fixture: Mapping[str, Any] | Path | None = None, *, clock: Callable[[], float] = time.time,
                 host: str = "127.0.0.1", port: int = 0, token_ttl_seconds: int = 900,
                 processing_seconds: float = 0.2, max_concurrent: int = 5, daily_imports_per_table: int = 24,
                 max_file_bytes: int = MAX_FILE_BYTES, fault_delay_seconds: float = 3.0,
                 state_file: Path | None = None, latency_seconds: float = 0.0,
                 reference_field: str = "reference") -> None:
        """``clock`` drives token expiry and the daily budget's UTC date; import progress uses real time, so
        clients really have to poll. ``max_file_bytes`` lets a test check the 100 MB refusal with a small
        file; ``latency_seconds`` holds each request's concurrency slot, so concurrent clients really overlap.
        ``state_file`` keeps the state between processes if saved for this same fixture (see `StateFile`)."""
        self._settings = Settings(token_ttl_seconds, processing_seconds, max_concurrent, daily_imports_per_table,
                                  max_file_bytes, fault_delay_seconds, latency_seconds, reference_field)
        raw = read_fixture(fixture)
        self._host = loopback_address(host)
        self._port = port
        self._state = SandboxState(raw, clock, self._settings, state_file)
        self._engine = ImportEngine(self._state, self._settings)
        self._routes = ApiRoutes(self._state, self._settings, self._engine, lambda: self.url)
        self._faults = FaultQueue()
        #: (method, path with query, status) of every request; status 0 = closed without an answer
        self.request_log: list[tuple[str, str, int]] = []
        self._server: LoopbackServer | None = None
        self._url: str | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Listen on ``host:port`` (port 0: any free port) in a daemon thread; return the base URL."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already started (a stopped sandbox cannot be restarted)")
        self._server = LoopbackServer(self._host, self._port, _Handler, self._serve)
        self._url = self._server.start("actito-sandbox")
        return self._url

    def stop(self) -> None:
        """Stop listening, end open connections and wake any withheld "timeout" answer."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def __enter__(self) -> ActitoSandbox:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._url is not None:
            return self._url
        raise RuntimeError("the sandbox is not started: call start() first")

    @property
    def in_flight(self) -> int:
        """Requests currently holding a concurrency slot (all licences): lets a test wait for them."""
        with self._state.lock:
            return sum(self._state.slots.in_flight.values())

    def limits(self) -> dict[str, dict[str, Any]]:
        """Per licence, what Actito's limits count since the start or the last `reset_limits`:
        ``peak_in_flight`` (a refused request included), ``refused`` (429s for concurrency),
        ``tokens`` (token requests), ``calls`` and ``in_flight`` now, plus the licence's ``entities``."""
        with self._state.lock:
            return self._state.slots.report(self._state.entities)

    def reset_limits(self) -> None:
        """Start counting afresh (a peak restarts from the requests in flight now)."""
        with self._state.lock:
            self._state.slots.restart_counts()

    def api_keys(self) -> list[tuple[str, str, list[str]]]:
        """Each API key of the fixture, with its licence and the names of that licence's entities."""
        with self._state.lock:
            return [(key, licence, [e.name for e in self._state.entities_of(licence)])
                    for key, licence in self._state.keys.items()]

    # ------------------------------------------------------------------ inspection and control

    def profiles(self, entity: str, table: str) -> list[dict[str, Any]]:
        """The profiles of a profile table, in creation order (copies)."""
        with self._state.lock:
            self._engine.settle()
            return [p.view() for p in self._state.entity(entity).profile_table(table).profiles.values()]

    def records(self, entity: str, custom_table: str) -> list[dict[str, Any]]:
        """The records of a custom table, in creation order (copies)."""
        with self._state.lock:
            self._engine.settle()
            return [copy.deepcopy(r) for r in self._state.entity(entity).custom_table(custom_table).records.values()]

    def executions(self, entity: str) -> list[dict[str, Any]]:
        """Every execution of an entity, oldest first, with its per-line errors."""
        with self._state.lock:
            self._engine.settle()
            return [e.details(self._engine.status(e)) for e in self._state.entity(entity).executions]

    def state(self) -> dict[str, Any]:
        """Everything at once, as ``GET /_sandbox/state`` serves it."""
        with self._state.lock:
            self._engine.settle()
            return {
                "now": moment(self._state.now()),
                "entities": {
                    name: {**entity.tables_view(),
                           "executions": [e.details(self._engine.status(e)) for e in entity.executions]}
                    for name, entity in self._state.entities.items()
                },
            }

    def inject_faults(self, status: FaultStatus, count: int, path_contains: str = "", *,
                      retry_after: float | None = None) -> None:
        """Make the next ``count`` API requests whose path (with query) contains ``path_contains`` fail, in
        the order injected (``/_sandbox/`` routes never). A status is answered before authentication or any
        processing. ``"timeout"``: processed (an import is created), then the answer is withheld
        ``fault_delay_seconds`` and the connection closed: the ambiguous outcome that must not lead to a
        second import. ``"disconnect"``: processed, then closed at once."""
        if not (status in ("timeout", "disconnect") or (isinstance(status, int) and 400 <= status <= 599)):
            raise ValueError(f"fault status must be an HTTP error status, 'timeout' or 'disconnect', not {status!r}")
        if count < 0:
            raise ValueError("count cannot be negative")
        self._faults.add(Fault(status, count, path_contains, retry_after))

    def clear_faults(self) -> None:
        self._faults.clear()

    def revoke(self, api_key: str) -> None:
        """The key and every token obtained with it now get 401."""
        with self._state.lock:
            self._state.revoked.add(api_key)
            self._state.save()

    def drop_attribute(self, entity: str, table: str, attribute: str) -> None:
        """Delete a profile-table attribute, as an Actito administrator can at any moment: an import
        prepared against the old structure is then refused (400)."""
        with self._state.lock:
            del self._state.entity(entity).profile_table(table).attributes[attribute]

    def advance_clock(self, seconds: float) -> None:
        """Move the sandbox clock (token expiry, daily import budget) forward; real time is untouched."""
        with self._state.lock:
            self._state.clock_offset += seconds

    def reset(self) -> None:
        """Back to the fixture, no faults, no tokens, clock restored; execution ids keep counting."""
        with self._state.lock:
            next_execution = self._state.next_execution
            self._state.load()
            self._faults.clear()
            del self.request_log[:]
            self._state.next_execution = next_execution
            self._state.save()

    # ------------------------------------------------------------------ one request

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one request; every path through here logs exactly one entry."""
        request = Request(handler)
        response: Response | None
        try:
            with self._state.lock:
                self._engine.settle()
            if request.path == "/_sandbox" or request.path.startswith("/_sandbox/"):
                try:
                    response = self._control(request)
                except HttpError as error:
                    response = error.response()
            else:
                response = self._api(request)
            if response is not None:
                request.drain()
            if request.must_close and response is not None:
                handler.close_connection = True
                response.headers["Connection"] = "close"
        except ClientGone:
            response = None
        except HttpError as error:  # unreadable framing: answer, then close (the body cannot be skipped)
            response = _closing(error)
            handler.close_connection = True
        except Exception as exc:  # a sandbox bug: say so loudly rather than drop the connection
            traceback.print_exc()
            response = _closing(HttpError(500, f"sandbox internal error: {type(exc).__name__}: {exc}"))
            handler.close_connection = True
        if response is None:
            handler.close_connection = True
            self._log(request, 0)
            return
        self._log(request, response.status)
        send_json(handler, response.status, response.body, response.headers)

    def _log(self, request: Request, status: int) -> None:
        with self._state.lock:
            self.request_log.append((request.method, request.raw_path, status))

    def _api(self, request: Request) -> Response | None:
        """Faults, Accept, authentication, the concurrency slot, then the route. None: close without
        answering (a "timeout" or "disconnect" fault; the slot stays held meanwhile, as on a busy server)."""
        fault = self._faults.take(request.method, request.raw_path)
        if fault is not None and isinstance(fault.status, int):
            return HttpError(fault.status, f"injected fault: HTTP {fault.status}", headers=fault.headers()).response()
        held: str | None = None
        try:
            try:
                check_accept(request)
                licence = self._routes.authenticate(request)
                if not self._acquire(licence):
                    raise HttpError(429, f"too many concurrent requests: at most {self._settings.max_concurrent} "
                                         "per licence")
                held = licence
                response = self._routes.route(request, licence)
                if self._settings.latency_seconds:
                    self._stopping.wait(self._settings.latency_seconds)
            except HttpError as error:
                response = error.response()
            if fault is None:
                return response
            request.drain()
            if fault.status == "timeout":
                self._stopping.wait(self._settings.fault_delay_seconds)
            return None
        finally:
            if held is not None:
                with self._state.lock:
                    self._state.slots.release(held)

    def _acquire(self, licence: str) -> bool:
        with self._state.lock:
            return self._state.slots.acquire(licence)

    # ------------------------------------------------------------------ control routes (/_sandbox/...)

    def _control(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/_sandbox/state" and method == "GET":
            return Response(200, self.state())
        if path == "/_sandbox/reset" and method == "POST":
            request.drain()
            self.reset()
            return Response(204)
        if path == "/_sandbox/limits" and method == "GET":
            return Response(200, {"licences": self.limits()})
        if path == "/_sandbox/limits/reset" and method == "POST":
            request.drain()
            self.reset_limits()
            return Response(204)
        body = request.body(_CONTROL_BODY_LIMIT) if method == "POST" else b""
        if body is None:
            raise HttpError(400, f"the body is over {_CONTROL_BODY_LIMIT} bytes")
        if path not in ("/_sandbox/faults", "/_sandbox/revoke", "/_sandbox/clock") or method != "POST":
            raise HttpError(404, f"no sandbox control route {method} {path}")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        try:
            return self._control_post(path, data)
        except (TypeError, ValueError) as exc:
            raise HttpError(400, str(exc)) from None

    def _control_post(self, path: str, data: Mapping[str, Any]) -> Response:
        if path == "/_sandbox/faults":
            retry_after = data.get("retry_after")
            self.inject_faults(
                cast(FaultStatus, data.get("status")),  # validated by inject_faults
                int(data.get("count", 1)),
                str(data.get("path_contains", "")),
                retry_after=None if retry_after is None else float(retry_after),
            )
            return Response(204)
        if path == "/_sandbox/revoke":
            api_key = data.get("api_key")
            if not isinstance(api_key, str):
                raise ValueError("api_key must be a string")
            self.revoke(api_key)
            return Response(204)
        self.advance_clock(float(data.get("advance_seconds", 0)))
        with self._state.lock:
            return Response(200, {"now": moment(self._state.now())})


def _closing(error: HttpError) -> Response:
    response = error.response()
    response.headers["Connection"] = "close"
    return response


class _Handler(LoopbackHandler):
    server_version = "ActitoSandbox/1.0"
    #: an idle keep-alive connection is closed after this many seconds: well above the client's
    #: longest poll interval, so a reused connection is not closed under its next request
    timeout = 120

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = LoopbackHandler.dispatch  # noqa: N815 (http.server's naming)


# ---------------------------------------------------------------------------------------- command line


def _host_argument(host: str) -> str:
    try:
        return loopback_address(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m etl.testing.actito",
        description="Run the Actito sandbox (Actito's API as docs/actito-wire.md describes it) on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", type=_host_argument,
                        help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 = any free port)")
    parser.add_argument("--fixture", type=Path, default=None, help=f"fixture JSON (default {DEFAULT_FIXTURE.name})")
    parser.add_argument("--processing-seconds", type=float, default=0.2,
                        help="real time an import takes from PENDING to its final status (default 0.2)")
    parser.add_argument("--latency-seconds", type=float, default=0.0,
                        help="how long each API request takes to answer, holding its concurrency slot (default 0)")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="keep the state (profiles, records, executions, counters) in this JSON file across "
                             "restarts (default: none, every start is empty)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m etl.testing.actito --port 8765 [--fixture F] [--state-file S]``: serve until SIGINT or SIGTERM."""
    args = _arguments().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the state file's lines; a no-op under the CLI
    try:
        sandbox = ActitoSandbox(args.fixture, host=args.host, port=args.port,
                                processing_seconds=args.processing_seconds, state_file=args.state_file,
                                latency_seconds=args.latency_seconds)
        url = sandbox.start()
    except (OSError, ValueError) as exc:
        print(f"actito sandbox: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"Actito sandbox listening on {url}", flush=True)
        for key, licence, entities in sandbox.api_keys():
            print(f"API key: {key}  (licence {licence}, entities: {', '.join(entities)})", flush=True)
        if args.state_file is not None:
            print(f"State file: {args.state_file}", flush=True)
        print("Stop with Ctrl-C.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sandbox.stop()
    return 0
