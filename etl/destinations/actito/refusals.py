"""Which staged rows an import's report refused, and which of them only for something missing.

A row can be refused for a bad value and a missing profile at once (the report lists every problem of a
line): it waits for its dependency only if every problem is a missing dependency, since sent again
unchanged it would otherwise be refused again whatever exists by then."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from etl.destinations.actito.tables import LineError


@dataclass
class Refusals:
    #: ActitoWire.dependency_message: the refusals a later run may see taken
    dependency: re.Pattern[str]
    #: staged position -> whether the row waits for a dependency
    waiting_at: dict[int, bool] = field(default_factory=dict)

    def add(self, offset: int, line_errors: Sequence[LineError], staged: int) -> None:
        """The report of a part starting at staged position ``offset`` (Actito's line 2 is its first row)."""
        for error in line_errors:
            position = offset + error.line - 2
            if 0 <= position < staged:
                waits = self.waits(error)
                self.waiting_at[position] = self.waiting_at.get(position, True) and waits

    def waits(self, error: LineError) -> bool:
        return all(self.dependency.search(message) for message in (error.message, *error.problems))

    def __len__(self) -> int:
        return len(self.waiting_at)

    def flags(self, staged: int) -> tuple[np.ndarray, np.ndarray]:
        """(refused, waiting) over the staged rows, as a snapshot stages them."""
        refused, waiting = np.zeros(staged, bool), np.zeros(staged, bool)
        positions = np.fromiter(self.waiting_at, np.int64, len(self.waiting_at))
        refused[positions] = True
        waiting[positions] = np.fromiter(self.waiting_at.values(), bool, len(self.waiting_at))
        return refused, waiting
