"""HTTP plumbing shared by the clients of remote APIs (Actito, OpenField): limits, retries, scrubbing.

Why one module: every client must follow the rules below the same way; a second copy would drift.

* **No urllib3 retries.** urllib3's ``Retry`` re-sends a POST body badly (a streamed multipart
  body hangs until the read timeout, a generator body is re-sent empty and accepted: data
  silently lost). Sessions are mounted with ``max_retries=0``; every retry here asks the caller
  to rebuild what it sends.
* **Safe calls** (`Transport.call`: GET, and PUT of a whole resource) are retried on 429, 5xx and
  connection errors, paced by the client's `etl.destinations.retry.RetryPolicy` (exponential backoff,
  full jitter, ``Retry-After`` honoured up to a cap).
* **A creating POST is never blindly repeated** (`Transport.post_once`). It is re-sent only when
  the first attempt was certainly refused (a 429, or a connection that was never opened); after an
  unclear outcome (read timeout, connection lost after sending, 5xx) the caller's ``lookup``
  looks for what the attempt may have created, and only if there is nothing is it sent again.
* **Limits on our side**, so the service never has to refuse us: every exchange holds a slot of
  the client's `etl.destinations.licence.Licence` — at most N requests in flight and M starts in any sliding
  minute *per licence*, shared by every client of that licence in the process and, through the
  ledger, by every process (services count per licence, not per client).
* **Secrets never leave in text**: a `Scrubber` knows the keys and tokens of one client and
  removes them from every message; the Authorization header is set through requests' auth hook,
  so a ``~/.netrc`` entry cannot replace it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import requests
import requests.auth
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from etl.destinations.licence import Licence
from etl.destinations.retry import RetryPolicy
from etl.errors import AudienceSyncError
from etl.logs import register_secret

SCRUBBED = "***"
#: the longest piece of a remote answer put into one of our messages
MAX_TEXT = 500

#: failures worth another attempt; SSLError (a ConnectionError) is caught before these, as
#: a certificate problem does not go away by retrying
TRANSIENT: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

_T = TypeVar("_T")

#: builds the error for a non-2xx answer: (response, attempts made) -> error
Failed = Callable[[requests.Response, int], AudienceSyncError]
#: builds the error for no answer: (exception or None, attempts made) -> error
Unreachable = Callable[[BaseException | None, int], AudienceSyncError]
#: builds the error for a POST whose outcome cannot be known: (reason, status or None, the lookup's error) -> error
Unknown = Callable[[str, int | None, AudienceSyncError], AudienceSyncError]


class Scrubber:
    """The secrets of one client, removed from any text it puts in a message: its keys (also handed
    to the log redactor) and its few most recent tokens (short-lived, kept here only)."""

    def __init__(self, *keys: str) -> None:
        self._keys = tuple(key for key in keys if key)
        for key in self._keys:
            register_secret(key)
        #: a tuple replaced whole, so readers need no lock
        self._tokens: tuple[str, ...] = ()

    def add_token(self, token: str) -> None:
        """Scrub ``token`` too (tokens are shared by a licence's clients: added once per client)."""
        if token not in self._tokens:
            self._tokens = (*self._tokens[-7:], token)

    def __call__(self, text: str) -> str:
        for secret in (*self._keys, *self._tokens):
            text = text.replace(secret, SCRUBBED)
        return text


class Authorization(requests.auth.AuthBase):
    """Sets the Authorization header through requests' auth hook rather than as a plain header:
    with a plain header and no ``auth``, requests lets an entry of ~/.netrc for the host replace it."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:  # never the key or the token
        return "Authorization(***)"


class Transport:
    """One client's connection pool and retry rules under its licence's limits; the client says what
    a call and an error are. Closing it closes only its connections, never the shared licence."""

    def __init__(
        self, *, service: str, log: logging.Logger, scrub: Scrubber, licence: Licence, connect_timeout: float,
        read_timeout: float, policy: RetryPolicy, sleep: Callable[[float], None] | None = None,
    ) -> None:
        """``sleep``, when given, is the pause between attempts instead of the policy's (a client
        pauses with the clock it paces its licence with)."""
        self.service = service
        self.policy = policy if sleep is None else replace(policy, sleep=sleep)
        self.scrub = scrub
        self.licence = licence
        self._log = log
        self._timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        # max_retries=0: no urllib3 retries at all, see the module docstring
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=licence.max_in_flight, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": "audience-sync"})

    def close(self) -> None:
        """Release the pooled connections."""
        self._session.close()

    def send(self, method: str, url: str, *, authorization: str, **kwargs: Any) -> requests.Response:
        """One HTTP exchange inside the licence's concurrency and pacing limits; no retry here."""
        with self.licence.slot():
            return self._session.request(method, url, auth=Authorization(authorization), timeout=self._timeout,
                                         **kwargs)

    def pause(self, where: str, attempt: int, response: requests.Response | None, reason: str) -> None:
        """Sleep before the next attempt: Retry-After if the service gave one (capped), else the policy's backoff."""
        header = response.headers.get("Retry-After") if response is not None else None
        delay = self.policy.delay(attempt, retry_after(header))
        fields = {"call": where, "reason": self.scrub(reason), "attempt": attempt,
                  "max_attempts": self.policy.attempts, "wait_s": round(delay, 3)}
        self._log.warning(f"{self.service} call failed, retrying", extra={"fields": fields})
        self.policy.sleep(delay)

    def call(
        self, where: str, once: Callable[[], requests.Response], *, failed: Failed, unreachable: Unreachable,
        again: Callable[[requests.Response], bool] = lambda response: False,
    ) -> requests.Response:
        """A safe call: ``once`` is sent again on 429, 5xx and connection errors; the 2xx answer is returned.

        ``again(response)`` True means "renewed something (a token): send again without counting
        an attempt"; any other non-2xx answer raises ``failed``."""
        attempt = 0
        while True:
            attempt += 1
            response, failure = _exchange(once, unreachable, attempt)
            if response is None:
                if self.policy.exhausted(attempt):
                    raise unreachable(failure, attempt) from None
                self.pause(where, attempt, None, describe(failure))
                continue
            if not response.ok and again(response):
                attempt -= 1
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                if self.policy.exhausted(attempt):
                    raise failed(response, attempt)
                self.pause(where, attempt, response, f"HTTP {status}")
                continue
            if not response.ok:
                raise failed(response, 1)
            return response

    def post_once(
        self, where: str, once: Callable[[], requests.Response], *, lookup: Callable[[], _T | None], failed: Failed,
        unreachable: Unreachable, unknown: Unknown, absent: Callable[[AudienceSyncError], AudienceSyncError],
        again: Callable[[requests.Response], bool] = lambda response: False,
        final: Callable[[AudienceSyncError], bool] = lambda error: False,
    ) -> requests.Response | _T:
        """A POST that creates something: the 2xx answer, or what ``lookup`` found it had created.

        Sent again only when certainly refused (429 unless ``final(error)``, a connection never
        opened, or ``again`` for a renewed token). After an unclear outcome ``lookup()`` runs first:
        if it fails, ``unknown(reason, status or None, its error)`` is raised (the outcome cannot be known); if the
        attempts run out with nothing found, ``absent(last error)`` (nothing was created)."""
        attempt = 0
        while True:
            attempt += 1
            response, failure = _exchange(once, unreachable, attempt)
            if response is not None and response.ok:
                return response
            if response is not None and again(response):
                attempt -= 1
                continue
            if self._refused(where, attempt, response, failure, failed=failed, unreachable=unreachable, final=final):
                continue
            found = self._look_up(where, attempt, response, failure, lookup, unknown)
            if found is not None:
                return found
            if self.policy.exhausted(attempt):
                last = failed(response, attempt) if response is not None else unreachable(failure, attempt)
                raise absent(last) from None
            self._log.warning(f"{self.service}: nothing was created, sending again",
                              extra={"fields": {"call": where, "attempt": attempt + 1}})

    def _refused(
        self, where: str, attempt: int, response: requests.Response | None, failure: BaseException | None, *,
        failed: Failed, unreachable: Unreachable, final: Callable[[AudienceSyncError], bool],
    ) -> bool:
        """True (after the pause) when a POST was certainly not taken and may be sent again; raises
        when it was refused for good; False when its outcome is unclear."""
        if response is not None and response.status_code == 429:
            error = failed(response, attempt)
            if final(error) or self.policy.exhausted(attempt):
                raise error
            self.pause(where, attempt, response, "429 Too Many Requests (refused, nothing created)")
            return True
        if response is not None and response.status_code < 500:
            raise failed(response, 1)
        if failure is not None and nothing_sent(failure):
            if self.policy.exhausted(attempt):
                raise unreachable(failure, attempt) from None
            self.pause(where, attempt, None, f"could not connect ({type(failure).__name__}), nothing sent")
            return True
        return False

    def _look_up(
        self, where: str, attempt: int, response: requests.Response | None, failure: BaseException | None,
        lookup: Callable[[], _T | None], unknown: Unknown,
    ) -> _T | None:
        """After an unclear outcome (a 5xx, a read timeout, a connection lost after sending) the
        service may have created it: what ``lookup`` finds, looked for before anything is sent again."""
        reason = f"HTTP {response.status_code}" if response is not None else describe(failure)
        self.pause(where, attempt, response, f"{reason}; outcome unknown, looking it up")
        try:
            found = lookup()
        except AudienceSyncError as lookup_error:
            status = response.status_code if response is not None else None
            raise unknown(self.scrub(reason), status, lookup_error) from None
        if found is not None:
            self._log.info(f"{self.service}: found what an unanswered POST created",
                           extra={"fields": {"call": where, "after": reason}})
        return found


