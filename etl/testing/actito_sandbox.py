"""The Actito sandbox: a real HTTP server on loopback that behaves as docs/actito-wire.md says Actito does.

Why it exists: no real Actito is reachable from development machines or CI, and a mock that returns
canned answers hides exactly what the client must survive — a 429 for the 6th concurrent request, an
upload whose answer never comes although the import was created, an exhausted daily quota, a file
refused for a BOM, a report naming rejected lines. So this is a stateful server on a real socket:
the client's real HTTP stack (connection pool, timeouts, streamed multipart bodies, retries) is what
gets exercised, and what an import did can be read back afterwards.

What it implements is docs/actito-wire.md, route for route; where that page left a choice open the
decision is made here *and* written back into that page (the client is written against the page).
The decisions that shape the code:

* **Imports are applied lazily, in creation order.** An execution is PENDING for the first half of
  ``processing_seconds`` of real time, RUNNING for the second half, then final. Any request (and any
  inspection method) first applies every execution whose time has come, oldest first, so the state
  is readable as soon as a status is final, clients have to poll, and two imports into one table are
  applied in the order they were created — without a worker thread to start, stop or race with.
* **Lines are records.** A report's ``line`` counts CSV records with the header as line 1, so a quoted
  value holding a newline does not shift the numbers the client maps back to rows.
* **ERROR is for the file, PARTIAL_SUCCESS for lines.** A file-level problem (BOM, unknown column,
  unreadable compression or encoding, malformed CSV) applies nothing and ends in ERROR; otherwise
  every good line is applied and any rejected line makes it PARTIAL_SUCCESS — even when all lines are
  rejected, so the client still fetches the report that says why.
* **Faults and limits come before any processing, except "timeout".** An injected 500/429/503 is
  answered before authentication; a "timeout" fault lets the request be processed (the import *is*
  created) and then withholds the answer — the ambiguous case that must not lead to a second import.
* **Early answers drain the request body first**, so a keep-alive connection stays usable and a
  client still streaming an upload reads the answer instead of a connection reset.
* **Accept is strict**: only a header naming ``application/json`` passes (``*/*`` gets 406), so a
  client that forgets the header fails here rather than against Actito.
* **State can outlive the process.** With ``state_file`` the mutable state (profiles, records,
  executions, counters, revoked keys) is loaded at start and rewritten — atomically, mode 0600 —
  whenever an import is created or applied and on reset or revoke, so the demo's Actito survives
  from one CLI process to the next. Tokens, faults and the clock offset stay per process.

Nothing here imports the rest of audience-sync: the sandbox is the other side of the wire. It lives
in ``etl.testing`` because it is a test double: the runtime loads it only through
``etl.testing.in_process_actito_sandbox`` (for ``environment = "sandbox"``) and the ``sandbox``
command, never on a production run; it ships in the package because the README demo uses it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import csv
import dataclasses
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["ActitoSandbox", "DEFAULT_FIXTURE", "MAX_FILE_BYTES", "main"]

#: the fixture used when none is given: one entity "demo", API key "sandbox-demo-key"
DEFAULT_FIXTURE = Path(__file__).with_name("actito_sandbox_fixture.json")

#: the layout of a state file; a file of another version is ignored like one of another fixture
_STATE_VERSION = 1
_FIRST_EXECUTION_ID = 1001

log = logging.getLogger(__name__)

#: Actito refuses an uploaded import file over 100 MB; the decimal reading, as etl.files cuts parts
MAX_FILE_BYTES = 100_000_000

#: room for the definition part and the multipart framing on top of the file itself
_MULTIPART_SLACK = 1_000_000
_CONTROL_BODY_LIMIT = 1_000_000
_MAX_STRING = 255
_TECHNICAL = frozenset({"profileId", "creationMoment", "updateMoment"})
_MODES = ("CREATE_UPDATE", "UPDATE_ONLY", "CREATE_ONLY", "DELETE")
_SEPARATORS = (",", ";", "\t")
_ENCODINGS = {"UTF-8": "utf-8", "ISO-8859-1": "iso-8859-1"}
_COMPRESSIONS = ("NONE", "GZIP", "ZIP")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")

#: validation rule of each predefined attribute type, then of each custom ``valueType``
_PREDEFINED_RULES = {
    "EMAIL_ADDRESS": "email",
    "FIRSTNAME": "string",
    "LASTNAME": "string",
    "SEX": "sex",
    "BIRTHDATE": "date",
    "PHONE_NUMBER": "phone",
    "ADDRESS_COUNTRY": "country",
    "MOTHER_LANGUAGE": "language",
    "TITLE": "title",
}
_VALUE_TYPE_RULES = {
    "STRING": "string",
    "INTEGER": "integer",
    "DECIMAL": "decimal",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
}
_YES_NO = {"Y": True, "N": False, "TRUE": True, "FALSE": False, "1": True, "0": False}

_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SUFFIX = re.compile(r"[A-Za-z]{2,}")
_PHONE = re.compile(r"\+[0-9]{8,15}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_LANGUAGE = re.compile(r"[A-Za-z]{2}")
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_INT64 = 2**63

FaultStatus = int | Literal["timeout", "disconnect"]


# ---------------------------------------------------------------------------------------- errors


class _HttpError(Exception):
    """An error answer: Actito's (guessed) JSON error body ``{"status", "message", "errors"}``."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})

    def response(self) -> _Response:
        body = {"status": self.status, "message": self.message, "errors": self.errors}
        return _Response(self.status, body, self.headers)


class _ClientGone(Exception):
    """The client closed the connection before its request was read: there is no one to answer."""


class _FileError(Exception):
    """A problem with the uploaded file as a whole: the execution ends in ERROR, nothing is applied."""

    def __init__(self, message: str, *, line: int = 0, column: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.file = file

    def report_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"line": self.line, "column": self.column, "value": None, "message": self.message}
        if self.file is not None:
            entry["file"] = self.file
        return entry


@dataclass
class _Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Attr:
    """One attribute of a table, with the rule its imported values must meet."""

    name: str
    type: str
    value_type: str | None
    unique: bool
    mandatory: bool
    max_length: int | None
    rule: str
    published: dict[str, Any]


@dataclass
class _Profile:
    profile_id: int
    attributes: dict[str, Any]
    subscriptions: dict[str, bool]
    created: str
    updated: str

    def view(self) -> dict[str, Any]:
        return {
            "profileId": self.profile_id,
            "attributes": dict(self.attributes),
            "subscriptions": dict(self.subscriptions),
            "creationMoment": self.created,
            "updateMoment": self.updated,
        }


@dataclass
class _ProfileTable:
    id: str
    name: str
    attributes: dict[str, _Attr]
    subscriptions: list[str]
    profiles: dict[int, _Profile] = field(default_factory=dict)
    #: unique attribute → value → profileId, so a key lookup does not scan the table
    index: dict[str, dict[Any, int]] = field(default_factory=dict)

    def published(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "attributes": [copy.deepcopy(a.published) for a in self.attributes.values()],
            "subscriptions": [{"name": s} for s in self.subscriptions],
        }

    def find(self, attribute: str, value: Any) -> _Profile | None:
        if attribute == "profileId":
            return self.profiles.get(value) if isinstance(value, int) else None
        if attribute in self.index:
            found = self.index[attribute].get(value)
            return None if found is None else self.profiles.get(found)
        return next((p for p in self.profiles.values() if p.attributes.get(attribute) == value), None)

    def store(self, profile: _Profile, attributes: dict[str, Any]) -> None:
        """Set a profile's attributes (new or existing), keeping the unique indexes right."""
        for name, values in self.index.items():
            old = profile.attributes.get(name)
            if old is not None and values.get(old) == profile.profile_id:
                del values[old]
            new = attributes.get(name)
            if new is not None:
                values[new] = profile.profile_id
        profile.attributes = attributes
        self.profiles[profile.profile_id] = profile

    def delete(self, profile: _Profile) -> None:
        self.store(profile, {})
        del self.profiles[profile.profile_id]


@dataclass(frozen=True)
class _ForeignKey:
    attribute: str
    profile_table: str
    profile_attribute: str


@dataclass
class _CustomTable:
    id: str
    name: str
    type: str
    primary_key: str
    attributes: dict[str, _Attr]
    foreign_keys: list[_ForeignKey]
    records: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def published(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "primaryKeyAttribute": self.primary_key,
            "attributes": [copy.deepcopy(a.published) for a in self.attributes.values()],
            "foreignKeys": [
                {"attribute": k.attribute, "profileTable": k.profile_table, "profileAttribute": k.profile_attribute}
                for k in self.foreign_keys
            ],
        }


@dataclass(frozen=True)
class _Definition:
    """An import definition (one-shot or an ETL's), validated against the entity's tables."""

    custom: bool
    table: str
    mode: str
    key_column: str
    key_attribute: str
    separator: str
    encoding: str
    compression: str
    empty_values: str
    #: CSV column → attribute / subscription, as declared
    attributes: dict[str, str]
    subscriptions: dict[str, str]
    data_collection: dict[str, Any]

    def published(self) -> dict[str, Any]:
        return {
            "target": {"type": "CUSTOM_TABLE" if self.custom else "PROFILE_TABLE", "id": self.table},
            "mode": self.mode,
            "keyColumn": self.key_column,
            "format": {"separator": self.separator, "encoding": self.encoding, "compression": self.compression},
            "emptyValues": self.empty_values,
            "attributes": [{"column": c, "attribute": a} for c, a in self.attributes.items()],
            "subscriptions": [{"column": c, "subscription": s} for c, s in self.subscriptions.items()],
            "dataCollection": dict(self.data_collection),
        }


