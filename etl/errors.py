"""Every error a user can act on, in one tree.

Each carries *where* and *what to do*, so the CLI prints one line without a traceback. The markers
`Retriable` and `Fatal` tell retry loops whether trying again can help; with neither, the caller judges.

    AudienceSyncError
    ├── Fatal ......................... retrying cannot help
    ├── Retriable ..................... transient: the same call may work at once
    ├── ConfigError (Fatal)
    ├── UsageError (Fatal)
    ├── ExtractError
    ├── TransformError (Fatal)
    │   └── MappingError (Fatal)
    ├── FileWriteError
    │   └── FileTooLarge (Fatal)
    ├── DeliveryError
    │   ├── DeliveryInterrupted (Retriable)
    │   └── DeliveryFailed
    ├── StateError
    ├── LockBusy
    ├── LeaseLost (Fatal)
    ├── GuardStop (Fatal)
    ├── LicenceBusy (Retriable)
    ├── MetricsError
    └── ServiceError .................. a call to a remote API failed
        ├── ActitoError
        │   ├── ActitoAuthError (Fatal)
        │   ├── ActitoNotFound (Fatal)
        │   ├── ActitoRateLimited (Retriable)
        │   ├── ActitoImportError (Fatal)
        │   ├── ActitoPreflightError (Fatal)
        │   └── ActitoBudgetExhausted (Fatal)
        └── OpenFieldError
            ├── OpenFieldAuthError (Fatal)
            ├── OpenFieldRateLimited (Retriable)
            ├── OpenFieldRefused (Fatal)
            └── OpenFieldBudgetExhausted (Fatal)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


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


class Fatal(AudienceSyncError):
    """Trying again cannot help: the configuration, the credentials or the data must change first."""


class Retriable(AudienceSyncError):
    """A passing failure (timeout, rate limit, reset): the same attempt may work at once."""


class ConfigError(Fatal):
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


class UsageError(Fatal):
    """The command's arguments contradict each other or are missing; nothing ran."""

    exit_code = 2


class ExtractError(AudienceSyncError):
    """The warehouse refused or broke off the audience query."""


class TransformError(Fatal):
    """The audience rows cannot be turned into identifiers (e.g. no identifier column)."""


def _problem_list(problems: Sequence[str], heading: str) -> str:
    """Every problem at once, so one fix-and-retry cycle is enough."""
    if len(problems) == 1:
        return problems[0]
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return f"{len(problems)} {heading}:\n{lines}"


class MappingError(TransformError):
    """The columns cannot be mapped as asked; raised when the mapping is built, before any row is read."""

    def __init__(self, problems: Sequence[str], *, where: str = "", hint: str = "") -> None:
        self.problems = list(problems)
        super().__init__(_problem_list(self.problems, "problems in the mapping"), where=where, hint=hint)


class FileWriteError(AudienceSyncError):
    """The audience file could not be written locally (disk full, permissions, bad name)."""


class FileTooLarge(FileWriteError, Fatal):
    """Bigger than ``file.max_bytes``: never split, as Actito reads the last file as the whole audience."""


class DeliveryError(AudienceSyncError):
    """The file could not be put in place at the file transfer location."""


class DeliveryInterrupted(DeliveryError, Retriable):
    """The connection broke during a transfer; unlike a refusal, the same transfer may work at once."""


class DeliveryFailed(DeliveryError):
    """Some destinations of a fan-out were not delivered; each one's own run says why, and the others
    were delivered all the same."""


class StateError(AudienceSyncError):
    """The run ledger (state store) cannot be read or written."""


class LockBusy(AudienceSyncError):
    """Another process is running the same activation; this run did nothing."""

    exit_code = 3


class LeaseLost(Fatal):
    """Another run took the activation over after this one stalled past its lease; the newer delivery stands."""


class LicenceBusy(Retriable):
    """Every licence slot stayed held by other processes too long; nothing was sent."""


class MetricsError(AudienceSyncError):
    """The metrics textfile cannot be written."""


# ---------------------------------------------------------------------------------------------- APIs


class ServiceError(AudienceSyncError):
    """``status`` is None when no answer came back. ``where`` is a route template, never a URL with ids
    or secrets; what the service said is kept verbatim under `said_as` for support tickets (scrubbed)."""

    #: the keyword, and attribute, holding what the service said
    said_as: ClassVar[str]

    def __init__(self, what: str, *, where: str = "", hint: str = "", status: int | None = None, **said: str) -> None:
        unexpected = ", ".join(sorted(set(said) - {self.said_as}))
        if unexpected:
            raise TypeError(f"{type(self).__name__} takes {self.said_as}=, not {unexpected}")
        self.status = status
        setattr(self, self.said_as, said.get(self.said_as, ""))
        super().__init__(what, where=where, hint=hint)


class ActitoError(ServiceError):
    """A call to Actito failed."""

    said_as = "actito_message"
    actito_message: str


class OpenFieldError(ServiceError):
    """A call to OpenField failed."""

    said_as = "openfield_message"
    openfield_message: str


class ActitoAuthError(ActitoError, Fatal):
    """Actito refused the API key (bad, revoked, or its licence lacks the right): retrying cannot help."""


class ActitoNotFound(ActitoError, Fatal):
    """The entity, table, ETL or execution named does not exist (Actito also answers 404 for some auth problems)."""


class ActitoRateLimited(ActitoError, Retriable):
    """Actito kept answering 429 after every retry the client allows; a later run may succeed."""


class ActitoImportError(ActitoError, Fatal):
    """An import execution ended in ERROR (nothing was applied), or did not finish before the poll timeout."""


class ActitoBudgetExhausted(ActitoError, Fatal):
    """The daily import quota of the table is used up: never retried, the next day's run will go through."""


class OpenFieldAuthError(OpenFieldError, Fatal):
    """OpenField refused the credentials, the tenant or the application: retrying cannot help."""


class OpenFieldRateLimited(OpenFieldError, Retriable):
    """OpenField kept answering 429 after every retry the client allows; a later run may succeed."""


class OpenFieldRefused(OpenFieldError, Fatal):
    """OpenField refused one profile (400, 409, 422, or 404 for a profile gone): that row is rejected, the run goes on."""


class OpenFieldBudgetExhausted(OpenFieldError, Fatal):
    """The run would go over the destination's daily request budget: refused before anything is sent."""


class ActitoPreflightError(ActitoError, Fatal):
    """The Actito table does not match what the activation would send; nothing was sent."""

    def __init__(self, problems: list[str], *, where: str) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} before sending anything:\n{listing}",
            where=where,
            hint="fix the SQL aliases or the activation's mapping, or the table in Actito; "
                 "`audience-sync actito check` repeats this check",
        )


class GuardStop(Fatal):
    """A safety guard refused to deliver; the previous delivered audience stays in place."""
