"""One POST to a webhook or a Pushgateway. Never raises: a failed notification must not fail the
run. Problems name only the URL's scheme and host (a webhook's path is its secret). A time-out is
not retried: the server may have the request already."""

from __future__ import annotations

import base64
import socket
import ssl
import urllib.request
from http.client import HTTPException
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit, urlunsplit

from etl.version import __version__
from etl.destinations.retry import RetryPolicy
from etl.errors import Retriable

#: one retry, a second later, or after the server's Retry-After up to 5 s
WEBHOOK_RETRY = RetryPolicy(attempts=2, first_pause=1.0, max_pause=1.0, retry_after_max=5.0, jitter=0.0)


class _Unavailable(Retriable):

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would silently become a GET without its body: report it instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_post(
    url: str, body: bytes, *, content_type: str, timeout: float, what: str, retry: RetryPolicy = WEBHOOK_RETRY
) -> str | None:
    """None when the server took it, else the problem. URL credentials are sent as HTTP Basic."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return f"{what} not sent: the URL has an invalid port"
    if parts.scheme not in ("http", "https") or not host:
        return f"{what} not sent: the URL is not an http:// or https:// URL"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    where = f"{parts.scheme}://{netloc}"  # all of the URL that may be shown
    headers = {"Content-Type": content_type, "User-Agent": f"audience-sync/{__version__}"}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    request = urllib.request.Request(urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
                                     data=body, headers=headers, method="POST")
    try:
        return retry.run(lambda: _post_once(request, timeout, what, where))
    except _Unavailable as exc:
        retries = retry.attempts - 1
        return exc.what + (" (after one retry)" if retries == 1 else f" (after {retries} retries)" if retries else "")


def _post_once(request: urllib.request.Request, timeout: float, what: str, where: str) -> str | None:
    """Raises `_Unavailable` when another attempt may get through."""
    opener = urllib.request.build_opener(_NoRedirect)  # honours http(s)_proxy / no_proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
        return None
    except HTTPError as exc:
        code = exc.code
        header = exc.headers.get("Retry-After") if exc.headers else None
        exc.close()
        problem = f"{what} not sent: {where} answered HTTP {code}{_http_hint(code)}"
        if code >= 500 or code == 429:
            raise _Unavailable(problem, float(header) if header and header.strip().isdigit() else None) from None
        return problem
    except (URLError, OSError, HTTPException) as exc:
        reason = exc.reason if isinstance(exc, URLError) else exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"{what} not sent: {where} did not answer within {timeout:g}s"
        raise _Unavailable(f"{what} not sent: cannot reach {where} ({connection_failure(reason)})") from None


def _http_hint(code: int) -> str:
    if 300 <= code < 400:
        return " (a redirect: configure the final URL)"
    if code in (401, 403, 404, 410):
        return " (check the URL: the token may be wrong, revoked or expired)"
    return ""


def connection_failure(reason: object) -> str:
    """Never the exception's text, which may hold the URL."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {reason.verify_message}"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed: {reason.reason or 'handshake error'}"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, OSError) and reason.strerror:
        return str(reason.strerror)
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return "connection failed"
