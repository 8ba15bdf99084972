"""Rows into an Actito table by bulk imports: pre-flight → CSV parts → ETL executions → per-row outcomes.

What Actito would refuse is refused here first (the table before a row is read, each value against
its rule), so an import applies or names each row it could not apply. The daily quota is counted in
our ledger, never burnt. The mapping is chosen here, so a job never names a partner.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from etl.config import (
    Config, Destination, ImportActivationBase, InteractionsActivation, ProfilesActivation, SubscriptionsActivation,
)
from etl.destinations.actito.client import ActitoClient
from etl.destinations.actito.collection import CollectedValues, default_collection
from etl.destinations.actito.connect import open_client
from etl.errors import ActitoBudgetExhausted, ActitoPreflightError, MappingError
from etl.destinations.actito.presets import didomi_mapping, qualifio_interaction_mapping, qualifio_mapping
from etl.destinations.actito.recovery import (
    Landed, discard_sent, part_reference, recover_earlier_runs, stage_sent, upload_name,
)
from etl.destinations.actito.refusals import Refusals
from etl.destinations.actito.tables import Attribute, Execution, LineError, Table
from etl.destinations.base import refuse_over_budget
from etl.files import Compression, CsvFileWriter, RejectWriter, WrittenFile, final_file_name
from etl.runtime.ledger import open_store
from etl.runtime.results import Delivery
from etl.runtime.runs import RunContext
from etl.transform.delta import MappedRows, RefusalRetries, RowSnapshot, Staged, fingerprint, refusal_retries
from etl.transform.mapping import FieldMap, Mapping, RowMapper, explicit_mapping, with_policy
from etl.values.rules import FieldRule

log = logging.getLogger("audience_sync.actito")

#: builds the mapping from the query's columns and the Actito table they go to
MappingFactory = Callable[[Sequence[str], Table], Mapping]

_COMPRESSION = {"none": "NONE", "gzip": "GZIP", "zip": "ZIP"}
_TECHNICAL = frozenset({"profileId", "creationMoment", "updateMoment"})

#: which of our format rules may feed each Actito attribute type (predefined types, then custom valueTypes)
_COMPATIBLE: dict[str, frozenset[str]] = {
    "EMAIL_ADDRESS": frozenset({"email"}),
    "SEX": frozenset({"sex"}),
    "BIRTHDATE": frozenset({"date"}),
    "PHONE_NUMBER": frozenset({"phone"}),
    "ADDRESS_COUNTRY": frozenset({"country"}),
    "MOTHER_LANGUAGE": frozenset({"language"}),
    "FIRSTNAME": frozenset({"string", "name"}),
    "LASTNAME": frozenset({"string", "name"}),
    "STRING": frozenset({"string", "email", "phone", "country", "language", "sex", "name", "device"}),
    "INTEGER": frozenset({"integer"}),
    "DECIMAL": frozenset({"decimal", "integer"}),
    "BOOLEAN": frozenset({"boolean"}),
    "DATE": frozenset({"date"}),
    "TIMESTAMP": frozenset({"datetime", "date"}),
}
_RULE_WORDS: dict[str, str] = {
    "string": "text", "email": "an e-mail address", "date": "a date", "datetime": "a date-time", "sex": "M/F",
    "phone": "a phone number", "country": "a country code", "language": "a language code",
    "integer": "an integer", "decimal": "a decimal", "boolean": "a boolean", "yes_no": "Y/N",
    "name": "a name", "device": "desktop/mobile",
}


@dataclass(frozen=True)
class ImportTarget:
    """Where and how one activation's rows land in Actito."""

    entity: str
    table: str
    custom: bool
    mode: str
    empty_values: str
    etl_id: str | None
    compression: Compression
    timeout_seconds: float
    daily_budget: int
    #: (definition field, address): who receives Actito's report of each import (the destination's
    #: technical_email, under the wire's report_recipients_field); empty: nobody is named
    report_to: tuple[tuple[str, str], ...] = ()