def _exchange(
    once: Callable[[], requests.Response], unreachable: Unreachable, attempt: int
) -> tuple[requests.Response, None] | tuple[None, BaseException]:
    """(the answer, None), or (None, the failure worth another attempt); an untrusted certificate raises at once."""
    try:
        return once(), None
    except requests.exceptions.SSLError as exc:
        raise unreachable(exc, attempt) from None
    except TRANSIENT as exc:
        return None, exc


class ApiClient:
    """Base of the API clients: a context manager that owns one `Transport`."""

    _http: Transport

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the pooled connections; the client must not be used afterwards."""
        self._http.close()


# ---------------------------------------------------------------------------------------------- helpers


def nothing_sent(exc: BaseException) -> bool:
    """True when the connection was never established, so the server cannot have seen the request."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, ConnectTimeoutError)):
            return True
        if isinstance(current, BaseException):
            stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
            stack.extend(a for a in current.args if isinstance(a, BaseException))
    return False


def describe(exc: BaseException | None) -> str:
    """A short text for a failure with no answer (never a URL's secrets: callers scrub it)."""
    if exc is None:
        return "no answer"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "read timeout"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:MAX_TEXT]}" if text else type(exc).__name__


def unreachable_text(
    service: str, base_url: str, exc: BaseException | None, attempts: int, scrub: Callable[[str], str], hint: str
) -> tuple[str, str]:
    """(what, hint) for a call that got no answer. An untrusted TLS certificate is said as such:
    "check the network" would send the user looking in the wrong place, and verification is never
    the thing to switch off."""
    if isinstance(exc, requests.exceptions.SSLError):
        reason = re.search(r"certificate verify failed: ([^(]*)", str(exc))
        return (
            f"the TLS certificate of {base_url} is not trusted"
            + (f" ({reason.group(1).strip()})" if reason else f" ({scrub(describe(exc))})"),
            "verification is never switched off: if a proxy re-signs HTTPS, give its CA certificate "
            "in REQUESTS_CA_BUNDLE",
        )
    return (
        f"no answer from {service} at {base_url} ({scrub(describe(exc))})"
        + (f" after {attempts} attempts" if attempts > 1 else ""),
        hint,
    )


