"""The client for Actito's REST API (docs/actito-wire.md): discovery, bulk imports, their status and report.

Retries, limits and scrubbing follow `etl.destinations.http`. Specific to Actito: an import found
again by its ``reference`` after an unclear outcome, so it is never doubled; the daily import quota
(a 429 saying so) never retried; the upload streamed (``files=`` would hold up to 100 MB twice in
memory) and rebuilt per attempt; one token per licence, renewed once on a 401.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import requests
from requests_toolbelt import MultipartEncoder  # type: ignore[import-untyped]

from etl.errors import (
    ActitoAuthError,
    ActitoBudgetExhausted,
    ActitoError,
    ActitoImportError,
    ActitoNotFound,
    ActitoRateLimited,
    AudienceSyncError,
)
from etl.config import ACTITO_ENVIRONMENTS
from etl.destinations.http import ApiClient, Scrubber, Transport, failure_text, json_of, unreachable_text
from etl.destinations.actito.tables import (
    ActitoWire, Execution, LineError, Table, execution_of, list_in, opt_str, table_of,
)
from etl.destinations.retry import RetryPolicy
from etl.destinations.licence import Licence
from etl.files import Compression

log = logging.getLogger("audience_sync.actito")

#: Actito's hosts by configuration name (docs/actito-wire.md "Hosts"); "sandbox" has no fixed URL.
ENVIRONMENTS: Mapping[str, str] = ACTITO_ENVIRONMENTS

#: bytes: Actito refuses a larger upload (as sent, so compressed); etl.files cuts parts at the same size.
MAX_UPLOAD_BYTES = 100_000_000

#: renew the token when fewer than this many seconds of its life are left
TOKEN_RENEW_AHEAD = 60.0

#: per licence: Actito refuses a 6th concurrent call and slows over 100 a minute; 90 leaves a margin
#: for clocks and for other processes, whose minute windows are their own.
MAX_IN_FLIGHT = 5
CALLS_PER_MINUTE = 90
#: seconds to open a connection and between two bytes of an answer: also sizes the ledger lease
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


# Route templates name the call in every error, so no id, URL or secret leaks into a message.
_TOKEN = "/auth/token"
_ENTITIES = "/entities/v5/entities"
_PROFILE_TABLES = "/profile-table-structure/v5/entities/{entity}/profile-tables"
_PROFILE_TABLE = _PROFILE_TABLES + "/{tableId}"
_CUSTOM_TABLES = "/custom-table-structure/v5/entities/{entity}/custom-tables"
_CUSTOM_TABLE = _CUSTOM_TABLES + "/{tableId}"
_EXECUTIONS = "/mass-imports/v5/entities/{entity}/etl-executions"
_EXECUTION = _EXECUTIONS + "/{executionId}"
_TRIGGER = "/mass-imports/v5/entities/{entity}/etls/{etlId}/trigger-execution"

#: by HTTP status, the error and what to do (-1: a 429 that is the daily import quota)
_FAILURES: dict[int, tuple[type[ActitoError], str]] = {
    401: (ActitoAuthError, "check the Actito API key: it may be wrong, revoked, or belong to another licence"),
    403: (ActitoAuthError,
          "the API key's licence lacks the right for this call: check the key and the licence in Actito"),
    404: (ActitoNotFound, "check the entity name ({entity!r}) and the ids in the configuration"),
    -1: (ActitoBudgetExhausted,
         "the table's daily import quota is used up; the next day's run will go through (not retried)"),
    429: (ActitoRateLimited,
          "Actito kept refusing for too many requests; another job may share the licence — run later"),
    400: (ActitoError, "Actito refused the request as invalid; it is not retried unchanged"),
    406: (ActitoError, "Actito wants Accept: application/json"),
}



def compression_of(file_name: str) -> Compression:
    """What an import file holds, by its name (``.csv.gz``/``.gz``: gzip; ``.zip``: zip; else plain CSV)."""
    lowered = file_name.lower()
    return "gzip" if lowered.endswith(".gz") else "zip" if lowered.endswith(".zip") else "none"


class ActitoClient(ApiClient):
    """A connection to one Actito entity with one API key; a context manager, safe to share across threads."""

    def __init__(
        self,
        *,
        base_url: str,
        entity: str,
        api_key: str,
        max_concurrency: int = MAX_IN_FLIGHT,
        calls_per_minute: int = CALLS_PER_MINUTE,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30,
        retry_after_max: float = 120,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        wire: ActitoWire | None = None,
        licence: Licence | None = None,
    ) -> None:
        """``base_url`` is a URL or a name of `ENVIRONMENTS`; without a shared ``licence`` the client has its own."""
        if not api_key:
            raise ValueError("api_key is empty")
        resolved = ENVIRONMENTS.get(base_url, base_url)
        if not resolved.startswith(("http://", "https://")):
            if base_url in ENVIRONMENTS:
                raise ValueError(f"the Actito environment {base_url!r} has no fixed URL: pass the URL it listens on")
            raise ValueError(f"Actito base_url {base_url!r} is neither a URL nor a known environment")
        self.base_url = resolved.rstrip("/")
        self.entity = entity
        self.wire = wire or ActitoWire()
        self._api_key = api_key
        self._scrub = Scrubber(api_key)
        self._sleep = sleep
        self._monotonic = monotonic
        self._budget = re.compile(self.wire.budget_message, re.IGNORECASE)
        self._licence = licence or Licence(
            service="Actito", name=f"{self.base_url} {entity}", max_in_flight=max_concurrency,
            calls_per_minute=calls_per_minute, sleep=sleep, monotonic=monotonic,
        )
        self._http = Transport(
            service="Actito", log=log, scrub=self._scrub, licence=self._licence, connect_timeout=connect_timeout,
            read_timeout=read_timeout, policy=RetryPolicy(max_attempts, backoff_base, backoff_max, retry_after_max),
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"ActitoClient(base_url={self.base_url!r}, entity={self.entity!r})"

    def entities(self) -> list[dict[str, Any]]:
        """The entities the licence sees: ``[{"id", "name", "comment"}]``."""
        body = self._get(_ENTITIES)
        return [dict(e) for e in list_in(body, self.wire.entities_key) if isinstance(e, Mapping)]

    def profile_tables(self) -> list[Table]:
        body = self._get(_PROFILE_TABLES, entity=self.entity)
        return [table_of(t, "profile") for t in list_in(body, self.wire.profile_tables_key) if isinstance(t, Mapping)]

    def profile_table(self, id_or_name: str) -> Table:
        """A profile table by id, or by name (Actito addresses tables by id; people know them by name)."""
        return self._one_table(id_or_name, "profile")

    def custom_tables(self) -> list[Table]:
        body = self._get(_CUSTOM_TABLES, entity=self.entity)
        return [table_of(t, "custom") for t in list_in(body, self.wire.custom_tables_key) if isinstance(t, Mapping)]

    def custom_table(self, id_or_name: str) -> Table:
        return self._one_table(id_or_name, "custom")

    def _one_table(self, id_or_name: str, kind: Literal["profile", "custom"]) -> Table:
        one, listing = (_PROFILE_TABLE, self.profile_tables) if kind == "profile" else (_CUSTOM_TABLE, self.custom_tables)
        try:
            return table_of(self._get(one, entity=self.entity, tableId=id_or_name), kind)
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

    def start_import(
        self, definition: Mapping[str, Any], file: Path, *, etl_id: str | None = None, upload_name: str | None = None
    ) -> Execution:
        """Upload ``file`` as one ETL execution (usually PENDING); never imports it twice.

        A one-shot import carries its ``reference`` in the definition; a triggered one sends only the file
        (as documented), so its ``upload_name`` (default: the file's name) is what finds it again. Keep
        both stable across re-runs of the same run and part, so that even a crashed process can look it up.
        """
        wire = self.wire
        name = upload_name or file.name
        if etl_id is None:
            definition = dict(definition)
            reference = str(definition.get(wire.reference_field) or f"audience-sync-{uuid.uuid4().hex}")
            definition[wire.reference_field] = reference
            template, path = _EXECUTIONS, {"entity": self.entity}
            parts: list[tuple[str, Any]] = [
                (wire.definition_part, (None, _json_bytes(definition), "application/json"))]
            lookup: Callable[[], Execution | None] = lambda: self._find(wire.reference_field, reference)
        else:
            reference = str(definition.get(wire.reference_field) or name)
            template, path = _TRIGGER, {"entity": self.entity, "etlId": etl_id}
            parts, lookup = [], lambda: self._find(wire.file_name_field, name)
        where = f"Actito POST {template}"
        _check_upload(file, where)
        used: list[str] = []
        outcome = self._http.post_once(
            where, self._uploader(self._url(template, path), parts, file, name, where, used),
            lookup=lookup,
            failed=lambda response, attempts: self._http_error(where, response, attempts=attempts),
            unreachable=lambda exc, attempts: self._unreachable(where, exc, attempts),
            unknown=lambda reason, status, lookup_error: _unknown_outcome(where, reference, reason, status,
                                                                          lookup_error),
            absent=lambda last: _never_arrived(where, reference, last), again=self._renewal(used),
            final=lambda error: isinstance(error, ActitoBudgetExhausted),
        )
        if not isinstance(outcome, requests.Response):
            log.info("Actito import found by reference after an unanswered upload",
                     extra={"fields": {"reference": reference, "execution": outcome.id}})
            return outcome
        created = execution_of(self._json(where, outcome), reference=reference)
        if not created.id:
            raise ActitoError(
                f"HTTP {outcome.status_code} without an execution id (reference {reference!r})",
                where=where,
                hint="check the base URL and the wire settings; look the reference up in Actito",
                status=outcome.status_code,
            )
        return created

    def _uploader(
        self, url: str, parts: list[tuple[str, Any]], file: Path, name: str, where: str, used: list[str]
    ) -> Callable[[], requests.Response]:
        """One upload attempt; ``used`` collects the token each attempt sent (a 401 renews it once).

        The file part is named and typed for what it holds (``.csv.gz``: gzip), as Actito reads it."""
        content_type = self.wire.content_type(compression_of(name))

        def once() -> requests.Response:
            used.append(self._token())
            try:
                stream = file.open("rb")
            except OSError as exc:
                raise ActitoError(f"cannot read the import file {file}: {exc.strerror or exc}", where=where) from None
            with stream:
                # rebuilt for each attempt: a body read once cannot be sent again
                file_part = (self.wire.file_part, (name, stream, content_type))
                encoder = MultipartEncoder(fields=[*parts, file_part])
                return self._send("POST", url, token=used[-1], data=encoder,
                                  headers={"Content-Type": encoder.content_type})

        return once

    def find_execution(self, reference: str, file_names: Sequence[str] = ()) -> Execution | None:
        """The execution created with ``reference`` (a one-shot import) or one of ``file_names`` (a triggered
        one), or None: how a re-run checks what a crashed run left."""
        found = self._find(self.wire.reference_field, reference)
        for name in file_names:
            found = found or self._find(self.wire.file_name_field, name)
        return found

    def _find(self, field: str, value: str) -> Execution | None:
        body = self._get(_EXECUTIONS, query={field: value}, entity=self.entity)
        # filter again on our side: a server that ignored the query would list every execution
        matches = [e for e in list_in(body, self.wire.executions_key)
                   if isinstance(e, Mapping) and str(e.get(field)) == value]
        if not matches:
            return None
        if len(matches) > 1:
            # a reused reference (it should be unique per import): the newest is the likeliest ours
            log.warning(
                "several Actito executions carry the same reference",
                extra={"fields": {field: value, "ids": [str(m.get("id")) for m in matches]}},
            )
        newest = max(range(len(matches)), key=lambda i: (str(matches[i].get("createdAt") or ""), i))
        return execution_of(matches[newest], reference=value if field == self.wire.file_name_field else None)

    def execution(self, execution_id: str) -> Execution:
        return execution_of(self._get(_EXECUTION, entity=self.entity, executionId=execution_id))

    def wait_for(
        self, execution_id: str, *, timeout: float = 3600, poll_initial: float = 1.0, poll_max: float = 30.0
    ) -> Execution:
        """Poll (doubling interval, to spare the per-minute budget) until SUCCESS/PARTIAL_SUCCESS; ERROR raises.

        An unknown status counts as running (Actito documents only SUCCESS) until ``timeout``, which raises.
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
        """The rejected lines of an execution."""
        body = self._get(_EXECUTION + self.wire.report_suffix, entity=self.entity, executionId=execution_id)
        lines: list[LineError] = []
        for item in list_in(body, self.wire.report_errors_key):
            if not isinstance(item, Mapping):
                continue
            try:
                line = int(item.get("line", 0))
            except (TypeError, ValueError):
                line = 0
            lines.append(
                LineError(
                    line=line,
                    column=opt_str(item.get("column")),
                    value=opt_str(item.get("value")),
                    message=str(item.get("message") or ""),
                    problems=tuple(str(problem.get("message") or "") for problem in item.get("problems") or ()
                                         if isinstance(problem, Mapping)),
                )
            )
        return lines

    def _token(self) -> str:
        """A valid access token from the licence's cache, fetched or renewed by one thread while the others wait."""
        token = self._licence.tokens.get(self._api_key, self._new_token)
        self._scrub.add_token(token)
        return token

    def _new_token(self) -> tuple[str, float]:
        """A fresh token and how long it may be used: renewed 60 s ahead, a short-lived one halfway."""
        body = self._get(_TOKEN, use_key=True)
        token = body.get("accessToken") if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise ActitoAuthError(
                "Actito answered the token request without an accessToken",
                where=f"Actito GET {_TOKEN}",
                hint="check the base URL: it may not point at Actito",
                status=200,
            )
        self._scrub.add_token(token)
        lifetime = _seconds(body.get("expiresIn"))
        log.debug("Actito token obtained", extra={"fields": {"expires_in_s": lifetime}})
        return token, lifetime - min(TOKEN_RENEW_AHEAD, lifetime / 2)

    def _invalidate(self, token: str) -> None:
        """Forget ``token`` after a 401, unless another thread has already replaced it."""
        self._licence.tokens.forget(self._api_key, token)

    def _url(self, template: str, path: Mapping[str, str]) -> str:
        return self.base_url + template.format(**{k: quote(str(v), safe="") for k, v in path.items()})

    def _send(self, method: str, url: str, *, token: str | None, **kwargs: Any) -> requests.Response:
        """One HTTP exchange inside our concurrency and pacing limits; no retry here."""
        return self._http.send(method, url, authorization=self._api_key if token is None else f"Bearer {token}",
                               **kwargs)

    def _renewal(self, used: list[str]) -> Callable[[requests.Response], bool]:
        """True once for a 401 to a call made with a token: the token is forgotten and the call sent again."""
        renewed = False

        def again(response: requests.Response) -> bool:
            nonlocal renewed
            if response.status_code != 401 or not used or renewed:
                return False
            renewed = True
            self._invalidate(used[-1])
            return True

        return again

    def _get(
        self, template: str, *, query: Mapping[str, str] | None = None, use_key: bool = False, **path: str
    ) -> Any:
        """A safe call: retried on 429, 5xx and connection errors; a 401 renews the token once."""
        where = f"Actito GET {template}"
        url = self._url(template, path)
        used: list[str] = []

        def once() -> requests.Response:
            token = None if use_key else self._token()
            if token is not None:
                used.append(token)
            return self._send("GET", url, token=token, params=query)

        response = self._http.call(
            where, once,
            failed=lambda answer, attempts: self._http_error(where, answer, attempts=attempts),
            unreachable=lambda exc, attempts: self._unreachable(where, exc, attempts),
            again=self._renewal(used),
        )
        return self._json(where, response)

    def _json(self, where: str, response: requests.Response) -> Any:
        return json_of(response, lambda what: ActitoError(
            self._scrub(what), where=where, hint="check the base URL: it may not point at Actito's API",
            status=response.status_code,
        ))

    def _http_error(self, where: str, response: requests.Response, *, attempts: int = 1) -> ActitoError:
        status = response.status_code
        what, said = failure_text(response, self._scrub, attempts)
        cls, hint = _FAILURES.get(status, (ActitoError, ""))
        if status == 429:
            cls, hint = _FAILURES[-1] if self._budget.search(said) else _FAILURES[429]
        elif status >= 500:
            hint = "Actito's side failed; a later run may go through"
        hint = hint.format(entity=self.entity)
        return cls(what, where=where, hint=hint, status=status, actito_message=said)

    def _unreachable(self, where: str, exc: BaseException | None, attempts: int) -> ActitoError:
        what, hint = unreachable_text("Actito", self.base_url, exc, attempts, self._scrub,
                                      "check the network, the proxy and the base URL / environment name")
        return ActitoError(what, where=where, hint=hint)




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


def _check_upload(file: Path, where: str) -> None:
    """A file Actito would refuse for its size is not sent at all."""
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


def _unknown_outcome(
    where: str, reference: str, reason: str, status: int | None, lookup_error: AudienceSyncError
) -> ActitoError:
    return ActitoError(
        f"the import's outcome is unknown ({reason}) and looking up reference "
        f"{reference!r} failed: {lookup_error.what}",
        where=where,
        hint=f"look for an execution with reference {reference!r} in Actito before sending the file again",
        status=status,
        actito_message=getattr(lookup_error, "actito_message", ""),
    )


def _never_arrived(where: str, reference: str, last: AudienceSyncError) -> ActitoError:
    assert isinstance(last, ActitoError)
    return type(last)(
        f"{last.what}; Actito has no execution with reference {reference!r}",
        where=where,
        hint="nothing was imported, so the run can safely be repeated later",
        status=last.status,
        actito_message=last.actito_message,
    )


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
