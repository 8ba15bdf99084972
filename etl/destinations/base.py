"""What every destination does for a run, so a job composes stages without knowing the vendor.

A row run has one shape whatever the vendor: preflight, recover, stage, reserve, send. People read
``describe`` as ``where``, then ``: summary`` when there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from etl.errors import AudienceSyncError
from etl.runtime.results import Delivery

if TYPE_CHECKING:  # the vendors' light modules (errors, payloads) import this package without pandas
    import pyarrow as pa

    from etl.files import RejectWriter, WrittenFile
    from etl.runtime.runs import RunContext
    from etl.transform.delta import RowFormat, RowSnapshot, Staged
    from etl.transform.mapping import Mapping
    from etl.transform.members import MemberDiff, MemberSnapshot


class Destination(Protocol):
    def describe(self, context: RunContext) -> Delivery: ...

    def close(self) -> None:
        """Let go of what the destination holds for the run (a client and its licence slots)."""


class RowDestination(Destination, Protocol):
    """Where an import activation's rows go, one by one or by bulk imports."""

    def preflight(self, context: RunContext, columns: list[str]) -> RowFormat:
        """Check credentials, table and every mapped column before a row is read."""

    def mapping(self) -> Mapping:
        """After preflight: which column feeds which field, by which rule (what `preview` shows)."""

    def recover(self, context: RunContext, snapshot_path: Path | None) -> None:
        """Resolve what earlier runs left in flight; rows they got through go into the snapshot."""

    def staging(self, context: RunContext) -> AbstractContextManager[Callable[[pa.Table], None]]:
        """Where the rows to send are written while the query streams."""

    def reserve(self, context: RunContext, staged: Staged) -> str:
        """Refuse, before anything is sent, a run that today's budget cannot carry through; else say what
        the run will send (``run --full`` asks before sending it)."""

    def send(self, context: RunContext, staged: Staged, snapshot: RowSnapshot | None, rejects: RejectWriter) -> None:
        """Send (a dry run sends nothing), list the rows refused, then move the snapshot."""

    def restage(self, context: RunContext, parts: list[WrittenFile]) -> None:
        """A replay: ``reserve`` and ``send`` carry these files, a past run's (checked against their
        sha256), instead of rows staged from the query. A destination that sends no files refuses."""


@dataclass(frozen=True)
class Target:
    """Where an audience goes, recorded in the ledger with each delivery: once its activation has left the
    configuration, `retire` works from these facts, not from what the configuration says today."""

    #: "files": a file location; "membership": an Actito table of members
    kind: Literal["files", "membership"]
    #: the destination's name when it was recorded (its credentials stay in the configuration)
    destination: str
    #: what the target really is: a location's identity (`etl.config.destinations`), or (Actito API, entity, table)
    where: tuple[str, ...]
    #: the target for people
    shown: str
    #: files: the file name pattern; membership: the identifier's column (emailAddress or profileId)
    pattern: str

    def as_details(self) -> dict[str, Any]:
        return {"kind": self.kind, "destination": self.destination, "where": list(self.where), "shown": self.shown,
                "pattern": self.pattern}

    @classmethod
    def from_details(cls, value: object) -> Target | None:
        """None for a run recorded before targets were (or for anything else)."""
        if not isinstance(value, dict) or value.get("kind") not in ("files", "membership"):
            return None
        return cls(value["kind"], str(value["destination"]), tuple(map(str, value["where"])), str(value["shown"]),
                   str(value["pattern"]))


class AudienceDestination(Destination, Protocol):
    """Where an audience goes: its file, or its members' entries and exits."""

    #: the members diff must carry who entered and left, not only how many
    wants_members: bool

    def target(self) -> Target:
        """Where the audience goes, as the configuration says today."""

    def accept(self, written: WrittenFile) -> None:
        """Refuse, before anything is delivered, an audience file the destination could not take."""

    def deliver(self, context: RunContext, files: list[Path], snapshot: MemberSnapshot, diff: MemberDiff) -> MemberDiff:
        """Deliver, then replace the members snapshot; return the diff delivered."""


class Retirement(Protocol):
    """What a retired activation left at one target, found and removed only while its lease is held."""

    target: Target
    #: what is deliberately left there, for people
    notes: list[str]

    def pending(self) -> list[str]:
        """What retiring would remove there, one line each; changes nothing."""

    def retire(self, context: RunContext) -> list[str]:
        """Remove it (fenced by the context's lease); what was removed, one line each."""


def refuse_over_budget(
    error: type[AudienceSyncError], *, needs: str, used: int, needed: int, allowed: int, scope: str = "",
    where: str, hint: str,
) -> None:
    """Refused before anything is sent rather than stopped halfway through."""
    if used + needed > allowed:
        raise error(f"this run needs {needs} but {used} of the {allowed} allowed today{scope} are used",
                    where=where, hint=hint)


def written_locally(destination: str, context: RunContext) -> Delivery:
    """A dry run's account: the files are in the run's directory, nothing left it."""
    return Delivery(destination, f"written to {context.details.get('local_dir')} (dry run)", "")