def json_of(response: requests.Response, not_json: Callable[[str], AudienceSyncError]) -> Any:
    """The JSON body (``{}`` when empty); ``not_json(what)`` builds the error for a body that is not JSON."""
    if response.status_code == 204 or not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise not_json(f"HTTP {response.status_code} with a body that is not JSON: {response.text[:MAX_TEXT]!r}") from None


def failure_text(response: requests.Response, scrub: Callable[[str], str], attempts: int = 1) -> tuple[str, str]:
    """(what to say, what the service said) for a non-2xx answer, both scrubbed."""
    said = scrub(error_text(response))
    what = f"HTTP {response.status_code} {response.reason or ''}".rstrip() + (f": {said}" if said else "")
    return what + (f" (after {attempts} attempts)" if attempts > 1 else ""), said


def error_text(response: requests.Response) -> str:
    """The service's message from an error body whose shape is not documented: JSON keys, else raw text."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:MAX_TEXT]
    if isinstance(body, str):
        return body[:MAX_TEXT]
    if not isinstance(body, Mapping):
        return json.dumps(body)[:MAX_TEXT]
    parts: list[str] = []
    for key in ("message", "Message", "error", "detail", "error_description", "title"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    for errors_key in ("errors", "Errors"):
        errors = body.get(errors_key)
        if not isinstance(errors, list):
            continue
        for item in errors:
            if isinstance(item, Mapping):
                message = str(item.get("message") or item.get("Message") or "")
                field_name = item.get("field") or item.get("Field")
                text = f"{field_name}: {message}" if field_name and message else message
            else:
                text = str(item)
            if text and text not in parts:
                parts.append(text)
    if not parts:
        return json.dumps(body)[:MAX_TEXT]
    return "; ".join(parts)[:MAX_TEXT]


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
