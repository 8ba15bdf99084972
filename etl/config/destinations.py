"""Where activations deliver: Actito (and the file transfer location its file synchronisation polls) and
OpenField. Each destination and location says its own problems, secrets and directories, so adding a
destination is adding a model here, not a branch in every check."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from etl.config.base import ConfigModel, Problem, anchored

ACTITO_ENVIRONMENTS: dict[str, str] = {
    "ENV-0": "https://api.actito.com",
    "ENV-1": "https://api1.actito.com",
    "ENV-3": "https://api3.actito.com",
    "PREPROD": "https://api-pre1.actito.com",
    "TEST": "https://apitest.actito.com",
    "sandbox": "",  # the project's own emulator; its URL is known only once it runs
}

#: (canonical identity, address for people) of a file location
LocationIdentity = tuple[tuple[str, ...], str]


# --------------------------------------------------------------------------- file delivery


class _FileLocation(ConfigModel):
    retention_days: int | None = Field(default=None, ge=1)

    def problems(self, base_dir: Path, where: str) -> list[Problem]:
        """What is wrong with the location that its fields alone do not show (``where``: its key)."""
        return []

    def secrets(self) -> list[SecretStr | None]:
        return []

    @property
    def local_directory(self) -> Path | None:
        """The directory on this machine files are delivered to, as written; None for a server."""
        return None


class LocalLocation(_FileLocation):
    type: Literal["local"]
    path: Path

    def problems(self, base_dir: Path, where: str) -> list[Problem]:
        directory = anchored(base_dir, self.path).expanduser()
        if directory.is_symlink():
            return [(f"{where}.path", f"is a symbolic link: write the real directory, {directory.resolve()}")]
        return []

    @property
    def local_directory(self) -> Path:
        return self.path

    def identity(self, base_dir: Path) -> LocationIdentity:
        """Equal for one directory however written (``outbox``, ``./outbox``, a link to it)."""
        path = str(anchored(base_dir, self.path).expanduser().resolve())
        return ("local", path), path


class _RemoteLocation(_FileLocation):
    remote_dir: str = "."

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, value: str) -> str:
        """The directory is sent to the server as it is written: a control character (CR LF would
        start a new FTP command) or a '..' climbing out of the account's directory is refused."""
        if any(ord(character) < 0x20 or ord(character) == 0x7F for character in value):
            raise ValueError("remote_dir must not contain control characters (CR, LF, tab, NUL...)")
        if ".." in value.replace("\\", "/").split("/"):
            raise ValueError("remote_dir must not contain '..': write the directory as the server names it, "
                             "e.g. /audiences or upload/actito")
        return value


def _remote_identity(location: SftpLocation | FtpsLocation) -> LocationIdentity:
    """Case-folded host, normalised path; a relative directory is under the user's home, so the user counts."""
    directory = posixpath.normpath(location.remote_dir.replace("\\", "/") or ".")
    directory = "/" + directory.lstrip("/") if directory.startswith("/") else directory
    host = location.host.lower().rstrip(".")
    user = "" if directory.startswith("/") else location.username
    shown = f"{location.type}://{location.username}@{host}:{location.port}" + (
        directory if directory.startswith("/") else f"/~/{directory}")
    return ("remote", host, str(location.port), user, directory), shown


class SftpLocation(_RemoteLocation):
    type: Literal["sftp"]
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: SecretStr | None = None
    key_file: Path | None = None
    key_passphrase: SecretStr | None = None
    known_hosts: Path | None = None
    verify_host_key: bool = True
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _credentials(self) -> SftpLocation:
        if self.password is None and self.key_file is None:
            raise ValueError("SFTP needs password (from ${ENV_VAR}) or key_file")
        return self

    def problems(self, base_dir: Path, where: str) -> list[Problem]:
        if self.key_file and not anchored(base_dir, self.key_file).is_file():
            return [(f"{where}.key_file", f"no such file: {anchored(base_dir, self.key_file)}")]
        return []

    def secrets(self) -> list[SecretStr | None]:
        return [self.password, self.key_passphrase]

    def identity(self, base_dir: Path) -> LocationIdentity:
        return _remote_identity(self)