def report_to(destination: Destination) -> tuple[tuple[str, str], ...]:
    """Actito mails an import's report to the recipients its definition names [guess: docs/actito-wire.md]."""
    field_name = destination.wire.report_recipients_field
    return ((field_name, destination.technical_email),) if field_name and destination.technical_email else ()


def preflight(
    client: ActitoClient, target: ImportTarget, mapping_for: MappingFactory, columns: Sequence[str]
) -> tuple[Table, Mapping]:
    """Check the table and every mapped column; the mapping comes back tightened to the table's length limits."""
    table = client.custom_table(target.table) if target.custom else client.profile_table(target.table)
    mapping = mapping_for(columns, table)
    attributes = {attribute.name: attribute for attribute in table.attributes}
    problems: list[str] = []
    fields: list[FieldMap] = []
    for field in mapping.fields:
        attribute = attributes.get(field.target)
        if attribute is not None and field.rule == "string":
            # plain text bound for a typed attribute (a country, a date ...) is held to that type's rule
            field = dataclasses.replace(field, rule=rule_for(attribute))
        if attribute is not None and attribute.mandatory and not field.required:
            field = dataclasses.replace(field, required=True)  # Actito refuses its row without it: never dropped
        problem = _field_problem(field, attribute, table, custom=target.custom)
        if problem:
            problems.append(problem)
        elif attribute is not None and attribute.max_length and (field.max_length or 10**9) > attribute.max_length:
            field = dataclasses.replace(field, max_length=attribute.max_length)
        fields.append(field)
    for subscription in mapping.subscriptions:
        if subscription.subscription not in table.subscriptions:
            problems.append(
                f"column {subscription.source} → subscription '{subscription.subscription}': table '{table.name}' "
                f"has no such subscription (has: {', '.join(table.subscriptions) or 'none'})"
            )
    key = attributes.get(mapping.key)
    if key is None:
        problems.append(f"key '{mapping.key}': table '{table.name}' has no such attribute")
    elif not target.custom and not key.unique:
        problems.append(f"key '{mapping.key}' is not a unique attribute of table '{table.name}': imports match on it")
    if problems:
        raise ActitoPreflightError(problems, where=f"Actito table '{target.table}' of entity '{target.entity}'")
    return table, dataclasses.replace(mapping, fields=tuple(fields))


def unmapped_mandatory(table: Table, mapping: Mapping, mode: str) -> list[str]:
    """Mandatory attributes no column feeds: every row that creates a profile or record is then refused.

    Only an import that may create (not UPDATE_ONLY, not DELETE) needs them; the key counts as mapped."""
    if mode in ("UPDATE_ONLY", "DELETE"):
        return []
    fed = {field.target for field in mapping.fields} | {mapping.key, table.primary_key or ""}
    return [attribute.name for attribute in table.attributes
            if attribute.mandatory and attribute.name not in fed and attribute.name not in _TECHNICAL]


def rule_for(attribute: Attribute) -> FieldRule:
    """The format rule a value must meet to land in this attribute (for mappings without a preset)."""
    actito_type = attribute.value_type if attribute.type == "CUSTOM" else attribute.type
    return _RULE_OF_TYPE.get(actito_type or "", "string")


_RULE_OF_TYPE: dict[str, FieldRule] = {
    "EMAIL_ADDRESS": "email", "SEX": "sex", "BIRTHDATE": "date", "PHONE_NUMBER": "phone",
    "ADDRESS_COUNTRY": "country", "MOTHER_LANGUAGE": "language", "INTEGER": "integer", "DECIMAL": "decimal",
    "BOOLEAN": "boolean", "DATE": "date", "TIMESTAMP": "datetime",
}


