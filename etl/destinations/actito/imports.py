"""Bulk imports into an Actito table: map rows → keep what changed → CSV parts → ETL executions →
per-row outcomes.

Everything Actito would refuse is refused here first — the table and every mapped column are
checked against Actito's own structure before a row is read (pre-flight), and each value against
its format rule — so an import either applies or names what it could not apply, line by line,
mapped back to the warehouse row. The daily quota is counted in our own ledger and never burnt.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.destinations.actito.client import ActitoClient, Attribute, Execution, Table
from etl.destinations.actito.connect import open_client
from etl.errors import ActitoBudgetExhausted, ActitoError
from etl.destinations.actito.mapping import FieldMap, FieldRule, Mapping, RowMapper
from etl.destinations.actito.recovery import Landed, discard_sent, part_reference, recover_earlier_runs, stage_sent
from etl.config import Config, Destination, ImportActivationBase
from etl.extract import activation_batches
from etl.files import Compression, CsvFileWriter, RejectWriter, WrittenFile
from etl.runtime.runs import RunContext, kill_point
from etl.runtime.ledger import open_store
from etl.transform import SeenHashes
from etl.runtime.activation_state import ROWS, state_file
from etl.transform.delta import RowSnapshot, fingerprint, key_hashes, row_hashes

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
    "STRING": frozenset({"string", "email", "phone", "country", "language", "sex"}),
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
    delta: bool


@dataclass(frozen=True)
class ImportPlan:
    """What a job kind decides; everything after (pre-flight, delta, files, imports) is shared."""

    destination: str
    target: ImportTarget
    mapping_for: MappingFactory


class ActitoPreflightError(ActitoError):
    """The Actito table does not match what the activation would send; nothing was sent."""

    def __init__(self, problems: list[str], *, where: str) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} before sending anything:\n{listing}",
            where=where,
            hint="fix the SQL aliases or the activation's mapping, or the table in Actito; "
                 "`audience-sync actito check` repeats this check",
        )


def preflight(
    client: ActitoClient, target: ImportTarget, mapping_for: MappingFactory, columns: Sequence[str]
) -> tuple[Table, Mapping]:
    """Check the table and every mapped column; return the table and the mapping tightened to the
    table's own length limits (so an over-long value is rejected here, not by Actito)."""
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


def rule_for(attribute: Attribute) -> FieldRule:
    """The format rule a value must meet to land in this attribute (for mappings without a preset)."""
    actito_type = attribute.value_type if attribute.type == "CUSTOM" else attribute.type
    return _RULE_OF_TYPE.get(actito_type or "", "string")


_RULE_OF_TYPE: dict[str, FieldRule] = {
    "EMAIL_ADDRESS": "email", "SEX": "sex", "BIRTHDATE": "date", "PHONE_NUMBER": "phone",
    "ADDRESS_COUNTRY": "country", "MOTHER_LANGUAGE": "language", "INTEGER": "integer", "DECIMAL": "decimal",
    "BOOLEAN": "boolean", "DATE": "date", "TIMESTAMP": "datetime",
}


def target_for(config: Config, name: str, *, custom: bool, mode: str) -> ImportTarget:
    activation = config.activation_of(name, ImportActivationBase)
    destination = config.destination_of(activation.destination, Destination)
    return ImportTarget(
        entity=destination.entity,
        table=activation.table or "",  # validated: an Actito import names its table
        custom=custom,
        mode=mode,
        empty_values=activation.empty_values,
        etl_id=activation.etl_id,
        compression=activation.compression,
        timeout_seconds=activation.import_timeout_minutes * 60.0,
        daily_budget=destination.daily_import_budget,
        delta=activation.delta,
    )


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


@dataclass
class _Sent:
    """What was written for Actito, kept to map report lines back and to update the snapshot."""

    source_rows: list[np.ndarray] = dataclasses.field(default_factory=list)
    keys: list[pa.Array] = dataclasses.field(default_factory=list)
    key_hashes: list[np.ndarray] = dataclasses.field(default_factory=list)
    row_hashes: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, rows: np.ndarray, keys: pa.Array, key_hash: np.ndarray, row_hash: np.ndarray) -> None:
        self.source_rows.append(rows)
        self.keys.append(keys)
        self.key_hashes.append(key_hash)
        self.row_hashes.append(row_hash)


def run_plan(context: RunContext, plan: ImportPlan) -> None:
    """The body of a profiles / subscriptions / interactions run."""
    with open_client(context.config, plan.destination) as client:
        batches = activation_batches(context.config, context.activation, context.started_at)
        run_import(context, client, plan.target, plan.mapping_for, batches)


