"""Imports: an upload becomes an execution, applied once its processing time is over.

Every request first applies the executions whose time has come, oldest first: clients must poll and
imports into one table apply in creation order, with no worker thread. A report's ``line`` counts CSV
records (header = 1). A file-level problem ends in ERROR, nothing applied; any rejected line makes it
PARTIAL_SUCCESS, even when all are, so the client still fetches the report that says why."""

from __future__ import annotations

import csv
import gzip
import io
import time
import traceback
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from etl.testing.actito.model import Attr, CustomTable, Definition, Entity, Execution, Profile, ProfileTable, moment
from etl.testing.actito.rules import ENCODINGS, TECHNICAL, YES_NO, convert
from etl.testing.actito.state import SandboxState, Settings
from etl.testing.actito.wire import HttpError

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_COUNTED = ("created", "updated", "deleted", "rejected")


class FileError(Exception):
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


@dataclass(frozen=True)
class Problem:
    """Why one line is rejected, by column."""

    column: str | None
    value: str | None
    message: str


@dataclass(frozen=True)
class Column:
    name: str
    attribute: Attr | None  # None for a subscription column
    subscription: str | None


@dataclass(frozen=True)
class Plan:
    """How the header of one file maps onto the table: one entry per CSV column."""

    columns: list[Column]
    key: Column
    column_of: dict[str, str]


@dataclass
class Line:
    """One line's cells, checked: attribute values (None = clear), subscriptions, raw text by attribute."""

    problems: list[Problem]
    values: dict[str, Any]
    subscriptions: dict[str, bool]
    raw: dict[str, str]

    def problem(self, plan: Plan, attribute: str, message: str) -> Problem:
        return Problem(plan.column_of.get(attribute, attribute), self.raw.get(attribute), message)


class ImportEngine:
    """Creates executions (within the daily budget) and applies them; every method but `submit`
    expects the caller to hold the state's lock."""

    def __init__(self, state: SandboxState, settings: Settings) -> None:
        self._state = state
        self._settings = settings

    def status(self, execution: Execution) -> str:
        return execution.status(time.monotonic(), self._settings.processing_seconds)

    def submit(self, entity: Entity, definition: Definition, reference: str | None, etl_id: str | None,
               file_name: str | None, payload: bytes) -> Execution:
        """A new PENDING execution; 429 once the table's daily budget (by the sandbox clock's UTC day) is used."""
        state = self._state
        with state.lock:
            now = state.now()
            day = datetime.fromtimestamp(now, UTC).date().isoformat()
            budget_key = (entity.name, definition.table, day)
            used = state.imports_today.get(budget_key, 0)
            if used >= self._settings.daily_imports_per_table:
                raise HttpError(429, f"daily import limit reached for table {definition.table} "
                                     f"({self._settings.daily_imports_per_table} per day, UTC {day})")
            state.imports_today[budget_key] = used + 1
            execution = Execution(id=str(state.next_execution), entity=entity.name, reference=reference,
                                  definition=definition, etl_id=etl_id, file_name=file_name or "inputFile",
                                  created_at=moment(now), started=time.monotonic(), payload=payload)
            state.next_execution += 1
            entity.executions.append(execution)
            state.pending.append(execution)
            state.save()  # the execution and the day's budget it used outlive this process
        return execution

    def settle(self) -> None:
        pending = self._state.pending
        now = time.monotonic()
        applied = False
        while pending and now - pending[0].started >= self._settings.processing_seconds:
            applied = True
            execution = pending.pop(0)
            try:
                self._apply(execution)
            except Exception as exc:  # a sandbox bug must not leave an execution RUNNING forever
                traceback.print_exc()
                execution.fail(f"sandbox internal error: {type(exc).__name__}: {exc}",
                               [{"line": 0, "column": None, "value": None, "message": "sandbox internal error"}],
                               execution.counts)
        if applied:
            self._state.save()

    def _apply(self, execution: Execution) -> None:
        entity = self._state.entities[execution.entity]
        definition = execution.definition
        payload = execution.payload or b""
        execution.payload = None
        counts = {"lines": 0, "created": 0, "updated": 0, "deleted": 0, "rejected": 0}
        try:
            files = _read_files(payload, definition)
            plans = [_plan(entity, definition, name, records[0]) for name, records in files]
        except FileError as error:
            message = error.message if error.line <= 0 else f"line {error.line}: {error.message}"
            execution.fail(message, [error.report_entry()], counts)
            return
        moment_now = moment(self._state.now())
        for (name, records), plan in zip(files, plans):
            for line, cells in enumerate(records[1:], start=2):
                counts["lines"] += 1
                problems, outcome = self._apply_line(entity, definition, plan, cells, moment_now)
                if problems:
                    counts["rejected"] += 1
                    execution.errors.append(_report_entry(line, problems, name if definition.compression == "ZIP"
                                                          else None))
                else:
                    counts[outcome] += 1
        execution.counts = counts
        execution.final = "PARTIAL_SUCCESS" if counts["rejected"] else "SUCCESS"
        done = ", ".join(f"{counts[k]} {k}" for k in _COUNTED if counts[k])
        execution.message = f"{counts['lines']} lines" + (f": {done}" if done else "")

    def _apply_line(self, entity: Entity, definition: Definition, plan: Plan, cells: list[str], when: str
                    ) -> tuple[list[Problem], str]:
        """Apply one line: its problems (nothing applied), or its outcome ("created", "updated", "deleted")."""
        if len(cells) == 0 and len(plan.columns) == 1:
            cells = [""]
        if len(cells) != len(plan.columns):
            return [Problem(None, None, f"{len(cells)} values but the header has {len(plan.columns)} columns")], ""
        line = _parse_cells(definition, plan, cells)
        if line.problems:
            return line.problems, ""
        if definition.custom:
            return _record_line(entity, definition, plan, line)
        return self._profile_line(entity.profile_tables[definition.table], definition, plan, line, when)

    def _profile_line(self, table: ProfileTable, definition: Definition, plan: Plan, line: Line, when: str
                      ) -> tuple[list[Problem], str]:
        key_name = definition.key_attribute
        existing = table.find(key_name, line.values[key_name])
        refused = _refused_by_mode(definition.mode, existing is not None, "profile")
        if refused is not None:
            return [Problem(plan.key.name, line.raw[key_name], refused)], ""
        if existing is not None and definition.mode == "DELETE":
            table.delete(existing)
            return [], "deleted"
        attributes = _merged(existing.attributes if existing is not None else {}, line.values)
        problems = []
        for name in table.index:
            value = attributes.get(name)
            owner = table.find(name, value) if value is not None else None
            if owner is not None and owner is not existing:
                problems.append(line.problem(plan, name, f"{name} {value!r} already belongs to another profile "
                                                         f"({owner.profile_id})"))
        problems += [line.problem(plan, a.name, f"mandatory attribute {a.name} is empty")
                     for a in table.attributes.values() if a.mandatory and attributes.get(a.name) in (None, "")]
        if problems:
            return problems, ""
        outcome = "updated" if existing is not None else "created"
        if existing is None:
            existing = Profile(self._state.next_profile, {}, {}, when, when)
            self._state.next_profile += 1
        existing.updated = when
        existing.subscriptions.update(line.subscriptions)
        table.store(existing, attributes)
        return [], outcome


