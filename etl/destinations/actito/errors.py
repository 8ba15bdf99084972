"""Typed errors of the Actito client.

Every failure of a call to Actito becomes one of these, so the CLI can print one line that says
which call failed (``where`` = ``"Actito <METHOD> <route template>"``, never a URL with ids or
secrets in it), what Actito itself said (``actito_message``, kept verbatim because Actito's own
words are what a support ticket needs), and what to do (``hint``). The subclasses exist because
callers act differently on them: an auth error or an exhausted daily budget must stop a run
without retrying, a rate limit or a server error may succeed at the next scheduled run, and an
import that ended in ERROR points at the file rather than at the network.

The API key and access tokens are never part of any of these messages: the client scrubs every
text it puts here.
"""

from __future__ import annotations

from etl.errors import AudienceSyncError


class ActitoError(AudienceSyncError):
    """A call to Actito failed; ``status`` is the HTTP status (None when no answer came back)."""

    def __init__(
        self,
        what: str,
        *,
        where: str = "",
        hint: str = "",
        status: int | None = None,
        actito_message: str = "",
    ) -> None:
        self.status = status
        self.actito_message = actito_message
        super().__init__(what, where=where, hint=hint)


class ActitoAuthError(ActitoError):
    """Actito refused the API key (bad, revoked, or its licence lacks the right): retrying cannot help."""


class ActitoNotFound(ActitoError):
    """The entity, table, ETL or execution named does not exist (Actito also answers 404 for some auth problems)."""


class ActitoRateLimited(ActitoError):
    """Actito kept answering 429 after every retry the client allows; a later run may succeed."""


class ActitoImportError(ActitoError):
    """An import execution ended in ERROR (nothing was applied), or did not finish before the poll timeout."""


class ActitoBudgetExhausted(ActitoError):
    """The daily import quota of the table is used up: never retried, the next day's run will go through."""