def _field_problem(field: FieldMap, attribute: Attribute | None, table: Table, *, custom: bool) -> str | None:
    if field.target in _TECHNICAL and not custom:  # in a custom table, profileId is an ordinary link
        return f"column {field.source} → {field.target}: a technical attribute set by Actito, it cannot be imported"
    if attribute is None:
        known = ", ".join(a.name for a in table.attributes)
        return f"column {field.source} → {field.target}: table '{table.name}' has no such attribute (has: {known})"
    actito_type = attribute.value_type if attribute.type == "CUSTOM" else attribute.type
    allowed = _COMPATIBLE.get(actito_type or "", frozenset({"string"}))
    if field.rule not in allowed:
        return (f"column {field.source} → {field.target}: wrong type, we send {_RULE_WORDS.get(field.rule, field.rule)} "
                f"but Actito's attribute is {actito_type}")
    return None


def check_budget(context: RunContext, target: ImportTarget, table: Table, parts: int) -> None:
    """Actito would refuse an import midway through a multi-part run: the day's imports come from the ledger."""
    with closing(open_store(context.config)) as store:
        used = store.imports_on(target.entity, table.id, datetime.now(UTC).date())
    refuse_over_budget(
        ActitoBudgetExhausted, needs=f"{parts} import(s)", used=used, needed=parts, allowed=target.daily_budget,
        scope=f" on table '{table.id}'", where=f"Actito table '{table.id}' of entity '{target.entity}'",
        hint="wait for tomorrow (UTC), or raise daily_import_budget if your licence allows more",
    )


def import_parts(
    context: RunContext,
    client: ActitoClient,
    target: ImportTarget,
    table: Table,
    mapping: Mapping,
    written: list[WrittenFile],
    staged: Staged,
    rejects: RejectWriter,
    *,
    label: str = "",
    staged_hashes: pa.Table | None = None,
    staged_fingerprint: str = "",
    refusals: Refusals | None = None,
    retry_note: str = "",
) -> tuple[int, int]:
    """Import each part in turn; return (rows accepted, rows refused by Actito).

    ``staged_hashes`` are saved before the first upload, so a successor can commit what landed if this process dies.
    ``refusals`` receives the staged positions of the refused rows, for the snapshot to remember them;
    ``retry_note`` ends the reason of a refused row that will be sent again."""
    source_rows, keys = staged.all_source_rows(), staged.all_keys()
    if staged_hashes is not None:
        stage_sent(context, label, staged_hashes, written, staged_fingerprint)
    context.checkpoint("written")
    store = open_store(context.config)
    executions: list[dict[str, Any]] = []
    refusals = refusals if refusals is not None else Refusals(re.compile(client.wire.dependency_message))
    offset = 0
    try:
        for number, part in enumerate(written, start=1):
            reference = part_reference(context.run_id, label, number)
            definition = _definition(context, target, table, mapping, reference={client.wire.reference_field: reference})
            context.fence()  # a run taken over sends nothing more
            # the intent first: a process killed during the upload leaves a reference to look up
            store.intend_import(reference, context.run_id, context.activation, target.entity, table.id,
                                datetime.now(UTC).date())
            execution = client.start_import(definition, part.path, etl_id=target.etl_id,
                                            upload_name=upload_name(context.activation, reference, part.path.name))
            context.fault_point("posted")
            store.record_import(reference, execution.id)
            context.checkpoint("delivered")
            final = client.wait_for(execution.id, timeout=target.timeout_seconds)
            store.finish_import(reference, final.status, final.counts)
            context.checkpoint("confirmed")
            line_errors = client.report(final.id) if final.status != "SUCCESS" else []
            before = len(refusals)
            refusals.add(offset, line_errors, len(source_rows))
            rejects.write(_report_rejects(line_errors, offset, source_rows, keys, refusals, retry_note))
            executions.append(_execution_details(final, part, len(refusals) - before))
            offset += part.rows
    finally:
        store.close()
        context.details.setdefault("executions", []).extend(executions)
    return offset - len(refusals), len(refusals)


