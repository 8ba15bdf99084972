"""Profile attributes and subscriptions into Actito or OpenField; the shape every import activation's run has,
and its preview."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa

from etl.config import Config, ImportActivationBase
from etl.destinations import open_rows
from etl.destinations.base import RowDestination
from etl.errors import AudienceSyncError, ServiceError
from etl.extract import activation_batches
from etl.files import RejectWriter
from etl.runtime.activation_state import ROOT, ROWS, state_file
from etl.runtime.runs import RunContext
from etl.transform.delta import MappedRows, RowFormat, RowSnapshot, refusal_retries, stage_changes
from etl.transform.mapping import VALUE_DROPPED, Mapping

KIND = "profiles"


def run(context: RunContext) -> None:
    deliver_rows(context)


def deliver_rows(context: RunContext) -> None:
    """The body of every import run; the snapshot moves only with what the destination took."""
    with closing(open_rows(context.config, context.activation)) as destination:
        _deliver(context, destination)
        context.delivery = destination.describe(context)


def row_snapshot_path(config: Config, name: str) -> Path | None:
    """Where a delta activation remembers the rows the destination holds; None without a delta."""
    delta = config.activation_of(name, ImportActivationBase).delta
    return state_file(config.state_dir, name, ROWS) if delta else None


def _preflighted(context: RunContext, destination: RowDestination) -> tuple[RowFormat, Iterator[pa.RecordBatch]]:
    """The destination checks the query's columns on its first chunk, before any row is mapped."""
    batches = activation_batches(context.config, context.activation, context.data_time)
    first = next(batches, None)
    row_format = destination.preflight(context, first.schema.names if first is not None else [])
    return row_format, chain([first] if first is not None else [], batches)


def _deliver(context: RunContext, destination: RowDestination) -> None:
    config, name = context.config, context.activation
    row_format, batches = _preflighted(context, destination)
    snapshot_path = row_snapshot_path(config, name)
    destination.recover(context, snapshot_path)
    snapshot = (RowSnapshot(snapshot_path, row_format.fingerprint, refusal_retries(context), fresh=context.full)
                if snapshot_path else None)
    rejects_path = context.run_dir / f"{name}.rejects.csv"
    # what `replay` checks its files against: the mapping they were written by, and where they are
    context.details.update(rejects_file=str(rejects_path), mapping_fingerprint=row_format.fingerprint,
                           local_dir=str(context.run_dir))
    with RejectWriter(rejects_path, by_field=True) as rejects:
        with context.step("extract"), destination.staging(context) as write:
            staged = stage_changes(context, batches, row_format, snapshot, rejects, write)
        if not staged.count:
            context.results["rows_delivered"] = 0
            context.details["note"] = "nothing changed since the last successful run: nothing sent"
            return
        context.confirm_full(destination.reserve(context, staged))
        destination.send(context, staged, snapshot, rejects)


# --------------------------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class MappedColumn:
    """One column of the query as a run sends it."""

    source: str
    #: the destination's field, or the subscription's name
    target: str
    #: the format rule its values must meet (etl.values.rules)
    rule: str
    #: "key" (rows are matched on it), "field", "subscription" or "data collection" (the import's, not a column)
    role: str


@dataclass(frozen=True)
class RowsPreview:
    """What a run of an import activation would send now, found without sending or recording anything."""

    #: where the rows would go, as the destination names it
    where: str
    columns: list[MappedColumn]
    #: columns of the query that no field takes
    not_sent: list[str]
    #: extracted, rejected (duplicates included), duplicates, unchanged, to_send, left_out (read, but
    #: neither sent nor refused: Qualifio's incomplete participations)
    counts: dict[str, int]
    #: reason (the value it quoted replaced by '…') -> rows refused for it, most frequent first
    rejected_by_reason: dict[str, int]
    #: reason -> the first value refused for it
    examples: dict[str, str]
    #: the first rows as mapped for the destination (unchanged ones too: the sample shows the mapping)
    sample: list[dict[str, Any]]
    #: whether the rows were compared with those the last successful run sent
    compared: bool
    #: reason -> invalid values that would be dropped (their rows sent without them), most frequent first
    dropped_by_reason: dict[str, int] = field(default_factory=dict)