def run_import(
    context: RunContext,
    client: ActitoClient,
    target: ImportTarget,
    mapping_for: MappingFactory,
    batches: Iterator[pa.RecordBatch],
) -> None:
    first = next(batches, None)
    columns = first.schema.names if first is not None else []
    with context.step("preflight"):
        table, mapping = preflight(client, target, mapping_for, columns)
    snapshot_path = state_file(context.config.state_dir, context.activation, ROWS)
    with context.step("recover"):
        recover_earlier_runs(context, client, target.timeout_seconds,
                             lambda landed: _commit_landed(snapshot_path, landed) if target.delta else None)
    snapshot = None
    if target.delta:
        snapshot = RowSnapshot(snapshot_path, fingerprint([table.id, target.mode, target.empty_values, mapping]))
    rejects_path = context.run_dir / f"{context.activation}.rejects.csv"
    with context.step("extract"), RejectWriter(rejects_path) as rejects:
        written, sent = _write_delta(context, mapping, target.compression, chain([first] if first else [], batches), snapshot, rejects)
        context.details.update(rejects_file=str(rejects_path), table=table.id)
        if not written or not sum(f.rows for f in written):
            context.results["rows_delivered"] = 0
            context.details["note"] = "nothing changed since the last successful run: nothing sent"
            rejects.close()
            return
        _check_budget(context, target, table, len(written))
        if context.dry_run:
            context.details["note"] = f"dry run: {len(written)} file(s) written, nothing sent to Actito"
            rejects.close()
            return
        hashes = pa.table({"key": np.concatenate(sent.key_hashes), "row": np.concatenate(sent.row_hashes)})
        with context.step("import"):
            accepted, refused = _send(context, client, target, table, mapping, written, sent, rejects,
                                      staged=hashes if snapshot else None,
                                      staged_fingerprint=snapshot.fingerprint if snapshot else "")
        context.results["rows_delivered"] = accepted
        context.results["rows_rejected"] = context.results.get("rows_rejected", 0) + refused
        context.details["refused_by_actito"] = refused
        rejects.close()
    if snapshot is not None:
        # refused rows too: sent again unchanged they would be refused again, each time costing one
        # of the table's daily imports; a refused row is sent again as soon as it changes
        snapshot.stage(hashes.column("key").to_numpy(), hashes.column("row").to_numpy())
        context.fence()
        snapshot.commit()
        discard_sent(context)


def _commit_landed(snapshot_path: Path, landed: Landed) -> None:
    """Rows an earlier run got into Actito but never recorded: into the snapshot, as if it had finished."""
    snapshot = RowSnapshot(snapshot_path, landed.fingerprint)
    snapshot.stage(landed.rows.column("key").to_numpy(), landed.rows.column("row").to_numpy())
    snapshot.commit()


def _write_delta(
    context: RunContext,
    mapping: Mapping,
    compression: Compression,
    batches: Iterator[pa.RecordBatch],
    snapshot: RowSnapshot | None,
    rejects: RejectWriter,
) -> tuple[list[WrittenFile], _Sent]:
    mapper = RowMapper(mapping, where=str(context.config.path(context.config.activations[context.activation].sql)))
    counts = {"extracted": 0, "rejected": 0, "unchanged": 0, "sent": 0}
    sent = _Sent()
    seen_keys = SeenHashes()
    with CsvFileWriter(
        context.run_dir,
        f"{context.activation}.csv",
        header=mapping.output_columns(),
        compression=compression,
    ) as writer:
        for batch in batches:
            mapped = mapper.map(batch)
            counts["extracted"] += batch.num_rows
            counts["rejected"] += mapped.rejects.num_rows
            rejects.write(mapped.rejects.select(["row", "value", "reason"]))
            key_hash = key_hashes(mapped.rows.column(mapping.key))
            row_hash = row_hashes(mapped.rows)
            first = seen_keys.add_new(key_hash)
            if not first.all():  # one row per key and run, the first one, as audiences keep the first
                duplicates = pa.array(~first)
                rejects.write(pa.table({
                    "row": mapped.source_rows.filter(duplicates),
                    "value": pc.cast(mapped.rows.column(mapping.key).filter(duplicates), pa.string()),
                    "reason": pa.array([f"duplicate {mapping.key}: an earlier row has it"] * int((~first).sum())),
                }))
                counts["rejected"] += int((~first).sum())
            changed = first & (snapshot.changed(key_hash, row_hash) if snapshot else True)
            mask = pa.array(changed)
            writer.write(mapped.rows.filter(mask))
            sent.add(
                np.asarray(mapped.source_rows.filter(mask)),
                mapped.rows.column(mapping.key).filter(mask).combine_chunks(),
                key_hash[changed],
                row_hash[changed],
            )
            counts["unchanged"] += int((first & ~changed).sum())
            counts["sent"] += int(changed.sum())
            context.tick({**counts, "kept": counts["sent"], "duplicates": 0})
        context.checkpoint("extracted")
        written = writer.close()
    context.results.update(rows_extracted=counts["extracted"], rows_rejected=counts["rejected"])
    context.details.update(unchanged=counts["unchanged"], to_send=counts["sent"],
                           files=[{"name": f.path.name, "rows": f.rows, "sha256": f.sha256} for f in written])
    if written:
        context.results.update(file_name=written[0].path.name, sha256=written[0].sha256)
    return written, sent