def send_rows(
    context: RunContext,
    client: ActitoClient,
    target: ImportTarget,
    table: Table,
    mapping: Mapping,
    rows: pa.Table,
    rejects: RejectWriter,
    *,
    label: str,
    staged: pa.Table | None = None,
) -> tuple[int, int]:
    """Import rows built by the job itself (not read from the warehouse), e.g. audience members."""
    if not rows.num_rows:
        return 0, 0
    with CsvFileWriter(
        context.run_dir, import_file_name(f"{context.activation}.{label}", target.compression),
        header=mapping.output_columns(), compression=target.compression,
    ) as writer:
        writer.write(rows.select(mapping.output_columns()))
        written = writer.close()
    check_budget(context, target, table, len(written))
    sent = Staged()
    empty = np.empty(0, np.uint64)
    sent.add(np.arange(1, rows.num_rows + 1), rows.column(mapping.key).combine_chunks(), empty, empty)
    return import_parts(context, client, target, table, mapping, written, sent, rejects, label=f"{label}-",
                        staged_hashes=staged)


def import_file_name(stem: str, compression: Compression) -> str:
    """An import file is named for what it holds: ``.csv``, ``.csv.gz`` or ``.zip``, on disk and as uploaded."""
    return final_file_name(f"{stem}.csv", datetime.now(UTC), compression)


def _definition(
    context: RunContext, target: ImportTarget, table: Table, mapping: Mapping, *, reference: dict[str, str]
) -> dict[str, Any]:
    """``reference``: our idempotency key under the field the licence echoes back (wire.reference_field),
    the one recovery looks an unanswered upload up by."""
    return {
        **reference,
        "target": {"type": "CUSTOM_TABLE" if target.custom else "PROFILE_TABLE", "id": table.id},
        "mode": target.mode,
        "keyColumn": mapping.key,
        "format": {"separator": ",", "encoding": "UTF-8", "compression": _COMPRESSION[target.compression]},
        "emptyValues": target.empty_values.upper(),
        **mapping.definition_parts(),
        # from the rows when the query says how they were collected (set at staging): collection.py
        "dataCollection": context.details.get("data_collection")
        or default_collection(context.activation, context.started_at),
        **{name: [address] for name, address in target.report_to},
    }


def _report_rejects(line_errors: Sequence[LineError], offset: int, source_rows: np.ndarray, keys: pa.Array,
                    refusals: Refusals, retry_note: str) -> pa.Table:
    """Map Actito's line numbers (the header is line 1) back to warehouse rows; a row that waits for a
    dependency says it will be sent again."""
    rows, values, reasons = [], [], []
    for error in line_errors:
        index = offset + error.line - 2
        inside = 0 <= index < len(source_rows)
        rows.append(int(source_rows[index]) if inside else None)
        values.append(error.value if error.value is not None else (keys[index].as_py() if inside else None))
        column = f"{error.column}: " if error.column else ""
        retried = retry_note if inside and refusals.waiting_at.get(index) else ""
        reasons.append(f"refused by Actito: {column}{error.message}{retried}")
    return pa.table({"row": pa.array(rows, pa.int64()), "value": pa.array(values, pa.string()),
                     "reason": pa.array(reasons, pa.string())})


def _retry_note(context: RunContext) -> str:
    window = context.config.activation_of(context.activation, ImportActivationBase).retry_refused_for
    if window.strip().lower() == "off":
        return ""
    return f" (sent again on the next runs, for up to {window.strip()} after it was first refused)"


def _execution_details(execution: Execution, part: WrittenFile, refused: int) -> dict[str, Any]:
    return {"id": execution.id, "reference": execution.reference, "status": execution.status, "file": part.path.name,
            "rows": part.rows, "refused": refused, "counts": execution.counts}


@dataclass(frozen=True)
class ImportPlan:
    """Where an import activation's rows land and how its columns map to the table."""

    destination: str
    target: ImportTarget
    mapping_for: MappingFactory


