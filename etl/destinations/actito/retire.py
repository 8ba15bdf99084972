"""A retired audience's members, deleted from its Actito membership table.

Retiring is a membership run in which nobody is a member any more: everyone in the members snapshot
leaves, by the DELETE import a run uses for members who left, after the same recovery of what an earlier
run left in flight (so members it got into the table are deleted too).
"""

from __future__ import annotations

from pathlib import Path

from etl.config import AudienceActivation, Config, Destination
from etl.destinations.actito.membership import ActitoMembership, api_of
from etl.destinations.base import Target
from etl.errors import ConfigError
from etl.runtime.activation_state import MEMBERS, ROOT
from etl.runtime.runs import RunContext
from etl.transform.audience import HEADER
from etl.transform.members import MemberSnapshot, StagedMembers


class MembershipRetirement:

    def __init__(self, config: Config, name: str, target: Target) -> None:
        self.target = target
        self.notes: list[str] = []
        self._name = name
        self._state_dir = config.state_dir
        identifier = next(key for key, column in HEADER.items() if column == target.pattern)
        # the activation as its deliveries recorded it: only what a departure needs (no query runs)
        self._activation = AudienceActivation(sql=Path(), destination=_destination_of(config, target),
                                              identifier=identifier, delivery="membership",
                                              membership_table=target.where[2])

    def pending(self) -> list[str]:
        """Read from the snapshot where it lies: a dry run must not create the activation's state directory."""
        members = MemberSnapshot(self._state_dir / ROOT / self._name / MEMBERS.name).size()
        return [self._deleted(members)] if members else []

    def retire(self, context: RunContext) -> list[str]:
        snapshot = MemberSnapshot.of(context.config.state_dir, self._name)
        with StagedMembers(context.run_dir / f"{self._name}.members.parquet") as nobody:
            pass
        membership = ActitoMembership(context.config, self._name, self._activation)
        diff = membership.deliver(context, [], snapshot, snapshot.diff(nobody, identifiers=True))
        context.details.update(diff.counts(), members=0)  # as a run records them: `show`, `history --sizes`
        refused = int(context.details.get("refused") or 0)
        return [self._deleted(diff.left) + (f", {refused:,} of them refused by Actito" if refused else "")
                ] if diff.left else []

    def _deleted(self, members: int) -> str:
        return f"{members:,} members deleted from {self.target.shown} (keys {self._name}:…)"


def _destination_of(config: Config, target: Target) -> str:
    """A configured Actito destination on the same API and entity: the recorded one by preference."""
    api, entity, _ = target.where
    names = [target.destination, *config.destinations]
    for name in names:
        destination = config.destinations.get(name)
        if isinstance(destination, Destination) and (api_of(destination), destination.entity) == (api, entity):
            return name
    raise ConfigError([(f"[destinations.{target.destination}]",
                        f"no Actito destination reaches entity {entity!r} ({api or 'base_url'}) any more, where the "
                        f"retired activation's members are ({target.shown}): add one with its api_key, then retire "
                        "again")])
