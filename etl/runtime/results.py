"""What a run ends as, typed: its status, and a destination's own account of what it delivered.

Alerts, metrics, the report, the history and the command line all read these; before, each guessed
from keys of a free-form ``details`` dict which destination a run had and what it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RunStatus(StrEnum):
    """One vocabulary for the ledger and for what a run returns. ``locked`` is never written to the
    ledger: a run that found its activation held by another never started."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    LOCKED = "locked"


@dataclass(frozen=True)
class Delivery:
    """A destination's description of a run's delivery, written by the destination itself.

    ``where`` names the place people look (a file's URL, ``Actito table 'x'``, ``OpenField tenant
    'y'``); ``summary`` is one line of counts for people (``1,204 changed rows sent, 3 refused``)."""

    destination: str
    where: str
    summary: str

    def as_details(self) -> dict[str, str]:
        return {"destination": self.destination, "where": self.where, "summary": self.summary}

    @classmethod
    def from_details(cls, details: object) -> Delivery | None:
        if not isinstance(details, dict) or not {"destination", "where", "summary"} <= details.keys():
            return None
        return cls(str(details["destination"]), str(details["where"]), str(details["summary"]))