class FtpsLocation(_RemoteLocation):
    type: Literal["ftps"]
    host: str
    port: int = Field(default=21, ge=1, le=65535)
    username: str
    password: SecretStr
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout: float = Field(default=30.0, gt=0)

    def secrets(self) -> list[SecretStr | None]:
        return [self.password]

    def identity(self, base_dir: Path) -> LocationIdentity:
        return _remote_identity(self)


FileLocation = Annotated[LocalLocation | SftpLocation | FtpsLocation, Field(discriminator="type")]


# --------------------------------------------------------------------------- Actito


class _CalledOverHttp(ConfigModel):
    """A destination whose API is called with credentials, at the URL its ``URL_KEY`` holds."""

    URL_KEY: ClassVar[str]

    @model_validator(mode="after")
    def _encrypted(self) -> Self:
        check_api_url(self.URL_KEY, getattr(self, self.URL_KEY), getattr(self, "allow_insecure_http"))
        return self


_WIRE_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
_CONTENT_TYPE = r"^[a-z]+/[a-z0-9.+-]+$"


class ActitoWire(ConfigModel):
    """What docs/actito-wire.md tags [guess]: a licence that answers differently needs a setting, not code.

    ``[destinations.NAME.wire]`` in schedules.toml; every key optional, the defaults are our sandbox's."""

    entities_key: str = Field(default="entities", pattern=_WIRE_NAME)
    profile_tables_key: str = Field(default="profileTables", pattern=_WIRE_NAME)
    custom_tables_key: str = Field(default="customTables", pattern=_WIRE_NAME)
    #: wrapper key of ``GET .../etl-executions?...``
    executions_key: str = Field(default="executions", pattern=_WIRE_NAME)
    #: query parameter and definition field carrying our idempotency key (one-shot imports)
    reference_field: str = Field(default="reference", pattern=_WIRE_NAME)
    #: query parameter and execution field naming the uploaded file: how a triggered import, whose
    #: body is only the file, is found again (the file name carries our reference)
    file_name_field: str = Field(default="fileName", pattern=_WIRE_NAME)
    definition_part: str = Field(default="definition", pattern=_WIRE_NAME)
    file_part: str = Field(default="inputFile", pattern=_WIRE_NAME)
    #: the content type of the file part, by compression (the file name ends .csv, .csv.gz, .zip)
    csv_content_type: str = Field(default="text/csv", pattern=_CONTENT_TYPE)
    gzip_content_type: str = Field(default="application/gzip", pattern=_CONTENT_TYPE)
    zip_content_type: str = Field(default="application/zip", pattern=_CONTENT_TYPE)
    #: appended to the execution route to read its per-line report
    report_suffix: str = Field(default="/report", pattern=r"^/[A-Za-z0-9_./-]*$")
    report_errors_key: str = Field(default="errors", pattern=_WIRE_NAME)
    success_statuses: frozenset[str] = frozenset({"SUCCESS"})
    partial_statuses: frozenset[str] = frozenset({"PARTIAL_SUCCESS"})
    error_statuses: frozenset[str] = frozenset({"ERROR"})
    #: a 429 whose message matches this (a regular expression) is the daily import quota, not a transient limit
    budget_message: str = r"daily\s+import\s+(limit|quota)"
    #: a report line whose message matches this refused its row for something missing that may exist later
    #: (a participation's profile): the row is sent again (``retry_refused_for``)
    dependency_message: str = r"(?i)\b(profile|record)\s+not\s+found\b"
    #: the definition field listing who receives Actito's report of an import (the destination's
    #: technical_email); "" sends none, for a licence that refuses the field
    report_recipients_field: str = Field(default="reportRecipients", pattern=r"^(|[A-Za-z_][A-Za-z0-9_.-]*)$")

    @field_validator("success_statuses", "partial_statuses", "error_statuses")
    @classmethod
    def _statuses(cls, value: frozenset[str]) -> frozenset[str]:
        """Compared with the upper-cased status Actito answers: written in any case, never empty."""
        if not value or any(not status.strip() for status in value):
            raise ValueError("list at least one status, none empty")
        return frozenset(status.strip().upper() for status in value)

    @field_validator("budget_message", "dependency_message")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ActitoWire:
        """A status that both ends an import well and badly, or two parts of one name, cannot be meant."""
        shared = (self.success_statuses & self.partial_statuses) | (self.success_statuses & self.error_statuses) \
            | (self.partial_statuses & self.error_statuses)
        if shared:
            raise ValueError(f"status {sorted(shared)[0]!r} is in more than one of success_statuses, "
                             "partial_statuses, error_statuses")
        if self.definition_part == self.file_part:
            raise ValueError("definition_part and file_part must differ")
        return self

    def content_type(self, compression: str) -> str:
        return {"gzip": self.gzip_content_type, "zip": self.zip_content_type}.get(compression, self.csv_content_type)


