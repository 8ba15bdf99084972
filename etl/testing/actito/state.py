"""The sandbox's mutable state behind its one lock, where it starts (a fixture) and where it is kept (a state file).
A fixture is checked at start, so a mistake fails there, not mid-test. The state file (mode 0600: personal
data) keeps everything but tokens, faults and the clock offset, which stay per process."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.testing.actito.model import Attr, CustomTable, Definition, Entity, Execution, ForeignKey, Profile, \
    ProfileTable, moment
from etl.testing.actito.rules import PREDEFINED_RULES, VALUE_TYPE_RULES, parse_definition
from etl.testing.actito.wire import HttpError

log = logging.getLogger(__name__)

#: Actito refuses an uploaded import file over 100 MB; the decimal reading, as etl.files cuts parts
MAX_FILE_BYTES = 100_000_000
FIRST_EXECUTION_ID = 1001


@dataclass(frozen=True)
class Settings:
    """The limits and delays of one sandbox (see `ActitoSandbox` for each)."""

    token_ttl_seconds: int
    processing_seconds: float
    max_concurrent: int
    daily_imports_per_table: int
    max_file_bytes: int
    fault_delay_seconds: float
    latency_seconds: float
    #: the definition field, query parameter and execution field carrying the client's reference: a licence
    #: may name it otherwise (docs/actito-wire.md, wire.reference_field)
    reference_field: str = "reference"

    def __post_init__(self) -> None:
        if (self.max_concurrent < 1 or self.daily_imports_per_table < 0 or self.token_ttl_seconds < 1
                or self.max_file_bytes < 1):
            raise ValueError("max_concurrent, token_ttl_seconds and max_file_bytes must be positive")
        if self.processing_seconds < 0 or self.fault_delay_seconds < 0 or self.latency_seconds < 0:
            raise ValueError("processing_seconds, fault_delay_seconds and latency_seconds cannot be negative")


class LicenceSlots:
    """Actito's concurrency limit, per licence: a request holds a slot from authentication to its answer.
    What it counts: `ActitoSandbox.limits`."""

    def __init__(self, max_concurrent: int) -> None:
        self._max = max_concurrent
        self.in_flight: dict[str, int] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def _counts(self, licence: str) -> dict[str, int]:
        return self.counts.setdefault(licence, {"peak_in_flight": 0, "refused": 0, "tokens": 0, "calls": 0})

    def acquire(self, licence: str) -> bool:
        used = self.in_flight.get(licence, 0)
        counts = self._counts(licence)
        counts["calls"] += 1
        counts["peak_in_flight"] = max(counts["peak_in_flight"], used + 1)
        if used >= self._max:
            counts["refused"] += 1
            return False
        self.in_flight[licence] = used + 1
        return True

    def release(self, licence: str) -> None:
        self.in_flight[licence] -= 1

    def count_token(self, licence: str) -> None:
        self._counts(licence)["tokens"] += 1

    def report(self, entities: Mapping[str, Entity]) -> dict[str, dict[str, Any]]:
        return {
            licence: {**counts, "in_flight": self.in_flight.get(licence, 0),
                      "entities": sorted(e.name for e in entities.values() if e.licence == licence)}
            for licence, counts in self.counts.items()
        }

    def restart_counts(self) -> None:
        self.counts = {}
        for licence, used in self.in_flight.items():
            if used:
                self._counts(licence)["peak_in_flight"] = used


@dataclass(frozen=True)
class Token:
    api_key: str
    licence: str
    expires: float


class SandboxState:
    """Everything a request can change, guarded by `lock` (reentrant: inspection calls nest)."""

    def __init__(self, fixture: Mapping[str, Any], clock: Callable[[], float], settings: Settings,
                 state_file: Path | None) -> None:
        self.lock = threading.RLock()
        self._fixture = fixture
        self._clock = clock
        self._settings = settings
        self.load()
        self._file = None if state_file is None else StateFile(state_file, fingerprint(fixture))
        if self._file is not None:
            self._file.restore(self)

    def save(self) -> None:
        """Caller holds the lock."""
        if self._file is not None:
            self._file.save(self)

    def load(self) -> None:
        """(Re)build every piece of state from the fixture: at start, and on reset."""
        fixture = load_fixture(self._fixture)
        with self.lock:
            self.keys = fixture.keys
            self.entities = fixture.entities
            self.revoked: set[str] = set()
            self.tokens: dict[str, Token] = {}
            #: executions not applied yet, oldest first
            self.pending: list[Execution] = []
            #: (entity, table, UTC day) → imports created that day
            self.imports_today: dict[tuple[str, str, str], int] = {}
            self.slots = LicenceSlots(self._settings.max_concurrent)
            self.clock_offset = 0.0
            self.next_profile = fixture.next_profile
            self.next_execution = FIRST_EXECUTION_ID

    def now(self) -> float:
        """The sandbox clock: token expiry and the daily budget's day follow it, import progress does not."""
        return self._clock() + self.clock_offset

    def entity(self, name: str) -> Entity:
        entity = self.entities.get(name)
        if entity is None:
            raise KeyError(f"no entity {name!r} (known: {', '.join(self.entities)})")
        return entity

    def licensed_entity(self, licence: str, name: str) -> Entity:
        """The entity as an API request names it: 404 unless it belongs to the request's licence."""
        with self.lock:
            entity = self.entities.get(name)
            if entity is None or entity.licence != licence:
                raise HttpError(404, f"entity {name!r} not found")
            return entity

    def entities_of(self, licence: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.licence == licence]


