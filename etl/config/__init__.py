"""Loading and validating ``schedules.toml``.

The file is read in three passes so that a user sees *every* problem at once, each with its
location: TOML syntax, then ``${VAR}`` interpolation and secret rules over the raw tree, then the
typed models (pydantic, unknown keys forbidden) and the cross-references between tables (SQL files,
warehouses, destinations, schedules, file names). Secrets never come from literals in the file:
they come from ``${ENV_VAR}`` (or ``ENV_VAR_FILE``, a mounted secret file) or from a ``*_file`` key.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import logging
import os
import posixpath
import re
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from etl.errors import ConfigError
from etl.logs import redact, register_secret, url_secrets
from etl.files.names import Claim, overlaps

log = logging.getLogger("audience_sync.config")

#: what stands for a secret written literally in the file, which is refused (never kept, never shown)
REFUSED_SECRET = "***"

DEFAULT_CONFIG = "schedules.toml"
CONFIG_ENV = "AUDIENCE_SYNC_CONFIG"

ACTITO_ENVIRONMENTS: dict[str, str] = {
    "ENV-0": "https://api.actito.com",
    "ENV-1": "https://api1.actito.com",
    "ENV-3": "https://api3.actito.com",
    "PREPROD": "https://api-pre1.actito.com",
    "TEST": "https://apitest.actito.com",
    "sandbox": "",  # the project's own emulator; its URL is known only once it runs
}

#: keys whose values are secrets: they must be interpolated, never literal
SECRET_KEYS = frozenset({"api_key", "password", "key_passphrase", "webhook_url"})
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- schedules


class Schedule(_Model):
    """When an activation runs: a cron expression or a fixed interval, in an IANA time zone."""

    cron: str | None = None
    every: str | None = None
    timezone: str = "UTC"

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            parse_interval(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and (problem := _crontab_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError('give exactly one of cron = "M H DoM Mon DoW" or every = "6h"')
        return self

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as 'Europe/Brussels'") from None
        return value


@functools.lru_cache(maxsize=4096)
def _crontab_problem(expression: str) -> str | None:
    """Why a cron expression is invalid, or None. Cached: a thousand activations share a few dozen
    expressions, and building APScheduler's trigger is most of the cost of validating a schedule."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        return f"{expression!r} is not a valid cron expression ({exc})"
    return None


_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_INTERVAL_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> int:
    """Seconds in an interval such as ``90s``, ``15m``, ``6h`` or ``1d``."""
    match = _INTERVAL.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"interval {text!r} is not a positive number followed by s, m, h or d (e.g. '6h')")
    return int(match.group(1)) * _INTERVAL_SECONDS[match.group(2)]


# --------------------------------------------------------------------------- file delivery


class _FileLocation(_Model):
    retention_days: int | None = Field(default=None, ge=1)


class LocalLocation(_FileLocation):
    type: Literal["local"]
    path: Path


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


class FtpsLocation(_RemoteLocation):
    type: Literal["ftps"]
    host: str
    port: int = Field(default=21, ge=1, le=65535)
    username: str
    password: SecretStr
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout: float = Field(default=30.0, gt=0)


FileLocation = Annotated[LocalLocation | SftpLocation | FtpsLocation, Field(discriminator="type")]


# --------------------------------------------------------------------------- top-level tables


class Settings(_Model):
    state_dir: Path = Path("var/state")
    state_url: SecretStr | None = None
    chunk_size: int = Field(default=50_000, ge=100, le=5_000_000)
    lock_ttl_minutes: float = Field(default=360, ge=0.1)
    #: a run's local files (its audience file, rejects, members) are removed this long after it started
    run_retention_days: float = Field(default=14, ge=0)
    #: ... except those of the activation's last few runs, whatever their age
    keep_runs: int = Field(default=2, ge=1)
    #: the scheduler still starts a run this late (after downtime, a busy previous run); later, the slot is skipped
    misfire_grace_seconds: int = Field(default=900, ge=1)
    #: on SIGTERM, how long a running activation may take to finish before it is stopped (recorded interrupted)
    shutdown_grace_seconds: int = Field(default=120, ge=0)


class EmailAlerts(_Model):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    timeout: float = Field(default=30.0, gt=0)


