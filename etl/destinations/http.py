"""HTTP plumbing shared by the clients of remote APIs (Actito, OpenField): limits, retries, scrubbing.

One copy so the clients cannot drift. No urllib3 retries (``max_retries=0``): its ``Retry`` re-sends
a streamed or generator POST body empty, silently losing data; every retry here rebuilds the body.
A creating POST is never blindly repeated (`Transport.post_once`); every exchange holds a licence slot.
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
    """One client's keys (also given to the log redactor) and its recent tokens, removed from any text."""

    def __init__(self, *keys: str) -> None:
        self._keys = tuple(key for key in keys if key)
        for key in self._keys:
            register_secret(key)
        #: a tuple replaced whole, so readers need no lock
        self._tokens: tuple[str, ...] = ()

    def add_token(self, token: str) -> None:
        if token not in self._tokens:
            self._tokens = (*self._tokens[-7:], token)

    def __call__(self, text: str) -> str:
        for secret in (*self._keys, *self._tokens):
            text = text.replace(secret, SCRUBBED)
        return text


class Authorization(requests.auth.AuthBase):
    """Through requests' auth hook, because a plain header can be replaced by a ~/.netrc entry."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:  # never the key or the token
        return "Authorization(***)"


class Transport:
    """One client's connection pool and retry rules; closing it never closes the shared licence."""

    def __init__(
        self, *, service: str, log: logging.Logger, scrub: Scrubber, licence: Licence, connect_timeout: float,
        read_timeout: float, policy: RetryPolicy, sleep: Callable[[float], None] | None = None,
    ) -> None:
        """``sleep`` replaces the policy's, so a client pauses with the clock it paces its licence with."""
        self.service = service
        self.policy = policy if sleep is None else replace(policy, sleep=sleep)
        self.scrub = scrub
        self.licence = licence
        self._log = log
        self._timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=licence.max_in_flight, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": "audience-sync"})

    def close(self) -> None:
        self._session.close()

    def send(self, method: str, url: str, *, authorization: str, **kwargs: Any) -> requests.Response:
        with self.licence.slot():
            return self._session.request(method, url, auth=Authorization(authorization), timeout=self._timeout,
                                         **kwargs)

    def pause(self, where: str, attempt: int, response: requests.Response | None, reason: str) -> None:
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
        """A safe call (GET, whole PUT), retried on 429, 5xx and connection errors. ``again(response)``
        True means a token was renewed: send again without counting an attempt."""
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
        """Re-sent only when certainly refused; after an unclear outcome (5xx, read timeout) ``lookup()``
        runs first, and a failing lookup raises ``unknown`` rather than risk creating it twice."""
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
        """True (after the pause) when certainly not taken; raises when refused for good; False if unclear."""
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
    """An untrusted certificate raises at once: retrying cannot fix it."""
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
        self._http.close()



def nothing_sent(exc: BaseException) -> bool:
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
    """Not scrubbed: callers scrub it."""
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
    """An untrusted TLS certificate is said as such: "check the network" would mislead."""
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
    if response.status_code == 204 or not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise not_json(f"HTTP {response.status_code} with a body that is not JSON: {response.text[:MAX_TEXT]!r}") from None


def failure_text(response: requests.Response, scrub: Callable[[str], str], attempts: int = 1) -> tuple[str, str]:
    said = scrub(error_text(response))
    what = f"HTTP {response.status_code} {response.reason or ''}".rstrip() + (f": {said}" if said else "")
    return what + (f" (after {attempts} attempts)" if attempts > 1 else ""), said


def error_text(response: requests.Response) -> str:
    """Error bodies have no documented shape: try the usual JSON keys, else raw text."""
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