def import_plan(config: Config, name: str) -> ImportPlan:
    activation = config.activation_of(name, ImportActivationBase)
    destination = config.destination_of(activation.destination, Destination)
    mode = "CREATE_UPDATE"
    if isinstance(activation, SubscriptionsActivation) and not activation.upsert_mode:
        mode = "UPDATE_ONLY"
    elif isinstance(activation, ProfilesActivation):
        mode = activation.mode
    target = ImportTarget(
        entity=destination.entity, table=activation.table or "",  # validated: an Actito import names its table
        custom=isinstance(activation, InteractionsActivation), mode=mode, empty_values=activation.empty_values,
        etl_id=activation.etl_id, compression=activation.compression,
        timeout_seconds=activation.import_timeout_minutes * 60.0, daily_budget=destination.daily_import_budget,
        report_to=report_to(destination),
    )
    mapping_for = _mapping_for(activation)
    policies, default = activation.invalid_policies()
    return ImportPlan(activation.destination, target,
                      lambda columns, table: with_policy(mapping_for(columns, table), policies, default))


def _mapping_for(activation: ImportActivationBase) -> MappingFactory:
    if isinstance(activation, ProfilesActivation) and activation.preset == "qualifio":
        return lambda columns, table: qualifio_mapping(
            columns, key=activation.key, incomplete_participations=activation.incomplete_participations)
    if isinstance(activation, SubscriptionsActivation):
        if activation.preset == "didomi":
            return lambda columns, table: _erasing_nothing(activation, didomi_mapping(
                columns, user_key=activation.key, subscriptions=activation.subscriptions,
                metadata_columns=activation.metadata, table_attributes=[a.name for a in table.attributes],
            ))
        return _by_name(activation, activation.key, activation.subscriptions, extra=activation.metadata)
    if isinstance(activation, InteractionsActivation):
        if activation.preset == "qualifio":
            return lambda columns, table: qualifio_interaction_mapping(
                columns, key=table.primary_key or "participationId",
                incomplete_participations=activation.incomplete_participations)
        return lambda columns, table: _by_name(activation, table.primary_key or "", {})(columns, table)
    assert isinstance(activation, ProfilesActivation)
    return _by_name(activation, activation.key, activation.subscriptions)


def _erasing_nothing(activation: ImportActivationBase, mapping: Mapping) -> Mapping:
    """A JSON object's absent property is an empty cell: with ``empty_values = "clear"`` it would erase the
    attribute, which Didomi, sending only the properties a user has, never does."""
    if mapping.json_object and activation.empty_values == "clear":
        raise MappingError([f"column {mapping.json_object!r}: a property a row does not have would be sent "
                            'empty, and empty_values = "clear" would erase the attribute'],
                           hint='keep empty_values = "keep", or select the properties as columns of their own')
    return mapping


def _by_name(
    activation: ImportActivationBase, key: str, subscriptions: dict[str, str], extra: Sequence[str] = ()
) -> MappingFactory:
    """Explicit ``attributes`` if given, else every column named like an attribute of the table."""

    def build(columns: Sequence[str], table: Table) -> Mapping:
        attributes = dict(activation.attributes) or {
            column: column for column in columns if column not in subscriptions
        }
        attributes.update({column: column for column in extra})
        rules = {attribute.name: rule_for(attribute) for attribute in table.attributes}
        return explicit_mapping(key, attributes, subscriptions, rules)

    return build


class _TableRows:
    """The query's chunks as rows of the table, each value held to the attribute's rule."""

    def __init__(self, mapping: Mapping, fingerprint_: str, where: str) -> None:
        self.mapping = mapping
        self.key_name = mapping.key
        self.fingerprint = fingerprint_
        self._mapper = RowMapper(mapping, where=where)
        #: rows the mapping left out (Mapping.send_only_if): read, neither sent nor rejected
        self.left_out = 0
        #: properties of a JSON column that no attribute takes → rows holding each
        self.unread: Counter[str] = Counter()

    def map(self, batch: pa.RecordBatch) -> MappedRows:
        mapped = self._mapper.map(batch)
        self.left_out += mapped.left_out
        self.unread.update(mapped.unread)
        return MappedRows(rows=mapped.rows, keys=mapped.rows.column(self.mapping.key),
                          source_rows=mapped.source_rows, rejects=mapped.rejects, hashed=mapped.rows)