#: the fixture used when none is given: one entity "demo", API key "sandbox-demo-key"
DEFAULT_FIXTURE = Path(__file__).with_name("fixture.json")


@dataclass
class Fixture:
    """What a fixture starts with: API key → licence, entities by name, the next profile id to give."""

    keys: dict[str, str]
    entities: dict[str, Entity]
    next_profile: int


def read_fixture(fixture: Mapping[str, Any] | Path | None) -> dict[str, Any]:
    """The fixture as a private copy of plain JSON (from a file, or the default one when None)."""
    if fixture is None:
        fixture = DEFAULT_FIXTURE
    if isinstance(fixture, Path):
        try:
            loaded: dict[str, Any] = json.loads(fixture.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"sandbox fixture {fixture}: {exc}") from None
        return loaded
    copied: dict[str, Any] = json.loads(json.dumps(fixture))  # a private deep copy, and proof it is plain JSON
    return copied


def fingerprint(raw: Mapping[str, Any]) -> str:
    """Names the fixture a state file was saved for: a state is restored only over the same fixture."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_fixture(raw: Mapping[str, Any]) -> Fixture:
    licences = raw.get("licences") if isinstance(raw, Mapping) else None
    if not isinstance(licences, list) or not licences:
        raise ValueError("sandbox fixture: 'licences' must be a non-empty list")
    loaded = Fixture({}, {}, 1)
    for licence in licences:
        name = _fixture_str(licence, "name", "licence")
        for key in licence.get("apiKeys") or []:
            if not isinstance(key, str) or not key or key in loaded.keys:
                raise ValueError(f"sandbox fixture: licence {name!r}: API keys must be distinct non-empty strings")
            loaded.keys[key] = name
        for raw_entity in licence.get("entities") or []:
            entity = _load_entity(raw_entity, name)
            if entity.name in loaded.entities:
                raise ValueError(f"sandbox fixture: entity {entity.name!r} defined twice")
            loaded.entities[entity.name] = entity
            _seed(entity, raw_entity, loaded)
    return loaded


def _seed(entity: Entity, raw_entity: Mapping[str, Any], loaded: Fixture) -> None:
    """The profiles and records the fixture gives the entity's tables; profile ids in fixture order."""
    for table_raw in raw_entity.get("profileTables") or []:
        table = entity.profile_tables[table_raw["id"]]
        for seed in table_raw.get("profiles") or []:
            subscriptions = {str(k): bool(v) for k, v in (seed.get("subscriptions") or {}).items()}
            table.store(Profile(loaded.next_profile, {}, subscriptions, "", ""), dict(seed.get("attributes") or {}))
            loaded.next_profile += 1
    for table_raw in raw_entity.get("customTables") or []:
        custom = entity.custom_tables[table_raw["id"]]
        for record in table_raw.get("records") or []:
            custom.records[record[custom.primary_key]] = dict(record)


