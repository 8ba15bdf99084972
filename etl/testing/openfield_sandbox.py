"""The OpenField sandbox: a stateful HTTP server on loopback that answers as docs/openfield-wire.md assumes.

**Strict** where OpenField would refuse (an unknown field, a birthday not DDMMYYYY, an inactive service
...): 400 with the reasons, so a client that lets one through fails here, not in production.
**Permissive** where a client bug should stay visible: two creates of one e-mail make two profiles."""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from etl.config import OPENFIELD_ROUTES
from etl.config import OPENFIELD_SANDBOX_PASSWORD as DEMO_PASSWORD
from etl.values.countries import alpha3_of_alpha2
from etl.testing.loopback import Fault, FaultQueue, FaultStatus, LoopbackHandler, LoopbackServer, send_json

#: the demo's tenant and application (and DEMO_PASSWORD, the client's default): demo values, not secrets
DEMO_TENANT = "demo-tenant"
DEMO_APPLICATION = "audience-sync-demo"

_FIELDS = {"Party", "Email", "UserName", "FirstName", "LastName", "Country", "Locality", "ZipCode", "Address",
           "Gender", "Civility", "BirthDate", "Services"}
_INDEXED = frozenset({"Email", "UserName"})
_SERVICE_FIELDS = {"ActivationDate", "ServiceId", "ServiceStatus", "ServiceTypeId"}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_MAX_STRING = 255