class ActitoImports:
    """Rows into an Actito profile or custom table: CSV parts, one ETL execution each."""

    def __init__(self, config: Config, name: str) -> None:
        self._plan = import_plan(config, name)
        self._client = open_client(config, self._plan.destination)
        self._table: Table | None = None
        self._mapping: Mapping | None = None
        self._rows: _TableRows | None = None
        self._parts: list[WrittenFile] = []

    def preflight(self, context: RunContext, columns: list[str]) -> _TableRows:
        target = self._plan.target
        with context.step("preflight"):
            self._table, self._mapping = preflight(self._client, target, self._plan.mapping_for, columns)
        context.details["table"] = self._table.id
        _not_in_table(context, self._table, self._mapping.ignored)
        where = context.config.query_where(context.activation)
        self._rows = _TableRows(self._mapping, fingerprint([self._table.id, target.mode, target.empty_values,
                                                            self._mapping]), where)
        return self._rows

    def mapping(self) -> Mapping:
        assert self._mapping is not None  # after preflight
        return self._mapping

    def recover(self, context: RunContext, snapshot_path: Path | None) -> None:
        with context.step("recover"):
            retries = refusal_retries(context)
            recover_earlier_runs(context, self._client, self._plan.target.timeout_seconds,
                                 lambda landed: _commit_landed(snapshot_path, landed, retries) if snapshot_path else None)

    @contextmanager
    def staging(self, context: RunContext) -> Iterator[Callable[[pa.Table], None]]:
        assert self._mapping is not None  # after preflight
        compression = self._plan.target.compression
        header = self._mapping.output_columns()
        collected = CollectedValues(self._mapping.collection_columns())

        def write(rows: pa.Table) -> None:
            collected.add(rows)
            writer.write(rows.select(header))  # collected values are no columns of the file

        with CsvFileWriter(context.run_dir, import_file_name(context.activation, compression),
                           header=header, compression=compression) as writer:
            yield write
            context.checkpoint("extracted")
            self._parts = writer.close()
        if self._rows is not None and self._rows.left_out:
            context.details["left_out"] = self._rows.left_out
        if self._rows is not None and self._rows.unread and self._table is not None:
            _not_in_table(context, self._table, [f"{self._mapping.json_object}.{name}" for name in self._rows.unread])
        if self._mapping.collection_columns():
            context.details["data_collection"] = collected.definition(context.activation, context.started_at)
            if collected.mixed():
                context.details["data_collection_mixed"] = collected.mixed()
        context.details["files"] = [{"name": f.path.name, "rows": f.rows, "sha256": f.sha256} for f in self._parts]
        if self._parts:
            context.results.update(file_name=self._parts[0].path.name, sha256=self._parts[0].sha256)

    def restage(self, context: RunContext, parts: list[WrittenFile]) -> None:
        self._parts = parts

    def reserve(self, context: RunContext, staged: Staged) -> str:
        assert self._table is not None  # after preflight
        check_budget(context, self._plan.target, self._table, len(self._parts))
        return (f"{staged.count:,} rows in {len(self._parts)} import{'' if len(self._parts) == 1 else 's'} "
                f"into Actito table '{self._table.name}'")

    def send(self, context: RunContext, staged: Staged, snapshot: RowSnapshot | None, rejects: RejectWriter) -> None:
        assert self._table is not None and self._mapping is not None  # after preflight
        if context.dry_run:
            context.details["note"] = f"dry run: {len(self._parts)} file(s) written, nothing sent to Actito"
            return
        hashes = staged.hashes()
        refusals = Refusals(re.compile(self._client.wire.dependency_message))
        with context.step("import"):
            accepted, refused = import_parts(
                context, self._client, self._plan.target, self._table, self._mapping, self._parts, staged,
                rejects, staged_hashes=hashes if snapshot is not None else None,
                staged_fingerprint=snapshot.fingerprint if snapshot is not None else "", refusals=refusals,
                retry_note=_retry_note(context) if snapshot is not None else "")
        context.results["rows_delivered"] = accepted
        context.results["rows_rejected"] = context.results.get("rows_rejected", 0) + refused
        context.details["refused_by_actito"] = refused
        if snapshot is not None:
            # refused rows too, marked: resent unchanged they would be refused again, each costing a daily
            # import; the next runs count them as rejected while they stay unchanged, except those that
            # wait for a dependency, sent again until their window closes
            flags, waiting = refusals.flags(hashes.num_rows)
            snapshot.stage(hashes.column("key").to_numpy(), hashes.column("row").to_numpy(), flags, waiting)
            context.fence()
            snapshot.commit()
            discard_sent(context)
            if snapshot.retries.seconds:
                context.details["retry_queue"] = snapshot.queued()

    def describe(self, context: RunContext) -> Delivery:
        details = context.details
        if details.get("replay_of"):
            return self._describe_replay(context)
        retried = details.get("retried", 0)
        sent = (f"{details.get('to_send', 0) - retried:,} changed rows sent" if not context.dry_run
                else "dry run, nothing sent")
        if retried and not context.dry_run:
            sent += f" and {retried:,} sent again (refused before for a missing dependency)"
        if details.get("refused_by_actito"):
            sent += f" ({details['refused_by_actito']:,} refused by Actito, listed in the rejects file)"
        if details.get("left_out"):
            sent += f", {details['left_out']:,} incomplete participations left out (incomplete_participations = false)"
        if details.get("metadata_not_in_table"):
            sent += (f", not sent: {', '.join(details['metadata_not_in_table'])} "
                     "(metadata with no attribute of that name in the table)")
        if details.get("still_refused"):
            sent += f", {details['still_refused']:,} refused before and unchanged (in the rejects file)"
        if details.get("retry_queue"):
            sent += f", {details['retry_queue']:,} waiting to be sent again"
        return Delivery("actito", f"Actito table '{details['table']}'",
                        f"{sent}, {details.get('unchanged', 0):,} unchanged")

    def _describe_replay(self, context: RunContext) -> Delivery:
        details = context.details
        files = f"the {len(self._parts)} file(s) of run {details['replay_of']}"
        if context.dry_run:
            return Delivery("actito", f"Actito table '{details['table']}'", f"dry run: {files} checked, nothing sent")
        refused = details.get("refused_by_actito", 0)
        return Delivery("actito", f"Actito table '{details['table']}'",
                        f"{files} imported again: {context.results.get('rows_delivered', 0):,} rows taken"
                        + (f", {refused:,} refused by Actito (in the rejects file)" if refused else ""))

    def close(self) -> None:
        self._client.close()


def _not_in_table(context: RunContext, table: Table, names: Sequence[str]) -> None:
    """Metadata the table has no attribute for is not sent, as by Didomi, but said: a missing attribute
    is something to create in Actito, or a property to stop collecting."""
    if not names:
        return
    listed = context.details.setdefault("metadata_not_in_table", [])
    listed.extend(name for name in names if name not in listed)
    log.warning("metadata not sent: table '%s' has no attribute for %s", table.name, ", ".join(names),
                extra={"fields": {"activation": context.activation}})


def _commit_landed(snapshot_path: Path, landed: Landed, retries: RefusalRetries) -> None:
    """Rows an earlier run got into Actito but never recorded: into the snapshot, as if it had finished."""
    snapshot = RowSnapshot(snapshot_path, landed.fingerprint, retries)
    refused, waiting = landed.refusals.flags(landed.rows.num_rows)
    snapshot.stage(landed.rows.column("key").to_numpy(), landed.rows.column("row").to_numpy(), refused, waiting)
    snapshot.commit()
