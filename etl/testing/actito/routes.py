"""Actito's V5 API routes, as docs/actito-wire.md describes them; other forms (V4, un-prefixed) answer 404."""

from __future__ import annotations

import copy
import json
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote

from etl.testing.actito.engine import ImportEngine
from etl.testing.actito.model import CustomTable, Definition, Entity, Execution, ProfileTable
from etl.testing.actito.rules import parse_definition
from etl.testing.actito.state import SandboxState, Settings, Token
from etl.testing.actito.wire import HttpError, Request, Response, disposition_param, multipart_boundary, \
    split_multipart

#: room for the definition part and the multipart framing on top of the file itself
_MULTIPART_SLACK = 1_000_000

#: a multipart part by name: its file name, content type and content
Parts = dict[str, tuple[str | None, str, bytes]]

#: per compression, what the file part's name ends with and the content types it may carry [guess: Actito
#: documents the compressions, not the multipart headers; these are the registered types (RFC 6713, IANA)]
_FILE_FORMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "NONE": ((".csv", ".txt"), ("text/csv", "text/plain")),
    "GZIP": ((".gz",), ("application/gzip", "application/x-gzip")),
    "ZIP": ((".zip",), ("application/zip", "application/x-zip-compressed")),
}


class ApiRoutes:
    """Answers one authenticated API request; the caller has checked faults, Accept and the licence's slot."""

    def __init__(self, state: SandboxState, settings: Settings, engine: ImportEngine, url: Callable[[], str]) -> None:
        self._state = state
        self._settings = settings
        self._engine = engine
        self._url = url

    def route(self, request: Request, licence: str) -> Response:
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            action = methods.get(request.method)
            if action is None:
                raise HttpError(405, f"{request.method} is not allowed on {request.path}",
                                headers={"Allow": ", ".join(sorted(methods))})
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            return action(self, request, licence, **params)
        raise HttpError(404, f"no route {request.path}")

    def authenticate(self, request: Request) -> str:
        """The licence of the API key (``/auth/token``) or of the Bearer token (everything else)."""
        given = request.headers.get("Authorization", "").strip()
        challenge = {"WWW-Authenticate": "Bearer"}
        state = self._state
        if request.path == "/auth/token":
            if not given:
                raise HttpError(401, "missing Authorization header: send the raw API key", headers=challenge)
            if given.lower().startswith(("bearer ", "basic ")):
                raise HttpError(401, "send the raw API key in Authorization, without a scheme", headers=challenge)
            with state.lock:
                licence = state.keys.get(given)
                if licence is None or given in state.revoked:
                    raise HttpError(401, "invalid or revoked API key", headers=challenge)
            return licence
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "missing bearer token: send Authorization: Bearer <accessToken>", headers=challenge)
        with state.lock:
            found = state.tokens.get(token.strip())
            if found is None:
                raise HttpError(401, "invalid access token", headers=challenge)
            if found.api_key in state.revoked:
                raise HttpError(401, "the API key of this token was revoked", headers=challenge)
            if state.now() >= found.expires:
                raise HttpError(401, "access token expired", headers=challenge)
            return found.licence

    def token(self, request: Request, licence: str) -> Response:
        api_key = request.headers.get("Authorization", "").strip()
        token = secrets.token_urlsafe(32)
        ttl = self._settings.token_ttl_seconds
        with self._state.lock:
            self._state.tokens[token] = Token(api_key, licence, self._state.now() + ttl)
            self._state.slots.count_token(licence)
        return Response(200, {
            "accessToken": token,
            "tokenType": "bearer",
            "expiresIn": f"{ttl}s",
            "scope": f"licence:{licence}",
            "jti": uuid.uuid4().hex,
        })

    def list_entities(self, request: Request, licence: str) -> Response:
        with self._state.lock:
            entities = [dict(e.listed) for e in self._state.entities_of(licence)]
        return Response(200, {"entities": entities})

    def list_tables(self, request: Request, licence: str, kind: str, entity: str) -> Response:
        tables = self._tables(licence, kind, entity)
        return Response(200, {f"{kind}Tables": [t.published() for t in tables.values()]})

    def get_table(self, request: Request, licence: str, kind: str, entity: str, table: str) -> Response:
        found = self._tables(licence, kind, entity).get(table)
        if found is None:
            raise HttpError(404, f"{kind} table {table!r} not found in entity {entity!r}")
        return Response(200, found.published())

    def _tables(self, licence: str, kind: str, entity: str) -> Mapping[str, ProfileTable | CustomTable]:
        found = self._state.licensed_entity(licence, entity)
        return found.profile_tables if kind == "profile" else found.custom_tables

    def list_etls(self, request: Request, licence: str, entity: str) -> Response:
        found = self._state.licensed_entity(licence, entity)
        etls = [{"id": etl_id, "name": name, "definition": d.published()} for etl_id, (name, d) in found.etls.items()]
        return Response(200, {"etls": etls})

    def get_etl(self, request: Request, licence: str, entity: str, etl: str) -> Response:
        name, definition = self._etl(licence, entity, etl)
        return Response(200, {"id": etl, "name": name, "definition": definition.published()})

    def _etl(self, licence: str, entity: str, etl: str) -> tuple[str, Definition]:
        found = self._state.licensed_entity(licence, entity).etls.get(etl)
        if found is None:
            raise HttpError(404, f"ETL {etl!r} not found in entity {entity!r}")
        return found

    def create_execution(self, request: Request, licence: str, entity: str) -> Response:
        """One-shot import: multipart ``definition`` (JSON) + ``inputFile``."""
        found = self._state.licensed_entity(licence, entity)
        parts = self._multipart(request, allowed=("definition", "inputFile"))
        if "definition" not in parts:
            raise HttpError(400, "missing multipart part 'definition'", [{"field": "definition", "message": "missing"}])
        if parts["definition"][1] != "application/json":
            raise HttpError(400, f"the definition part is {parts['definition'][1] or 'untyped'}: send it as "
                                 "application/json", [{"field": "definition", "message": "wrong content type"}])
        try:
            raw = json.loads(parts["definition"][2].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"the definition part is not valid JSON: {exc}") from None
        definition = parse_definition(raw, found)
        field = self._settings.reference_field
        reference = raw.get(field)
        if reference is not None and not isinstance(reference, str):
            raise HttpError(400, f"{field} must be a string", [{"field": field, "message": "not a string"}])
        return self._created(found, definition, reference, None, parts)

    def trigger(self, request: Request, licence: str, entity: str, etl: str) -> Response:
        """Recurring import: the ETL's stored definition; the body carries only ``inputFile``, as documented."""
        found = self._state.licensed_entity(licence, entity)
        _, definition = self._etl(licence, entity, etl)
        parts = self._multipart(request, allowed=("inputFile",))
        return self._created(found, definition, None, etl, parts)

    def _multipart(self, request: Request, *, allowed: Sequence[str]) -> Parts:
        boundary = multipart_boundary(request)
        limit = self._settings.max_file_bytes
        body = request.body(limit + _MULTIPART_SLACK)
        if body is None:
            raise HttpError(400, f"the upload is over the limit of {limit} bytes (100 MB)")
        parts: Parts = {}
        for headers, content in split_multipart(body, boundary):
            name = disposition_param(headers, "name")
            if name is None:
                raise HttpError(400, "a multipart part has no Content-Disposition name")
            if name not in allowed:
                raise HttpError(400, f"unexpected multipart part {name!r} (expected: {', '.join(allowed)})",
                                [{"field": name, "message": "unexpected part"}])
            if name in parts:
                raise HttpError(400, f"multipart part {name!r} sent twice", [{"field": name, "message": "duplicate"}])
            parts[name] = (disposition_param(headers, "filename"), headers.get_content_type() if
                           headers.get("Content-Type") else "", content)
        if "inputFile" not in parts:
            raise HttpError(400, "missing multipart part 'inputFile'", [{"field": "inputFile", "message": "missing"}])
        size = len(parts["inputFile"][2])
        if size > limit:
            raise HttpError(400, f"the input file is {size} bytes: over the limit of {limit} bytes "
                                 "(100 MB)", [{"field": "inputFile", "message": "file too large"}])
        return parts

    def _created(self, entity: Entity, definition: Definition, reference: str | None, etl_id: str | None,
                 parts: Parts) -> Response:
        file_name, content_type, payload = parts["inputFile"]
        _check_file_form(file_name, content_type, definition.compression)
        execution = self._engine.submit(entity, definition, reference, etl_id, file_name, payload)
        location = f"{self._url()}/mass-imports/v5/entities/{entity.name}/etl-executions/{execution.id}"
        return Response(201, {"id": execution.id, self._settings.reference_field: reference, "status": "PENDING"},
                        {"Location": location})

    def list_executions(self, request: Request, licence: str, entity: str) -> Response:
        found = self._state.licensed_entity(licence, entity)
        field = self._settings.reference_field
        wanted, named = request.query.get(field), request.query.get("fileName")
        with self._state.lock:
            listed = [e.view(self._engine.status(e), field) for e in found.executions
                      if (wanted is None or e.reference in wanted) and (named is None or e.file_name in named)]
        return Response(200, {"executions": listed})

    def _execution(self, licence: str, entity: str, execution: str) -> Execution:
        found = self._state.licensed_entity(licence, entity)
        with self._state.lock:
            for candidate in found.executions:
                if candidate.id == execution:
                    return candidate
        raise HttpError(404, f"execution {execution!r} not found in entity {entity!r}")

    def get_execution(self, request: Request, licence: str, entity: str, execution: str) -> Response:
        found = self._execution(licence, entity, execution)
        with self._state.lock:
            return Response(200, found.view(self._engine.status(found), self._settings.reference_field))

    def get_report(self, request: Request, licence: str, entity: str, execution: str) -> Response:
        found = self._execution(licence, entity, execution)
        with self._state.lock:
            status = self._engine.status(found)
            if found.final is None:
                raise HttpError(409, f"execution {execution} is {status}: its report exists once it has ended")
            return Response(200, {"id": found.id, "status": status, "counts": dict(found.counts),
                                  "errors": copy.deepcopy(found.errors)})


