"""One request and its answer as the Actito sandbox reads and writes them. The body is read by hand so
an early answer can drain what the client still sends: the connection stays usable and a streaming
client reads the answer, not a reset."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """An error answer: Actito's (guessed) JSON error body ``{"status", "message", "errors"}``."""

    def __init__(self, status: int, message: str, errors: Sequence[Mapping[str, str]] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = {"status": self.status, "message": self.message, "errors": self.errors}
        return Response(self.status, body, self.headers)


class ClientGone(Exception):
    """The client closed the connection before its request was read: there is no one to answer."""


class Request:
    """One request as the sandbox sees it; the body is read at most once, or drained unread."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.handler = handler
        self.method = handler.command
        self.raw_path = handler.path
        split = urlsplit(handler.path)
        self.path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.headers = handler.headers
        self._done = False
        #: the body's framing was unreadable, so the connection cannot carry another request
        self.must_close = False

    def body(self, limit: int) -> bytes | None:
        """The whole body, or None when it is over ``limit`` bytes (then read and thrown away)."""
        if self._done:
            return b""
        self._done = True
        try:
            return self._read(limit)
        except HttpError:
            self.must_close = True
            raise

    def _read(self, limit: int) -> bytes | None:
        rfile = self.handler.rfile
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(rfile, limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            raise HttpError(400, f"bad Content-Length {length_text!r}") from None
        if length > limit:
            _discard(rfile, length)
            return None
        return _read_exact(rfile, length)

    def drain(self) -> None:
        if not self._done:
            self.body(0)


def _read_exact(rfile: io.BufferedIOBase, length: int) -> bytes:
    data = rfile.read(length)
    if len(data) != length:
        raise ClientGone()
    return data


def _discard(rfile: io.BufferedIOBase, length: int) -> None:
    while length > 0:
        chunk = rfile.read(min(length, 1 << 16))
        if not chunk:
            raise ClientGone()
        length -= len(chunk)


def _read_chunked(rfile: io.BufferedIOBase, limit: int) -> bytes | None:
    """A ``Transfer-Encoding: chunked`` body (requests sends one for a generator body)."""
    out = bytearray()
    over = False
    while True:
        line = rfile.readline(1 << 16)
        if not line:
            raise ClientGone()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "malformed chunked body") from None
        if size == 0:
            while True:  # trailers, up to the blank line
                trailer = rfile.readline(1 << 16)
                if trailer in (b"\r\n", b"\n", b""):
                    return None if over else bytes(out)
        if over or len(out) + size > limit:
            over = True
            out = bytearray()
            _discard(rfile, size)
        else:
            out += _read_exact(rfile, size)
        rfile.readline(1 << 16)  # the CRLF closing the chunk


def check_accept(request: Request) -> None:
    """Strict: only a header naming ``application/json`` passes, so a client that forgets it fails here."""
    accepted = [part.split(";", 1)[0].strip().lower() for part in request.headers.get("Accept", "").split(",")]
    if "application/json" not in accepted:
        raise HttpError(406, "send Accept: application/json")


def multipart_boundary(request: Request) -> bytes:
    holder = Message()
    holder["Content-Type"] = request.headers.get("Content-Type", "")
    boundary = holder.get_param("boundary")
    if holder.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise HttpError(400, "the body must be multipart/form-data with a boundary")
    return boundary.encode("latin-1")


def split_multipart(body: bytes, boundary: bytes) -> Iterator[tuple[Message, bytes]]:
    """The parts of a multipart body (RFC 7578), each as its headers and its content, copied once."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise HttpError(400, "malformed multipart body: no boundary found")
        position += 2
    parser = BytesHeaderParser()
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return
        end_of_line = body.find(b"\r\n", position)
        if end_of_line < 0:
            raise HttpError(400, "malformed multipart body: truncated part")
        start = end_of_line + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise HttpError(400, "malformed multipart body: no closing boundary")
        if body.startswith(b"\r\n", start):
            head, content = b"", body[start + 2 : end]
        else:
            split = body.find(b"\r\n\r\n", start, end + 2)
            if split < 0:
                raise HttpError(400, "malformed multipart body: part headers never end")
            head, content = body[start:split], body[split + 4 : end]
        yield parser.parsebytes(head + b"\r\n\r\n"), content
        position = end + 2


def disposition_param(headers: Message, name: str) -> str | None:
    value = headers.get_param(name, header="content-disposition")
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)