class Alerts(_Model):
    """Where failures, recoveries and guard stops are announced."""

    webhook_url: SecretStr | None = None  # JSON POST, Slack-compatible ({"text": ...})
    email: EmailAlerts | None = None
    events: list[Literal["failure", "recovery", "guard"]] = ["failure", "recovery", "guard"]


class Metrics(_Model):
    """Prometheus metrics: a textfile for node_exporter and/or a push to a Pushgateway."""

    textfile: Path | None = None
    pushgateway_url: str | None = None
    job: str = "audience_sync"


class Warehouse(_Model):
    url: SecretStr
    demo: bool = False
    chunk_size: int | None = Field(default=None, ge=100, le=5_000_000)


class Destination(_Model):
    """An Actito licence and the file transfer location its file synchronisation polls."""

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

    @model_validator(mode="after")
    def _encrypted(self) -> Destination:
        check_api_url("base_url", self.base_url, self.allow_insecure_http)
        return self

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str | None) -> str | None:
        if value is not None and value not in ACTITO_ENVIRONMENTS:
            raise ValueError(f"unknown environment {value!r}: use one of {', '.join(ACTITO_ENVIRONMENTS)}")
        return value


#: OpenField's webservice routes as we assume them (docs/openfield-wire.md): "METHOD /path"
OPENFIELD_ROUTES: dict[str, str] = {
    "find": "GET /api/{tenant_id}/{application_id}/profiles?{match_on}={value}",
    "create": "POST /api/{tenant_id}/{application_id}/profiles",
    "update": "PUT /api/{tenant_id}/{application_id}/profiles/{id}",
}
_ROUTE = re.compile(r"^(GET|POST|PUT|PATCH) (/\S*)$")
_ROUTE_FIELDS = {"tenant_id", "application_id", "match_on", "value", "id"}
#: per route, the placeholders it must have: find needs the key's value, update the profile's id
_ROUTE_NEEDS = {"find": {"value"}, "create": set(), "update": {"id"}}


class OpenFieldRoutes(_Model):
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


class OpenFieldDestination(_Model):
    """An OpenField tenant and application, fed profile by profile through its webservice."""

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

    @model_validator(mode="after")
    def _encrypted(self) -> OpenFieldDestination:
        check_api_url("url", self.url, self.allow_insecure_http)
        return self


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
_DestinationT = TypeVar("_DestinationT", Destination, OpenFieldDestination)


class FileOptions(_Model):
    name: str | None = None
    separator: Literal[",", ";", "\t"] = ","
    compression: Literal["none", "gzip", "zip"] = "none"
    max_bytes: int = Field(default=100_000_000, ge=10_000, le=100_000_000)


ParamValue = str | int | float | bool | date | datetime


class ActivationBase(_Model):
    description: str = ""
    sql: Path
    warehouse: str | None = None
    destination: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    schedule: Schedule | None = None
    enabled: bool = True

    @field_validator("params", mode="before")
    @classmethod
    def _integers_fit_64_bits(cls, params: Any) -> Any:
        """Every warehouse driver binds at most a 64-bit integer; a larger one failed deep in the driver."""
        if isinstance(params, dict):
            for name, value in params.items():
                if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
                    raise ValueError(f"{name} = {value} does not fit a 64-bit integer: no warehouse can bind it")
        return params


class AudienceActivation(ActivationBase):
    """An audience: one identifier column delivered as a file Actito's saved targetings reference."""

    kind: Literal["audience"] = "audience"
    identifier: Literal["email", "profileId"]
    identifier_column: str | None = None
    file: FileOptions = FileOptions()
    #: "file": the file goes to the destination's file transfer location (External Target List);
    #: "membership": members who entered or left since the last run are imported into a custom table
    delivery: Literal["file", "membership"] = "file"
    membership_table: str = "audience_members"
    #: refuse to deliver when the audience falls by more than this share of the last delivered run
    #: (1 turns the guard off); an empty audience after a non-empty one is always refused; `run --force` overrides
    max_shrink: float = Field(default=0.5, ge=0, le=1)


ImportMode = Literal["CREATE_UPDATE", "UPDATE_ONLY", "CREATE_ONLY"]


class ImportActivationBase(ActivationBase):
    """Rows imported into an Actito table by ETL executions; only rows that changed since the last
    successful run are sent (``delta = false`` sends everything every time)."""

    table: str | None = None  # required for Actito; an OpenField destination has no tables
    attributes: dict[str, str] = Field(default_factory=dict)  # source column -> Actito attribute
    empty_values: Literal["keep", "clear"] = "keep"
    etl_id: str | None = None
    delta: bool = True
    compression: Literal["none", "gzip", "zip"] = "gzip"
    import_timeout_minutes: int = Field(default=60, ge=1)


