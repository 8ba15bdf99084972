"""Audience membership as rows of an Actito custom table, instead of a file on a transfer location.

Each run imports the members who entered since the last delivered run and deletes those who left
(DinMo's way of keeping a list in sync), so marketers target ``audience = '<name>'`` in a
segmentation without any file transfer location. Who entered and who left comes from the
activation's members snapshot (etl/diffs.py), replaced only once both imports are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from etl.actito.client import Table
from etl.actito.connect import open_client
from etl.actito.imports import ImportTarget, preflight, rule_for, send_rows
from etl.actito.mapping import Mapping, explicit_mapping
from etl.config import AudienceActivation
from etl.diffs import MemberDiff
from etl.extract import local_time
from etl.files import RejectWriter
from etl.runs import RunContext
from etl.transform import HEADER


def deliver_membership(context: RunContext, activation: AudienceActivation, diff: MemberDiff) -> None:
    """Import who entered, delete who left; the caller replaces the members snapshot once this returns."""
    identifier = HEADER[activation.identifier]
    entered, left = diff.entered_members, diff.left_members
    assert entered is not None and left is not None  # asked for: a membership delivery needs the identifiers
    destination = context.config.destinations[activation.destination]
    target = ImportTarget(
        entity=destination.entity, table=activation.membership_table, custom=True, mode="CREATE_UPDATE",
        empty_values="keep", etl_id=None, compression="gzip", timeout_seconds=3600.0,
        daily_budget=destination.daily_import_budget, delta=False,
    )
    since = local_time(activation, context.started_at).date().isoformat()
    rejects_path = context.run_dir / f"{context.activation}.membership-rejects.csv"
    with context.step("deliver"), open_client(context.config, activation.destination) as client, \
            RejectWriter(rejects_path) as rejects:
        table, adding = preflight(client, target, _members_mapping, ["memberKey", "audience", identifier, "since"])
        _, removing = preflight(client, _deleting(target), lambda columns, table: explicit_mapping(
            "memberKey", {"memberKey": "memberKey"}), ["memberKey"])
        _, refused_in = send_rows(context, client, target, table, adding,
                                      _rows(context.activation, identifier, entered, since), rejects, label="entered")
        _, refused_out = send_rows(context, client, _deleting(target), table, removing,
                                         _rows(context.activation, None, left, since), rejects, label="left")
        rejects.close()
    context.details.update(membership_table=table.id, refused=refused_in + refused_out,
                           membership_rejects=str(rejects_path))


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