class Destination(_CalledOverHttp):
    """An Actito licence and the file transfer location its file synchronisation polls."""

    URL_KEY = "base_url"
    type: Literal["actito"] = "actito"
    environment: str | None = None
    base_url: str | None = None
    entity: str
    api_key: SecretStr | None = None
    technical_email: str | None = None
    files: FileLocation | None = None
    #: ETL executions allowed per table per day (Actito: 24; older licences 12)
    daily_import_budget: int = Field(default=24, ge=1)
    #: base_url may be http:// to another host (a TLS-terminating proxy beside this process)
    allow_insecure_http: bool = False
    #: the parts of Actito's API its documentation leaves open (docs/actito-wire.md, [guess])
    wire: ActitoWire = ActitoWire()

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str | None) -> str | None:
        if value is not None and value not in ACTITO_ENVIRONMENTS:
            raise ValueError(f"unknown environment {value!r}: use one of {', '.join(ACTITO_ENVIRONMENTS)}")
        return value

    @property
    def file_location(self) -> LocalLocation | SftpLocation | FtpsLocation | None:
        return self.files

    def problems(self, base_dir: Path, where: str) -> list[Problem]:
        return self.files.problems(base_dir, f"{where} files") if self.files is not None else []

    def activation_problems(self, name: str, raw: dict[str, Any], where: str) -> list[Problem]:
        """An audience needs a file transfer location; an import needs Actito's API."""
        kind = raw.get("kind", "audience")
        if kind != "audience" and not raw.get("table"):
            return [(f"{where} table", "required key is missing (the Actito table to import into)")]
        if kind == "audience" and raw.get("delivery", "file") == "file":
            if self.files is None:
                return [(f"{where} destination", f"[destinations.{name}] has no files location")]
            return []
        if self.api_key is None and self.environment != "sandbox":
            return [(f"{where} destination",
                     f"[destinations.{name}] needs api_key (\"${{ACTITO_API_KEY}}\") to import into Actito")]
        return []

    def secrets(self) -> list[SecretStr | None]:
        return [self.api_key, *(self.files.secrets() if self.files is not None else [])]


# --------------------------------------------------------------------------- OpenField


#: OpenField's webservice routes as we assume them (docs/openfield-wire.md): "METHOD /path"
#: the OpenField sandbox's password when the destination names none; a demo value, not a secret
OPENFIELD_SANDBOX_PASSWORD = "sandbox-demo-password"
OPENFIELD_ROUTES: dict[str, str] = {
    "find": "GET /api/{tenant_id}/{application_id}/profiles?{match_on}={value}",
    "create": "POST /api/{tenant_id}/{application_id}/profiles",
    "update": "PUT /api/{tenant_id}/{application_id}/profiles/{id}",
}
_ROUTE = re.compile(r"^(GET|POST|PUT|PATCH) (/\S*)$")
_ROUTE_FIELDS = {"tenant_id", "application_id", "match_on", "value", "id"}
#: per route, the placeholders it must have: find needs the key's value, update the profile's id
_ROUTE_NEEDS = {"find": {"value"}, "create": set(), "update": {"id"}}
#: keys of a profiles activation that mean something only for Actito
_ACTITO_ONLY_KEYS = ("table", "key", "preset", "attributes", "etl_id", "compression", "empty_values",
                     "import_timeout_minutes")


class OpenFieldRoutes(ConfigModel):
    """Where find, create and update go; the webservice is not public, so each is a setting."""

    find: str = OPENFIELD_ROUTES["find"]
    create: str = OPENFIELD_ROUTES["create"]
    update: str = OPENFIELD_ROUTES["update"]

    @model_validator(mode="after")
    def _templates(self) -> OpenFieldRoutes:
        for name, needs in _ROUTE_NEEDS.items():
            check_route(name, getattr(self, name), needs)
        return self