def _fixture_str(raw: Any, key: str, what: str) -> str:
    value = raw.get(key) if isinstance(raw, Mapping) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"sandbox fixture: a {what} needs a non-empty string {key!r}")
    return value


def _load_attr(raw: Any, where: str) -> Attr:
    name = _fixture_str(raw, "name", f"attribute of {where}")
    kind = str(raw.get("type", "CUSTOM"))
    value_type = raw.get("valueType")
    rule = VALUE_TYPE_RULES.get(str(value_type)) if kind == "CUSTOM" else PREDEFINED_RULES.get(kind)
    if rule is None:
        raise ValueError(f"sandbox fixture: {where}.{name}: unknown type {kind}/{value_type}")
    restriction = raw.get("valueRestriction") or {}
    max_length = restriction.get("maxLength") if isinstance(restriction, Mapping) else None
    published = dict(raw)
    published.setdefault("type", kind)
    published["unique"] = bool(raw.get("unique", False))
    published["mandatory"] = bool(raw.get("mandatory", False))
    return Attr(name=name, rule=rule, unique=published["unique"], mandatory=published["mandatory"],
                max_length=None if max_length is None else int(max_length), published=published)


def _load_attrs(table_raw: Mapping[str, Any], table_id: str) -> dict[str, Attr]:
    return {a.name: a for a in (_load_attr(r, table_id) for r in table_raw.get("attributes") or [])}


def _load_entity(raw: Any, licence: str) -> Entity:
    name = _fixture_str(raw, "name", "entity")
    profile_tables = {t.id: t for t in (_load_profile_table(r, name) for r in raw.get("profileTables") or [])}
    custom_tables = {t.id: t for t in (_load_custom_table(r, name, profile_tables)
                                       for r in raw.get("customTables") or [])}
    listed = {"id": int(raw.get("id", 0)), "name": name, "comment": str(raw.get("comment", ""))}
    entity = Entity(name=name, licence=licence, listed=listed, profile_tables=profile_tables,
                    custom_tables=custom_tables, etls={})
    for etl_raw in raw.get("etls") or []:
        etl_id = _fixture_str(etl_raw, "id", f"ETL of {name}")
        try:
            definition = parse_definition(etl_raw.get("definition"), entity)
        except HttpError as error:
            raise ValueError(f"sandbox fixture: ETL {etl_id}: {error.message}") from None
        entity.etls[etl_id] = (str(etl_raw.get("name", etl_id)), definition)
    return entity


def _load_profile_table(table_raw: Any, entity: str) -> ProfileTable:
    table_id = _fixture_str(table_raw, "id", f"profile table of {entity}")
    attributes = _load_attrs(table_raw, table_id)
    subscriptions = [str(s["name"] if isinstance(s, Mapping) else s) for s in table_raw.get("subscriptions") or []]
    table = ProfileTable(id=table_id, name=str(table_raw.get("name", table_id)), attributes=attributes,
                         subscriptions=subscriptions)
    table.index = {a.name: {} for a in attributes.values() if a.unique}
    return table


