"""The HTTP client for Actito's REST API: discovery, bulk imports (ETL executions), their status and report.

It follows docs/actito-wire.md to the letter; what that page tags [guess] is gathered in
`ActitoWire`, so a real licence that answers differently needs configuration, not code.

Why it is built the way it is:

* **All retries are in this module, none in urllib3.** urllib3's ``Retry`` re-sends a POST body
  badly (a streamed multipart body hangs until the read timeout, a generator body is re-sent
  empty and accepted: data silently lost — measured, see shared/engineering-notes.md). The
  session is mounted with ``max_retries=0`` and every retry below rebuilds what it sends.
* **Safe calls (GET) are retried** with exponential backoff and full jitter on 429, 5xx and
  connection errors, honouring ``Retry-After`` up to ``retry_after_max``.
* **An import POST is never blindly repeated.** It is re-sent only when the first attempt was
  certainly refused (a 429, a 401 before the token was renewed, or a connection that was never
  opened). After an ambiguous outcome (read timeout, connection reset after sending, 5xx) the
  client first looks the execution up by the ``reference`` it put in the definition and only
  sends again if Actito has none, so a flaky network never doubles an import. The daily import
  quota (a 429 whose message says so) is never retried: it only resets the next day.
* **The upload is streamed** (requests-toolbelt ``MultipartEncoder``): ``files=`` would hold the
  whole file (up to 100 MB, twice over while encoding) in memory; the encoder reads it in chunks
  and knows its length, so requests sends a Content-Length, not chunked encoding. It is rebuilt,
  and the file reopened, for each attempt.
* **Limits are kept on our side** so Actito never has to refuse us: at most ``max_concurrency``
  requests in flight across threads (Actito answers 429 to the 6th concurrent request of a
  licence) and at most ``calls_per_minute`` calls in any sliding minute (Actito allows 100 and
  slows the excess).
* **The token** from ``GET /auth/token`` is cached, renewed 60 s before it expires, and renewed
  once more when a call answers 401 (Actito's clock, a revoked token); a second 401 is a real
  auth problem. One thread renews, the others wait for its token.
* **The API key never leaves the process in text**: it is registered with `etl.logs` for log
  redaction and scrubbed from every message the client builds; errors name the route template,
  never a header.
* Every call has ``timeout=(connect, read)``, sends ``Accept: application/json`` and surfaces
  Actito's own error text, read defensively because the error body shape is not documented.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self
from urllib.parse import quote

import requests
import requests.auth
from requests.adapters import HTTPAdapter
from requests_toolbelt import MultipartEncoder  # type: ignore[import-untyped]
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from etl.actito.errors import (
    ActitoAuthError,
    ActitoBudgetExhausted,
    ActitoError,
    ActitoImportError,
    ActitoNotFound,
    ActitoRateLimited,
)
from etl.config import ACTITO_ENVIRONMENTS
from etl.logs import register_secret

log = logging.getLogger("audience_sync.actito")

#: Actito's hosts by configuration name (docs/actito-wire.md "Hosts"); "sandbox" has no fixed URL.
ENVIRONMENTS: Mapping[str, str] = ACTITO_ENVIRONMENTS

#: Actito refuses an uploaded file (as sent, so compressed) over 100 MB, read as 100,000,000 bytes
#: by docs/actito-wire.md (the reading etl.files cuts parts at): checked before uploading, so a file
#: that would be refused is not sent at all.
MAX_UPLOAD_BYTES = 100_000_000

#: renew the token when fewer than this many seconds of its life are left
TOKEN_RENEW_AHEAD = 60.0

_SCRUBBED = "***"
_MAX_TEXT = 500

# Route templates: the literal text of ``where`` in every error, so no id, URL or secret leaks
# into a message and a failure is easy to grep for.
_TOKEN = "/auth/token"
_ENTITIES = "/entities/v5/entities"
_PROFILE_TABLES = "/profile-table-structure/v5/entities/{entity}/profile-tables"
_PROFILE_TABLE = _PROFILE_TABLES + "/{tableId}"
_CUSTOM_TABLES = "/custom-table-structure/v5/entities/{entity}/custom-tables"
_CUSTOM_TABLE = _CUSTOM_TABLES + "/{tableId}"
_EXECUTIONS = "/mass-imports/v5/entities/{entity}/etl-executions"
_EXECUTION = _EXECUTIONS + "/{executionId}"
_TRIGGER = "/mass-imports/v5/entities/{entity}/etls/{etlId}/trigger-execution"

_CONTENT_TYPES = {".csv": "text/csv", ".txt": "text/csv", ".gz": "application/gzip", ".zip": "application/zip"}


@dataclass(frozen=True)
class ActitoWire:
    """Everything docs/actito-wire.md tags [guess], so a real licence that differs is a setting.

    The defaults are exactly what that page (and the project's sandbox) says.
    """

    entities_key: str = "entities"
    profile_tables_key: str = "profileTables"
    custom_tables_key: str = "customTables"
    #: wrapper key of ``GET .../etl-executions?reference=``
    executions_key: str = "executions"
    #: query parameter and definition field carrying our idempotency key
    reference_field: str = "reference"
    definition_part: str = "definition"
    file_part: str = "inputFile"
    #: appended to the execution route to read its per-line report
    report_suffix: str = "/report"
    report_errors_key: str = "errors"
    success_statuses: frozenset[str] = frozenset({"SUCCESS"})
    partial_statuses: frozenset[str] = frozenset({"PARTIAL_SUCCESS"})
    error_statuses: frozenset[str] = frozenset({"ERROR"})
    #: a 429 whose message matches this is the daily import quota, not a transient limit
    budget_message: str = r"daily\s+import\s+(limit|quota)"


@dataclass(frozen=True)
class Attribute:
    """One attribute of a table; ``value_type`` and ``max_length`` only for CUSTOM attributes."""

    name: str
    type: str
    value_type: str | None
    unique: bool
    mandatory: bool
    max_length: int | None


@dataclass(frozen=True)
class Table:
    """A profile table or a custom table, as discovered: what an import may target and map to."""

    id: str
    name: str
    kind: Literal["profile", "custom"]
    attributes: tuple[Attribute, ...]
    #: subscription names (profile tables); the fixed technical values an import column maps to
    subscriptions: tuple[str, ...]
    #: ``INTERACTIONS`` or ``STANDARD`` for custom tables, None for profile tables
    custom_type: str | None
    primary_key: str | None
    foreign_keys: tuple[dict[str, str], ...]

    def attribute(self, name: str) -> Attribute | None:
        """The attribute called ``name``, or None."""
        return next((a for a in self.attributes if a.name == name), None)


@dataclass(frozen=True)
class Execution:
    """One ETL execution: status PENDING / RUNNING / SUCCESS / PARTIAL_SUCCESS / ERROR (or one we do not know)."""

    id: str
    reference: str | None
    status: str
    #: lines, created, updated, rejected (empty until Actito has counted)
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True)
class LineError:
    """One rejected line of an import; ``line`` counts the header as line 1, so data row k is line k+1."""

    line: int
    column: str | None
    value: str | None
    message: str


class _SlidingWindow:
    """At most ``limit`` call starts in any ``period`` seconds, across threads.

    A sliding window rather than a token bucket: a bucket of capacity N refilled at N/min lets
    up to 2N calls through in the first minute, and Actito counts per minute. Each caller
    reserves its start time under the lock and sleeps outside it, so waiting callers queue in
    order without holding the lock.
    """

    def __init__(self, limit: int, period: float, monotonic: Callable[[], float], sleep: Callable[[float], None]):
        self._limit = limit
        self._period = period
        self._monotonic = monotonic
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._monotonic()
            start = now
            if len(self._starts) >= self._limit:
                start = max(now, self._starts.popleft() + self._period)
            self._starts.append(start)
        if start > now:
            log.info("pacing Actito calls", extra={"fields": {"wait_s": round(start - now, 3)}})
            self._sleep(start - now)


class ActitoClient:
    """A connection to one Actito entity with one API key; a context manager, safe to share across threads."""

    def __init__(
        self,
        *,
        base_url: str,
        entity: str,
        api_key: str,
        max_concurrency: int = 4,
        calls_per_minute: int = 90,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30,
        retry_after_max: float = 120,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        wire: ActitoWire | None = None,
    ) -> None:
        """``base_url`` is a URL or a name of `ENVIRONMENTS`; ``sleep``/``monotonic`` are injectable for tests.

        ``max_concurrency`` defaults to 4, one under Actito's 5 per licence, so another job using
        the same licence does not push us into 429s; ``calls_per_minute`` to 90 of Actito's 100
        for the same reason.
        """
        if not api_key:
            raise ValueError("api_key is empty")
        if max_concurrency < 1 or calls_per_minute < 1 or max_attempts < 1:
            raise ValueError("max_concurrency, calls_per_minute and max_attempts must be at least 1")
        resolved = ENVIRONMENTS.get(base_url, base_url)
        if not resolved.startswith(("http://", "https://")):
            if base_url in ENVIRONMENTS:
                raise ValueError(f"the Actito environment {base_url!r} has no fixed URL: pass the URL it listens on")
            raise ValueError(f"Actito base_url {base_url!r} is neither a URL nor a known environment")
        self.base_url = resolved.rstrip("/")
        self.entity = entity
        self.wire = wire or ActitoWire()
        register_secret(api_key)
        self._api_key = api_key
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._sleep = sleep
        self._monotonic = monotonic
        self._random = random.Random()
        self._budget = re.compile(self.wire.budget_message, re.IGNORECASE)

        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._window = _SlidingWindow(calls_per_minute, 60.0, monotonic, sleep)
        self._token_lock = threading.Lock()
        self._token_value: str | None = None
        self._token_expires = 0.0
        #: recent tokens, scrubbed from messages too; a tuple replaced whole, so readers need no lock
        self._tokens_seen: tuple[str, ...] = ()

        self._session = requests.Session()
        # max_retries=0: no urllib3 retries at all, see the module docstring
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_concurrency, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": "audience-sync"})

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the pooled connections; the client must not be used afterwards."""
        self._session.close()

    def __repr__(self) -> str:
        return f"ActitoClient(base_url={self.base_url!r}, entity={self.entity!r})"

    # ------------------------------------------------------------------ discovery

    def entities(self) -> list[dict[str, Any]]:
        """The entities the licence sees: ``[{"id", "name", "comment"}]``."""
        body = self._get(_ENTITIES)
        return [dict(e) for e in _list_in(body, self.wire.entities_key) if isinstance(e, Mapping)]

    def profile_tables(self) -> list[Table]:
        body = self._get(_PROFILE_TABLES, entity=self.entity)
        return [_table(t, "profile") for t in _list_in(body, self.wire.profile_tables_key) if isinstance(t, Mapping)]

    def profile_table(self, id_or_name: str) -> Table:
        """A profile table by id, or by name (Actito addresses tables by id; people know them by name)."""
        return self._one_table(id_or_name, "profile")

    def custom_tables(self) -> list[Table]:
        body = self._get(_CUSTOM_TABLES, entity=self.entity)
        return [_table(t, "custom") for t in _list_in(body, self.wire.custom_tables_key) if isinstance(t, Mapping)]

    def custom_table(self, id_or_name: str) -> Table:
        """A custom table by id, or by name."""
        return self._one_table(id_or_name, "custom")

    def _one_table(self, id_or_name: str, kind: Literal["profile", "custom"]) -> Table:
        # By id first (one call, the usual case); on 404 list the tables and resolve the name.
        one, listing = (_PROFILE_TABLE, self.profile_tables) if kind == "profile" else (_CUSTOM_TABLE, self.custom_tables)
        try:
            return _table(self._get(one, entity=self.entity, tableId=id_or_name), kind)
        except ActitoNotFound as not_found:
            tables = listing()
            match = [t for t in tables if t.id == id_or_name or t.name == id_or_name]
            if not match:
                match = [t for t in tables if t.name.casefold() == id_or_name.casefold()]
            if len(match) == 1:
                return match[0]
            known = ", ".join(f"{t.id} ({t.name})" for t in tables) or "none"
            what = (
                f"{len(match)} {kind} tables are called {id_or_name!r}"
                if match
                else f"no {kind} table has the id or name {id_or_name!r}"
            )
            raise ActitoNotFound(
                f"{what}; tables of entity {self.entity!r}: {known}",
                where=not_found.where,
                hint="use one of the table ids listed",
                status=404,
                actito_message=not_found.actito_message,
            ) from None

    # ------------------------------------------------------------------ imports

    def start_import(self, definition: Mapping[str, Any], file: Path, *, etl_id: str | None = None) -> Execution:
        """Upload ``file`` as one ETL execution and return it (usually PENDING); never imports it twice.

        Without ``etl_id``: the one-shot form, ``definition`` sent as the JSON part. With it: the
        ETL's ``trigger-execution``, which takes only the file and the reference. Either way the
        definition's ``reference`` (generated if absent, and returned in ``Execution.reference``)
        is how an ambiguous attempt is found again: give it a value stable across re-runs of the
        same run and part so that even a crashed process can look it up.
        """
        wire = self.wire
        definition = dict(definition)
        reference = str(definition.get(wire.reference_field) or f"audience-sync-{uuid.uuid4().hex}")
        definition[wire.reference_field] = reference
        if etl_id is None:
            template, path = _EXECUTIONS, {"entity": self.entity}
            first_part: tuple[str, Any] = (wire.definition_part, (None, _json_bytes(definition), "application/json"))
        else:
            template, path = _TRIGGER, {"entity": self.entity, "etlId": etl_id}
            first_part = (wire.reference_field, reference)
        where = f"Actito POST {template}"
        url = self._url(template, path)
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise ActitoError(f"cannot read the import file {file}: {exc.strerror or exc}", where=where) from None
        if size > MAX_UPLOAD_BYTES:
            raise ActitoError(
                f"{file.name} is {size} bytes; Actito refuses an import file over 100 MB",
                where=where,
                hint="split the import into several files, or compress it (GZIP/ZIP)",
            )
        content_type = _CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")

        attempt = 0
        renewed = False
        while True:
            attempt += 1
            token = self._token()
            response: requests.Response | None = None
            failure: BaseException | None = None
            try:
                stream: IO[bytes] = file.open("rb")
            except OSError as exc:
                raise ActitoError(f"cannot read the import file {file}: {exc.strerror or exc}", where=where) from None
            with stream:
                # rebuilt for each attempt: a body read once cannot be sent again
                encoder = MultipartEncoder(fields=[first_part, (wire.file_part, (file.name, stream, content_type))])
                try:
                    response = self._send(
                        "POST", url, token=token, data=encoder, headers={"Content-Type": encoder.content_type}
                    )
                except requests.exceptions.SSLError as exc:
                    raise self._unreachable(where, exc, attempt) from None
                except _TRANSIENT as exc:
                    failure = exc

            if response is not None and response.ok:
                created = _execution(self._json(where, response), reference=reference)
                if not created.id:
                    raise ActitoError(
                        f"HTTP {response.status_code} without an execution id (reference {reference!r})",
                        where=where,
                        hint="check the base URL and the wire settings; look the reference up in Actito",
                        status=response.status_code,
                    )
                return created
            if response is not None and response.status_code == 401 and not renewed:
                # refused before anything was processed: renew the token and send again
                renewed = True
                attempt -= 1
                self._invalidate(token)
                continue
            if response is not None and response.status_code == 429:
                error = self._http_error(where, response, attempts=attempt)
                if isinstance(error, ActitoBudgetExhausted) or attempt >= self._max_attempts:
                    raise error
                self._pause(where, attempt, response, "429 Too Many Requests (refused, nothing created)")
                continue
            if response is not None and response.status_code < 500:
                raise self._http_error(where, response)
            if failure is not None and _nothing_sent(failure):
                if attempt >= self._max_attempts:
                    raise self._unreachable(where, failure, attempt) from None
                self._pause(where, attempt, None, f"could not connect ({type(failure).__name__}), nothing sent")
                continue

            # Ambiguous: a 5xx, a read timeout, a connection lost after sending. Actito may have
            # created the execution; look for our reference before anything is sent again.
            reason = f"HTTP {response.status_code}" if response is not None else _describe(failure)
            self._pause(where, attempt, response, f"{reason}; outcome unknown, looking the reference up")
            try:
                found = self._find_by_reference(reference)
            except ActitoError as lookup_error:
                raise ActitoError(
                    f"the import's outcome is unknown ({self._scrub(reason)}) and looking up reference "
                    f"{reference!r} failed: {lookup_error.what}",
                    where=where,
                    hint=f"look for an execution with reference {reference!r} in Actito before sending the file again",
                    status=response.status_code if response is not None else None,
                    actito_message=lookup_error.actito_message,
                ) from None
            if found is not None:
                log.info(
                    "Actito import found by reference after an unanswered upload",
                    extra={"fields": {"reference": reference, "execution": found.id, "after": reason}},
                )
                return found
            if attempt >= self._max_attempts:
                last = (
                    self._http_error(where, response, attempts=attempt)
                    if response is not None
                    else self._unreachable(where, failure, attempt)
                )
                raise type(last)(
                    f"{last.what}; Actito has no execution with reference {reference!r}",
                    where=where,
                    hint="nothing was imported, so the run can safely be repeated later",
                    status=last.status,
                    actito_message=last.actito_message,
                ) from None
            log.warning(
                "Actito has no execution for the reference: sending the file again",
                extra={"fields": {"reference": reference, "attempt": attempt + 1}},
            )

    def find_execution(self, reference: str) -> Execution | None:
        """The execution created with ``reference``, or None: how a re-run checks what a crashed run left."""
        return self._find_by_reference(reference)

    def _find_by_reference(self, reference: str) -> Execution | None:
        body = self._get(_EXECUTIONS, query={self.wire.reference_field: reference}, entity=self.entity)
        # filter again on our side: a server that ignored the query would list every execution
        matches = [
            e
            for e in _list_in(body, self.wire.executions_key)
            if isinstance(e, Mapping) and str(e.get(self.wire.reference_field)) == reference
        ]
        if not matches:
            return None
        if len(matches) > 1:
            # a reused reference (it should be unique per import): the newest is the likeliest ours
            log.warning(
                "several Actito executions carry the same reference",
                extra={"fields": {"reference": reference, "ids": [str(m.get("id")) for m in matches]}},
            )
        newest = max(range(len(matches)), key=lambda i: (str(matches[i].get("createdAt") or ""), i))
        return _execution(matches[newest])

    def execution(self, execution_id: str) -> Execution:
        """The execution's current status, counts and message."""
        return _execution(self._get(_EXECUTION, entity=self.entity, executionId=execution_id))

    def wait_for(
        self, execution_id: str, *, timeout: float = 3600, poll_initial: float = 1.0, poll_max: float = 30.0
    ) -> Execution:
        """Poll until the execution ends; SUCCESS or PARTIAL_SUCCESS is returned, ERROR raises.

        The interval doubles from ``poll_initial`` up to ``poll_max``: a short import is seen
        finished within a second, a long one costs few calls against the per-minute budget. A
        status we do not know counts as still running (Actito documents only SUCCESS), until
        ``timeout``, when it fails loudly instead of hanging a scheduled run.
        """
        wire = self.wire
        where = f"Actito GET {_EXECUTION}"
        deadline = self._monotonic() + timeout
        delay = poll_initial
        while True:
            current = self.execution(execution_id)
            status = current.status.upper()
            if status in wire.success_statuses or status in wire.partial_statuses:
                return current
            if status in wire.error_statuses:
                said = self._scrub(current.message or "no message")
                raise ActitoImportError(
                    f"import execution {execution_id} ended in {current.status}: {said}",
                    where=where,
                    hint="nothing was imported; fix the file or the definition (see Actito's message) and run again",
                    actito_message=said,
                )
            left = deadline - self._monotonic()
            if left <= 0:
                raise ActitoImportError(
                    f"import execution {execution_id} is still {current.status} after {timeout:g} s",
                    where=where,
                    hint="Actito may be slow: check the execution in Actito, or raise the wait timeout; "
                    "do not re-send the file before it has ended",
                )
            self._sleep(min(delay, left))
            delay = min(delay * 2, poll_max)

    def report(self, execution_id: str) -> list[LineError]:
        """The rejected lines of an execution (empty when none was rejected)."""
        body = self._get(_EXECUTION + self.wire.report_suffix, entity=self.entity, executionId=execution_id)
        lines: list[LineError] = []
        for item in _list_in(body, self.wire.report_errors_key):
            if not isinstance(item, Mapping):
                continue
            try:
                line = int(item.get("line", 0))
            except (TypeError, ValueError):
                line = 0
            lines.append(
                LineError(
                    line=line,
                    column=_opt_str(item.get("column")),
                    value=_opt_str(item.get("value")),
                    message=str(item.get("message") or ""),
                )
            )
        return lines

    # ------------------------------------------------------------------ token

    def _token(self) -> str:
        """A valid access token, fetched or renewed by one thread while the others wait for it."""
        with self._token_lock:
            now = self._monotonic()
            if self._token_value is not None and now < self._token_expires:
                return self._token_value
            body = self._get(_TOKEN, use_key=True)
            token = body.get("accessToken") if isinstance(body, Mapping) else None
            if not isinstance(token, str) or not token:
                raise ActitoAuthError(
                    "Actito answered the token request without an accessToken",
                    where=f"Actito GET {_TOKEN}",
                    hint="check the base URL: it may not point at Actito",
                    status=200,
                )
            lifetime = _seconds(body.get("expiresIn"))
            # renew 60 s ahead; for a short-lived token, halfway through its life
            ahead = min(TOKEN_RENEW_AHEAD, lifetime / 2)
            self._token_value = token
            self._token_expires = now + lifetime - ahead
            self._tokens_seen = (*self._tokens_seen[-7:], token)
            log.debug("Actito token obtained", extra={"fields": {"expires_in_s": lifetime}})
            return token

    def _invalidate(self, token: str) -> None:
        """Forget ``token`` after a 401, unless another thread has already replaced it."""
        with self._token_lock:
            if self._token_value == token:
                self._token_value = None

    # ------------------------------------------------------------------ transport

    def _url(self, template: str, path: Mapping[str, str]) -> str:
        return self.base_url + template.format(**{k: quote(str(v), safe="") for k, v in path.items()})

    def _send(self, method: str, url: str, *, token: str | None, **kwargs: Any) -> requests.Response:
        """One HTTP exchange inside our concurrency and pacing limits; no retry here."""
        auth = _Authorization(self._api_key if token is None else f"Bearer {token}")
        with self._slots:
            # paced once a slot is held, so the recorded start is the real one
            self._window.acquire()
            return self._session.request(method, url, auth=auth, timeout=self._timeout, **kwargs)

    def _get(
        self, template: str, *, query: Mapping[str, str] | None = None, use_key: bool = False, **path: str
    ) -> Any:
        """A safe call: retried on 429, 5xx and connection errors; a 401 renews the token once."""
        where = f"Actito GET {template}"
        url = self._url(template, path)
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            token = None if use_key else self._token()
            try:
                response = self._send("GET", url, token=token, params=query)
            except requests.exceptions.SSLError as exc:
                raise self._unreachable(where, exc, attempt) from None
            except _TRANSIENT as exc:
                if attempt >= self._max_attempts:
                    raise self._unreachable(where, exc, attempt) from None
                self._pause(where, attempt, None, _describe(exc))
                continue
            status = response.status_code
            if status == 401 and token is not None and not renewed:
                renewed = True
                attempt -= 1
                self._invalidate(token)
                continue
            if status == 429 or status >= 500:
                if attempt >= self._max_attempts:
                    raise self._http_error(where, response, attempts=attempt)
                self._pause(where, attempt, response, f"HTTP {status}")
                continue
            if not response.ok:
                raise self._http_error(where, response)
            return self._json(where, response)

    def _pause(self, where: str, attempt: int, response: requests.Response | None, reason: str) -> None:
        """Sleep before the next attempt: Retry-After if Actito gave one (capped), else full jitter."""
        retry_after = _retry_after(response.headers.get("Retry-After")) if response is not None else None
        if retry_after is not None:
            delay = min(retry_after, self._retry_after_max)
        else:
            delay = self._random.uniform(0, min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1)))
        log.warning(
            "Actito call failed, retrying",
            extra={
                "fields": {
                    "call": where,
                    "reason": self._scrub(reason),
                    "attempt": attempt,
                    "max_attempts": self._max_attempts,
                    "wait_s": round(delay, 3),
                }
            },
        )
        self._sleep(delay)

    def _json(self, where: str, response: requests.Response) -> Any:
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ActitoError(
                f"HTTP {response.status_code} with a body that is not JSON: {self._scrub(response.text[:_MAX_TEXT])!r}",
                where=where,
                hint="check the base URL: it may not point at Actito's API",
                status=response.status_code,
            ) from None

    def _http_error(self, where: str, response: requests.Response, *, attempts: int = 1) -> ActitoError:
        """The typed error for a non-2xx answer, carrying Actito's own words."""
        status = response.status_code
        said = self._scrub(_error_text(response))
        what = f"HTTP {status} {response.reason or ''}".rstrip() + (f": {said}" if said else "")
        if attempts > 1:
            what += f" (after {attempts} attempts)"
        cls: type[ActitoError] = ActitoError
        hint = ""
        if status == 401:
            cls = ActitoAuthError
            hint = "check the Actito API key: it may be wrong, revoked, or belong to another licence"
        elif status == 403:
            cls = ActitoAuthError
            hint = "the API key's licence lacks the right for this call: check the key and the licence in Actito"
        elif status == 404:
            cls = ActitoNotFound
            hint = f"check the entity name ({self.entity!r}) and the ids in the configuration"
        elif status == 429 and self._budget.search(said):
            cls = ActitoBudgetExhausted
            hint = "the table's daily import quota is used up; the next day's run will go through (not retried)"
        elif status == 429:
            cls = ActitoRateLimited
            hint = "Actito kept refusing for too many requests; another job may share the licence — run later"
        elif status == 400:
            hint = "Actito refused the request as invalid; it is not retried unchanged"
        elif status == 406:
            hint = "Actito wants Accept: application/json"
        elif status >= 500:
            hint = "Actito's side failed; a later run may go through"
        return cls(what, where=where, hint=hint, status=status, actito_message=said)

    def _unreachable(self, where: str, exc: BaseException | None, attempts: int) -> ActitoError:
        if isinstance(exc, requests.exceptions.SSLError):
            reason = re.search(r"certificate verify failed: ([^(]*)", str(exc))
            return ActitoError(
                f"the TLS certificate of {self.base_url} is not trusted"
                + (f" ({reason.group(1).strip()})" if reason else f" ({self._scrub(_describe(exc))})"),
                where=where,
                hint="verification is never switched off: if a proxy re-signs HTTPS, give its CA certificate "
                     "in REQUESTS_CA_BUNDLE",
            )
        return ActitoError(
            f"no answer from Actito at {self.base_url} ({self._scrub(_describe(exc))})"
            + (f" after {attempts} attempts" if attempts > 1 else ""),
            where=where,
            hint="check the network, the proxy and the base URL / environment name",
        )

    def _scrub(self, text: str) -> str:
        for secret in (self._api_key, *self._tokens_seen):
            if secret:
                text = text.replace(secret, _SCRUBBED)
        return text


