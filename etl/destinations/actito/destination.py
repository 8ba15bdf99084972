"""An import activation's rows into an Actito table, by bulk imports: the Actito side of a rows run.

The mapping is chosen here, from the activation's kind and preset (Qualifio's variables, Didomi's
consents, or columns named like the table's attributes), so a job never names a partner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from etl.config import (
    Config, ImportActivationBase, InteractionsActivation, ProfilesActivation, SubscriptionsActivation,
)
from etl.destinations.actito.client import Table
from etl.destinations.actito.connect import open_client
from etl.destinations.actito.imports import (
    ImportTarget, MappingFactory, check_budget, import_parts, preflight, rule_for, target_for,
)
from etl.destinations.actito.mapping import (
    Mapping, RowMapper, didomi_mapping, explicit_mapping, qualifio_interaction_mapping, qualifio_mapping,
)
from etl.destinations.actito.recovery import Landed, discard_sent, recover_earlier_runs
from etl.files import CsvFileWriter, RejectWriter, WrittenFile
from etl.runtime.results import Delivery
from etl.runtime.runs import RunContext
from etl.transform.delta import MappedRows, RowSnapshot, Staged, fingerprint


@dataclass(frozen=True)
class ImportPlan:
    """Where an import activation's rows land and how its columns map to the table."""

    destination: str
    target: ImportTarget
    mapping_for: MappingFactory


def import_plan(config: Config, name: str) -> ImportPlan:
    """The plan of an import activation (profiles, subscriptions, interactions)."""
    activation = config.activation_of(name, ImportActivationBase)
    mode = "CREATE_UPDATE"
    if isinstance(activation, SubscriptionsActivation) and not activation.upsert_mode:
        mode = "UPDATE_ONLY"
    elif isinstance(activation, ProfilesActivation):
        mode = activation.mode
    target = target_for(config, name, custom=isinstance(activation, InteractionsActivation), mode=mode)
    return ImportPlan(activation.destination, target, _mapping_for(activation))


def _mapping_for(activation: ImportActivationBase) -> MappingFactory:
    if isinstance(activation, ProfilesActivation) and activation.preset == "qualifio":
        return lambda columns, table: qualifio_mapping(columns, key=activation.key)
    if isinstance(activation, SubscriptionsActivation):
        if activation.preset == "didomi":
            return lambda columns, table: didomi_mapping(
                columns, user_key=activation.key, subscriptions=activation.subscriptions,
                metadata_columns=activation.metadata,
            )
        return _by_name(activation, activation.key, activation.subscriptions, extra=activation.metadata)
    if isinstance(activation, InteractionsActivation):
        if activation.preset == "qualifio":
            return lambda columns, table: qualifio_interaction_mapping(
                columns, key=table.primary_key or "participationId")
        return lambda columns, table: _by_name(activation, table.primary_key or "", {})(columns, table)
    assert isinstance(activation, ProfilesActivation)
    return _by_name(activation, activation.key, activation.subscriptions)


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

    def map(self, batch: pa.RecordBatch) -> MappedRows:
        mapped = self._mapper.map(batch)
        return MappedRows(rows=mapped.rows, keys=mapped.rows.column(self.mapping.key),
                          source_rows=mapped.source_rows, rejects=mapped.rejects, hashed=mapped.rows)


class ActitoImports:
    """Rows into an Actito profile or custom table: CSV parts, one ETL execution each."""

    def __init__(self, config: Config, name: str) -> None:
        self._plan = import_plan(config, name)
        self._client = open_client(config, self._plan.destination)
        self._table: Table | None = None
        self._mapping: Mapping | None = None
        self._parts: list[WrittenFile] = []

    def preflight(self, context: RunContext, columns: list[str]) -> _TableRows:
        target = self._plan.target
        with context.step("preflight"):
            self._table, self._mapping = preflight(self._client, target, self._plan.mapping_for, columns)
        context.details["table"] = self._table.id
        where = str(context.config.path(context.config.activations[context.activation].sql))
        return _TableRows(self._mapping, fingerprint([self._table.id, target.mode, target.empty_values,
                                                      self._mapping]), where)

    def recover(self, context: RunContext, snapshot_path: Path | None) -> None:
        with context.step("recover"):
            recover_earlier_runs(context, self._client, self._plan.target.timeout_seconds,
                                 lambda landed: _commit_landed(snapshot_path, landed) if snapshot_path else None)

    @contextmanager
    def staging(self, context: RunContext) -> Iterator[Callable[[pa.Table], None]]:
        assert self._mapping is not None  # after preflight
        with CsvFileWriter(context.run_dir, f"{context.activation}.csv", header=self._mapping.output_columns(),
                           compression=self._plan.target.compression) as writer:
            yield writer.write
            context.checkpoint("extracted")
            self._parts = writer.close()
        context.details["files"] = [{"name": f.path.name, "rows": f.rows, "sha256": f.sha256} for f in self._parts]
        if self._parts:
            context.results.update(file_name=self._parts[0].path.name, sha256=self._parts[0].sha256)

    def reserve(self, context: RunContext, staged: Staged) -> None:
        assert self._table is not None  # after preflight
        check_budget(context, self._plan.target, self._table, len(self._parts))

    def send(self, context: RunContext, staged: Staged, snapshot: RowSnapshot | None, rejects: RejectWriter) -> None:
        assert self._table is not None and self._mapping is not None  # after preflight
        if context.dry_run:
            context.details["note"] = f"dry run: {len(self._parts)} file(s) written, nothing sent to Actito"
            return
        hashes = staged.hashes()
        with context.step("import"):
            accepted, refused = import_parts(
                context, self._client, self._plan.target, self._table, self._mapping, self._parts, staged,
                rejects, staged_hashes=hashes if snapshot else None,
                staged_fingerprint=snapshot.fingerprint if snapshot else "")
        context.results["rows_delivered"] = accepted
        context.results["rows_rejected"] = context.results.get("rows_rejected", 0) + refused
        context.details["refused_by_actito"] = refused
        if snapshot is not None:
            # refused rows too: sent again unchanged they would be refused again, each time costing one
            # of the table's daily imports; a refused row is sent again as soon as it changes
            snapshot.stage(hashes.column("key").to_numpy(), hashes.column("row").to_numpy())
            context.fence()
            snapshot.commit()
            discard_sent(context)

    def describe(self, context: RunContext) -> Delivery:
        details = context.details
        sent = f"{details.get('to_send', 0):,} changed rows sent" if not context.dry_run else "dry run, nothing sent"
        if details.get("refused_by_actito"):
            sent += f" ({details['refused_by_actito']:,} refused by Actito, listed in the rejects file)"
        return Delivery("actito", f"Actito table '{details['table']}'",
                        f"{sent}, {details.get('unchanged', 0):,} unchanged")

    def close(self) -> None:
        self._client.close()


def _commit_landed(snapshot_path: Path, landed: Landed) -> None:
    """Rows an earlier run got into Actito but never recorded: into the snapshot, as if it had finished."""
    snapshot = RowSnapshot(snapshot_path, landed.fingerprint)
    snapshot.stage(landed.rows.column("key").to_numpy(), landed.rows.column("row").to_numpy())
    snapshot.commit()