class ProfilesActivation(ImportActivationBase):
    kind: Literal["profiles"]
    key: str = "emailAddress"
    mode: ImportMode = "CREATE_UPDATE"
    preset: Literal["qualifio"] | None = None
    subscriptions: dict[str, str] = Field(default_factory=dict)  # source column -> subscription name


class SubscriptionsActivation(ImportActivationBase):
    """Consents as Actito subscriptions, as Didomi's integration does (``upsert_mode = false``: a
    consent for an unknown profile is not propagated and no profile is created)."""

    kind: Literal["subscriptions"]
    key: str = "emailAddress"
    upsert_mode: bool = False
    preset: Literal["didomi"] | None = None
    subscriptions: dict[str, str] = Field(min_length=1)
    metadata: list[str] = Field(default_factory=list)  # source columns also sent as profile attributes


class InteractionsActivation(ImportActivationBase):
    kind: Literal["interactions"]
    preset: Literal["qualifio"] | None = None


def _activation_kind(value: Any) -> str:
    return str(value.get("kind", "audience")) if isinstance(value, dict) else str(getattr(value, "kind", "audience"))


Activation = Annotated[
    Annotated[AudienceActivation, Tag("audience")]
    | Annotated[ProfilesActivation, Tag("profiles")]
    | Annotated[SubscriptionsActivation, Tag("subscriptions")]
    | Annotated[InteractionsActivation, Tag("interactions")],
    Discriminator(
        _activation_kind,
        custom_error_type="activation_kind",
        custom_error_message="kind must be one of 'audience', 'profiles', 'subscriptions', 'interactions'",
    ),
]
ImportActivation = ProfilesActivation | SubscriptionsActivation | InteractionsActivation


_KindT = TypeVar("_KindT", AudienceActivation, ProfilesActivation, SubscriptionsActivation, InteractionsActivation,
                  ImportActivationBase)


class Config(_Model):
    settings: Settings = Settings()
    alerts: Alerts = Alerts()
    metrics: Metrics = Metrics()
    warehouses: dict[str, Warehouse]
    destinations: dict[str, AnyDestination]
    activations: dict[str, Activation]
    #: directory of the configuration file; relative paths in it are relative to this
    base_dir: Path = Path(".")
    source: str = DEFAULT_CONFIG

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else self.base_dir / value

    @property
    def state_dir(self) -> Path:
        return self.path(self.settings.state_dir)

    def warehouse_for(self, activation_name: str) -> tuple[str, Warehouse]:
        chosen = self.activations[activation_name].warehouse or next(iter(self.warehouses))
        return chosen, self.warehouses[chosen]

    def sql_text(self, activation_name: str) -> str:
        return self.path(self.activations[activation_name].sql).read_text(encoding="utf-8")

    def activation_of(self, activation_name: str, kind: type[_KindT]) -> _KindT:
        activation = self.activations[activation_name]
        if not isinstance(activation, kind):
            raise TypeError(f"{activation_name} is a {activation.kind} activation")
        return activation

    def destination_of(self, destination_name: str, kind: type[_DestinationT]) -> _DestinationT:
        destination = self.destinations[destination_name]
        if not isinstance(destination, kind):
            raise TypeError(f"{destination_name} is a {destination.type} destination")
        return destination

    def file_name_pattern(self, activation_name: str) -> str:
        activation = self.activation_of(activation_name, AudienceActivation)
        return activation.file.name or f"{activation_name}.csv"

    def chunk_size_for(self, activation_name: str) -> int:
        return self.warehouse_for(activation_name)[1].chunk_size or self.settings.chunk_size


# --------------------------------------------------------------------------- loading