def _load_custom_table(table_raw: Any, entity: str, profile_tables: Mapping[str, ProfileTable]) -> CustomTable:
    table_id = _fixture_str(table_raw, "id", f"custom table of {entity}")
    attributes = _load_attrs(table_raw, table_id)
    primary_key = _fixture_str(table_raw, "primaryKeyAttribute", f"custom table {table_id}")
    if primary_key not in attributes:
        raise ValueError(f"sandbox fixture: {table_id}: primary key {primary_key!r} is not an attribute")
    foreign_keys = [_load_foreign_key(fk, table_id, attributes, profile_tables)
                    for fk in table_raw.get("foreignKeys") or []]
    table_type = str(table_raw.get("type", "STANDARD"))
    if table_type not in ("STANDARD", "INTERACTIONS"):
        raise ValueError(f"sandbox fixture: {table_id}: type must be STANDARD or INTERACTIONS")
    return CustomTable(id=table_id, name=str(table_raw.get("name", table_id)), type=table_type,
                       primary_key=primary_key, attributes=attributes, foreign_keys=foreign_keys)


def _load_foreign_key(fk: Any, table_id: str, attributes: Mapping[str, Attr],
                      profile_tables: Mapping[str, ProfileTable]) -> ForeignKey:
    attribute = _fixture_str(fk, "attribute", f"foreign key of {table_id}")
    profile_table = _fixture_str(fk, "profileTable", f"foreign key of {table_id}")
    profile_attribute = str(fk.get("profileAttribute", attribute))
    target = profile_tables.get(profile_table)
    if attribute not in attributes or target is None or (
        profile_attribute != "profileId" and profile_attribute not in target.attributes
    ):
        raise ValueError(f"sandbox fixture: {table_id}: foreign key {attribute} → "
                         f"{profile_table}.{profile_attribute} does not resolve")
    return ForeignKey(attribute, profile_table, profile_attribute)


#: the layout of a state file; a file of another version is ignored like one of another fixture
_STATE_VERSION = 1

#: days a finished execution (and its report, which names people) stays in the saved state: a run's
#: recovery looks up only executions of runs that died hours ago, at most
EXECUTIONS_KEPT_DAYS = 14