# ---------------------------------------------------------------------- helpers


class _Authorization(requests.auth.AuthBase):
    """Sets the Authorization header through requests' auth hook rather than as a plain header:
    with a plain header and no ``auth``, requests lets an entry of ~/.netrc for the host replace it."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:  # never the key or the token
        return "_Authorization(***)"

#: failures worth another attempt; SSLError (a ConnectionError) is caught before these, as
#: a certificate problem does not go away by retrying
_TRANSIENT: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def _nothing_sent(exc: BaseException) -> bool:
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


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "read timeout"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:_MAX_TEXT]}" if text else type(exc).__name__


def _error_text(response: requests.Response) -> str:
    """Actito's message from an error body whose shape is not documented: JSON keys, else raw text."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:_MAX_TEXT]
    if isinstance(body, str):
        return body[:_MAX_TEXT]
    if not isinstance(body, Mapping):
        return json.dumps(body)[:_MAX_TEXT]
    parts: list[str] = []
    for key in ("message", "error", "detail", "error_description", "title"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    errors = body.get("errors")
    if isinstance(errors, list):
        for item in errors:
            if isinstance(item, Mapping):
                message = str(item.get("message") or "")
                field_name = item.get("field")
                text = f"{field_name}: {message}" if field_name and message else message
            else:
                text = str(item)
            if text and text not in parts:
                parts.append(text)
    if not parts:
        return json.dumps(body)[:_MAX_TEXT]
    return "; ".join(parts)[:_MAX_TEXT]


def _retry_after(value: str | None) -> float | None:
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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: Any) -> float:
    """A token lifetime: ``"900s"`` as Actito sends it, or a bare number; 15 minutes when unreadable."""
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    match = _DURATION.match(str(value)) if value is not None else None
    if match:
        seconds = float(match.group(1)) * _UNIT[(match.group(2) or "s").lower()]
        if seconds > 0:
            return seconds
    log.warning("unreadable Actito token lifetime, assuming 900 s", extra={"fields": {"expiresIn": str(value)}})
    return 900.0


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _list_in(body: Any, key: str) -> list[Any]:
    if isinstance(body, Mapping):
        value = body.get(key)
        return list(value) if isinstance(value, list) else []
    return list(body) if isinstance(body, list) else []


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _attribute(raw: Mapping[str, Any]) -> Attribute:
    restriction = raw.get("valueRestriction")
    return Attribute(
        name=str(raw.get("name", "")),
        type=str(raw.get("type", "CUSTOM")),
        value_type=_opt_str(raw.get("valueType")),
        unique=bool(raw.get("unique", False)),
        mandatory=bool(raw.get("mandatory", False)),
        max_length=_opt_int(restriction.get("maxLength")) if isinstance(restriction, Mapping) else None,
    )