@dataclass
class _Entity:
    id: int
    name: str
    comment: str
    licence: str
    profile_tables: dict[str, _ProfileTable]
    custom_tables: dict[str, _CustomTable]
    etls: dict[str, tuple[str, _Definition]]
    executions: list[_Execution] = field(default_factory=list)


@dataclass
class _Execution:
    id: str
    entity: str
    reference: str | None
    definition: _Definition
    etl_id: str | None
    file_name: str
    created_at: str
    #: real (monotonic) time of creation: the status progresses with processing_seconds from here
    started: float
    payload: bytes | None
    final: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None

    def status(self, now: float, processing: float) -> str:
        if self.final is not None:
            return self.final
        return "PENDING" if now - self.started < processing / 2 else "RUNNING"

    def view(self, status: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "reference": self.reference,
            "status": status,
            "counts": dict(self.counts),
            "message": self.message,
            "etlId": self.etl_id,
            "target": {"type": "CUSTOM_TABLE" if self.definition.custom else "PROFILE_TABLE",
                       "id": self.definition.table},
            "mode": self.definition.mode,
            "createdAt": self.created_at,
        }


@dataclass
class _Fault:
    status: FaultStatus
    remaining: int
    path_contains: str
    retry_after: float | None


@dataclass
class _LicenceCounts:
    """What Actito's limits count, per licence: lets a test assert that a client stayed within them."""

    #: the most requests in flight at once, a refused one included (a 6th attempt makes it 6)
    peak_in_flight: int = 0
    #: requests answered 429 for going over ``max_concurrent``
    refused: int = 0
    #: ``GET /auth/token`` requests
    tokens: int = 0
    #: every authenticated API request
    calls: int = 0


@dataclass(frozen=True)
class _Token:
    api_key: str
    licence: str
    expires: float


@dataclass(frozen=True)
class _Problem:
    column: str | None
    value: str | None
    message: str


@dataclass(frozen=True)
class _Column:
    name: str
    attribute: _Attr | None
    subscription: str | None


@dataclass(frozen=True)
class _Plan:
    """How the header of one file maps onto the table: one entry per CSV column."""

    columns: list[_Column]
    key: _Column
    column_of: dict[str, str]


# ---------------------------------------------------------------------------------------- sandbox