def config_path(explicit: str | Path | None = None) -> Path:
    """The file to read: ``--config``, else ``$AUDIENCE_SYNC_CONFIG``, else ``./schedules.toml``."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None, *, ledger_only: bool = False
) -> Config:
    """Read, interpolate and validate a configuration, raising one ConfigError that lists every problem.

    ``ledger_only``: for commands that only read the ledger (`history`, `show`, `report`), a variable
    that is not set is left as written, unless ``[settings]`` needs it (``state_url``): reading the
    run history needs no Actito key or warehouse password."""
    file = config_path(path)
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            [(str(file), "file not found: pass --config PATH or set AUDIENCE_SYNC_CONFIG, "
                         "or write a first one with `audience-sync init`")], source=str(file)
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(file), f"not UTF-8 text ({exc.reason} at byte {exc.start})")], source=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(file), f"not valid TOML: {exc}")], source=str(file)) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError([(str(file), "not a usable configuration: values are nested hundreds of levels deep")],
                          source=str(file)) from None

    problems: list[tuple[str, str]] = []
    if ledger_only:
        environ = _LeftAsWritten(environ, needed=set(_VAR.findall(str(raw.get("settings", "")))))
    resolved = _interpolate(raw, (), environ, problems)
    _check_sections(resolved, problems)
    settings = _validated(TypeAdapter(Settings), resolved.get("settings", {}), ("settings",), problems) or Settings()
    alerts = _validated(TypeAdapter(Alerts), resolved.get("alerts", {}), ("alerts",), problems) or Alerts()
    metrics = _validated(TypeAdapter(Metrics), resolved.get("metrics", {}), ("metrics",), problems) or Metrics()
    tables: dict[str, dict[str, Any]] = {}
    for table, model in _TABLES.items():
        entries = resolved.get(table) or {}
        tables[table] = {
            name: entry
            for name, value in (entries.items() if isinstance(entries, dict) else ())
            if (entry := _validated(model, value, (table, name), problems)) is not None
        }
    # every entry is checked on its own, so one broken table does not hide the problems of the others
    config = Config.model_construct(
        settings=settings,
        alerts=alerts,
        metrics=metrics,
        warehouses=tables["warehouses"],
        destinations=tables["destinations"],
        activations=tables["activations"],
        base_dir=file.parent.resolve(),
        source=str(file),
    )
    declared = {table: set(entries) if isinstance(entries := resolved.get(table), dict) else set()
                for table in _TABLES}
    raw_activations = resolved.get("activations") if isinstance(resolved.get("activations"), dict) else {}
    problems.extend(_cross_check(config, declared, raw_activations))
    if problems:
        raise ConfigError(problems, source=str(file))
    _register_secrets(config)
    return config


_TABLES: dict[str, TypeAdapter[Any]] = {
    "warehouses": TypeAdapter(Warehouse),
    "destinations": TypeAdapter(AnyDestination),
    "activations": TypeAdapter(Activation),
}


def _validated(model: TypeAdapter[Any], value: Any, where: tuple[str, ...], problems: list[tuple[str, str]]) -> Any:
    if not isinstance(value, dict):
        problems.append((_dotted(where), "expected a table of keys"))
        return None
    try:
        return model.validate_python(value)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, where))
        return None


def _check_sections(raw: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    for table in ("warehouses", "destinations", "activations"):
        if not raw.get(table):
            problems.append((f"[{table}]", f"no {table} declared: add at least one [{table}.NAME] table"))
    for key in raw:
        if key not in ("settings", "alerts", "metrics", *_TABLES):
            problems.append((key, "unknown table: the file holds [settings], [alerts], [metrics], [warehouses.*], "
                                  "[destinations.*], [activations.*]"))
    for table in _TABLES:
        entries = raw.get(table) or {}
        if not isinstance(entries, dict):
            problems.append((table, f"expected [{table}.NAME] tables"))
            continue
        for name in entries:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                problems.append(
                    (f"[{table}.{name}]", "names use letters, digits, '_', '.', '-' only, at most 100 characters")
                )
    _check_actito_endpoints(raw.get("destinations"), problems)


def _check_actito_endpoints(destinations: Any, problems: list[tuple[str, str]]) -> None:
    """Said with the table's other problems, from what was written: one pass of `validate` lists them all."""
    for name, entry in destinations.items() if isinstance(destinations, dict) else ():
        if isinstance(entry, dict) and entry.get("type", "actito") == "actito" and not (
                entry.get("environment") or entry.get("base_url")):
            problems.append((f"[destinations.{name}]",
                             "set environment (ENV-0, ENV-1, ENV-3, PREPROD, TEST, sandbox) or base_url"))


