"""Audience membership as rows of an Actito custom table, instead of a file on a transfer location.

Each run imports who entered and deletes who left; the members snapshot is replaced only once both are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from etl.config import AudienceActivation, Config, Destination
from etl.destinations.actito.client import ActitoClient
from etl.destinations.actito.connect import open_client
from etl.destinations.actito.imports import ImportTarget, preflight, report_to, rule_for, send_rows
from etl.destinations.actito.recovery import Landed, discard_sent, recover_earlier_runs
from etl.destinations.actito.tables import Table
from etl.destinations.base import Target, written_locally
from etl.extract import local_time
from etl.files import RejectWriter, WrittenFile
from etl.runtime.results import Delivery
from etl.runtime.runs import RunContext
from etl.transform.audience import HEADER
from etl.transform.mapping import Mapping, explicit_mapping
from etl.transform.members import MemberDiff, MemberSnapshot, everyone_entered


class ActitoMembership:
    """An audience's members as rows of an Actito custom table; its file stays in the run's directory."""

    wants_members = True

    def __init__(self, config: Config, name: str, activation: AudienceActivation | None = None) -> None:
        """``activation``: as `retire` rebuilds it from its recorded target, once it left the configuration."""
        self._activation = activation or config.activation_of(name, AudienceActivation)
        self._target = membership_target(config, name, self._activation)
        self._api = api_of(config.destination_of(self._activation.destination, Destination))

    def target(self) -> Target:
        entity, table = self._target.entity, self._target.table
        return Target("membership", self._activation.destination, (self._api, entity, table),
                      f"Actito table '{table}' of entity {entity}", HEADER[self._activation.identifier])

    def accept(self, written: WrittenFile) -> None:
        """Any size: the members go by imports, not as this file."""

    def deliver(self, context: RunContext, files: list[Path], snapshot: MemberSnapshot, diff: MemberDiff) -> MemberDiff:
        """Import who entered, delete who left, then replace the members snapshot; return the diff sent."""
        activation, target = self._activation, self._target
        identifier = HEADER[activation.identifier]
        since = local_time(activation, context.data_time).date().isoformat()
        rejects_path = context.run_dir / f"{context.activation}.membership-rejects.csv"
        context.details["target"] = self.target().as_details()  # before any member is sent: what retire relies on
        with context.step("deliver"), open_client(context.config, activation.destination) as client, \
                RejectWriter(rejects_path) as rejects:
            diff = self._recover(context, client, snapshot, diff)
            if context.full:
                diff = everyone_entered(diff)
                context.details.update(diff.counts())
            entered, left = diff.entered_members, diff.left_members
            assert entered is not None and left is not None  # asked for: see wants_members
            table, adding, removing = membership_preflight(client, target, identifier)
            _, refused_in = send_rows(context, client, target, table, adding,
                                      _rows(context.activation, identifier, entered, since), rejects, label="entered",
                                      staged=pa.table({"member": entered}))
            _, refused_out = send_rows(context, client, _deleting(target), table, removing,
                                       _rows(context.activation, None, left, since), rejects, label="left",
                                       staged=pa.table({"member": left}))
        context.fence()
        snapshot.replace(diff)
        discard_sent(context)  # only now: until the snapshot moved, a successor needs them
        context.details.update(membership_table=table.id, refused=refused_in + refused_out,
                               membership_rejects=str(rejects_path))
        return diff

    def _recover(self, context: RunContext, client: ActitoClient, snapshot: MemberSnapshot,
                 diff: MemberDiff) -> MemberDiff:
        """Apply what an earlier run got into or out of the table to the snapshot, then diff again.

        So no member is imported twice, and none it added that has left since stays in the table."""
        landed: list[Landed] = []
        recover_earlier_runs(context, client, self._target.timeout_seconds, landed.append)
        if not landed:
            return diff
        for item in landed:
            members = item.rows.column("member").combine_chunks()
            empty = members.slice(0, 0)
            entering = item.label.startswith("entered")
            snapshot.apply_landed(members if entering else empty, empty if entering else members)
        diff = snapshot.rediff(diff)
        context.details.update(diff.counts())
        return diff

    def describe(self, context: RunContext) -> Delivery:
        details = context.details
        if "membership_table" not in details:
            return written_locally("actito", context)
        return Delivery("actito", f"Actito table '{details['membership_table']}'",
                        f"{details['entered']:,} members entered, {details['left']:,} left"
                        + (f", {details['members']:,} members now" if "members" in details else ""))

    def close(self) -> None:
        """The client is opened and closed around the imports."""


def membership_target(config: Config, name: str, activation: AudienceActivation | None = None) -> ImportTarget:
    """Where an audience's members land: its membership table, entered by upsert, left by DELETE."""
    activation = activation or config.activation_of(name, AudienceActivation)
    destination = config.destination_of(activation.destination, Destination)
    return ImportTarget(
        entity=destination.entity, table=activation.membership_table, custom=True, mode="CREATE_UPDATE",
        empty_values="keep", etl_id=None, compression="gzip", timeout_seconds=3600.0,
        daily_budget=destination.daily_import_budget, report_to=report_to(destination),
    )


def api_of(destination: Destination) -> str:
    """Which Actito an entity is on: its environment, or the URL given instead."""
    return destination.environment or destination.base_url or ""


def membership_preflight(client: ActitoClient, target: ImportTarget, identifier: str) -> tuple[Table, Mapping, Mapping]:
    """The table, and the mappings of who enters and who leaves, checked as `actito check` and a run check them."""
    table, adding = preflight(client, target, _members_mapping, ["memberKey", "audience", identifier, "since"])
    _, removing = preflight(client, _deleting(target), lambda columns, table: explicit_mapping(
        "memberKey", {"memberKey": "memberKey"}), ["memberKey"])
    return table, adding, removing


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
