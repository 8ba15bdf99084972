"""The client for OpenField's profile webservice: find a profile by key, create it, update it.

The webservice is not public: routes and answers are what docs/openfield-wire.md assumes, and the
routes are settings. Retries follow `etl.destinations.http`; after an unclear create the profile is
looked up by its key before it is sent again, so it is never created twice.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import requests

from etl.errors import AudienceSyncError, OpenFieldAuthError, OpenFieldError, OpenFieldRateLimited, OpenFieldRefused
from etl.destinations.http import ApiClient, Scrubber, Transport, failure_text, json_of, unreachable_text
from etl.destinations.retry import RetryPolicy
from etl.destinations.licence import Licence

log = logging.getLogger("audience_sync.openfield")

#: the field of a profile (in find answers) and of a create answer that holds OpenField's id
ID_FIELD = "PartyId"

Outcome = Literal["created", "updated", "skipped"]

#: seconds to open a connection and between two bytes of an answer: also sizes the ledger lease
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class Route:
    """One configured route, ``"METHOD /path?query"`` with placeholders (validated by etl.config)."""

    method: str
    template: str

    @classmethod
    def parse(cls, text: str) -> Route:
        method, _, template = text.partition(" ")
        return cls(method.upper(), template)

    @property
    def where(self) -> str:
        return f"OpenField {self.method} {self.template}"


class OpenFieldClient(ApiClient):
    """A connection to one OpenField tenant and application; a context manager, safe to share across threads."""

    def __init__(
        self,
        *,
        base_url: str,
        tenant_id: str,
        application_id: str,
        password: str,
        routes: Mapping[str, str],
        username: str | None = None,
        match_on: str = "Email",
        max_concurrency: int = 4,
        calls_per_minute: int = 300,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        policy: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        licence: Licence | None = None,
    ) -> None:
        """Without a shared ``licence`` the client has its own limits."""
        if not password:
            raise ValueError("password is empty")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenField url {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.tenant_id = tenant_id
        self.application_id = application_id
        self.match_on = match_on
        self._licence = licence or Licence(
            service="OpenField", name=f"{self.base_url} {tenant_id}", max_in_flight=max_concurrency,
            calls_per_minute=calls_per_minute, sleep=sleep, monotonic=monotonic,
        )
        #: how many requests may be in flight: what the sync sizes its worker pool by
        self.max_concurrency = self._licence.max_in_flight
        self._routes = {name: Route.parse(text) for name, text in routes.items()}
        user = username or application_id
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._scrub = Scrubber(password, basic)
        self._authorization = f"Basic {basic}"
        self._http = Transport(
            service="OpenField", log=log, scrub=self._scrub, licence=self._licence,
            connect_timeout=connect_timeout, read_timeout=read_timeout, policy=policy, sleep=sleep,
        )
        self._count_lock = threading.Lock()
        #: HTTP requests sent so far (every attempt): what the daily request budget counts
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"OpenFieldClient(base_url={self.base_url!r}, tenant_id={self.tenant_id!r})"

    def find(self, value: str) -> list[str]:
        """The ids of the profiles whose ``match_on`` field is ``value`` (usually none or one)."""
        route = self._routes["find"]
        response = self._http.call(
            route.where, lambda: self._send(route, value=value),
            failed=lambda answer, attempts: self._http_error(route, answer, attempts=attempts),
            unreachable=lambda exc, attempts: self._unreachable(route, exc, attempts),
        )
        body = self._json(route, response)
        items = body if isinstance(body, list) else body.get("Profiles", []) if isinstance(body, Mapping) else []
        # filtered again on our side: a server that ignored the query would list every profile
        return [
            str(item[ID_FIELD])
            for item in items
            if isinstance(item, Mapping) and item.get(ID_FIELD) is not None
            and str(item.get(self.match_on, "")).casefold() == value.casefold()
        ]

    def create(self, payload: Mapping[str, Any], value: str) -> str:
        """Create the profile whose key is ``value`` and return its id; never creates it twice."""
        route = self._routes["create"]

        def unknown(reason: str, status: int | None, lookup_error: AudienceSyncError) -> OpenFieldError:
            return OpenFieldError(
                f"the outcome of creating a profile is unknown ({reason}) and looking it up by "
                f"{self.match_on} failed: {lookup_error.what}",
                where=route.where, status=status,
                hint=f"look the profile up by {self.match_on} in OpenField before running again",
            )

        def absent(last: AudienceSyncError) -> OpenFieldError:
            assert isinstance(last, OpenFieldError)
            return type(last)(f"{last.what}; OpenField has no such profile", where=route.where, status=last.status,
                              hint="nothing was created, so the run can safely be repeated later",
                              openfield_message=last.openfield_message)

        def lookup() -> str | None:
            ids = self.find(value)
            return ids[0] if ids else None

        outcome = self._http.post_once(
            route.where, lambda: self._send(route, body=payload), lookup=lookup,
            failed=lambda answer, attempts: self._http_error(route, answer, attempts=attempts, per_profile=True),
            unreachable=lambda exc, attempts: self._unreachable(route, exc, attempts),
            unknown=unknown, absent=absent,
        )
        if not isinstance(outcome, requests.Response):
            return outcome
        body = self._json(route, outcome)
        created = body.get(ID_FIELD) if isinstance(body, Mapping) else None
        if created is None:
            raise OpenFieldError(
                f"HTTP {outcome.status_code} without a {ID_FIELD}", where=route.where, status=outcome.status_code,
                hint="check the url and routes: they may not point at OpenField's profile webservice",
            )
        return str(created)

    def update(self, profile_id: str, payload: Mapping[str, Any]) -> None:
        """Replace the profile's fields with ``payload`` (a PUT of the whole profile: safe to repeat)."""
        route = self._routes["update"]
        self._http.call(
            route.where, lambda: self._send(route, body=payload, id=profile_id),
            failed=lambda answer, attempts: self._http_error(route, answer, attempts=attempts, per_profile=True),
            unreachable=lambda exc, attempts: self._unreachable(route, exc, attempts),
        )

    def upsert(self, value: str, payload: Mapping[str, Any], *, create: bool = True, update: bool = True) -> Outcome:
        """Update the profile matched on ``value``, or create it; ``create``/``update`` False skip that case."""
        found = self.find(value)
        if len(found) > 1:
            raise OpenFieldRefused(
                f"{len(found)} OpenField profiles have this {self.match_on} ({', '.join(found[:5])})",
                where=self._routes["find"].where,
                hint="merge the duplicates in OpenField; the row is not sent until then",
            )
        if not found:
            if not create:
                return "skipped"
            self.create(payload, value)
            return "created"
        if not update:
            return "skipped"
        self.update(found[0], payload)
        return "updated"

    def _send(self, route: Route, *, body: Mapping[str, Any] | None = None, **path: str) -> requests.Response:
        fields = {"tenant_id": self.tenant_id, "application_id": self.application_id, "match_on": self.match_on,
                  "value": "", "id": "", **path}
        url = self.base_url + route.template.format(**{k: quote(str(v), safe="") for k, v in fields.items()})
        data = None if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {} if data is None else {"Content-Type": "application/json; charset=utf-8"}
        with self._count_lock:
            self.requests_sent += 1
        return self._http.send(route.method, url, authorization=self._authorization, data=data, headers=headers)

    def _json(self, route: Route, response: requests.Response) -> Any:
        return json_of(response, lambda what: OpenFieldError(
            self._scrub(what), where=route.where, status=response.status_code,
            hint="check the url: it may not point at OpenField's webservice",
        ))

    def _http_error(
        self, route: Route, response: requests.Response, *, attempts: int = 1, per_profile: bool = False
    ) -> OpenFieldError:
        status = response.status_code
        what, said = failure_text(response, self._scrub, attempts)
        cls: type[OpenFieldError] = OpenFieldError
        hint = ""
        if status in (401, 403):
            cls = OpenFieldAuthError
            hint = ("check the OpenField password (and username), tenant_id and application_id of the destination: "
                    "OpenField refused them")
        elif status == 429:
            cls = OpenFieldRateLimited
            hint = "OpenField kept refusing for too many requests: lower calls_per_minute, or run later"
        elif per_profile and status in (400, 404, 409, 422):
            cls = OpenFieldRefused
            hint = "this profile is rejected; fix its value in the warehouse"
        elif status == 404:
            hint = "check the destination's url and routes against your OpenField webservice"
        elif status >= 500:
            hint = "OpenField's side failed; a later run may go through"
        return cls(what, where=route.where, hint=hint, status=status, openfield_message=said)

    def _unreachable(self, route: Route, exc: BaseException | None, attempts: int) -> OpenFieldError:
        what, hint = unreachable_text("OpenField", self.base_url, exc, attempts, self._scrub,
                                      "check the network, the proxy and the destination's url")
        return OpenFieldError(what, where=route.where, hint=hint)
