"""What a run that died or failed midway left in flight in Actito.

An import is irreversible and costs a daily import, so a rerun must never resend a part Actito has.
Before each upload the ledger holds the part's reference, and the run dir the rows each part carries;
the next run (holding the lock) resolves every unfinished import by reference and commits the rows
that landed to the snapshot, so its own delta does not send them again.
"""

from __future__ import annotations

import json
import re
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl.destinations.actito.client import ActitoClient
from etl.destinations.actito.refusals import Refusals
from etl.errors import ActitoImportError
from etl.files import WrittenFile, create_private
from etl.files.names import EXTENSIONS
from etl.runtime.runs import RunContext
from etl.runtime.ledger import NOT_SENT, ImportRecord, StateStore, open_store

log = logging.getLogger("audience_sync.actito")

_SENT_SUFFIX = "sent.parquet"
_PARTS_KEY, _LABEL_KEY, _FINGERPRINT_KEY = b"audience_sync_parts", b"audience_sync_label", b"audience_sync_fingerprint"


def part_reference(run_id: str, label: str, number: int) -> str:
    """Our reference of one uploaded part: stable, so the run's successor can look it up."""
    return f"{run_id}-{label}{number}"


def upload_name(activation: str, reference: str, file_name: str) -> str:
    """The name a part is uploaded under: a triggered import sends only its file, so the name carries our
    reference (and tells in Actito's screens which activation and run sent it); the extension says what the
    file holds (``.csv``, ``.csv.gz``, ``.zip``), as on disk."""
    extension = next((e for e in sorted(EXTENSIONS, key=len, reverse=True) if file_name.endswith(e)), "")
    return f"{activation}.{reference}{extension}"


@dataclass(frozen=True)
class Landed:
    """Rows an earlier run sent that Actito now holds, in the order they were sent."""

    run_id: str
    #: which of the run's sends ("" for an import activation, "entered-"/"left-" for membership)
    label: str
    rows: pa.Table
    #: the snapshot fingerprint (mapping, mode ...) the rows were sent under
    fingerprint: str
    #: which of ``rows`` Actito refused
    refusals: Refusals


def stage_sent(context: RunContext, label: str, rows: pa.Table, parts: Sequence[WrittenFile], fingerprint: str) -> None:
    """Keep, before anything is uploaded, the rows each part carries: what a snapshot commit needs."""
    metadata = {_PARTS_KEY: json.dumps([part.rows for part in parts]).encode(), _LABEL_KEY: label.encode(),
                _FINGERPRINT_KEY: fingerprint.encode()}
    path = _sent_path(context.run_dir, context.activation, label)
    partial = path.with_name(f".{path.name}.partial")
    with create_private(partial) as out:
        pq.write_table(rows.replace_schema_metadata(metadata), out)
    partial.replace(path)


def discard_sent(context: RunContext) -> None:
    """The run's snapshot is committed: its "sent" files are no longer needed."""
    for path in context.run_dir.glob(f"{context.activation}.*{_SENT_SUFFIX}"):
        path.unlink(missing_ok=True)


def recover_earlier_runs(
    context: RunContext, client: ActitoClient, timeout: float, commit: Callable[[Landed], None]
) -> None:
    """Resolve the imports earlier runs left unfinished, then ``commit`` the rows of every part that landed.

    Raises, keeping everything, while an import is unresolved: resending its rows would import them twice."""
    store = open_store(context.config)
    try:
        resolved = [_resolve(client, store, record, timeout)
                    for record in store.unfinished_imports(context.activation, excluding_run=context.run_id)]
        if resolved:
            context.details["recovered_imports"] = resolved
        runs_dir = context.run_dir.parent
        for path in sorted(runs_dir.glob(f"*/{context.activation}.*{_SENT_SUFFIX}")):
            if path.parent != context.run_dir:
                landed = _landed_rows(client, store, path)
                if landed.rows.num_rows:
                    commit(landed)
                    log.info("rows of run %s that reached Actito committed to the snapshot: %d", landed.run_id,
                             landed.rows.num_rows, extra={"fields": {"activation": context.activation}})
                path.unlink()
    finally:
        store.close()


def _resolve(client: ActitoClient, store: StateStore, record: ImportRecord, timeout: float) -> dict[str, Any]:
    """Learn the outcome of one import: found by reference if its execution id never reached the ledger."""
    execution_id = record.execution_id
    if not execution_id:
        # a one-shot import by its reference, a triggered one by the name it was uploaded under
        names = [upload_name(record.activation, record.reference, extension) for extension in EXTENSIONS]
        found = client.find_execution(record.reference, names)
        if found is None:
            store.finish_import(record.reference, NOT_SENT, {})
            return {"reference": record.reference, "status": NOT_SENT}
        execution_id = found.id
        store.record_import(record.reference, execution_id)
    try:
        final = client.wait_for(execution_id, timeout=timeout)
    except ActitoImportError:
        final = client.execution(execution_id)
        if final.status.upper() not in client.wire.error_statuses:
            raise  # still running: its rows must not be sent again before it ends
    store.finish_import(record.reference, final.status, final.counts)
    log.info("import %s of run %s, left in flight, ended %s", record.reference, record.run_id, final.status,
             extra={"fields": {"execution": execution_id, "activation": record.activation}})
    return {"reference": record.reference, "id": execution_id, "status": final.status, "counts": final.counts}


def _landed_rows(client: ActitoClient, store: StateStore, path: Path) -> Landed:
    """The rows of every part that landed; those a partly refused part's report names are marked refused, as
    the dead run would have, so a refusal for a missing dependency still goes to the retry queue."""
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    label = metadata.get(_LABEL_KEY, b"").decode()
    run_id = path.parent.name
    outcomes = store.import_outcomes(run_id)
    wire = client.wire
    slices, offset, landed = [], 0, 0
    refusals = Refusals(re.compile(wire.dependency_message))
    for number, rows in enumerate(json.loads(metadata.get(_PARTS_KEY, b"[]")), start=1):
        status, execution_id = outcomes.get(part_reference(run_id, label, number), ("", ""))
        if status.upper() in wire.success_statuses | wire.partial_statuses:
            slices.append(table.slice(offset, rows))
            if status.upper() in wire.partial_statuses:
                refusals.add(landed, client.report(execution_id), landed + rows)
            landed += rows
        offset += rows
    rows_landed = pa.concat_tables(slices) if slices else table.slice(0, 0)
    return Landed(run_id, label, rows_landed.replace_schema_metadata(None),
                  metadata.get(_FINGERPRINT_KEY, b"").decode(), refusals)


def _sent_path(run_dir: Path, activation: str, label: str) -> Path:
    return run_dir / f"{activation}.{label}{_SENT_SUFFIX}"
