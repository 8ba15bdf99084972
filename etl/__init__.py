"""audience-sync: warehouse audiences, profiles and consents delivered to Actito.

The names below are the stable API, imported on first use: ``import etl`` must stay cheap for ``--help``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from etl.version import __version__

if TYPE_CHECKING:
    from etl.config import Config, load_config
    from etl.errors import AudienceSyncError, ConfigError, Fatal, Retriable, LeaseLost, LockBusy, StateError, UsageError
    from etl.runtime.ledger import RunRecord, StateStore, open_store
    from etl.runtime.results import Delivery, RunResults, RunStatus
    from etl.runtime.runs import Finisher, JobBody, RunContext, RunOutcome, execute

_MODULES = {
    "etl.config": ("Config", "load_config"),
    "etl.errors": ("AudienceSyncError", "Fatal", "Retriable", "ConfigError", "UsageError", "StateError", "LockBusy", "LeaseLost"),
    "etl.runtime.ledger": ("StateStore", "RunRecord", "open_store"),
    "etl.runtime.results": ("RunStatus", "RunResults", "Delivery"),
    "etl.runtime.runs": ("execute", "RunContext", "RunOutcome", "JobBody", "Finisher"),
}
_HOMES = {name: module for module, names in _MODULES.items() for name in names}

__all__ = ["__version__", *_HOMES]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'etl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