def _record_line(entity: Entity, definition: Definition, plan: Plan, line: Line) -> tuple[list[Problem], str]:
    table = entity.custom_tables[definition.table]
    key = line.values[table.primary_key]
    existing = table.records.get(key)
    refused = _refused_by_mode(definition.mode, existing is not None, "record")
    if refused is not None:
        return [Problem(plan.key.name, line.raw[table.primary_key], refused)], ""
    if definition.mode == "DELETE":
        del table.records[key]
        return [], "deleted"
    record = _merged(existing or {}, line.values)
    # an empty foreign key is reported below as "profile not found", Actito's word for it
    foreign = {k.attribute for k in table.foreign_keys}
    problems = [line.problem(plan, a.name, f"mandatory attribute {a.name} is empty")
                for a in table.attributes.values()
                if a.mandatory and record.get(a.name) in (None, "") and a.name != table.primary_key
                and a.name not in foreign]
    for key_of in table.foreign_keys:
        value = record.get(key_of.attribute)
        if value is None and table.type != "INTERACTIONS":
            continue
        profiles = entity.profile_tables[key_of.profile_table]
        if value is None or profiles.find(key_of.profile_attribute, value) is None:
            problems.append(Problem(plan.column_of.get(key_of.attribute, key_of.attribute),
                                    line.raw.get(key_of.attribute, ""), "profile not found"))
    if problems:
        return problems, ""
    table.records[key] = record
    return [], "updated" if existing is not None else "created"


def _refused_by_mode(mode: str, exists: bool, noun: str) -> str | None:
    """Why the import's mode refuses this line's key (a profile's or a record's), or None."""
    if exists and mode == "CREATE_ONLY":
        return f"{noun} already exists"
    if not exists and mode in ("DELETE", "UPDATE_ONLY"):
        return f"{noun} not found"
    return None


