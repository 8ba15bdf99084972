"""An import's ``dataCollection`` — how its rows were collected: ``source``, ``updateSource``, ``way``,
``date`` — from the rows it sends when the query gives them, else naming this tool and the activation.

Actito takes one dataCollection per import (per file), while Qualifio's integration says it per
participation: ``source`` and ``updateSource`` "Qualifio", ``way`` the campaign ID, ``date`` when the
person took part. Splitting a file per campaign would spend one of the table's 24 daily imports per
campaign, so an import carries the values of its **latest row** (the most recent ``date``; without a
``date`` column, the last row sent): for a profile, the participation that last brought it. Each
participation keeps its own campaign in the interactions table, and how many values a run's rows held
is kept in the run's details (``show``), so a mixed file is never mistaken for one campaign.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

#: what a row's own values leave unsaid
DEFAULT_SOURCE = "audience-sync"
#: values counted per entry for the details, at most (a count, not a listing)
_MAX_COUNTED = 1000


def default_collection(activation: str, started_at: datetime) -> dict[str, str]:
    """Rows that do not say how they were collected were collected by this run of this activation."""
    return {"source": DEFAULT_SOURCE, "way": activation, "date": started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")}


class CollectedValues:
    """The latest staged row's dataCollection values, and how many distinct values each entry took."""

    def __init__(self, columns: Mapping[str, str]) -> None:
        #: entry → column of the mapped rows (Mapping.collection_columns)
        self._columns = dict(columns)
        self._latest: dict[str, str | None] = {}
        self._latest_date: str | None = None
        self._values: dict[str, set[str]] = {entry: set() for entry in self._columns}

    def add(self, rows: pa.Table) -> None:
        if not self._columns or not rows.num_rows:
            return
        for entry, column in self._columns.items():
            if len(self._values[entry]) <= _MAX_COUNTED:
                self._values[entry].update(v for v in pc.unique(rows.column(column)).to_pylist() if v is not None)
        at = self._latest_row(rows)
        if at is not None:
            self._latest = {entry: rows.column(column)[at].as_py() for entry, column in self._columns.items()}

    def _latest_row(self, rows: pa.Table) -> int | None:
        """The position of the chunk's latest row if it is later than any seen (ties: the last in the file)."""
        column = self._columns.get("date")
        if column is None:
            return rows.num_rows - 1
        dates = rows.column(column)
        newest = pc.max(dates).as_py()  # yyyy-MM-dd HH:mm:ss: ordered as text
        if newest is None:
            return rows.num_rows - 1 if not self._latest else None
        if self._latest_date is not None and newest < self._latest_date:
            return None
        self._latest_date = newest
        return int(pc.max(pc.indices_nonzero(pc.fill_null(pc.equal(dates, newest), False))).as_py())

    def definition(self, activation: str, started_at: datetime) -> dict[str, str]:
        """The import's dataCollection: the latest row's values, the defaults where it has none."""
        return {**default_collection(activation, started_at), **{k: v for k, v in self._latest.items() if v}}

    def mixed(self) -> dict[str, int]:
        """Entries whose rows held several values (one import can carry only one), with how many."""
        return {entry: len(values) for entry, values in self._values.items() if len(values) > 1}