def _names(items: Iterable[Any]) -> tuple[str, ...]:
    names: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and item.get("name") is not None:
            names.append(str(item["name"]))
        elif isinstance(item, str):
            names.append(item)
    return tuple(names)


def _table(raw: Any, kind: Literal["profile", "custom"]) -> Table:
    if not isinstance(raw, Mapping):
        raw = {}
    attributes = raw.get("attributes")
    subscriptions = raw.get("subscriptions")
    foreign_keys = raw.get("foreignKeys")
    return Table(
        id=str(raw.get("id", "")),
        name=str(raw.get("name", raw.get("id", ""))),
        kind=kind,
        attributes=tuple(_attribute(a) for a in attributes if isinstance(a, Mapping))
        if isinstance(attributes, list)
        else (),
        subscriptions=_names(subscriptions) if isinstance(subscriptions, list) else (),
        custom_type=_opt_str(raw.get("type")) if kind == "custom" else None,
        primary_key=_opt_str(raw.get("primaryKeyAttribute")) if kind == "custom" else None,
        foreign_keys=tuple(
            {str(k): str(v) for k, v in fk.items()} for fk in foreign_keys if isinstance(fk, Mapping)
        )
        if isinstance(foreign_keys, list)
        else (),
    )


def _execution(raw: Any, *, reference: str | None = None) -> Execution:
    """An Execution from a status, a creation answer (``{"id", "reference"}``: PENDING) or a search hit."""
    if not isinstance(raw, Mapping):
        raw = {}
    counts: dict[str, int] = {}
    if isinstance(raw.get("counts"), Mapping):
        for key, value in raw["counts"].items():
            number = _opt_int(value)
            if number is not None:
                counts[str(key)] = number
    return Execution(
        id=str(raw.get("id", "")),
        reference=_opt_str(raw.get("reference")) or reference,
        status=str(raw.get("status") or "PENDING"),
        counts=counts,
        message=_opt_str(raw.get("message")),
    )
