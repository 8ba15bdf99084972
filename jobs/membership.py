"""Audience membership as rows of an Actito custom table, instead of a file on a transfer location.

Each run imports the members who entered since the last delivered run and deletes those who left
(DinMo's way of keeping a list in sync), so marketers target ``audience = '<name>'`` in a
segmentation without any file transfer location. The previous members are a Parquet snapshot of
identifiers, replaced only once both imports are done.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from etl.actito.client import Table
from etl.actito.connect import open_client
from etl.actito.imports import ImportTarget, preflight, rule_for, send_rows
from etl.actito.recovery import Landed, discard_sent, recover_earlier_runs
from etl.actito.mapping import Mapping, explicit_mapping
from etl.config import AudienceActivation, Destination
from etl.extract import local_time
from etl.files import RejectWriter, WrittenFile
from etl.runs import RunContext
from etl.snapshots import replace_parquet
from etl.transform import HEADER


def deliver_membership(context: RunContext, activation: AudienceActivation, written: list[WrittenFile]) -> None:
    identifier = HEADER[activation.identifier]
    current = _members(written, identifier)
    snapshot = context.config.state_dir / "snapshots" / f"{context.activation}.members.parquet"
    destination = context.config.destination_of(activation.destination, Destination)
    target = ImportTarget(
        entity=destination.entity, table=activation.membership_table, custom=True, mode="CREATE_UPDATE",
        empty_values="keep", etl_id=None, compression="gzip", timeout_seconds=3600.0,
        daily_budget=destination.daily_import_budget, delta=False,
    )
    since = local_time(activation, context.started_at).date().isoformat()
    rejects_path = context.run_dir / f"{context.activation}.membership-rejects.csv"
    with context.step("deliver"), open_client(context.config, activation.destination) as client, \
            RejectWriter(rejects_path) as rejects:
        recover_earlier_runs(context, client, target.timeout_seconds, lambda landed: _apply_landed(snapshot, landed))
        previous = _read_members(snapshot)
        entered, left = _difference(current, previous), _difference(previous, pa.chunked_array([current]))
        table, adding = preflight(client, target, _members_mapping, ["memberKey", "audience", identifier, "since"])
        _, removing = preflight(client, _deleting(target), lambda columns, table: explicit_mapping(
            "memberKey", {"memberKey": "memberKey"}), ["memberKey"])
        added, refused_in = send_rows(context, client, target, table, adding,
                                      _rows(context.activation, identifier, entered, since), rejects, label="entered",
                                      staged=pa.table({"member": entered}))
        removed, refused_out = send_rows(context, client, _deleting(target), table, removing,
                                         _rows(context.activation, None, left, since), rejects, label="left",
                                         staged=pa.table({"member": left}))
        rejects.close()
    _replace_snapshot(snapshot, current)
    discard_sent(context)
    context.results["rows_delivered"] = len(current)
    context.details.update(membership_table=table.id, entered=added, left=removed,
                           refused=refused_in + refused_out, membership_rejects=str(rejects_path))


def _read_members(snapshot: Path) -> pa.Array:
    return pq.read_table(snapshot).column("member") if snapshot.exists() else pa.array([], pa.string())


def _apply_landed(snapshot: Path, landed: Landed) -> None:
    """Members an earlier run got into (or out of) the table but never recorded: into the snapshot,
    so this run does not import them again."""
    members, changed = _read_members(snapshot), landed.rows.column("member")
    if landed.label.startswith("entered"):
        updated = pc.unique(pa.concat_tables([pa.table({"member": members}), pa.table({"member": changed})])
                            .column("member"))
    else:
        updated = _difference(members, changed)
    _replace_snapshot(snapshot, updated)


def _members(written: Sequence[WrittenFile], identifier: str) -> pa.Array:
    """This run's members, read back from the files just written (they are the audience as delivered)."""
    columns = pacsv.ConvertOptions(column_types={identifier: pa.string()})
    parts = [pacsv.read_csv(_readable(f.path), convert_options=columns).column(identifier) for f in written]
    return pa.chunked_array(parts, pa.string()).combine_chunks() if parts else pa.array([], pa.string())


def _readable(path: Path) -> pa.NativeFile | Path:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return pa.BufferReader(archive.read(archive.namelist()[0]))
    return pa.input_stream(str(path), compression="detect")  # type: ignore[no-any-return]


def _difference(values: pa.Array | pa.ChunkedArray, others: pa.Array | pa.ChunkedArray) -> pa.Array:
    left = pa.table({"member": values})
    right = pa.table({"member": others})
    return left.join(right, "member", join_type="left anti").column("member").combine_chunks()


def _rows(audience: str, identifier: str | None, members: pa.Array, since: str) -> pa.Table:
    keys = pc.binary_join_element_wise(pa.scalar(f"{audience}:"), members, "")
    if identifier is None:
        return pa.table({"memberKey": keys})
    count = len(members)
    return pa.table({"memberKey": keys, "audience": pa.array([audience] * count, pa.string()),
                     identifier: members, "since": pa.array([since] * count, pa.string())})


def _members_mapping(columns: Sequence[str], table: Table) -> Mapping:
    rules = {attribute.name: rule_for(attribute) for attribute in table.attributes}
    return explicit_mapping("memberKey", {name: name for name in columns}, {}, rules)


def _deleting(target: ImportTarget) -> ImportTarget:
    return replace(target, mode="DELETE")


def _replace_snapshot(path: Path, members: pa.Array) -> None:
    """Sorted, so the zstd file stays small (sorted e-mails compress about four times better)."""
    replace_parquet(path, pa.table({"member": members.take(pc.sort_indices(members))}))