def check_route(name: str, route: str, needs: set[str]) -> None:
    match = _ROUTE.match(route)
    if not match:
        raise ValueError(f"routes.{name} = {route!r} is not \"METHOD /path\" (GET, POST, PUT or PATCH)")
    used = set(re.findall(r"\{([^{}]*)\}", match.group(2)))
    if unknown := used - _ROUTE_FIELDS:
        raise ValueError(f"routes.{name}: unknown placeholder {{{sorted(unknown)[0]}}} "
                         f"(known: {', '.join(sorted(_ROUTE_FIELDS))})")
    if missing := needs - used:
        raise ValueError(f"routes.{name} needs the placeholder {{{sorted(missing)[0]}}}")


class OpenFieldDestination(_CalledOverHttp):
    """An OpenField tenant and application, fed profile by profile through its webservice."""

    URL_KEY = "url"
    type: Literal["openfield"]
    #: the webservice's base URL (e.g. https://crm.example.com/openfield); not with environment = "sandbox"
    url: str | None = None
    #: "sandbox": the OpenField sandbox this tool ships, started in-process
    environment: Literal["sandbox"] | None = None
    tenant_id: str = Field(min_length=1)
    application_id: str = Field(min_length=1)
    #: the HTTP Basic user; the application id when not given
    username: str | None = None
    password: SecretStr | None = None
    routes: OpenFieldRoutes = OpenFieldRoutes()
    #: the profile field an existing profile is found by
    match_on: Literal["Email", "UserName"] = "Email"
    party_version: int = Field(default=1, ge=0)
    #: Party.LanguageId when a row has no language column or value (ISO 639-1)
    language: str = Field(default="fr", pattern=r"^[A-Za-z]{2}$")
    calls_per_minute: int = Field(default=300, ge=1)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    #: requests allowed per UTC day across the activations of this destination (counted in the ledger)
    daily_request_budget: int = Field(default=100_000, ge=1)
    #: url may be http:// to another host (a TLS-terminating proxy beside this process)
    allow_insecure_http: bool = False

    @property
    def file_location(self) -> None:
        """OpenField takes profiles through its webservice, never a file."""
        return None

    def problems(self, base_dir: Path, where: str) -> list[Problem]:
        """Where the webservice is and how we log in: a URL with a password, or the shipped sandbox."""
        if self.environment == "sandbox":
            return [(f"{where} url", 'give url or environment = "sandbox", not both')] if self.url is not None else []
        problems = []
        if self.url is None:
            problems.append((f"{where} url", 'required: the OpenField webservice URL (or environment = "sandbox")'))
        elif not self.url.startswith(("https://", "http://")):
            problems.append((f"{where} url", f"{self.url!r} is not an http(s) URL"))
        if self.password is None:
            problems.append((f"{where} password",
                             'required to call OpenField: password = "${OPENFIELD_PASSWORD}" or password_file'))
        return problems

    def activation_problems(self, name: str, raw: dict[str, Any], where: str) -> list[Problem]:
        if raw.get("kind", "audience") != "profiles":
            return [(f"{where} destination",
                     f"[destinations.{name}] is an OpenField destination: only kind = \"profiles\" goes there")]
        return [(f"{where} {key}", f"not used with the OpenField destination [destinations.{name}]: remove it")
                for key in _ACTITO_ONLY_KEYS if key in raw]

    def secrets(self) -> list[SecretStr | None]:
        return [self.password]


def check_api_url(key: str, url: str | None, allow_insecure_http: bool) -> None:
    """Every request carries the API key, a token or a password: never in clear text across a network.
    Plain http:// is accepted to this machine (a local sandbox or proxy), elsewhere only when asked for."""
    if url is None:
        return
    parsed = urlsplit(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and (allow_insecure_http or _loopback(parsed.hostname))):
        return
    if parsed.scheme != "http":
        raise ValueError(f"{key} must start with https://")
    raise ValueError(f"{key} is plain http:// to {parsed.hostname}: the credentials would cross the network in "
                     "clear text; use https://, or set allow_insecure_http = true if a TLS proxy runs beside this "
                     "process")


def _loopback(host: str | None) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


AnyDestination = Annotated[
    Annotated[Destination, Tag("actito")] | Annotated[OpenFieldDestination, Tag("openfield")],
    Discriminator(
        lambda value: str(value.get("type", "actito")) if isinstance(value, dict) else str(getattr(value, "type")),
        custom_error_type="destination_type",
        custom_error_message="type must be 'actito' (the default) or 'openfield'",
    ),
]