class _Refused(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or []


class OpenFieldSandbox:
    """OpenField's profile webservice on loopback; thread-safe (one lock guards all state)."""

    def __init__(
        self,
        *,
        tenant_id: str = DEMO_TENANT,
        application_id: str = DEMO_APPLICATION,
        password: str = DEMO_PASSWORD,
        username: str | None = None,
        routes: Mapping[str, str] = OPENFIELD_ROUTES,
        state_file: Path | None = None,
        fault_delay_seconds: float = 2.0,
        latency_seconds: float = 0.0,
    ) -> None:
        """``latency_seconds``: how long each API request is held before its answer, so that a
        test's concurrent clients really overlap and ``peak_in_flight`` measures their limit."""
        self.tenant_id, self.application_id = tenant_id, application_id
        self._credentials = f"{username or application_id}:{password}"
        self._routes = [(name, *_compile(route)) for name, route in routes.items()]
        self._state_file = state_file
        self.fault_delay_seconds = fault_delay_seconds
        self.latency_seconds = latency_seconds
        self._lock = threading.RLock()
        self._in_flight = 0
        #: the most API requests in flight at once (the sandbox has one tenant); `reset_peak` restarts it
        self.peak_in_flight = 0
        self._profiles: dict[str, dict[str, Any]] = {}
        self._faults = FaultQueue()
        #: (method, path with query, status) of every request; status 0 = closed without an answer
        self.request_log: list[tuple[str, str, int]] = []
        self._stopping = threading.Event()
        self._server: LoopbackServer | None = None
        #: (field, value casefolded) -> profile ids, for the fields profiles are found by
        self._index: dict[tuple[str, str], list[str]] = {}
        if state_file is not None and state_file.exists():
            for profile_id, payload in json.loads(state_file.read_text(encoding="utf-8"))["profiles"].items():
                self._store(profile_id, payload)
        self._ids = itertools.count(len(self._profiles) + 1)

    # ------------------------------------------------------------------ life

    def start(self) -> str:
        self._server = LoopbackServer("127.0.0.1", 0, _Handler, self._serve)
        return self._server.start("openfield-sandbox")

    def stop(self) -> None:
        """Stop listening, end open connections, wake withheld answers, save the profiles (if a state file)."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.save()

    def __enter__(self) -> OpenFieldSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the OpenField sandbox is not started")
        return self._server.url

    def save(self) -> None:
        """Write the profiles to the state file atomically (mode 0600: they are personal data)."""
        if self._state_file is None:
            return
        with self._lock:
            text = json.dumps({"profiles": self._profiles}, ensure_ascii=False, indent=1)
        self._state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self._state_file.with_name(self._state_file.name + ".partial")
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
            out.write(text)
        partial.replace(self._state_file)

    # ------------------------------------------------------------------ inspection and control

    def state(self) -> dict[str, Any]:
        """``{"profiles": {id: payload}, "requests": [[method, path, status], ...]}`` (copies)."""
        with self._lock:
            return json.loads(json.dumps({"profiles": self._profiles, "requests": self.request_log}))

    def profiles(self) -> list[dict[str, Any]]:
        """The stored payloads, in creation order, each with its ``PartyId``."""
        return [{"PartyId": pid, **payload} for pid, payload in self.state()["profiles"].items()]

    def add_profile(self, payload: Mapping[str, Any]) -> str:
        """A profile that exists before any run (e.g. created by Qualifio); validated like a create."""
        with self._lock:
            return self._store(None, _validated(payload))

    def inject_faults(self, kind: FaultStatus, count: int, *, method: str = "", path_contains: str = "",
                      retry_after: float | None = None) -> None:
        """The next ``count`` requests matching ``method`` (any if empty) and ``path_contains`` fail. A status
        is answered before authentication; ``"timeout"`` and ``"disconnect"`` let the request be processed (a
        create *does* create), then withhold the answer ``fault_delay_seconds`` or close at once."""
        self._faults.add(Fault(kind, count, path_contains, retry_after, method.upper()))

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_in_flight = self._in_flight

    # ------------------------------------------------------------------ one request

    @contextlib.contextmanager
    def _in_flight_now(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            if self.latency_seconds:
                self._stopping.wait(self.latency_seconds)
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method, raw_path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._faults.take(method, raw_path)
        if fault is not None and isinstance(fault.status, int):
            return self._answer(handler, fault.status, {"Message": f"injected fault: HTTP {fault.status}"},
                                fault.headers())
        try:
            with self._in_flight_now():
                status, answer = self._api(handler, method, raw_path, body)
        except _Refused as refused:
            status, answer = refused.status, {"Message": refused.message, "Errors": refused.errors}
        if fault is None:
            return self._answer(handler, status, answer)
        with self._lock:  # logged now: the client may have given up before the answer is dropped
            self.request_log.append((method, raw_path, 0))
        if fault.status == "timeout":
            self._stopping.wait(self.fault_delay_seconds)
        handler.close_connection = True

    def _answer(self, handler: BaseHTTPRequestHandler, status: int, body: Any,
                headers: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self.request_log.append((handler.command, handler.path, status))
        challenge = {"WWW-Authenticate": 'Basic realm="OpenField"'} if status == 401 else {}
        send_json(handler, status, body, {**(headers or {}), **challenge})

    def _api(self, handler: BaseHTTPRequestHandler, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        self._authenticate(handler.headers.get("Authorization", ""))
        split = urlsplit(raw_path)
        for name, route_method, pattern in self._routes:
            match = pattern.fullmatch(split.path)
            if match is None or route_method != method:
                continue
            fields = {k: unquote(v) for k, v in match.groupdict().items()}
            known = {"tenant_id": self.tenant_id, "application_id": self.application_id}
            if any(fields.get(name, known[name]) != known[name] for name in known):
                raise _Refused(404, "unknown tenant or application")
            with self._lock:
                if name == "find":
                    return 200, self._find(parse_qs(split.query))
                payload = _validated(_json_body(body))
                if name == "create":
                    return 201, {"PartyId": self._store(None, payload)}
                if fields.get("id") not in self._profiles:
                    raise _Refused(404, f"no profile {fields.get('id')!r}")
                return 200, {"PartyId": self._store(fields["id"], payload)}
        raise _Refused(404, f"no route {method} {split.path}")

    def _authenticate(self, given: str) -> None:
        scheme, _, encoded = given.partition(" ")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if scheme.lower() != "basic" or decoded != self._credentials:
            raise _Refused(401, "invalid credentials for this application")

    def _find(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        wanted = {field: values[0].casefold() for field, values in query.items() if field in _FIELDS}
        if not wanted:
            raise _Refused(400, f"find needs a profile field to match on (one of {', '.join(sorted(_FIELDS))})")
        field, value = next(iter(wanted.items()))
        candidates = self._index.get((field, value), []) if field in _INDEXED else self._profiles
        return [
            {"PartyId": pid, **self._profiles[pid]} for pid in candidates
            if all(str(self._profiles[pid].get(f, "")).casefold() == v for f, v in wanted.items())
        ]

    def _store(self, profile_id: str | None, payload: dict[str, Any]) -> str:
        profile_id = profile_id or f"OF{next(self._ids):07d}"
        self._unindex(profile_id)
        self._profiles[profile_id] = payload
        for field in _INDEXED & payload.keys():
            self._index.setdefault((field, str(payload[field]).casefold()), []).append(profile_id)
        return profile_id

    def _unindex(self, profile_id: str) -> None:
        old = self._profiles.get(profile_id, {})
        for field in _INDEXED & old.keys():
            self._index[(field, str(old[field]).casefold())].remove(profile_id)


class _Handler(LoopbackHandler):
    server_version = "OpenFieldSandbox/1.0"
    timeout = 60

    do_GET = do_POST = do_PUT = do_PATCH = LoopbackHandler.dispatch  # noqa: N815 (http.server's naming)


def _compile(route: str) -> tuple[str, re.Pattern[str]]:
    """``"GET /a/{tenant_id}/p?{match_on}={value}"`` → (method, pattern of the path; the query is read as given)."""
    method, _, template = route.partition(" ")
    pattern = re.escape(template.partition("?")[0])
    for name in re.findall(r"\{(\w+)\}", template.partition("?")[0]):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
    return method.upper(), re.compile(pattern)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None


def _validated(payload: Any) -> dict[str, Any]:
    """The payload if OpenField would take it; else 400 listing every problem."""
    if not isinstance(payload, dict):
        raise _Refused(400, "the profile must be a JSON object")
    errors = [{"Field": name, "Message": "unknown field"} for name in payload if name not in _FIELDS]
    party = payload.get("Party")
    if not isinstance(party, dict) or party.get("PartyType") != "Person" or not isinstance(party.get("Version"), int) \
            or not re.fullmatch(r"[a-z]{2}", str(party.get("LanguageId", ""))) or set(party) - {"PartyType", "Version",
                                                                                                  "LanguageId"}:
        errors.append({"Field": "Party", "Message": "needs PartyType 'Person', an integer Version, a LanguageId (fr)"})
    checks = {
        "Email": lambda v: bool(_EMAIL.fullmatch(v)),
        "Gender": lambda v: v in ("H", "F"),
        "Civility": lambda v: v in ("M", "MME"),
        "BirthDate": _is_ddmmyyyy,
        "Country": lambda v: v in alpha3_of_alpha2().values(),
    }
    for name, value in payload.items():
        if name in ("Party", "Services") or name not in _FIELDS:
            continue
        if not isinstance(value, str) or not value or len(value) > _MAX_STRING:
            errors.append({"Field": name, "Message": f"must be a text of 1 to {_MAX_STRING} characters"})
        elif name in checks and not checks[name](value):
            errors.append({"Field": name, "Message": f"{value!r} is not accepted"})
    errors += _service_errors(payload.get("Services", []))
    if errors:
        raise _Refused(400, "the profile was refused", errors)
    return payload


def _service_errors(services: Any) -> list[dict[str, str]]:
    if not isinstance(services, list):
        return [{"Field": "Services", "Message": "must be a list"}]
    errors = []
    for service in services:
        if not (isinstance(service, dict) and set(service) == _SERVICE_FIELDS and service["ServiceStatus"] is True
                and service["ServiceTypeId"] == "OPTINS" and isinstance(service["ServiceId"], str)
                and service["ServiceId"] and _is_activation_date(service["ActivationDate"])):
            errors.append({"Field": "Services", "Message": f"not an active OPTINS service: {service!r}"})
    return errors


def _is_ddmmyyyy(value: str) -> bool:
    try:
        return len(value) == 8 and bool(datetime.strptime(value, "%d%m%Y"))
    except ValueError:
        return False


def _is_activation_date(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", value)) \
            and bool(datetime.fromisoformat(value))
    except ValueError:
        return False