class _LeftAsWritten(Mapping[str, str]):
    """The environment, where a variable that is not set (and not ``needed``) reads as ``${NAME}``."""

    def __init__(self, environ: Mapping[str, str], *, needed: set[str]) -> None:
        self._environ, self._needed = environ, needed

    def __getitem__(self, name: str) -> str:
        if name in self._environ or name in self._needed or name.endswith("_FILE"):
            return self._environ[name]
        return f"${{{name}}}"

    def __contains__(self, name: object) -> bool:
        return name in self._environ or (isinstance(name, str) and name not in self._needed
                                         and not name.endswith("_FILE"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def _interpolate(
    node: Any, where: tuple[str, ...], environ: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    """Replace ``${VAR}`` everywhere, read ``*_file`` secrets, and refuse literal secrets."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            path = (*where, str(key))
            if key.endswith("_file") and key[: -len("_file")] in SECRET_KEYS:
                secret = _read_secret_file(_interpolate(value, path, environ, problems), path, problems)
                if secret is not None:
                    out[key[: -len("_file")]] = secret
                continue
            if key in SECRET_KEYS and isinstance(value, str) and not _VAR.search(value):
                problems.append(
                    (_dotted(path), f"a secret cannot be written in the file: use \"${{ENV_VAR}}\" or {key}_file")
                )
                out[key] = REFUSED_SECRET  # present, so that the rest of the table is checked as written
                continue
            if key in ("url", "state_url") and isinstance(value, str) and _has_literal_password(value):
                problems.append(
                    (_dotted(path), "the URL holds a literal password: write it as ${ENV_VAR} inside the URL")
                )
                out[key] = redact(value)  # the URL without its password: not also "url: required key is missing"
                continue
            out[key] = _interpolate(value, path, environ, problems)
        return out
    if isinstance(node, list):
        return [_interpolate(item, (*where, str(i)), environ, problems) for i, item in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _substitute(node, where, environ, problems)
    return node


def _substitute(text: str, where: tuple[str, ...], environ: Mapping[str, str], problems: list[tuple[str, str]]) -> str:
    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in environ:
            # a Kubernetes Secret made from a file keeps the file's final newline
            return environ[name].rstrip("\r\n")
        secret_file = environ.get(f"{name}_FILE")
        if secret_file:
            try:
                return Path(secret_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append((_dotted(where), f"${name}_FILE points to {secret_file!r}: {exc.strerror}"))
                return ""
        problems.append((_dotted(where), f"environment variable {name} is not set (nor {name}_FILE)"))
        return ""

    return _VAR.sub(value_of, text)


def _read_secret_file(value: Any, where: tuple[str, ...], problems: list[tuple[str, str]]) -> str | None:
    if not isinstance(value, str):
        problems.append((_dotted(where), "expected the path of a file holding the secret"))
        return None
    try:
        return Path(value).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append((_dotted(where), f"cannot read {value!r}: {exc.strerror}"))
        return None


def _has_literal_password(url: str) -> bool:
    match = re.match(r"^[^:/]+://[^:/@]*:([^@]*)@", url)
    return bool(match and match.group(1) and not _VAR.fullmatch(match.group(1)))


def _dotted(path: Iterator[str] | tuple[str, ...]) -> str:
    parts = list(path)
    if len(parts) >= 2 and parts[0] in ("warehouses", "destinations", "activations"):
        head = f"[{parts[0]}.{parts[1]}]"
        return f"{head} {'.'.join(parts[2:])}" if len(parts) > 2 else head
    return ".".join(parts)


_KINDS = ("audience", "profiles", "subscriptions", "interactions")


def _pydantic_problems(exc: ValidationError, where: tuple[str, ...]) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        inner = [str(part) for part in error["loc"]]
        if inner and inner[0] in (*_KINDS, "actito", "openfield"):  # the union's tag, which users never wrote
            inner = inner[1:]
        loc = [*where, *inner]
        # discriminated unions add the chosen tag to the location: drop it, users never wrote it
        loc = [part for part in loc if part not in ("local", "sftp", "ftps")]
        message = error["msg"].removeprefix("Value error, ")
        if _shows_input(error, loc):
            message += f" (you wrote {error['input']!r})"
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc[-1] if loc else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "union_tag_invalid":
            message = "type must be one of 'local', 'sftp', 'ftps'"
        problems.append((_dotted(tuple(loc)), message))
    return _without_missing_of_typos(problems)


def _without_missing_of_typos(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A misspelt key is one problem, not two: "required key is missing" for the key a typo stands for
    goes, the typo's "did you mean" says it all."""
    meant = {re.sub(r"[^ .]+$", "", where) + message.split("'")[1]
             for where, message in problems if message.startswith("unknown key: did you mean")}
    return [(where, message) for where, message in problems
            if not (message == "required key is missing" and where in meant)]


def _did_you_mean(key: str) -> str:
    """A key of the configuration close to ``key`` (a typo), else a pointer to the reference."""
    close = difflib.get_close_matches(key, _known_keys(), n=1, cutoff=0.75)
    return f": did you mean {close[0]!r}?" if close else " (check its spelling against the README's configuration reference)"


@functools.cache
def _known_keys() -> list[str]:
    """Every key any table of the configuration accepts: the fields of every model."""
    models: list[type[_Model]] = [_Model]
    keys: set[str] = set()
    while models:
        model = models.pop()
        keys.update(model.model_fields)
        models.extend(model.__subclasses__())
    return sorted(keys)


def _shows_input(error: Any, loc: list[str]) -> bool:
    """Whether to quote what the user wrote: for a wrong type or a value out of range, but never a secret."""
    wrong_value = error["type"].endswith(("_parsing", "_type", "_from_float")) or error["type"] in (
        "literal_error", "greater_than", "greater_than_equal", "less_than", "less_than_equal")
    secret = any(part in SECRET_KEYS or part.endswith("url") for part in loc)
    return wrong_value and not secret and isinstance(error.get("input"), str | int | float | bool)


def _cross_check(
    config: Config, declared: dict[str, set[str]], raw_activations: dict[str, Any]
) -> list[tuple[str, str]]:
    """References between tables and to files. Activations are read raw, so that an activation with a
    typo in one key still has its SQL file, parameters and references checked; a reference to a
    declared but invalid table was already reported."""
    from etl.files import name_pattern_problem

    problems: list[tuple[str, str]] = []
    for name, warehouse in config.warehouses.items():
        try:
            make_url(warehouse.url.get_secret_value())
        except (ArgumentError, ValueError):  # ValueError: a port that is no number, often a '@' or ':' in a value
            problems.append((f"[warehouses.{name}] url", "not a SQLAlchemy URL (e.g. postgresql+psycopg://host/db); "
                                                         "percent-encode reserved characters in values (@ as %40, "
                                                         ": as %3A, / as %2F)"))
            continue
        if warehouse.demo and not warehouse.url.get_secret_value().startswith("sqlite:///"):
            problems.append((f"[warehouses.{name}] demo", "the demo warehouse is a SQLite file: use a sqlite:/// URL"))
    for name, destination in config.destinations.items():
        where = f"[destinations.{name}]"
        if isinstance(destination, OpenFieldDestination):
            problems.extend(_openfield_problems(destination, where))
            continue
        files = destination.files
        if isinstance(files, LocalLocation) and config.path(files.path).expanduser().is_symlink():
            problems.append((f"{where} files.path", f"is a symbolic link: write the real directory, "
                                                    f"{config.path(files.path).expanduser().resolve()}"))
        if isinstance(files, SftpLocation) and files.key_file and not config.path(files.key_file).is_file():
            problems.append((f"{where} files.key_file", f"no such file: {config.path(files.key_file)}"))

    claims: list[Claim] = []
    lowered: dict[str, str] = {}
    sql_parameters: dict[Path, set[str] | str] = {}  # many activations share one SQL file: read and parse it once
    for name, raw in raw_activations.items():
        if not isinstance(raw, dict):
            continue
        where = f"[activations.{name}]"
        if name.lower() in lowered:
            problems.append((where, f"same name as [activations.{lowered[name.lower()]}] apart from case"))
        lowered[name.lower()] = name
        warehouse_ref, destination_ref = raw.get("warehouse"), raw.get("destination")
        if isinstance(warehouse_ref, str) and warehouse_ref not in declared["warehouses"]:
            problems.append((f"{where} warehouse", f"no [warehouses.{warehouse_ref}] table"))
        if isinstance(destination_ref, str) and destination_ref not in declared["destinations"]:
            problems.append((f"{where} destination", f"no [destinations.{destination_ref}] table"))
        elif isinstance(destination_ref, str) and destination_ref in config.destinations:
            problems.extend(_destination_problems(config.destinations[destination_ref], destination_ref, raw, where))
        if raw.get("kind", "audience") != "audience":
            if isinstance(raw.get("sql"), str):
                problems.extend(_sql_problems(config.path(Path(raw["sql"])), set(raw.get("params") or {}), where,
                                              sql_parameters))
            continue
        file_options: dict[str, Any] = raw["file"] if isinstance(raw.get("file"), dict) else {}
        if "max_bytes" in file_options and raw.get("delivery", "file") == "membership":
            problems.append((f"{where} file.max_bytes", _MAX_BYTES_UNUSED))
        pattern = file_options.get("name") or f"{name}.csv"
        if isinstance(pattern, str):
            if (problem := name_pattern_problem(pattern)) is not None:
                problems.append((f"{where} file.name", problem))
            elif (claim := _file_claim(config, name, pattern, destination_ref, raw)) is not None:
                claims.append(claim)
        if isinstance(raw.get("sql"), str):
            params: dict[str, Any] = raw["params"] if isinstance(raw.get("params"), dict) else {}
            problems.extend(_sql_problems(config.path(Path(raw["sql"])), set(params), where, sql_parameters))
    problems.extend(_name_overlaps(claims))
    return problems


#: file.max_bytes is the ceiling of the one file an audience delivers (never split): nothing to cap without one
_MAX_BYTES_UNUSED = ('not used with delivery = "membership": members are imported through Actito\'s API and no '
                     "file is delivered; remove it")


def _file_claim(config: Config, name: str, pattern: str, destination_ref: Any, raw: dict[str, Any]) -> Claim | None:
    """The names an audience delivered as a file claims at its destination's location (None for a
    membership delivery, which writes no file there, or a destination already reported)."""
    destination = config.destinations.get(destination_ref) if isinstance(destination_ref, str) else None
    if raw.get("delivery", "file") != "file" or not isinstance(destination, Destination) or destination.files is None:
        return None
    identity, shown = location_identity(config, destination.files)
    return Claim(name, pattern, identity, shown, destination_ref)


def _name_overlaps(claims: list[Claim]) -> list[tuple[str, str]]:
    """Two activations whose files can ever have the same name at one location: the last run would
    win, and each one's clean-up would remove the other's delivery."""
    return [(f"[activations.{second.activation}] file.name", _overlap_text(first, second, example))
            for first, second, example in overlaps(claims)]


def _overlap_text(first: Claim, second: Claim, example: str) -> str:
    clash = (f"same file name as [activations.{first.activation}] ({first.pattern!r})"
             if first.pattern == second.pattern else
             f"{second.pattern!r} and {first.pattern!r} of [activations.{first.activation}] can both write {example}")
    destinations = (f"[destinations.{second.destination}]" if first.destination == second.destination else
                    f"[destinations.{second.destination}] and [destinations.{first.destination}] are one directory")
    return (f"{clash} at {second.shown} ({destinations}): every name at a location belongs to one activation, "
            "whose runs replace and remove it; give one of them another file name or another directory")


def location_identity(config: Config, location: LocalLocation | SftpLocation | FtpsLocation) -> tuple[tuple[str, ...], str]:
    """(canonical identity, address for people) of a file location: two locations with the same
    identity are one directory however they are written (``outbox``, ``./outbox``, a link to it; a
    host name in capitals, ``/in/`` and ``/in``). A relative remote directory is under the user's home,
    so the user is part of its identity."""
    if isinstance(location, LocalLocation):
        path = str(config.path(location.path).expanduser().resolve())
        return ("local", path), path
    directory = posixpath.normpath(location.remote_dir.replace("\\", "/") or ".")
    directory = "/" + directory.lstrip("/") if directory.startswith("/") else directory
    host = location.host.lower().rstrip(".")
    user = "" if directory.startswith("/") else location.username
    shown = f"{location.type}://{location.username}@{host}:{location.port}" + (
        directory if directory.startswith("/") else f"/~/{directory}")
    return ("remote", host, str(location.port), user, directory), shown


def _openfield_problems(destination: OpenFieldDestination, where: str) -> list[tuple[str, str]]:
    """Where the webservice is and how we log in: a URL with a password, or the shipped sandbox."""
    if destination.environment == "sandbox":
        if destination.url is not None:
            return [(f"{where} url", 'give url or environment = "sandbox", not both')]
        return []
    problems = []
    if destination.url is None:
        problems.append((f"{where} url", 'required: the OpenField webservice URL (or environment = "sandbox")'))
    elif not destination.url.startswith(("https://", "http://")):
        problems.append((f"{where} url", f"{destination.url!r} is not an http(s) URL"))
    if destination.password is None:
        problems.append((f"{where} password",
                         'required to call OpenField: password = "${OPENFIELD_PASSWORD}" or password_file'))
    return problems


#: keys of a profiles activation that mean something only for Actito
_ACTITO_ONLY_KEYS = ("table", "key", "preset", "attributes", "etl_id", "compression", "empty_values",
                     "import_timeout_minutes")


def _openfield_activation_problems(destination_name: str, raw: dict[str, Any], where: str) -> list[tuple[str, str]]:
    if raw.get("kind", "audience") != "profiles":
        return [(f"{where} destination",
                 f"[destinations.{destination_name}] is an OpenField destination: only kind = \"profiles\" goes there")]
    return [(f"{where} {key}", f"not used with the OpenField destination [destinations.{destination_name}]: remove it")
            for key in _ACTITO_ONLY_KEYS if key in raw]


def _destination_problems(
    destination: Destination | OpenFieldDestination, destination_name: str, raw: dict[str, Any], where: str
) -> list[tuple[str, str]]:
    """An audience needs a file transfer location; an import needs Actito's API; OpenField takes profiles."""
    if isinstance(destination, OpenFieldDestination):
        return _openfield_activation_problems(destination_name, raw, where)
    if raw.get("kind", "audience") != "audience" and not raw.get("table"):
        return [(f"{where} table", "required key is missing (the Actito table to import into)")]
    if raw.get("kind", "audience") == "audience" and raw.get("delivery", "file") == "file":
        if destination.files is None:
            return [(f"{where} destination", f"[destinations.{destination_name}] has no files location")]
        return []
    if destination.api_key is None and destination.environment != "sandbox":
        return [(f"{where} destination",
                 f"[destinations.{destination_name}] needs api_key (\"${{ACTITO_API_KEY}}\") to import into Actito")]
    return []


#: parameters every audience query may use without declaring them
BUILTIN_PARAMS = frozenset({"run_date", "run_at"})


def _sql_problems(
    sql_file: Path, declared_params: set[str], where: str, parsed: dict[Path, set[str] | str]
) -> list[tuple[str, str]]:
    """Parameters used but not declared, or declared but unused; ``parsed`` holds each file's
    parameters (or why it cannot be read) across the activations of one load."""
    if sql_file not in parsed:
        parsed[sql_file] = _sql_parameters(sql_file)
    used = parsed[sql_file]
    if isinstance(used, str):
        return [(f"{where} sql", used)]
    problems = []
    if missing := used - declared_params - BUILTIN_PARAMS:
        problems.append(
            (f"{where} params", f"{sql_file.name} uses :{', :'.join(sorted(missing))} which is not declared")
        )
    if unused := declared_params - used:  # harmless to a run: said, not refused
        log.warning("%s params: declared but unused in %s: %s", where, sql_file.name, ", ".join(sorted(unused)))
    return problems


def _sql_parameters(sql_file: Path) -> set[str] | str:
    """The parameters a SQL file binds, or the problem that prevents reading it."""
    from etl.extract import bind_parameter_names  # the one place that knows how SQL parameters are parsed

    if not sql_file.is_file():
        return f"no such file: {sql_file}"
    try:
        return bind_parameter_names(sql_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return f"{sql_file} is not UTF-8 text"


def _register_secrets(config: Config) -> None:
    """Hand every secret to the log redactor, including the password inside each URL."""
    candidates: list[SecretStr | None] = [config.settings.state_url, config.alerts.webhook_url]
    if config.alerts.email is not None:
        candidates.append(config.alerts.email.password)
    for warehouse in config.warehouses.values():
        candidates.append(warehouse.url)
    for destination in config.destinations.values():
        if isinstance(destination, OpenFieldDestination):
            candidates.append(destination.password)
            continue
        candidates.append(destination.api_key)
        files = destination.files
        if isinstance(files, SftpLocation):
            candidates += [files.password, files.key_passphrase]
        elif isinstance(files, FtpsLocation):
            candidates.append(files.password)
    for secret in candidates:
        if secret is None:
            continue
        value = secret.get_secret_value()
        for part in url_secrets(value) if "://" in value else [value]:
            register_secret(part)
