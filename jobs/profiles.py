"""Profile attributes and subscriptions into Actito or OpenField; the shape every import activation's run has."""

from __future__ import annotations

from contextlib import closing
from itertools import chain

from etl.config import ImportActivationBase
from etl.destinations import open_rows
from etl.destinations.base import RowDestination
from etl.extract import activation_batches
from etl.files import RejectWriter
from etl.runtime.activation_state import ROWS, state_file
from etl.runtime.runs import RunContext
from etl.transform.delta import RowSnapshot, stage_changes

KIND = "profiles"


def run(context: RunContext) -> None:
    deliver_rows(context)


def deliver_rows(context: RunContext) -> None:
    """The body of every import run; the snapshot moves only with what the destination took."""
    with closing(open_rows(context.config, context.activation)) as destination:
        _deliver(context, destination)
        context.delivery = destination.describe(context)


def _deliver(context: RunContext, destination: RowDestination) -> None:
    config, name = context.config, context.activation
    batches = activation_batches(config, name, context.started_at)
    first = next(batches, None)
    row_format = destination.preflight(context, first.schema.names if first is not None else [])
    delta = config.activation_of(name, ImportActivationBase).delta
    snapshot_path = state_file(config.state_dir, name, ROWS) if delta else None
    destination.recover(context, snapshot_path)
    snapshot = RowSnapshot(snapshot_path, row_format.fingerprint) if snapshot_path else None
    rejects_path = context.run_dir / f"{name}.rejects.csv"
    context.details["rejects_file"] = str(rejects_path)
    with RejectWriter(rejects_path) as rejects:
        with context.step("extract"), destination.staging(context) as write:
            staged = stage_changes(context, chain([first] if first else [], batches), row_format, snapshot,
                                   rejects, write)
        if not staged.count:
            context.results["rows_delivered"] = 0
            context.details["note"] = "nothing changed since the last successful run: nothing sent"
            return
        destination.reserve(context, staged)
        destination.send(context, staged, snapshot, rejects)