def _check_budget(context: RunContext, target: ImportTarget, table: Table, parts: int) -> None:
    """Refuse before sending rather than let Actito refuse midway through a multi-part import."""
    store = open_store(context.config)
    try:
        used = store.imports_on(target.entity, table.id, datetime.now(UTC).date())
    finally:
        store.close()
    if used + parts > target.daily_budget:
        raise ActitoBudgetExhausted(
            f"this run needs {parts} import(s) but {used} of the {target.daily_budget} allowed today "
            f"on table '{table.id}' are used",
            where=f"Actito table '{table.id}' of entity '{target.entity}'",
            hint="wait for tomorrow (UTC), or raise daily_import_budget if your licence allows more",
        )


def _send(
    context: RunContext,
    client: ActitoClient,
    target: ImportTarget,
    table: Table,
    mapping: Mapping,
    written: list[WrittenFile],
    sent: _Sent,
    rejects: RejectWriter,
    *,
    label: str = "",
    staged: pa.Table | None = None,
    staged_fingerprint: str = "",
) -> tuple[int, int]:
    """Import each part in turn; return (rows accepted, rows refused by Actito).

    ``staged``: what a snapshot keeps of each row sent, in file order, saved before the first upload
    so that a successor can commit the parts that landed if this process dies (etl.destinations.actito.recovery)."""
    source_rows = np.concatenate(sent.source_rows)
    keys = pa.concat_arrays(sent.keys) if sent.keys else pa.array([], pa.string())
    if staged is not None:
        stage_sent(context, label, staged, written, staged_fingerprint)
    context.checkpoint("written")
    store = open_store(context.config)
    executions: list[dict[str, Any]] = []
    accepted = rejected = 0
    offset = 0
    try:
        for number, part in enumerate(written, start=1):
            reference = part_reference(context.run_id, label, number)
            definition = _definition(context, target, table, mapping, reference=reference)
            context.fence()  # a run taken over sends nothing more
            # the intent first: a process killed during the upload leaves a reference to look up
            store.intend_import(reference, context.run_id, context.activation, target.entity, table.id,
                                datetime.now(UTC).date())
            execution = client.start_import(definition, part.path, etl_id=target.etl_id)
            kill_point("posted")
            store.record_import(reference, execution.id)
            context.checkpoint("delivered")
            final = client.wait_for(execution.id, timeout=target.timeout_seconds)
            store.finish_import(reference, final.status, final.counts)
            context.checkpoint("confirmed")
            line_errors = client.report(final.id) if final.status != "SUCCESS" else []
            rejects.write(_report_rejects(line_errors, offset, source_rows, keys))
            rejected += len(line_errors)
            accepted += part.rows - len(line_errors)
            executions.append(_execution_details(final, part, len(line_errors)))
            offset += part.rows
    finally:
        store.close()
        context.details.setdefault("executions", []).extend(executions)
    return accepted, rejected


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
    """Import rows built by the job itself (not read from the warehouse), e.g. audience members.
    ``staged``: one row per row sent, what the job's snapshot needs (see `_send`)."""
    if not rows.num_rows:
        return 0, 0
    with CsvFileWriter(
        context.run_dir, f"{context.activation}.{label}.csv", header=mapping.output_columns(),
        compression=target.compression,
    ) as writer:
        writer.write(rows.select(mapping.output_columns()))
        written = writer.close()
    _check_budget(context, target, table, len(written))
    sent = _Sent()
    empty = np.empty(0, np.uint64)
    sent.add(np.arange(1, rows.num_rows + 1), rows.column(mapping.key).combine_chunks(), empty, empty)
    return _send(context, client, target, table, mapping, written, sent, rejects, label=f"{label}-", staged=staged)


def _definition(
    context: RunContext, target: ImportTarget, table: Table, mapping: Mapping, *, reference: str
) -> dict[str, Any]:
    return {
        "reference": reference,
        "target": {"type": "CUSTOM_TABLE" if target.custom else "PROFILE_TABLE", "id": table.id},
        "mode": target.mode,
        "keyColumn": mapping.key,
        "format": {"separator": ",", "encoding": "UTF-8", "compression": _COMPRESSION[target.compression]},
        "emptyValues": target.empty_values.upper(),
        **mapping.definition_parts(),
        "dataCollection": {
            "source": "audience-sync",
            "way": context.activation,
            "date": context.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        },
    }


def _report_rejects(line_errors: Sequence[Any], offset: int, source_rows: np.ndarray, keys: pa.Array) -> pa.Table:
    """Actito counts lines in the uploaded part with the header as line 1; map each back to the
    warehouse row it came from."""
    rows, values, reasons = [], [], []
    for error in line_errors:
        index = offset + error.line - 2
        inside = 0 <= index < len(source_rows)
        rows.append(int(source_rows[index]) if inside else None)
        values.append(error.value if error.value is not None else (keys[index].as_py() if inside else None))
        column = f"{error.column}: " if error.column else ""
        reasons.append(f"refused by Actito: {column}{error.message}")
    return pa.table({"row": pa.array(rows, pa.int64()), "value": pa.array(values, pa.string()),
                     "reason": pa.array(reasons, pa.string())})


def _execution_details(execution: Execution, part: WrittenFile, refused: int) -> dict[str, Any]:
    return {"id": execution.id, "reference": execution.reference, "status": execution.status, "file": part.path.name,
            "rows": part.rows, "refused": refused, "counts": execution.counts}
