"""How many of this process's extracts may read from one warehouse at once (``[warehouses.X]
max_connections``). Parallel runs (``run --jobs``, the scheduler's side-by-side runs) would otherwise open
a connection each, and a warehouse with a per-user connection limit refuses the one too many, failing a
run that only had to wait."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("audience_sync.extract")


class ConnectionBudget:
    """A semaphore that says, in the log, when an extract waits for it and how many connections are in use:
    a run that seems stuck is waiting for a warehouse, not hanging."""

    def __init__(self, warehouse: str, size: int) -> None:
        self.warehouse = warehouse
        self.size = size
        self._places = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self.in_use = 0

    @contextmanager
    def held(self, activation: str) -> Iterator[None]:
        fields = {"warehouse": self.warehouse, "activation": activation, "max_connections": self.size}
        if not self._places.acquire(blocking=False):
            log.info("waiting for a warehouse connection (max_connections reached)", extra={"fields": fields})
            self._places.acquire()
        with self._lock:
            self.in_use += 1
            log.info("warehouse connection taken", extra={"fields": {**fields, "in_use": self.in_use}})
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= 1
                log.info("warehouse connection given back", extra={"fields": {**fields, "in_use": self.in_use}})
            self._places.release()


_budgets: dict[tuple[str, int], ConnectionBudget] = {}
_budgets_lock = threading.Lock()


def connection_budget(warehouse: str, size: int) -> ConnectionBudget:
    """One per warehouse name and size in this process, shared by every run; a reload that changes the size
    starts a new one (the runs of the old configuration keep theirs until they end)."""
    with _budgets_lock:
        budget = _budgets.get((warehouse, size))
        if budget is None:
            budget = _budgets[(warehouse, size)] = ConnectionBudget(warehouse, size)
        return budget