def preview(config: Config, name: str, *, sample_size: int = 5, when: datetime | None = None) -> RowsPreview:
    """A run's reading and mapping, nothing after it: no import, no ledger row, no snapshot moved. The
    destination's preflight may need its API (an Actito table's attributes decide each column's rule)."""
    started = when or datetime.now(UTC)
    context = RunContext(config, name, "preview", started, True, config.state_dir / "runs" / name / "preview")
    counts: dict[str, int] = {}
    context.progress = lambda activation, latest: counts.update(latest)
    with closing(open_rows(config, name)) as destination:
        row_format, batches = _preview_preflight(context, destination)
        mapping = destination.mapping()
        last_sent = _last_sent(config, name)
        snapshot = RowSnapshot(last_sent, row_format.fingerprint, refusal_retries(context)) if last_sent else None
        sampled, reasons = _Sampled(row_format, sample_size), _Reasons()
        stage_changes(context, batches, sampled, snapshot, reasons, lambda rows: None)
        where = destination.describe(context).where
    kept = {"extracted": counts.get("extracted", 0), "rejected": counts.get("rejected", 0),
            "duplicates": counts.get("duplicates", 0), "unchanged": counts.get("unchanged", 0),
            "to_send": counts.get("sent", 0)}
    # every row read is rejected, unchanged, to send, or left out by the mapping
    kept["left_out"] = kept["extracted"] - kept["rejected"] - kept["unchanged"] - kept["to_send"]
    return RowsPreview(
        where, _columns(mapping), [c for c in sampled.columns if c not in _sources(mapping)], kept,
        dict(reasons.counts.most_common()), reasons.examples, sampled.rows, snapshot is not None and len(snapshot) > 0,
        dict(reasons.dropped.most_common()),
    )


def _preview_preflight(context: RunContext, destination: RowDestination) -> tuple[RowFormat, Iterator[pa.RecordBatch]]:
    """A destination that cannot be reached is said to be needed, not just to have failed."""
    try:
        return _preflighted(context, destination)
    except ServiceError as exc:
        if exc.status is not None:
            raise
        raise AudienceSyncError(
            "the destination could not be reached, and a preview needs it to map the rows as a run would "
            f"(its table's attributes decide each column's rule): {exc.message()}", where=context.activation,
        ) from exc


def _last_sent(config: Config, name: str) -> Path | None:
    """The rows the last successful run sent, found without creating or migrating anything (``state_file`` may)."""
    if not config.activation_of(name, ImportActivationBase).delta:
        return None
    state = config.state_dir
    for path in (state / ROOT / name / ROWS.name, state / "snapshots" / f"{name}{ROWS.old_suffix}"):
        if path.is_file():
            return path
    return None


def _columns(mapping: Mapping) -> list[MappedColumn]:
    key = mapping.key_field
    return ([MappedColumn(key.source, key.target, key.rule, "key")]
            + [MappedColumn(f.source, f.target, f.rule, "field") for f in mapping.fields if f is not key]
            + [MappedColumn(s.source, s.subscription, "yes_no", "subscription") for s in mapping.subscriptions]
            + [MappedColumn(f.source, f.target, f.rule, "data collection") for f in mapping.collected])


def _sources(mapping: Mapping) -> set[str]:
    return {f.source for f in [*mapping.fields, *mapping.collected]} | {s.source for s in mapping.subscriptions}


class _Sampled:
    """The destination's row format, keeping the query's columns and the first rows it maps."""

    def __init__(self, row_format: RowFormat, size: int) -> None:
        self.key_name = row_format.key_name
        self.fingerprint = row_format.fingerprint
        self._inner = row_format
        self._size = size
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []

    def map(self, batch: pa.RecordBatch) -> MappedRows:
        mapped = self._inner.map(batch)
        self.columns = self.columns or batch.schema.names
        room = self._size - len(self.rows)
        if room > 0:
            self.rows += mapped.rows.slice(0, room).to_pylist()
        return mapped


class _Reasons(RejectWriter):
    """Counts the rows refused by reason instead of writing them: a preview writes no file."""

    def __init__(self) -> None:  # no file: RejectWriter's own __init__ would create one
        self.rows = 0
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def write(self, rejects: pa.Table) -> None:
        """A rejected row counts once, under its first problem; a dropped value under ``dropped``."""
        self.rows += rejects.num_rows
        actions = (rejects.column("action").to_pylist() if "action" in rejects.column_names
                   else ["row rejected"] * rejects.num_rows)
        previous = None
        for row, value, reason, action in zip(rejects.column("row").to_pylist(), rejects.column("value").to_pylist(),
                                              rejects.column("reason").to_pylist(), actions):
            general = without_value(str(reason), None if value is None else str(value))
            if action == VALUE_DROPPED:
                self.dropped[general] += 1
            elif row is None or row != previous:
                self.counts[general] += 1
            previous = row
            if value is not None:
                self.examples.setdefault(general, str(value))

    def close(self) -> int:
        return self.rows

    def _after_failure(self) -> None:
        """Nothing to keep or remove."""


def without_value(reason: str, value: str | None) -> str:
    """A reason quotes the value it refused (cut to 40 characters, etl.values.text.quote); without it,
    rows refused by the same rule count together."""
    if value:
        for shown in (value, value[:39] + "…"):
            if f"'{shown}'" in reason:
                return reason.replace(f"'{shown}'", "'…'", 1)
    return reason