def loopback_address(host: str) -> str:
    """``host`` if it is a loopback address, else ValueError: the sandbox accepts well-known demo keys and
    keeps personal data in memory, so it must never be reachable from another machine."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the sandbox listens on loopback only (127.0.0.1, ::1 or localhost), not on {host!r}: "
                         "it has demo API keys anyone could use")
    return host


class ActitoSandbox:
    """Actito's API on loopback, stateful, with faults and a clock tests can control.

    Thread-safe: the HTTP server answers each connection in its own thread, and tests inspect or
    steer it from theirs; one lock guards all state. Start it (or use it as a context manager),
    point a client at ``url``, and read back what imports did with `profiles`, `records` and
    `executions` — the same data ``GET /_sandbox/state`` serves to another process. Give it a
    ``state_file`` and that state also survives the process (see `_restore` and `_save`).
    """

    def __init__(
        self,
        fixture: Mapping[str, Any] | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl_seconds: int = 900,
        processing_seconds: float = 0.2,
        max_concurrent: int = 5,
        daily_imports_per_table: int = 24,
        max_file_bytes: int = MAX_FILE_BYTES,
        fault_delay_seconds: float = 3.0,
        state_file: Path | None = None,
        latency_seconds: float = 0.0,
    ) -> None:
        """``clock`` drives token expiry and the daily budget's UTC date (`advance_clock` moves it);
        import progress uses real time (``processing_seconds``) so clients really have to poll.
        ``max_file_bytes`` exists so a test can check the 100 MB refusal with a small file, and
        ``fault_delay_seconds`` is how long a "timeout" fault withholds its answer.
        ``latency_seconds``: how long each API request holds its licence's concurrency slot before
        its answer (a real Actito takes tens to hundreds of milliseconds), so concurrent clients
        really overlap and a test of the per-licence limit measures something.

        ``state_file``: a JSON file holding the state between processes. Loaded now if it exists
        and was saved for this same fixture (otherwise the sandbox starts from the fixture and logs
        why); rewritten at each change. One process at a time should use a given file: each save
        replaces the whole file, so of two processes the last to save wins (a warning says so)."""
        if max_concurrent < 1 or daily_imports_per_table < 0 or token_ttl_seconds < 1 or max_file_bytes < 1:
            raise ValueError("max_concurrent, token_ttl_seconds and max_file_bytes must be positive")
        if processing_seconds < 0 or fault_delay_seconds < 0 or latency_seconds < 0:
            raise ValueError("processing_seconds, fault_delay_seconds and latency_seconds cannot be negative")
        if fixture is None:
            fixture = DEFAULT_FIXTURE
        if isinstance(fixture, Path):
            try:
                raw = json.loads(fixture.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"sandbox fixture {fixture}: {exc}") from None
        else:
            raw = json.loads(json.dumps(fixture))  # a private deep copy, and proof it is plain JSON
        self._fixture: dict[str, Any] = raw
        self._base_clock = clock
        self._host = loopback_address(host)
        self._port = port
        self.token_ttl_seconds = token_ttl_seconds
        self.processing_seconds = processing_seconds
        self.max_concurrent = max_concurrent
        self.daily_imports_per_table = daily_imports_per_table
        self.max_file_bytes = max_file_bytes
        self.fault_delay_seconds = fault_delay_seconds
        self.latency_seconds = latency_seconds

        self._lock = threading.RLock()
        #: (method, path with query, status) of every request; status 0 = closed without an answer
        self.request_log: list[tuple[str, str, int]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._state_file = state_file
        self._fingerprint = hashlib.sha256(
            json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        ).hexdigest()
        #: (inode, mtime, size) of the state file as last read or written: a change by another process shows
        self._state_stamp: tuple[int, int, int] | None = None
        self._load(raw)
        if state_file is not None:
            self._restore()

    # ------------------------------------------------------------------ state from the fixture

    def _load(self, raw: Mapping[str, Any]) -> None:
        """(Re)build every piece of state from the fixture; also what `reset` does."""
        keys: dict[str, str] = {}
        entities: dict[str, _Entity] = {}
        licences = raw.get("licences") if isinstance(raw, Mapping) else None
        if not isinstance(licences, list) or not licences:
            raise ValueError("sandbox fixture: 'licences' must be a non-empty list")
        next_profile = 1
        for licence in licences:
            name = _fixture_str(licence, "name", "licence")
            for key in licence.get("apiKeys") or []:
                if not isinstance(key, str) or not key or key in keys:
                    raise ValueError(f"sandbox fixture: licence {name!r}: API keys must be distinct non-empty strings")
                keys[key] = name
            for raw_entity in licence.get("entities") or []:
                entity = _load_entity(raw_entity, name)
                if entity.name in entities:
                    raise ValueError(f"sandbox fixture: entity {entity.name!r} defined twice")
                entities[entity.name] = entity
                for table_raw in raw_entity.get("profileTables") or []:
                    table = entity.profile_tables[table_raw["id"]]
                    for seed in table_raw.get("profiles") or []:
                        attributes = dict(seed.get("attributes") or {})
                        subscriptions = {str(k): bool(v) for k, v in (seed.get("subscriptions") or {}).items()}
                        profile = _Profile(next_profile, {}, subscriptions, "", "")
                        table.store(profile, attributes)
                        next_profile += 1
                for table_raw in raw_entity.get("customTables") or []:
                    custom = entity.custom_tables[table_raw["id"]]
                    for record in table_raw.get("records") or []:
                        custom.records[record[custom.primary_key]] = dict(record)
        with self._lock:
            self._keys = keys
            self._entities = entities
            self._revoked: set[str] = set()
            self._tokens: dict[str, _Token] = {}
            self._faults: list[_Fault] = []
            self._pending: list[_Execution] = []
            self._imports_today: dict[tuple[str, str, str], int] = {}
            self._in_flight: dict[str, int] = {}
            self._counts: dict[str, _LicenceCounts] = {}
            self._clock_offset = 0.0
            self._next_profile = next_profile
            self._next_execution = _FIRST_EXECUTION_ID
            del self.request_log[:]

    # ------------------------------------------------------------------ state file

    def _restore(self) -> None:
        """Load the state file over the fixture's state, if it exists and is this fixture's.

        Any problem (unreadable, another fixture, another layout, inconsistent content) leaves the
        fixture's state and says so in a log line; the file is then replaced at the next change.
        The execution counter is carried over in every case, so execution ids never repeat."""
        path = cast(Path, self._state_file)
        try:
            text = path.read_text(encoding="utf-8")
            self._state_stamp = _stamp(path)
        except FileNotFoundError:
            log.info("actito sandbox: no state file %s yet: starting from the fixture", path)
            return
        except OSError as exc:
            log.warning("actito sandbox: cannot read state file %s (%s): starting from the fixture", path, exc)
            return
        try:
            saved = json.loads(text)
        except ValueError as exc:
            log.warning("actito sandbox: state file %s is not JSON (%s): starting from the fixture", path, exc)
            return
        if not isinstance(saved, dict):
            log.warning("actito sandbox: state file %s is not a JSON object: starting from the fixture", path)
            return
        counter = saved.get("nextExecutionId")
        next_execution = counter if isinstance(counter, int) else _FIRST_EXECUTION_ID
        if saved.get("version") != _STATE_VERSION or saved.get("fixture") != self._fingerprint:
            log.warning("actito sandbox: state file %s was saved for another fixture: starting empty, "
                        "from the fixture (the file is replaced at the next change)", path)
        else:
            try:
                with self._lock:
                    self._apply_saved(saved)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("actito sandbox: state file %s is inconsistent (%s: %s): starting from the fixture",
                            path, type(exc).__name__, exc)
                self._load(self._fixture)
            else:
                log.info("actito sandbox: state restored from %s", path)
        with self._lock:
            self._next_execution = max(self._next_execution, next_execution)

    def _apply_saved(self, saved: Mapping[str, Any]) -> None:
        """Replace the mutable state by the saved one (caller holds the lock; raises on bad content)."""
        for name, data in saved["entities"].items():
            entity = self._entities[name]
            for table_id, profiles in data["profileTables"].items():
                table = entity.profile_tables[table_id]
                table.profiles = {}
                table.index = {attribute: {} for attribute in table.index}
                for raw in profiles:
                    subscriptions = {str(k): bool(v) for k, v in raw["subscriptions"].items()}
                    profile = _Profile(int(raw["profileId"]), {}, subscriptions,
                                       str(raw["creationMoment"]), str(raw["updateMoment"]))
                    table.store(profile, dict(raw["attributes"]))
            for table_id, records in data["customTables"].items():
                custom = entity.custom_tables[table_id]
                custom.records = {record[custom.primary_key]: dict(record) for record in records}
            entity.executions = [_restored_execution(name, raw) for raw in data["executions"]]
        # an import still pending when the state was saved starts its processing time again
        self._pending = [e for entity in self._entities.values() for e in entity.executions if e.final is None]
        self._next_profile = int(saved["nextProfileId"])
        self._revoked = {str(key) for key in saved["revokedKeys"]}
        self._imports_today = {
            (str(item["entity"]), str(item["table"]), str(item["day"])): int(item["count"])
            for item in saved["importsToday"]
        }

    def _save(self) -> None:
        """Write the state file, atomically: a private temporary file, then ``os.replace``.

        Caller holds the lock. A failure is logged, not raised: the state in memory stays right
        and the next change tries again."""
        path = self._state_file
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            current = _stamp(path)
            if current is not None and current != self._state_stamp:
                log.warning("actito sandbox: state file %s was changed by another process: overwriting it "
                            "(the changes made there are lost)", path)
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    os.chmod(temporary, 0o600)  # mkstemp's mode already; said again, as the file's contract
                    json.dump(self._snapshot(), out, ensure_ascii=False, separators=(",", ":"))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            self._state_stamp = _stamp(path)
        except OSError as exc:
            log.warning("actito sandbox: cannot save state file %s: %s", path, exc)

    def _snapshot(self) -> dict[str, Any]:
        """The mutable state as plain JSON (caller holds the lock). Shares the live values: dump it at once."""
        today = datetime.fromtimestamp(self._now(), UTC).date().isoformat()
        # finished executions (their reports name people) are not kept past EXECUTIONS_KEPT_DAYS
        kept_since = _moment(self._now() - EXECUTIONS_KEPT_DAYS * 86400)
        return {
            "version": _STATE_VERSION,
            "fixture": self._fingerprint,
            "savedAt": _moment(self._now()),
            "nextProfileId": self._next_profile,
            "nextExecutionId": self._next_execution,
            "revokedKeys": sorted(self._revoked),
            # only today's and later budgets can still refuse anything
            "importsToday": [
                {"entity": entity, "table": table, "day": day, "count": count}
                for (entity, table, day), count in sorted(self._imports_today.items())
                if day >= today
            ],
            "entities": {
                name: {
                    "profileTables": {t.id: [p.view() for p in t.profiles.values()]
                                      for t in entity.profile_tables.values()},
                    "customTables": {t.id: list(t.records.values()) for t in entity.custom_tables.values()},
                    "executions": [_saved_execution(e) for e in entity.executions
                                   if e.final is None or e.created_at >= kept_since],
                }
                for name, entity in self._entities.items()
            },
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Listen on ``host:port`` (port 0: any free port) in a daemon thread; return the base URL."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already started (a stopped sandbox cannot be restarted)")
        server = _Server((self._host, self._port), _Handler)
        server.sandbox = self
        self._server = server
        host, port = server.server_address[:2]
        shown = host if isinstance(host, str) else host.decode()
        self._url = f"http://{shown}:{port}"
        # a short poll so stop() returns at once (tests start and stop one sandbox each)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="actito-sandbox", daemon=True
        )
        self._thread.start()
        return self._url

    def stop(self) -> None:
        """Stop listening, end open connections and wake any withheld "timeout" answer."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ActitoSandbox:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``, once started."""
        if self._url is None:
            raise RuntimeError("the sandbox is not started: call start() first")
        return self._url

    @property
    def in_flight(self) -> int:
        """Requests currently holding a concurrency slot (all licences): lets a test wait for them."""
        with self._lock:
            return sum(self._in_flight.values())

    def limits(self) -> dict[str, dict[str, Any]]:
        """Per licence, what Actito's limits count since the start or the last `reset_limits`:
        ``peak_in_flight`` (a refused request included), ``refused`` (429s for concurrency),
        ``tokens`` (token requests), ``calls`` and ``in_flight`` now, plus the licence's ``entities``."""
        with self._lock:
            return {
                licence: {**dataclasses.asdict(counts), "in_flight": self._in_flight.get(licence, 0),
                          "entities": sorted(e.name for e in self._entities.values() if e.licence == licence)}
                for licence, counts in self._counts.items()
            }

    def reset_limits(self) -> None:
        """Start counting afresh (a peak restarts from the requests in flight now)."""
        with self._lock:
            self._counts = {licence: _LicenceCounts(peak_in_flight=used)
                            for licence, used in self._in_flight.items() if used}

    # ------------------------------------------------------------------ inspection and control

    def profiles(self, entity: str, table: str) -> list[dict[str, Any]]:
        """The profiles of a profile table, in creation order (copies)."""
        with self._lock:
            self._settle()
            return [p.view() for p in self._profile_table(self._entity(entity), table).profiles.values()]

    def records(self, entity: str, custom_table: str) -> list[dict[str, Any]]:
        """The records of a custom table, in creation order (copies)."""
        with self._lock:
            self._settle()
            return [copy.deepcopy(r) for r in self._custom_table(self._entity(entity), custom_table).records.values()]

    def executions(self, entity: str) -> list[dict[str, Any]]:
        """Every execution of an entity, oldest first, with its per-line errors."""
        with self._lock:
            self._settle()
            return [self._execution_details(e) for e in self._entity(entity).executions]

    def state(self) -> dict[str, Any]:
        """Everything at once, as ``GET /_sandbox/state`` serves it."""
        with self._lock:
            self._settle()
            return {
                "now": _moment(self._now()),
                "entities": {
                    name: {
                        "profileTables": {t.id: [p.view() for p in t.profiles.values()]
                                          for t in entity.profile_tables.values()},
                        "customTables": {t.id: [copy.deepcopy(r) for r in t.records.values()]
                                         for t in entity.custom_tables.values()},
                        "executions": [self._execution_details(e) for e in entity.executions],
                    }
                    for name, entity in self._entities.items()
                },
            }

    def inject_faults(
        self,
        status: FaultStatus,
        count: int,
        path_contains: str = "",
        *,
        retry_after: float | None = None,
    ) -> None:
        """Make the next ``count`` API requests whose path (with query) contains ``path_contains`` fail.

        An int status (500, 429, 503, ...) is answered at once, before authentication or any
        processing, with ``Retry-After`` if given. ``"timeout"``: the request is processed (an
        import is created) but the answer is withheld for ``fault_delay_seconds`` and the
        connection then closed — a client with a shorter read timeout gives up not knowing the
        outcome. ``"disconnect"``: processed, then closed at once without an answer.
        Faults queue up in the order injected; ``/_sandbox/`` routes are never affected.
        """
        if not (status in ("timeout", "disconnect") or (isinstance(status, int) and 400 <= status <= 599)):
            raise ValueError(f"fault status must be an HTTP error status, 'timeout' or 'disconnect', not {status!r}")
        if count < 0:
            raise ValueError("count cannot be negative")
        with self._lock:
            self._faults.append(_Fault(status, count, path_contains, retry_after))

    def clear_faults(self) -> None:
        """Forget the injected faults not yet used up."""
        with self._lock:
            self._faults.clear()

    def revoke(self, api_key: str) -> None:
        """The key and every token obtained with it now get 401."""
        with self._lock:
            self._revoked.add(api_key)
            self._save()

    def drop_attribute(self, entity: str, table: str, attribute: str) -> None:
        """Delete an attribute of a profile table, as an Actito administrator can at any moment: an
        import prepared against the old structure is then refused (400, the definition maps an
        attribute the table no longer has)."""
        with self._lock:
            del self._profile_table(self._entity(entity), table).attributes[attribute]

    def advance_clock(self, seconds: float) -> None:
        """Move the sandbox clock (token expiry, daily import budget) forward; real time is untouched."""
        with self._lock:
            self._clock_offset += seconds

    def reset(self) -> None:
        """Back to the fixture: no profiles or executions beyond it, no faults, no tokens, clock restored.

        Execution ids keep counting (an id is never given twice), and the state file, if any, is rewritten."""
        with self._lock:
            next_execution = self._next_execution
            self._load(self._fixture)
            self._next_execution = next_execution
            self._save()

    # ------------------------------------------------------------------ internals: time, lookups

    def _now(self) -> float:
        return self._base_clock() + self._clock_offset

    def _entity(self, name: str) -> _Entity:
        entity = self._entities.get(name)
        if entity is None:
            raise KeyError(f"no entity {name!r} (known: {', '.join(self._entities)})")
        return entity

    @staticmethod
    def _profile_table(entity: _Entity, table: str) -> _ProfileTable:
        found = entity.profile_tables.get(table)
        if found is None:
            raise KeyError(f"entity {entity.name!r} has no profile table {table!r}")
        return found

    @staticmethod
    def _custom_table(entity: _Entity, table: str) -> _CustomTable:
        found = entity.custom_tables.get(table)
        if found is None:
            raise KeyError(f"entity {entity.name!r} has no custom table {table!r}")
        return found

    def _execution_details(self, execution: _Execution) -> dict[str, Any]:
        status = execution.status(time.monotonic(), self.processing_seconds)
        return {
            "id": execution.id,
            "reference": execution.reference,
            "table": execution.definition.table,
            "targetType": "CUSTOM_TABLE" if execution.definition.custom else "PROFILE_TABLE",
            "etlId": execution.etl_id,
            "mode": execution.definition.mode,
            "status": status,
            "counts": dict(execution.counts),
            "errors": copy.deepcopy(execution.errors),
            "message": execution.message,
            "fileName": execution.file_name,
            "createdAt": execution.created_at,
        }

    # ------------------------------------------------------------------ HTTP: one request

    def _track(self, conn: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _serve(self, handler: _Handler, method: str) -> None:
        """Answer one request; every path through here logs exactly one entry."""
        request = _Request(handler, method)
        response: _Response | None
        try:
            with self._lock:
                self._settle()
            if request.path == "/_sandbox" or request.path.startswith("/_sandbox/"):
                try:
                    response = self._control(request)
                except _HttpError as error:
                    response = error.response()
            else:
                response = self._api(request)
            if response is not None:
                request.drain()
            if request.must_close and response is not None:
                handler.close_connection = True
                response.headers["Connection"] = "close"
        except _ClientGone:
            response = None
        except _HttpError as error:  # unreadable framing: answer, then close (the body cannot be skipped)
            response = error.response()
            response.headers["Connection"] = "close"
            handler.close_connection = True
        except Exception as exc:  # a sandbox bug: say so loudly rather than drop the connection
            traceback.print_exc()
            response = _HttpError(500, f"sandbox internal error: {type(exc).__name__}: {exc}").response()
            response.headers["Connection"] = "close"
            handler.close_connection = True
        if response is None:
            handler.close_connection = True
            self._log(method, request.raw_path, 0)
            return
        self._log(method, request.raw_path, response.status)
        _write(handler, response)

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.request_log.append((method, path, status))

    def _api(self, request: _Request) -> _Response | None:
        """Actito's routes: faults, Accept, authentication, the concurrency slot, then the route.

        None means "close without answering" (a "timeout" or "disconnect" fault, after the request
        was processed; the concurrency slot stays held while the answer is withheld, as it would be
        on a server still working on it)."""
        fault = self._take_fault(request.raw_path)
        if fault is not None and isinstance(fault.status, int):
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return _HttpError(fault.status, f"injected fault: HTTP {fault.status}", headers=headers).response()
        held: str | None = None
        try:
            try:
                _check_accept(request)
                licence = self._authenticate(request)
                if not self._acquire(licence):
                    raise _HttpError(429, f"too many concurrent requests: at most {self.max_concurrent} per licence")
                held = licence
                response = self._route(request, licence)
                if self.latency_seconds:
                    self._stopping.wait(self.latency_seconds)
            except _HttpError as error:
                response = error.response()
            if fault is None:
                return response
            request.drain()
            if fault.status == "timeout":
                self._stopping.wait(self.fault_delay_seconds)
            return None
        finally:
            if held is not None:
                self._release(held)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.path_contains in path:
                    fault.remaining -= 1
                    return fault
            return None

    def _acquire(self, licence: str) -> bool:
        with self._lock:
            used = self._in_flight.get(licence, 0)
            counts = self._counts.setdefault(licence, _LicenceCounts())
            counts.calls += 1
            counts.peak_in_flight = max(counts.peak_in_flight, used + 1)
            if used >= self.max_concurrent:
                counts.refused += 1
                return False
            self._in_flight[licence] = used + 1
            return True

    def _release(self, licence: str) -> None:
        with self._lock:
            self._in_flight[licence] -= 1

    def _authenticate(self, request: _Request) -> str:
        """The licence of the API key (``/auth/token``) or of the Bearer token (everything else)."""
        given = request.headers.get("Authorization", "").strip()
        challenge = {"WWW-Authenticate": "Bearer"}
        if request.path == "/auth/token":
            if not given:
                raise _HttpError(401, "missing Authorization header: send the raw API key", headers=challenge)
            if given.lower().startswith(("bearer ", "basic ")):
                raise _HttpError(401, "send the raw API key in Authorization, without a scheme", headers=challenge)
            with self._lock:
                licence = self._keys.get(given)
                if licence is None or given in self._revoked:
                    raise _HttpError(401, "invalid or revoked API key", headers=challenge)
            return licence
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _HttpError(401, "missing bearer token: send Authorization: Bearer <accessToken>", headers=challenge)
        with self._lock:
            found = self._tokens.get(token.strip())
            if found is None:
                raise _HttpError(401, "invalid access token", headers=challenge)
            if found.api_key in self._revoked:
                raise _HttpError(401, "the API key of this token was revoked", headers=challenge)
            if self._now() >= found.expires:
                raise _HttpError(401, "access token expired", headers=challenge)
            return found.licence

    # ------------------------------------------------------------------ HTTP: routes

    def _route(self, request: _Request, licence: str) -> _Response:
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            action = methods.get(request.method)
            if action is None:
                raise _HttpError(405, f"{request.method} is not allowed on {request.path}",
                                 headers={"Allow": ", ".join(sorted(methods))})
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            return cast(_Response, getattr(self, action)(request, licence, **params))
        raise _HttpError(404, f"no route {request.path}")

    def _licensed_entity(self, licence: str, name: str) -> _Entity:
        with self._lock:
            entity = self._entities.get(name)
            if entity is None or entity.licence != licence:
                raise _HttpError(404, f"entity {name!r} not found")
            return entity

    def _token(self, request: _Request, licence: str) -> _Response:
        api_key = request.headers.get("Authorization", "").strip()
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(api_key, licence, self._now() + self.token_ttl_seconds)
            self._counts.setdefault(licence, _LicenceCounts()).tokens += 1
        return _Response(200, {
            "accessToken": token,
            "tokenType": "bearer",
            "expiresIn": f"{self.token_ttl_seconds}s",
            "scope": f"licence:{licence}",
            "jti": uuid.uuid4().hex,
        })

    def _list_entities(self, request: _Request, licence: str) -> _Response:
        with self._lock:
            entities = [
                {"id": e.id, "name": e.name, "comment": e.comment}
                for e in self._entities.values()
                if e.licence == licence
            ]
        return _Response(200, {"entities": entities})

    def _list_profile_tables(self, request: _Request, licence: str, entity: str) -> _Response:
        found = self._licensed_entity(licence, entity)
        return _Response(200, {"profileTables": [t.published() for t in found.profile_tables.values()]})

    def _get_profile_table(self, request: _Request, licence: str, entity: str, table: str) -> _Response:
        found = self._licensed_entity(licence, entity).profile_tables.get(table)
        if found is None:
            raise _HttpError(404, f"profile table {table!r} not found in entity {entity!r}")
        return _Response(200, found.published())

    def _list_custom_tables(self, request: _Request, licence: str, entity: str) -> _Response:
        found = self._licensed_entity(licence, entity)
        return _Response(200, {"customTables": [t.published() for t in found.custom_tables.values()]})

    def _get_custom_table(self, request: _Request, licence: str, entity: str, table: str) -> _Response:
        found = self._licensed_entity(licence, entity).custom_tables.get(table)
        if found is None:
            raise _HttpError(404, f"custom table {table!r} not found in entity {entity!r}")
        return _Response(200, found.published())

    def _list_etls(self, request: _Request, licence: str, entity: str) -> _Response:
        found = self._licensed_entity(licence, entity)
        etls = [{"id": etl_id, "name": name, "definition": d.published()} for etl_id, (name, d) in found.etls.items()]
        return _Response(200, {"etls": etls})

    def _get_etl(self, request: _Request, licence: str, entity: str, etl: str) -> _Response:
        found = self._licensed_entity(licence, entity).etls.get(etl)
        if found is None:
            raise _HttpError(404, f"ETL {etl!r} not found in entity {entity!r}")
        return _Response(200, {"id": etl, "name": found[0], "definition": found[1].published()})

    def _create_execution(self, request: _Request, licence: str, entity: str) -> _Response:
        """One-shot import: multipart ``definition`` (JSON) + ``inputFile``."""
        found = self._licensed_entity(licence, entity)
        parts = self._multipart(request, allowed=("definition", "inputFile"))
        if "definition" not in parts:
            raise _HttpError(400, "missing multipart part 'definition'", [{"field": "definition", "message": "missing"}])
        try:
            raw = json.loads(parts["definition"][1].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _HttpError(400, f"the definition part is not valid JSON: {exc}") from None
        definition = _parse_definition(raw, found)
        reference = raw.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise _HttpError(400, "reference must be a string", [{"field": "reference", "message": "not a string"}])
        return self._new_execution(request, found, definition, reference, None, parts)

    def _trigger(self, request: _Request, licence: str, entity: str, etl: str) -> _Response:
        """Recurring import: the ETL's stored definition + multipart ``inputFile`` (+ ``reference``)."""
        found = self._licensed_entity(licence, entity)
        stored = found.etls.get(etl)
        if stored is None:
            raise _HttpError(404, f"ETL {etl!r} not found in entity {entity!r}")
        parts = self._multipart(request, allowed=("reference", "inputFile"))
        reference = None
        if "reference" in parts:
            try:
                reference = parts["reference"][1].decode("utf-8")
            except UnicodeDecodeError:
                raise _HttpError(400, "the reference part is not UTF-8") from None
        return self._new_execution(request, found, stored[1], reference, etl, parts)

    def _multipart(self, request: _Request, *, allowed: Sequence[str]) -> dict[str, tuple[str | None, bytes]]:
        content_type = request.headers.get("Content-Type", "")
        holder = Message()
        holder["Content-Type"] = content_type
        boundary = holder.get_param("boundary")
        if holder.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
            raise _HttpError(400, "the body must be multipart/form-data with a boundary")
        body = request.body(self.max_file_bytes + _MULTIPART_SLACK)
        if body is None:
            raise _HttpError(400, f"the upload is over the limit of {self.max_file_bytes} bytes (100 MB)")
        parts: dict[str, tuple[str | None, bytes]] = {}
        for headers, content in _split_multipart(body, boundary.encode("latin-1")):
            name = _disposition_param(headers, "name")
            if name is None:
                raise _HttpError(400, "a multipart part has no Content-Disposition name")
            if name not in allowed:
                raise _HttpError(400, f"unexpected multipart part {name!r} (expected: {', '.join(allowed)})",
                                 [{"field": name, "message": "unexpected part"}])
            if name in parts:
                raise _HttpError(400, f"multipart part {name!r} sent twice", [{"field": name, "message": "duplicate"}])
            parts[name] = (_disposition_param(headers, "filename"), content)
        if "inputFile" not in parts:
            raise _HttpError(400, "missing multipart part 'inputFile'", [{"field": "inputFile", "message": "missing"}])
        size = len(parts["inputFile"][1])
        if size > self.max_file_bytes:
            raise _HttpError(400, f"the input file is {size} bytes: over the limit of {self.max_file_bytes} bytes "
                                  "(100 MB)", [{"field": "inputFile", "message": "file too large"}])
        return parts

    def _new_execution(
        self,
        request: _Request,
        entity: _Entity,
        definition: _Definition,
        reference: str | None,
        etl_id: str | None,
        parts: Mapping[str, tuple[str | None, bytes]],
    ) -> _Response:
        file_name, payload = parts["inputFile"]
        with self._lock:
            now = self._now()
            day = datetime.fromtimestamp(now, UTC).date().isoformat()
            budget_key = (entity.name, definition.table, day)
            used = self._imports_today.get(budget_key, 0)
            if used >= self.daily_imports_per_table:
                raise _HttpError(429, f"daily import limit reached for table {definition.table} "
                                      f"({self.daily_imports_per_table} per day, UTC {day})")
            self._imports_today[budget_key] = used + 1
            execution = _Execution(
                id=str(self._next_execution),
                entity=entity.name,
                reference=reference,
                definition=definition,
                etl_id=etl_id,
                file_name=file_name or "inputFile",
                created_at=_moment(now),
                started=time.monotonic(),
                payload=payload,
            )
            self._next_execution += 1
            entity.executions.append(execution)
            self._pending.append(execution)
            self._save()  # the execution and the day's budget it used outlive this process
        location = f"{self.url}/mass-imports/v5/entities/{entity.name}/etl-executions/{execution.id}"
        return _Response(201, {"id": execution.id, "reference": reference, "status": "PENDING"},
                         {"Location": location})

    def _list_executions(self, request: _Request, licence: str, entity: str) -> _Response:
        found = self._licensed_entity(licence, entity)
        wanted = request.query.get("reference")
        now = time.monotonic()
        with self._lock:
            listed = [
                e.view(e.status(now, self.processing_seconds))
                for e in found.executions
                if wanted is None or e.reference in wanted
            ]
        return _Response(200, {"executions": listed})

    def _find_execution(self, licence: str, entity: str, execution: str) -> _Execution:
        found = self._licensed_entity(licence, entity)
        with self._lock:
            for candidate in found.executions:
                if candidate.id == execution:
                    return candidate
        raise _HttpError(404, f"execution {execution!r} not found in entity {entity!r}")

    def _get_execution(self, request: _Request, licence: str, entity: str, execution: str) -> _Response:
        found = self._find_execution(licence, entity, execution)
        with self._lock:
            return _Response(200, found.view(found.status(time.monotonic(), self.processing_seconds)))

    def _get_report(self, request: _Request, licence: str, entity: str, execution: str) -> _Response:
        found = self._find_execution(licence, entity, execution)
        with self._lock:
            status = found.status(time.monotonic(), self.processing_seconds)
            if found.final is None:
                raise _HttpError(409, f"execution {execution} is {status}: its report exists once it has ended")
            return _Response(200, {"id": found.id, "status": status, "counts": dict(found.counts),
                                   "errors": copy.deepcopy(found.errors)})

    # ------------------------------------------------------------------ HTTP: control routes

    def _control(self, request: _Request) -> _Response:
        path, method = request.path, request.method
        if path == "/_sandbox/state" and method == "GET":
            return _Response(200, self.state())
        if path == "/_sandbox/reset" and method == "POST":
            request.drain()
            self.reset()
            return _Response(204)
        if path == "/_sandbox/limits" and method == "GET":
            return _Response(200, {"licences": self.limits()})
        if path == "/_sandbox/limits/reset" and method == "POST":
            request.drain()
            self.reset_limits()
            return _Response(204)
        body = request.body(_CONTROL_BODY_LIMIT) if method == "POST" else b""
        if body is None:
            raise _HttpError(400, f"the body is over {_CONTROL_BODY_LIMIT} bytes")
        if path in ("/_sandbox/faults", "/_sandbox/revoke", "/_sandbox/clock") and method == "POST":
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                raise _HttpError(400, "the body must be JSON") from None
            if not isinstance(data, dict):
                raise _HttpError(400, "the body must be a JSON object")
            try:
                if path == "/_sandbox/faults":
                    retry_after = data.get("retry_after")
                    self.inject_faults(
                        cast(FaultStatus, data.get("status")),  # validated by inject_faults
                        int(data.get("count", 1)),
                        str(data.get("path_contains", "")),
                        retry_after=None if retry_after is None else float(retry_after),
                    )
                    return _Response(204)
                if path == "/_sandbox/revoke":
                    api_key = data.get("api_key")
                    if not isinstance(api_key, str):
                        raise ValueError("api_key must be a string")
                    self.revoke(api_key)
                    return _Response(204)
                self.advance_clock(float(data.get("advance_seconds", 0)))
                with self._lock:
                    return _Response(200, {"now": _moment(self._now())})
            except (TypeError, ValueError) as exc:
                raise _HttpError(400, str(exc)) from None
        raise _HttpError(404, f"no sandbox control route {method} {path}")

    # ------------------------------------------------------------------ imports

    def _settle(self) -> None:
        """Apply, oldest first, every execution whose processing time is over (caller holds the lock)."""
        now = time.monotonic()
        applied = False
        while self._pending and now - self._pending[0].started >= self.processing_seconds:
            applied = True
            execution = self._pending.pop(0)
            try:
                self._apply(execution)
            except Exception as exc:  # a sandbox bug must not leave an execution RUNNING forever
                traceback.print_exc()
                execution.final = "ERROR"
                execution.errors = [{"line": 0, "column": None, "value": None, "message": "sandbox internal error"}]
                execution.message = f"sandbox internal error: {type(exc).__name__}: {exc}"
        if applied:
            self._save()

    def _apply(self, execution: _Execution) -> None:
        entity = self._entities[execution.entity]
        definition = execution.definition
        payload = execution.payload or b""
        execution.payload = None
        counts = {"lines": 0, "created": 0, "updated": 0, "deleted": 0, "rejected": 0}
        try:
            files = _read_files(payload, definition)
            plans = [self._plan(entity, definition, name, records[0]) for name, records in files]
        except _FileError as error:
            execution.final = "ERROR"
            execution.counts = counts
            execution.errors = [error.report_entry()]
            execution.message = error.message if error.line <= 0 else f"line {error.line}: {error.message}"
            return
        many = definition.compression == "ZIP"
        moment = _moment(self._now())
        for (name, records), plan in zip(files, plans):
            for line, cells in enumerate(records[1:], start=2):
                counts["lines"] += 1
                if len(cells) == 0 and len(plan.columns) == 1:
                    cells = [""]
                if len(cells) != len(plan.columns):
                    problems = [_Problem(None, None, f"{len(cells)} values but the header has {len(plan.columns)} columns")]
                elif definition.custom:
                    problems, outcome = self._record_line(entity, definition, plan, cells)
                else:
                    problems, outcome = self._profile_line(entity, definition, plan, cells, moment)
                if problems:
                    counts["rejected"] += 1
                    entry: dict[str, Any] = {
                        "line": line,
                        "column": problems[0].column,
                        "value": problems[0].value,
                        "message": problems[0].message,
                        "problems": [{"column": p.column, "value": p.value, "message": p.message} for p in problems],
                    }
                    if many:
                        entry["file"] = name
                    execution.errors.append(entry)
                else:
                    counts[outcome] += 1
        execution.counts = counts
        execution.final = "PARTIAL_SUCCESS" if counts["rejected"] else "SUCCESS"
        done = ", ".join(f"{counts[k]} {k}" for k in ("created", "updated", "deleted", "rejected") if counts[k])
        execution.message = f"{counts['lines']} lines" + (f": {done}" if done else "")

    def _plan(self, entity: _Entity, definition: _Definition, file: str | None, header: list[str]) -> _Plan:
        """Map the header onto the target table; any column that maps nowhere makes the file an ERROR."""
        table: _ProfileTable | _CustomTable = (
            entity.custom_tables[definition.table] if definition.custom else entity.profile_tables[definition.table]
        )
        columns: list[_Column] = []
        column_of: dict[str, str] = {}
        for name in header:
            if name == "":
                raise _FileError("the header has an empty column name", line=1, file=file)
            if any(c.name == name for c in columns):
                raise _FileError(f"column {name!r} appears twice in the header", line=1, column=name, file=file)
            if name in definition.subscriptions:
                columns.append(_Column(name, None, definition.subscriptions[name]))
                continue
            target = definition.attributes.get(name, name)
            if target in _TECHNICAL and not definition.custom:
                raise _FileError(f"column {name!r}: {target} is technical, set by Actito, it cannot be imported",
                                 line=1, column=name, file=file)
            attribute = table.attributes.get(target)
            if attribute is None:
                raise _FileError(f"unknown column {name!r}: table {table.id!r} has no attribute {target!r}",
                                 line=1, column=name, file=file)
            if target in column_of:
                raise _FileError(f"columns {column_of[target]!r} and {name!r} both map to attribute {target!r}",
                                 line=1, column=name, file=file)
            column_of[target] = name
            columns.append(_Column(name, attribute, None))
        key = next((c for c in columns if c.name == definition.key_column), None)
        if key is None:
            raise _FileError(f"the key column {definition.key_column!r} is not in the header", line=1, file=file)
        if definition.mode == "DELETE" and len(columns) != 1:
            raise _FileError("a DELETE import holds only the key column", line=1, file=file)
        return _Plan(columns, key, column_of)

    def _parse_cells(
        self, definition: _Definition, plan: _Plan, cells: list[str]
    ) -> tuple[list[_Problem], dict[str, Any], dict[str, bool], dict[str, str]]:
        """Validate one line: attribute values (None = clear), subscriptions, raw text by attribute."""
        problems: list[_Problem] = []
        values: dict[str, Any] = {}
        subscriptions: dict[str, bool] = {}
        raw: dict[str, str] = {}
        for column, cell in zip(plan.columns, cells):
            if column.subscription is not None:
                if cell == "":
                    continue  # a subscription has no empty state: an empty cell changes nothing
                flag = _YES_NO.get(cell.upper())
                if flag is None:
                    problems.append(_Problem(column.name, cell, "subscription value must be Y or N (or TRUE/FALSE/1/0)"))
                else:
                    subscriptions[column.subscription] = flag
                continue
            attribute = cast(_Attr, column.attribute)
            raw[attribute.name] = cell
            if cell == "":
                if column is plan.key:
                    problems.append(_Problem(column.name, cell, "missing key"))
                elif definition.empty_values == "CLEAR":
                    values[attribute.name] = None
                continue
            value, error = _convert(attribute, cell)
            if error is not None:
                problems.append(_Problem(column.name, cell, error))
            else:
                values[attribute.name] = value
        return problems, values, subscriptions, raw

    def _profile_line(
        self, entity: _Entity, definition: _Definition, plan: _Plan, cells: list[str], moment: str
    ) -> tuple[list[_Problem], str]:
        table = entity.profile_tables[definition.table]
        problems, values, subscriptions, raw = self._parse_cells(definition, plan, cells)
        if problems:
            return problems, ""
        key_name = definition.key_attribute
        key = values[key_name]
        existing = table.find(key_name, key)
        key_problem = _Problem(plan.key.name, raw[key_name], "")
        if definition.mode == "DELETE":
            if existing is None:
                return [_replace_message(key_problem, "profile not found")], ""
            table.delete(existing)
            return [], "deleted"
        if existing is not None and definition.mode == "CREATE_ONLY":
            return [_replace_message(key_problem, "profile already exists")], ""
        if existing is None and definition.mode == "UPDATE_ONLY":
            return [_replace_message(key_problem, "profile not found")], ""
        attributes = dict(existing.attributes) if existing is not None else {}
        for name, value in values.items():
            if value is None:
                attributes.pop(name, None)
            else:
                attributes[name] = value
        for name in table.index:
            value = attributes.get(name)
            owner = table.find(name, value) if value is not None else None
            if owner is not None and owner is not existing:
                problems.append(_Problem(plan.column_of.get(name, name), raw.get(name),
                                         f"{name} {value!r} already belongs to another profile ({owner.profile_id})"))
        for attribute in table.attributes.values():
            if attribute.mandatory and attributes.get(attribute.name) in (None, ""):
                problems.append(_Problem(plan.column_of.get(attribute.name, attribute.name), raw.get(attribute.name),
                                         f"mandatory attribute {attribute.name} is empty"))
        if problems:
            return problems, ""
        if existing is None:
            profile = _Profile(self._next_profile, {}, {}, moment, moment)
            self._next_profile += 1
            outcome = "created"
        else:
            profile = existing
            profile.updated = moment
            outcome = "updated"
        profile.subscriptions.update(subscriptions)
        table.store(profile, attributes)
        return [], outcome

    def _record_line(
        self, entity: _Entity, definition: _Definition, plan: _Plan, cells: list[str]
    ) -> tuple[list[_Problem], str]:
        table = entity.custom_tables[definition.table]
        problems, values, _, raw = self._parse_cells(definition, plan, cells)
        if problems:
            return problems, ""
        key = values[table.primary_key]
        existing = table.records.get(key)
        key_problem = _Problem(plan.key.name, raw[table.primary_key], "")
        if definition.mode == "DELETE":
            if existing is None:
                return [_replace_message(key_problem, "record not found")], ""
            del table.records[key]
            return [], "deleted"
        if existing is not None and definition.mode == "CREATE_ONLY":
            return [_replace_message(key_problem, "record already exists")], ""
        if existing is None and definition.mode == "UPDATE_ONLY":
            return [_replace_message(key_problem, "record not found")], ""
        record = dict(existing) if existing is not None else {}
        for name, value in values.items():
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        for attribute in table.attributes.values():
            if attribute.mandatory and record.get(attribute.name) in (None, "") and attribute.name != table.primary_key:
                if any(k.attribute == attribute.name for k in table.foreign_keys):
                    continue  # reported below as "profile not found", Actito's word for it
                problems.append(_Problem(plan.column_of.get(attribute.name, attribute.name), raw.get(attribute.name),
                                         f"mandatory attribute {attribute.name} is empty"))
        for foreign in table.foreign_keys:
            value = record.get(foreign.attribute)
            if value is None and table.type != "INTERACTIONS":
                continue
            profiles = entity.profile_tables[foreign.profile_table]
            if value is None or profiles.find(foreign.profile_attribute, value) is None:
                problems.append(_Problem(plan.column_of.get(foreign.attribute, foreign.attribute),
                                         raw.get(foreign.attribute, ""), "profile not found"))
        if problems:
            return problems, ""
        table.records[key] = record
        return [], "updated" if existing is not None else "created"


# ---------------------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    """One thread per connection; daemon threads so a stuck client never keeps the process alive."""

    daemon_threads = True
    request_queue_size = 64
    sandbox: ActitoSandbox


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the sandbox; HTTP/1.1 so clients keep connections alive as with Actito."""

    protocol_version = "HTTP/1.1"
    server_version = "ActitoSandbox/1.0"
    #: headers and body go out in separate writes: without TCP_NODELAY each answer on a kept-alive
    #: connection waits ~40 ms for the client's delayed ACK
    disable_nagle_algorithm = True
    #: an idle keep-alive connection is closed after this many seconds: well above the client's
    #: longest poll interval (30 s), so a reused connection is not closed under its next request
    timeout = 120

    def _sandbox(self) -> ActitoSandbox:
        return cast(_Server, self.server).sandbox

    def setup(self) -> None:
        super().setup()
        self._sandbox()._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self._sandbox()._track(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._sandbox()._serve(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self._sandbox()._serve(self, "POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._sandbox()._serve(self, "PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._sandbox()._serve(self, "DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._sandbox()._serve(self, "PATCH")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """Quiet: tests read `ActitoSandbox.request_log` instead of stderr."""


class _Request:
    """One request as the sandbox sees it; the body is read at most once, or drained unread."""

    def __init__(self, handler: _Handler, method: str) -> None:
        self.handler = handler
        self.method = method
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
        except _HttpError:
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
            raise _HttpError(400, f"bad Content-Length {length_text!r}") from None
        if length > limit:
            _discard(rfile, length)
            return None
        return _read_exact(rfile, length)

    def drain(self) -> None:
        """Read an unread body so the connection can carry the next request."""
        if not self._done:
            self.body(0)


def _read_exact(rfile: io.BufferedIOBase, length: int) -> bytes:
    data = rfile.read(length)
    if len(data) != length:
        raise _ClientGone()
    return data


def _discard(rfile: io.BufferedIOBase, length: int) -> None:
    while length > 0:
        chunk = rfile.read(min(length, 1 << 16))
        if not chunk:
            raise _ClientGone()
        length -= len(chunk)


def _read_chunked(rfile: io.BufferedIOBase, limit: int) -> bytes | None:
    """A ``Transfer-Encoding: chunked`` body (requests sends one for a generator body)."""
    out = bytearray()
    over = False
    while True:
        line = rfile.readline(1 << 16)
        if not line:
            raise _ClientGone()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _HttpError(400, "malformed chunked body") from None
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


def _write(handler: _Handler, response: _Response) -> None:
    body = b"" if response.body is None else json.dumps(response.body, ensure_ascii=False).encode("utf-8")
    try:
        handler.send_response(response.status)
        for name, value in response.headers.items():
            handler.send_header(name, value)
        if response.body is not None:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
    except OSError:
        handler.close_connection = True


def _check_accept(request: _Request) -> None:
    accepted = [part.split(";", 1)[0].strip().lower() for part in request.headers.get("Accept", "").split(",")]
    if "application/json" not in accepted:
        raise _HttpError(406, "send Accept: application/json")


def _split_multipart(body: bytes, boundary: bytes) -> Iterator[tuple[Message, bytes]]:
    """The parts of a multipart body (RFC 7578), each as its headers and its content, copied once."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise _HttpError(400, "malformed multipart body: no boundary found")
        position += 2
    parser = BytesHeaderParser()
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return
        end_of_line = body.find(b"\r\n", position)
        if end_of_line < 0:
            raise _HttpError(400, "malformed multipart body: truncated part")
        start = end_of_line + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise _HttpError(400, "malformed multipart body: no closing boundary")
        if body.startswith(b"\r\n", start):
            head, content = b"", body[start + 2 : end]
        else:
            split = body.find(b"\r\n\r\n", start, end + 2)
            if split < 0:
                raise _HttpError(400, "malformed multipart body: part headers never end")
            head, content = body[start:split], body[split + 4 : end]
        yield parser.parsebytes(head + b"\r\n\r\n"), content
        position = end + 2


def _disposition_param(headers: Message, name: str) -> str | None:
    value = headers.get_param(name, header="content-disposition")
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)


# ---------------------------------------------------------------------------------------- files and values


def _read_files(payload: bytes, definition: _Definition) -> list[tuple[str | None, list[list[str]]]]:
    """Decompress and parse the upload: each CSV (one, or several in a ZIP) as its records, header first."""
    if definition.compression == "GZIP":
        try:
            contents: list[tuple[str | None, bytes]] = [(None, gzip.decompress(payload))]
        except (OSError, EOFError, zlib.error) as exc:
            raise _FileError(f"the file cannot be decompressed as GZIP: {exc}") from None
    elif definition.compression == "ZIP":
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                contents = [(i.filename, archive.read(i)) for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise _FileError(f"the file cannot be read as ZIP: {exc}") from None
        if not contents:
            raise _FileError("the ZIP archive holds no file")
    else:
        contents = [(None, payload)]
    return [(name, _parse_csv(data, definition, name)) for name, data in contents]


def _parse_csv(data: bytes, definition: _Definition, name: str | None) -> list[list[str]]:
    if data.startswith(_BOMS):
        raise _FileError("the file starts with a byte order mark (BOM): Actito rejects it", line=1, file=name)
    try:
        text = data.decode(_ENCODINGS[definition.encoding])
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _FileError(f"the file is not valid {definition.encoding}", line=line, file=name) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=definition.separator, quotechar='"',
                        doublequote=True, strict=True)
    records: list[list[str]] = []
    try:
        for record in reader:
            records.append(record)
    except csv.Error as exc:
        raise _FileError(f"malformed CSV: {exc}", line=len(records) + 1, file=name) from None
    if not records:
        raise _FileError("the file is empty: a header line is required", line=1, file=name)
    return records


def _convert(attribute: _Attr, text: str) -> tuple[Any, str | None]:
    """The stored value for one non-empty cell, or the reason the line is rejected."""
    if len(text) > _MAX_STRING:
        return None, f"longer than {_MAX_STRING} characters"
    if attribute.max_length is not None and len(text) > attribute.max_length:
        return None, f"longer than {attribute.max_length} characters (maxLength of {attribute.name})"
    rule = attribute.rule
    if rule == "string":
        return text, None
    if rule == "email":
        return (text, None) if _valid_email(text) else (None, "invalid e-mail address")
    if rule == "sex":
        return (text, None) if text in ("M", "F") else (None, "sex must be M or F")
    if rule == "title":
        return (text, None) if text in ("Mr", "Mrs", "Ms") else (None, "title must be Mr, Mrs or Ms")
    if rule == "phone":
        ok = _PHONE.fullmatch(text) is not None
        return (text, None) if ok else (None, "not an international phone number (+ and 8 to 15 digits)")
    if rule == "country":
        ok = _COUNTRY.fullmatch(text) is not None
        return (text, None) if ok else (None, "not an ISO 3166-1 alpha-2 country code")
    if rule == "language":
        ok = _LANGUAGE.fullmatch(text) is not None
        return (text, None) if ok else (None, "not an ISO 639-1 language code")
    if rule == "integer":
        if _INTEGER.fullmatch(text) and -_INT64 <= int(text) < _INT64:
            return int(text), None
        return None, "not an integer"
    if rule == "decimal":
        return (float(text), None) if _DECIMAL.fullmatch(text) else (None, "not a decimal number (decimal point '.')")
    if rule == "boolean":
        flag = _YES_NO.get(text.upper())
        return (flag, None) if flag is not None else (None, "not a boolean (TRUE/FALSE, Y/N, 1/0)")
    if rule == "date":
        return (text, None) if _valid_date(text) else (None, "not a date (yyyy-MM-dd)")
    if rule == "timestamp":
        return (text, None) if _valid_timestamp(text) else (None, "not a date-time (yyyy-MM-dd HH:mm:ss)")
    raise AssertionError(f"unknown rule {rule}")


def _valid_email(text: str) -> bool:
    """Actito's shape: one @, allowed local characters, no "..", a dotted domain whose labels do not
    start or end with "-", and a suffix of at least two letters. (Whether the suffix is a real TLD
    is not checked here: the client rejects unknown TLDs before a file is written.)"""
    local, at, domain = text.partition("@")
    if not at or not local or "@" in domain or ".." in local:
        return False
    if _EMAIL_LOCAL.fullmatch(local) is None:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or any(_DOMAIN_LABEL.fullmatch(label) is None for label in labels):
        return False
    return _SUFFIX.fullmatch(labels[-1]) is not None


def _valid_date(text: str) -> bool:
    if _DATE.fullmatch(text) is None:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _valid_timestamp(text: str) -> bool:
    if _TIMESTAMP.fullmatch(text) is None:
        return False
    try:
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


def _replace_message(problem: _Problem, message: str) -> _Problem:
    return _Problem(problem.column, problem.value, message)


#: days a finished execution (and its report, which names people) stays in the saved state: a run's
#: recovery looks up only executions of runs that died hours ago, at most
EXECUTIONS_KEPT_DAYS = 14


def _moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------- state file


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of a file from the next: os.replace gives each save a new inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _saved_execution(execution: _Execution) -> dict[str, Any]:
    """An execution as the state file keeps it; the file of one still pending goes along (base64)."""
    return {
        "id": execution.id,
        "reference": execution.reference,
        "definition": dataclasses.asdict(execution.definition),
        "etlId": execution.etl_id,
        "fileName": execution.file_name,
        "createdAt": execution.created_at,
        "final": execution.final,
        "counts": execution.counts,
        "errors": execution.errors,
        "message": execution.message,
        "payload": None if execution.payload is None else base64.b64encode(execution.payload).decode("ascii"),
    }


def _restored_execution(entity: str, raw: Mapping[str, Any]) -> _Execution:
    payload = raw["payload"]
    final = raw["final"]
    return _Execution(
        id=str(raw["id"]),
        entity=entity,
        reference=None if raw["reference"] is None else str(raw["reference"]),
        definition=_Definition(**raw["definition"]),
        etl_id=None if raw["etlId"] is None else str(raw["etlId"]),
        file_name=str(raw["fileName"]),
        created_at=str(raw["createdAt"]),
        started=time.monotonic(),
        payload=None if payload is None else base64.b64decode(payload, validate=True),
        final=None if final is None else str(final),
        counts={str(k): int(v) for k, v in raw["counts"].items()},
        errors=[dict(error) for error in raw["errors"]],
        message=None if raw["message"] is None else str(raw["message"]),
    )


# ---------------------------------------------------------------------------------------- definitions


def _parse_definition(raw: Any, entity: _Entity) -> _Definition:
    """Validate an import definition against the entity's tables: 400 listing every problem (404 for
    an unknown target table), so a wrong definition is refused before an execution exists."""
    if not isinstance(raw, Mapping):
        raise _HttpError(400, "the definition must be a JSON object")
    problems: list[dict[str, str]] = []

    def bad(field_name: str, message: str) -> None:
        problems.append({"field": field_name, "message": message})

    target = raw.get("target")
    target_type = target.get("type") if isinstance(target, Mapping) else None
    table_id = target.get("id") if isinstance(target, Mapping) else None
    if target_type not in ("PROFILE_TABLE", "CUSTOM_TABLE"):
        bad("target.type", "must be PROFILE_TABLE or CUSTOM_TABLE")
    if not isinstance(table_id, str) or not table_id:
        bad("target.id", "must be the table id")
    custom = target_type == "CUSTOM_TABLE"
    table: _ProfileTable | _CustomTable | None = None
    if not problems:
        table = entity.custom_tables.get(str(table_id)) if custom else entity.profile_tables.get(str(table_id))
        if table is None:
            kind = "custom" if custom else "profile"
            raise _HttpError(404, f"{kind} table {table_id!r} not found in entity {entity.name!r}",
                             [{"field": "target.id", "message": "unknown table"}])

    mode = raw.get("mode")
    if mode not in _MODES:
        bad("mode", f"must be one of {', '.join(_MODES)}")
    fmt = raw.get("format", {})
    if not isinstance(fmt, Mapping):
        bad("format", "must be an object")
        fmt = {}
    separator = fmt.get("separator", ",")
    if separator not in _SEPARATORS:
        bad("format.separator", "must be ',', ';' or a tab")
    encoding = str(fmt.get("encoding", "UTF-8")).upper()
    if encoding not in _ENCODINGS:
        bad("format.encoding", "must be UTF-8 or ISO-8859-1")
    compression = str(fmt.get("compression", "NONE")).upper()
    if compression not in _COMPRESSIONS:
        bad("format.compression", "must be NONE, GZIP or ZIP")
    empty_values = str(raw.get("emptyValues", "KEEP")).upper()
    if empty_values not in ("KEEP", "CLEAR"):
        bad("emptyValues", "must be KEEP or CLEAR")

    attributes: dict[str, str] = {}
    for i, item in enumerate(raw.get("attributes") or []):
        column = item.get("column") if isinstance(item, Mapping) else None
        attribute = item.get("attribute") if isinstance(item, Mapping) else None
        if not isinstance(column, str) or not isinstance(attribute, str) or not column or not attribute:
            bad(f"attributes[{i}]", "must be {\"column\": ..., \"attribute\": ...}")
        elif column in attributes:
            bad(f"attributes[{i}]", f"column {column!r} mapped twice")
        elif table is not None and attribute not in table.attributes:
            bad(f"attributes[{i}]", f"table {table.id!r} has no attribute {attribute!r}")
        elif attribute in _TECHNICAL and not custom:
            bad(f"attributes[{i}]", f"{attribute} is technical, set by Actito")
        else:
            attributes[column] = attribute
    subscriptions: dict[str, str] = {}
    for i, item in enumerate(raw.get("subscriptions") or []):
        column = item.get("column") if isinstance(item, Mapping) else None
        name = item.get("subscription") if isinstance(item, Mapping) else None
        if custom:
            bad("subscriptions", "a custom table has no subscriptions")
            break
        if not isinstance(column, str) or not isinstance(name, str) or not column or not name:
            bad(f"subscriptions[{i}]", "must be {\"column\": ..., \"subscription\": ...}")
        elif column in subscriptions or column in attributes:
            bad(f"subscriptions[{i}]", f"column {column!r} mapped twice")
        elif isinstance(table, _ProfileTable) and name not in table.subscriptions:
            bad(f"subscriptions[{i}]", f"table {table.id!r} has no subscription {name!r}")
        else:
            subscriptions[column] = name

    key_column = raw.get("keyColumn")
    key_attribute = ""
    if not isinstance(key_column, str) or not key_column:
        bad("keyColumn", "must name the CSV column holding the key")
    elif table is not None:
        key_attribute = attributes.get(key_column, key_column)
        if isinstance(table, _CustomTable):
            if key_attribute != table.primary_key:
                bad("keyColumn", f"must hold the table's primary key {table.primary_key!r}")
        else:
            key_attr = table.attributes.get(key_attribute)
            if key_attr is None or not key_attr.unique:
                unique = ", ".join(a.name for a in table.attributes.values() if a.unique)
                bad("keyColumn", f"must hold a unique attribute of table {table.id!r} ({unique})")

    collection = raw.get("dataCollection") or {}
    if not isinstance(collection, Mapping):
        bad("dataCollection", "must be an object")
        collection = {}
    moment = collection.get("date")
    if moment is not None and (not isinstance(moment, str) or not _valid_timestamp(moment)):
        bad("dataCollection.date", "must be yyyy-MM-dd HH:mm:ss")

    if problems:
        listing = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise _HttpError(400, f"invalid definition: {listing}", problems)
    assert table is not None
    return _Definition(
        custom=custom,
        table=table.id,
        mode=str(mode),
        key_column=str(key_column),
        key_attribute=key_attribute,
        separator=str(separator),
        encoding=encoding,
        compression=compression,
        empty_values=empty_values,
        attributes=attributes,
        subscriptions=subscriptions,
        data_collection=dict(collection),
    )


# ---------------------------------------------------------------------------------------- fixture


def _fixture_str(raw: Any, key: str, what: str) -> str:
    value = raw.get(key) if isinstance(raw, Mapping) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"sandbox fixture: a {what} needs a non-empty string {key!r}")
    return value


