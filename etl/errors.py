"""Typed errors shared by every stage.

Each error carries *where* the problem is (a file, a config key, a row, a host) and *what to do*,
so the CLI can print one readable line and pick an exit code without a traceback. Stages raise
the subclass that names them; nothing outside ``etl.cli`` formats them for people.
"""

from __future__ import annotations


class AudienceSyncError(Exception):
    """Base of every error a user can act on."""

    #: process exit code the CLI uses when this error ends a command
    exit_code = 1

    def __init__(self, what: str, *, where: str = "", hint: str = "") -> None:
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.message())

    def message(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text} — {self.hint}" if self.hint else text


class ConfigError(AudienceSyncError):
    """The configuration cannot be used; ``problems`` lists every one found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "schedules.toml") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {where}: {what}" for where, what in problems)
        count = len(problems)
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''} in the configuration:\n{lines}",
            where=source,
        )


class UsageError(AudienceSyncError):
    """The command's arguments contradict each other or are missing; nothing ran."""

    exit_code = 2


class ExtractError(AudienceSyncError):
    """The warehouse refused or broke off the audience query."""


class TransformError(AudienceSyncError):
    """The audience rows cannot be turned into identifiers (e.g. no identifier column)."""


class FileWriteError(AudienceSyncError):
    """The audience file could not be written locally (disk full, permissions, bad name)."""


class FileTooLarge(FileWriteError):
    """An audience file came out bigger than ``file.max_bytes``: it is not delivered (never split: Actito
    reads the last file as the whole audience), and the previous delivery stays in place."""


class DeliveryError(AudienceSyncError):
    """The file could not be put in place at the file transfer location."""


class DeliveryInterrupted(DeliveryError):
    """The connection to the file transfer location broke during a transfer (reset, dropped, timed
    out, cut short): unlike a refusal or a configuration problem, the same transfer may work at
    once, so the delivery is attempted again within its retry budget."""


class StateError(AudienceSyncError):
    """The run ledger (state store) cannot be read or written."""


class LockBusy(AudienceSyncError):
    """Another process is running the same activation; this run did nothing."""

    exit_code = 3


class LeaseLost(AudienceSyncError):
    """This run no longer holds its activation's lease: it stalled longer than the lease
    (``settings.lock_ttl_minutes``) and another run took the activation over. Whatever this run had
    not yet made irreversible is abandoned, so the newer run's delivery stands."""


class LicenceBusy(AudienceSyncError):
    """Every request slot of a licence stayed held by other processes sharing the ledger for too
    long: nothing was sent by the request that waited; a later run may go through."""
