"""What the Actito and OpenField sandboxes share: a threaded HTTP server on loopback only (they accept
well-known demo credentials) and the queue of faults a test injects."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast

#: an HTTP error status answered at once, or "timeout" / "disconnect": processed, then no answer
FaultStatus = int | Literal["timeout", "disconnect"]


def loopback_address(host: str) -> str:
    """``host`` if it is a loopback address, else ValueError: a sandbox accepts well-known demo keys and
    keeps personal data in memory, so it must never be reachable from another machine."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the sandbox listens on loopback only (127.0.0.1, ::1 or localhost), not on {host!r}: "
                         "it has demo API keys anyone could use")
    return host


class LoopbackServer(ThreadingHTTPServer):
    """Daemon threads only, so a stuck client never keeps the process alive; `close` also ends kept-alive
    connections, so no handler answers for a stopped sandbox."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, handler: type[LoopbackHandler],
                 serve: Callable[[BaseHTTPRequestHandler], None]) -> None:
        super().__init__((host, port), handler)
        self.serve = serve
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> str:
        # a short poll so close() returns at once (tests start and stop one sandbox each)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name,
                                        daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = host if isinstance(host, str) else host.decode()
        return f"http://{shown}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Hands every request to the server's ``serve``; a subclass names the methods it answers
    (``do_GET = dispatch``, ...), its ``server_version`` and its idle ``timeout``."""

    protocol_version = "HTTP/1.1"  # clients keep connections alive, as with the real service
    #: headers and body go out in separate writes: without TCP_NODELAY an answer on a kept-alive
    #: connection waits for the client's delayed ACK
    disable_nagle_algorithm = True

    def dispatch(self) -> None:
        try:
            cast(LoopbackServer, self.server).serve(self)
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the client went away: nothing left to flush to
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """Quiet: tests read the sandbox's ``request_log`` instead of stderr."""


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: Mapping[str, str]) -> None:
    """Answer ``status`` with ``body`` as JSON (no body at all for None); a client gone closes the connection."""
    data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    try:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if body is not None:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
    except OSError:
        handler.close_connection = True


@dataclass
class Fault:
    status: FaultStatus
    remaining: int
    path_contains: str
    retry_after: float | None
    #: the HTTP method it applies to; empty: any
    method: str = ""

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}


class FaultQueue:
    """Injected faults, used up in the order injected: each request takes the first that matches it."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in ("", method) and fault.path_contains in path:
                    fault.remaining -= 1
                    return fault
        return None