def _load_attr(raw: Any, where: str) -> _Attr:
    name = _fixture_str(raw, "name", f"attribute of {where}")
    kind = str(raw.get("type", "CUSTOM"))
    value_type = raw.get("valueType")
    if kind == "CUSTOM":
        rule = _VALUE_TYPE_RULES.get(str(value_type))
    else:
        rule = _PREDEFINED_RULES.get(kind)
    if rule is None:
        raise ValueError(f"sandbox fixture: {where}.{name}: unknown type {kind}/{value_type}")
    restriction = raw.get("valueRestriction") or {}
    max_length = restriction.get("maxLength") if isinstance(restriction, Mapping) else None
    published = dict(raw)
    published.setdefault("type", kind)
    published["unique"] = bool(raw.get("unique", False))
    published["mandatory"] = bool(raw.get("mandatory", False))
    return _Attr(
        name=name,
        type=kind,
        value_type=None if value_type is None else str(value_type),
        unique=published["unique"],
        mandatory=published["mandatory"],
        max_length=None if max_length is None else int(max_length),
        rule=rule,
        published=published,
    )


def _load_entity(raw: Any, licence: str) -> _Entity:
    name = _fixture_str(raw, "name", "entity")
    profile_tables: dict[str, _ProfileTable] = {}
    for table_raw in raw.get("profileTables") or []:
        table_id = _fixture_str(table_raw, "id", f"profile table of {name}")
        attributes = {a.name: a for a in (_load_attr(r, table_id) for r in table_raw.get("attributes") or [])}
        table = _ProfileTable(
            id=table_id,
            name=str(table_raw.get("name", table_id)),
            attributes=attributes,
            subscriptions=[str(s["name"] if isinstance(s, Mapping) else s) for s in table_raw.get("subscriptions") or []],
        )
        table.index = {a.name: {} for a in attributes.values() if a.unique}
        profile_tables[table_id] = table
    custom_tables: dict[str, _CustomTable] = {}
    for table_raw in raw.get("customTables") or []:
        table_id = _fixture_str(table_raw, "id", f"custom table of {name}")
        attributes = {a.name: a for a in (_load_attr(r, table_id) for r in table_raw.get("attributes") or [])}
        primary_key = _fixture_str(table_raw, "primaryKeyAttribute", f"custom table {table_id}")
        if primary_key not in attributes:
            raise ValueError(f"sandbox fixture: {table_id}: primary key {primary_key!r} is not an attribute")
        foreign_keys = []
        for fk in table_raw.get("foreignKeys") or []:
            attribute = _fixture_str(fk, "attribute", f"foreign key of {table_id}")
            profile_table = _fixture_str(fk, "profileTable", f"foreign key of {table_id}")
            profile_attribute = str(fk.get("profileAttribute", attribute))
            target = profile_tables.get(profile_table)
            if attribute not in attributes or target is None or (
                profile_attribute != "profileId" and profile_attribute not in target.attributes
            ):
                raise ValueError(f"sandbox fixture: {table_id}: foreign key {attribute} → "
                                 f"{profile_table}.{profile_attribute} does not resolve")
            foreign_keys.append(_ForeignKey(attribute, profile_table, profile_attribute))
        table_type = str(table_raw.get("type", "STANDARD"))
        if table_type not in ("STANDARD", "INTERACTIONS"):
            raise ValueError(f"sandbox fixture: {table_id}: type must be STANDARD or INTERACTIONS")
        custom_tables[table_id] = _CustomTable(
            id=table_id,
            name=str(table_raw.get("name", table_id)),
            type=table_type,
            primary_key=primary_key,
            attributes=attributes,
            foreign_keys=foreign_keys,
        )
    entity = _Entity(
        id=int(raw.get("id", 0)),
        name=name,
        comment=str(raw.get("comment", "")),
        licence=licence,
        profile_tables=profile_tables,
        custom_tables=custom_tables,
        etls={},
    )
    for etl_raw in raw.get("etls") or []:
        etl_id = _fixture_str(etl_raw, "id", f"ETL of {name}")
        try:
            definition = _parse_definition(etl_raw.get("definition"), entity)
        except _HttpError as error:
            raise ValueError(f"sandbox fixture: ETL {etl_id}: {error.message}") from None
        entity.etls[etl_id] = (str(etl_raw.get("name", etl_id)), definition)
    return entity