class StateFile:
    """A sandbox's state between processes, for one fixture (by its fingerprint). One process per file:
    each save replaces the whole file, so the last to save wins (a warning says so)."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self._fingerprint = fingerprint
        #: (inode, mtime, size) of the file as last read or written: a change by another process shows
        self._stamp: tuple[int, int, int] | None = None

    def restore(self, state: SandboxState) -> None:
        """Load the file over the fixture's state if it was saved for this fixture; any problem keeps the
        fixture's state and is logged. The execution counter is carried over always, so ids never repeat."""
        saved = self._read()
        if saved is None:
            return
        counter = saved.get("nextExecutionId")
        next_execution = counter if isinstance(counter, int) else FIRST_EXECUTION_ID
        if saved.get("version") != _STATE_VERSION or saved.get("fixture") != self._fingerprint:
            log.warning("actito sandbox: state file %s was saved for another fixture: starting empty, "
                        "from the fixture (the file is replaced at the next change)", self.path)
        else:
            try:
                with state.lock:
                    _apply(state, saved)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("actito sandbox: state file %s is inconsistent (%s: %s): starting from the fixture",
                            self.path, type(exc).__name__, exc)
                state.load()
            else:
                log.info("actito sandbox: state restored from %s", self.path)
        with state.lock:
            state.next_execution = max(state.next_execution, next_execution)

    def _read(self) -> dict[str, Any] | None:
        """The saved JSON object, or None (and a log line saying why) when there is none to restore."""
        path = self.path
        try:
            text = path.read_text(encoding="utf-8")
            self._stamp = _stamp(path)
        except FileNotFoundError:
            log.info("actito sandbox: no state file %s yet: starting from the fixture", path)
            return None
        except OSError as exc:
            log.warning("actito sandbox: cannot read state file %s (%s): starting from the fixture", path, exc)
            return None
        try:
            saved = json.loads(text)
        except ValueError as exc:
            log.warning("actito sandbox: state file %s is not JSON (%s): starting from the fixture", path, exc)
            return None
        if not isinstance(saved, dict):
            log.warning("actito sandbox: state file %s is not a JSON object: starting from the fixture", path)
            return None
        return saved

    def save(self, state: SandboxState) -> None:
        """Write the file atomically (caller holds the lock). A failure is logged, not raised: the state in
        memory stays right and the next change tries again."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            current = _stamp(path)
            if current is not None and current != self._stamp:
                log.warning("actito sandbox: state file %s was changed by another process: overwriting it "
                            "(the changes made there are lost)", path)
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    os.chmod(temporary, 0o600)  # mkstemp's mode already; said again, as the file's contract
                    json.dump(self._snapshot(state), out, ensure_ascii=False, separators=(",", ":"))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            self._stamp = _stamp(path)
        except OSError as exc:
            log.warning("actito sandbox: cannot save state file %s: %s", path, exc)

    def _snapshot(self, state: SandboxState) -> dict[str, Any]:
        """The mutable state as plain JSON (caller holds the lock)."""
        now = state.now()
        today = datetime.fromtimestamp(now, UTC).date().isoformat()
        # finished executions (their reports name people) are not kept past EXECUTIONS_KEPT_DAYS
        kept_since = moment(now - EXECUTIONS_KEPT_DAYS * 86400)
        return {
            "version": _STATE_VERSION,
            "fixture": self._fingerprint,
            "savedAt": moment(now),
            "nextProfileId": state.next_profile,
            "nextExecutionId": state.next_execution,
            "revokedKeys": sorted(state.revoked),
            # only today's and later budgets can still refuse anything
            "importsToday": [
                {"entity": entity, "table": table, "day": day, "count": count}
                for (entity, table, day), count in sorted(state.imports_today.items())
                if day >= today
            ],
            "entities": {
                name: {
                    **entity.tables_view(),
                    "executions": [_saved_execution(e) for e in entity.executions
                                   if e.final is None or e.created_at >= kept_since],
                }
                for name, entity in state.entities.items()
            },
        }


def _apply(state: SandboxState, saved: Mapping[str, Any]) -> None:
    """Replace the mutable state by the saved one (caller holds the lock; raises on bad content)."""
    for name, data in saved["entities"].items():
        entity = state.entities[name]
        for table_id, profiles in data["profileTables"].items():
            table = entity.profile_tables[table_id]
            table.clear()
            for raw in profiles:
                subscriptions = {str(k): bool(v) for k, v in raw["subscriptions"].items()}
                profile = Profile(int(raw["profileId"]), {}, subscriptions,
                                  str(raw["creationMoment"]), str(raw["updateMoment"]))
                table.store(profile, dict(raw["attributes"]))
        for table_id, records in data["customTables"].items():
            custom = entity.custom_tables[table_id]
            custom.records = {record[custom.primary_key]: dict(record) for record in records}
        entity.executions = [_restored_execution(name, raw) for raw in data["executions"]]
    # an import still pending when the state was saved starts its processing time again
    state.pending = [e for entity in state.entities.values() for e in entity.executions if e.final is None]
    state.next_profile = int(saved["nextProfileId"])
    state.revoked = {str(key) for key in saved["revokedKeys"]}
    state.imports_today = {
        (str(item["entity"]), str(item["table"]), str(item["day"])): int(item["count"])
        for item in saved["importsToday"]
    }


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of a file from the next: os.replace gives each save a new inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _saved_execution(execution: Execution) -> dict[str, Any]:
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


def _restored_execution(entity: str, raw: Mapping[str, Any]) -> Execution:
    payload = raw["payload"]
    return Execution(
        id=str(raw["id"]), entity=entity, reference=_text_or_none(raw["reference"]),
        definition=Definition(**raw["definition"]), etl_id=_text_or_none(raw["etlId"]),
        file_name=str(raw["fileName"]), created_at=str(raw["createdAt"]), started=time.monotonic(),
        payload=None if payload is None else base64.b64decode(payload, validate=True),
        final=_text_or_none(raw["final"]), counts={str(k): int(v) for k, v in raw["counts"].items()},
        errors=[dict(error) for error in raw["errors"]], message=_text_or_none(raw["message"]),
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