def _check_file_form(file_name: str | None, content_type: str, compression: str) -> None:
    """The file part is named and typed for what the definition says it holds, as Actito reads it [guess]."""
    suffixes, types = _FILE_FORMS[compression]
    problems = []
    if not file_name or not file_name.lower().endswith(suffixes):
        problems.append(f"its file name {file_name or '(none)'!r} does not end with {' or '.join(suffixes)}")
    if content_type not in types:
        problems.append(f"its content type {content_type or '(none)'!r} is not {' or '.join(types)}")
    if problems:
        raise HttpError(400, f"inputFile: the definition's compression is {compression}, but "
                             + "; ".join(problems), [{"field": "inputFile", "message": p} for p in problems])


_E = r"(?P<entity>[^/]+)"
_IMPORTS = rf"/mass-imports/v5/entities/{_E}"
#: the profile tables' and custom tables' routes, alike but for the kind of table
_TABLES = rf"/(?P<kind>profile|custom)-table-structure/v5/entities/{_E}/(?P=kind)-tables"
_ROUTES: list[tuple[re.Pattern[str], dict[str, Callable[..., Response]]]] = [
    (re.compile(r"/auth/token"), {"GET": ApiRoutes.token}),
    (re.compile(r"/entities/v5/entities"), {"GET": ApiRoutes.list_entities}),
    (re.compile(_TABLES), {"GET": ApiRoutes.list_tables}),
    (re.compile(rf"{_TABLES}/(?P<table>[^/]+)"), {"GET": ApiRoutes.get_table}),
    (re.compile(rf"{_IMPORTS}/etl-executions"), {"GET": ApiRoutes.list_executions, "POST": ApiRoutes.create_execution}),
    (re.compile(rf"{_IMPORTS}/etl-executions/(?P<execution>[^/]+)"), {"GET": ApiRoutes.get_execution}),
    (re.compile(rf"{_IMPORTS}/etl-executions/(?P<execution>[^/]+)/report"), {"GET": ApiRoutes.get_report}),
    (re.compile(rf"{_IMPORTS}/etls"), {"GET": ApiRoutes.list_etls}),
    (re.compile(rf"{_IMPORTS}/etls/(?P<etl>[^/]+)"), {"GET": ApiRoutes.get_etl}),
    (re.compile(rf"{_IMPORTS}/etls/(?P<etl>[^/]+)/trigger-execution"), {"POST": ApiRoutes.trigger}),
]