# ---------------------------------------------------------------------------------------- routes

_E = r"(?P<entity>[^/]+)"
#: (path pattern, {method: ActitoSandbox method name}); Actito's V5 routes only — V4 and the
#: un-prefixed forms are retired and answer 404
_ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"/auth/token"), {"GET": "_token"}),
    (re.compile(r"/entities/v5/entities"), {"GET": "_list_entities"}),
    (re.compile(rf"/profile-table-structure/v5/entities/{_E}/profile-tables"), {"GET": "_list_profile_tables"}),
    (re.compile(rf"/profile-table-structure/v5/entities/{_E}/profile-tables/(?P<table>[^/]+)"),
     {"GET": "_get_profile_table"}),
    (re.compile(rf"/custom-table-structure/v5/entities/{_E}/custom-tables"), {"GET": "_list_custom_tables"}),
    (re.compile(rf"/custom-table-structure/v5/entities/{_E}/custom-tables/(?P<table>[^/]+)"),
     {"GET": "_get_custom_table"}),
    (re.compile(rf"/mass-imports/v5/entities/{_E}/etl-executions"),
     {"GET": "_list_executions", "POST": "_create_execution"}),
    (re.compile(rf"/mass-imports/v5/entities/{_E}/etl-executions/(?P<execution>[^/]+)"), {"GET": "_get_execution"}),
    (re.compile(rf"/mass-imports/v5/entities/{_E}/etl-executions/(?P<execution>[^/]+)/report"),
     {"GET": "_get_report"}),
    (re.compile(rf"/mass-imports/v5/entities/{_E}/etls"), {"GET": "_list_etls"}),
    (re.compile(rf"/mass-imports/v5/entities/{_E}/etls/(?P<etl>[^/]+)"), {"GET": "_get_etl"}),
    (re.compile(rf"/mass-imports/v5/entities/{_E}/etls/(?P<etl>[^/]+)/trigger-execution"), {"POST": "_trigger"}),
]


# ---------------------------------------------------------------------------------------- command line


def _host_argument(host: str) -> str:
    try:
        return loopback_address(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m etl.testing.actito_sandbox --port 8765 [--fixture F] [--state-file S]``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m etl.testing.actito_sandbox",
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
    args = parser.parse_args(argv)
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
        with sandbox._lock:
            for key, licence in sandbox._keys.items():
                entities = ", ".join(e.name for e in sandbox._entities.values() if e.licence == licence)
                print(f"API key: {key}  (licence {licence}, entities: {entities})", flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
