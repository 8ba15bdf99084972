"""What a run ends as, typed: its status, its counts, and the destination's account of its delivery."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


#: the ledger's kind of a retirement (``audience-sync retire``): recorded as a run of the activation, kept with its history
RETIRE_KIND = "retire"


class RunStatus(StrEnum):
    """``locked`` and ``skipped`` (``after`` an activation that did not succeed) are never written to the
    ledger: such a run never started."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    LOCKED = "locked"
    SKIPPED = "skipped"


@dataclass(frozen=True, eq=False)
class RunResults(Mapping[str, object]):
    """The ledger's columns, typed; as a Mapping, only the columns a job set, in column order."""

    rows_extracted: int | None = None
    rows_rejected: int | None = None
    rows_duplicate: int | None = None
    rows_delivered: int | None = None
    file_name: str | None = None
    sha256: str | None = None

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> RunResults:
        return cls(**{name: columns[name] for name in _COLUMNS if columns.get(name) is not None})

    def __getitem__(self, key: str) -> object:
        value = getattr(self, key, None) if key in _COLUMNS else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _COLUMNS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_COLUMNS = tuple(field.name for field in fields(RunResults))


@dataclass(frozen=True)
class Delivery:
    """Written by the destination itself: ``where`` people look, and a one-line ``summary`` of counts."""

    destination: str
    where: str
    summary: str

    def __str__(self) -> str:
        return f"{self.where}: {self.summary}" if self.summary else self.where

    def as_details(self) -> dict[str, str]:
        return {"destination": self.destination, "where": self.where, "summary": self.summary}

    @classmethod
    def from_details(cls, details: object) -> Delivery | None:
        if not isinstance(details, dict) or not {"destination", "where", "summary"} <= details.keys():
            return None
        return cls(str(details["destination"]), str(details["where"]), str(details["summary"]))
