"""Typed errors of the OpenField client.

``where`` is ``"OpenField <METHOD> <route template>"`` (never a URL with a profile's e-mail or a
secret in it); ``openfield_message`` is what OpenField said, verbatim, for a support ticket. The
subclasses exist because the run acts differently on them: a refused credential stops the run at
once; a profile OpenField refuses goes to the reject file and the run goes on; a rate limit or a
server error that outlasts the retries may pass at the next scheduled run.
"""

from __future__ import annotations

from etl.errors import AudienceSyncError


class OpenFieldError(AudienceSyncError):
    """A call to OpenField failed; ``status`` is the HTTP status (None when no answer came back)."""

    def __init__(
        self, what: str, *, where: str = "", hint: str = "", status: int | None = None, openfield_message: str = ""
    ) -> None:
        self.status = status
        self.openfield_message = openfield_message
        super().__init__(what, where=where, hint=hint)


class OpenFieldAuthError(OpenFieldError):
    """OpenField refused the credentials, the tenant or the application: retrying cannot help."""


class OpenFieldRateLimited(OpenFieldError):
    """OpenField kept answering 429 after every retry the client allows; a later run may succeed."""


class OpenFieldRefused(OpenFieldError):
    """OpenField refused one profile (400, 409, 422, or 404 for a profile gone): that row is rejected, the run goes on."""


class OpenFieldBudgetExhausted(OpenFieldError):
    """The run would go over the destination's daily request budget: refused before anything is sent."""