def _merged(current: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the line's values: a value of None (an empty cell under CLEAR) removes one."""
    merged = dict(current)
    for name, value in values.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _report_entry(line: int, problems: list[Problem], file: str | None) -> dict[str, Any]:
    """A rejected line as the report lists it: the first problem, then all of them."""
    entry: dict[str, Any] = {
        "line": line,
        "column": problems[0].column,
        "value": problems[0].value,
        "message": problems[0].message,
        "problems": [{"column": p.column, "value": p.value, "message": p.message} for p in problems],
    }
    if file is not None:
        entry["file"] = file
    return entry


def _plan(entity: Entity, definition: Definition, file: str | None, header: list[str]) -> Plan:
    """Map the header onto the target table; any column that maps nowhere makes the file an ERROR."""
    table: ProfileTable | CustomTable = (
        entity.custom_tables[definition.table] if definition.custom else entity.profile_tables[definition.table]
    )
    columns: list[Column] = []
    column_of: dict[str, str] = {}
    for name in header:
        if name == "":
            raise FileError("the header has an empty column name", line=1, file=file)
        if any(c.name == name for c in columns):
            raise FileError(f"column {name!r} appears twice in the header", line=1, column=name, file=file)
        if name in definition.subscriptions:
            columns.append(Column(name, None, definition.subscriptions[name]))
            continue
        target = definition.attributes.get(name, name)
        if target in TECHNICAL and not definition.custom:
            raise FileError(f"column {name!r}: {target} is technical, set by Actito, it cannot be imported",
                            line=1, column=name, file=file)
        attribute = table.attributes.get(target)
        if attribute is None:
            raise FileError(f"unknown column {name!r}: table {table.id!r} has no attribute {target!r}",
                            line=1, column=name, file=file)
        if target in column_of:
            raise FileError(f"columns {column_of[target]!r} and {name!r} both map to attribute {target!r}",
                            line=1, column=name, file=file)
        column_of[target] = name
        columns.append(Column(name, attribute, None))
    key = next((c for c in columns if c.name == definition.key_column), None)
    if key is None:
        raise FileError(f"the key column {definition.key_column!r} is not in the header", line=1, file=file)
    if definition.mode == "DELETE" and len(columns) != 1:
        raise FileError("a DELETE import holds only the key column", line=1, file=file)
    return Plan(columns, key, column_of)


def _parse_cells(definition: Definition, plan: Plan, cells: list[str]) -> Line:
    line = Line([], {}, {}, {})
    for column, cell in zip(plan.columns, cells):
        if column.subscription is not None:
            if cell == "":
                continue  # a subscription has no empty state: an empty cell changes nothing
            flag = YES_NO.get(cell.upper())
            if flag is None:
                line.problems.append(Problem(column.name, cell, "subscription value must be Y or N (or TRUE/FALSE/1/0)"))
            else:
                line.subscriptions[column.subscription] = flag
            continue
        attribute = cast(Attr, column.attribute)
        line.raw[attribute.name] = cell
        if cell == "":
            if column is plan.key:
                line.problems.append(Problem(column.name, cell, "missing key"))
            elif definition.empty_values == "CLEAR":
                line.values[attribute.name] = None
            continue
        value, error = convert(attribute, cell)
        if error is not None:
            line.problems.append(Problem(column.name, cell, error))
        else:
            line.values[attribute.name] = value
    return line


def _read_files(payload: bytes, definition: Definition) -> list[tuple[str | None, list[list[str]]]]:
    """Decompress and parse the upload: each CSV (one, or several in a ZIP) as its records, header first."""
    if definition.compression == "GZIP":
        try:
            contents: list[tuple[str | None, bytes]] = [(None, gzip.decompress(payload))]
        except (OSError, EOFError, zlib.error) as exc:
            raise FileError(f"the file cannot be decompressed as GZIP: {exc}") from None
    elif definition.compression == "ZIP":
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                contents = [(i.filename, archive.read(i)) for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise FileError(f"the file cannot be read as ZIP: {exc}") from None
        if not contents:
            raise FileError("the ZIP archive holds no file")
    else:
        contents = [(None, payload)]
    return [(name, _parse_csv(data, definition, name)) for name, data in contents]


def _parse_csv(data: bytes, definition: Definition, name: str | None) -> list[list[str]]:
    if data.startswith(_BOMS):
        raise FileError("the file starts with a byte order mark (BOM): Actito rejects it", line=1, file=name)
    try:
        text = data.decode(ENCODINGS[definition.encoding])
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileError(f"the file is not valid {definition.encoding}", line=line, file=name) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=definition.separator, quotechar='"',
                        doublequote=True, strict=True)
    records: list[list[str]] = []
    try:
        for record in reader:
            records.append(record)
    except csv.Error as exc:
        raise FileError(f"malformed CSV: {exc}", line=len(records) + 1, file=name) from None
    if not records:
        raise FileError("the file is empty: a header line is required", line=1, file=name)
    return records
