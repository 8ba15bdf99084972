"""The tables of ``schedules.toml`` as typed models: settings, alerts, metrics, warehouses, schedules,
activations, and the whole configuration."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Discriminator, Field, SecretStr, Tag, ValidationInfo, field_validator, model_validator

from etl.config.base import ConfigModel, anchored
from etl.config.dbt import DbtError, DbtModel, QuerySource, dbt_source, dbt_where
from etl.errors import ConfigError
from etl.config.destinations import AnyDestination, Destination, OpenFieldDestination

DEFAULT_CONFIG = "schedules.toml"

_DestinationT = TypeVar("_DestinationT", Destination, OpenFieldDestination)


# --------------------------------------------------------------------------- schedules


class Schedule(ConfigModel):
    """When an activation runs: a cron expression or a fixed interval, in an IANA time zone.

    ``start_at`` is kept as a naive local wall-clock time: slots are named by wall clock, and an offset
    would pin one side of a DST change that the zone alone must decide. ``run_on_create`` lives here,
    not on the activation, because only the scheduler daemon acts on it."""

    cron: str | None = None
    every: str | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None
    run_on_create: bool = False

    @field_validator("start_at", mode="before")
    @classmethod
    def _start_at(cls, value: object) -> object:
        return _parse_start_at(value)

    @field_validator("start_at")
    @classmethod
    def _local_start(cls, start: datetime | None, info: ValidationInfo) -> datetime | None:
        """An offset is accepted only when the zone agrees with it, then dropped (see the class). Declared
        after ``timezone`` so that the zone is known here; an unknown zone is reported on its own."""
        zone = info.data.get("timezone")
        if start is None or start.tzinfo is None or zone is None:
            return start
        local = start.astimezone(ZoneInfo(zone))
        if local.utcoffset() != start.utcoffset():
            raise ValueError(
                f"start_at {start.isoformat(timespec='minutes')} has an offset that {zone} does not have "
                f"at that time ({local.isoformat(timespec='minutes')}): write the local time without an offset, "
                f"e.g. start_at = \"{local.replace(tzinfo=None).isoformat(timespec='minutes')}\"")
        return local.replace(tzinfo=None)

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
    """Why a cron expression is invalid, or None; cached, as activations share few expressions."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        return f"{expression!r} is not a valid cron expression ({exc})"
    return None


def _parse_start_at(value: object) -> object:
    """A schedule's ``start_at`` as a datetime: TOML's own date-time or date, or an ISO string; a date alone
    means its midnight. Slots are whole minutes, so seconds are refused rather than silently dropped."""
    parsed = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value.strip())
    if not isinstance(parsed, date):
        raise ValueError(f"start_at {value!r} is not a date-time: write a local time such as "
                         f"\"2026-12-05T08:00\" or a date such as \"2026-12-05\" (midnight)")
    start = parsed if isinstance(parsed, datetime) else datetime.combine(parsed, datetime.min.time())
    if start.second or start.microsecond:
        raise ValueError(f"start_at {start.isoformat()} has seconds: slots are whole minutes, "
                         f"write {start.isoformat(timespec='minutes')[:16]!r}")
    return start


_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_INTERVAL_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> int:
    """Seconds in an interval such as ``90s``, ``15m``, ``6h`` or ``1d``."""
    match = _INTERVAL.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"interval {text!r} is not a positive number followed by s, m, h or d (e.g. '6h')")
    return int(match.group(1)) * _INTERVAL_SECONDS[match.group(2)]


# --------------------------------------------------------------------------- top-level tables


class Settings(ConfigModel):
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


class EmailAlerts(ConfigModel):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    sender: str
    #: empty: each alert goes to the technical_email of its activation's Actito destination
    recipients: list[str] = Field(default_factory=list)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    timeout: float = Field(default=30.0, gt=0)


class Alerts(ConfigModel):
    """Where failures, recoveries and guard stops are announced."""

    webhook_url: SecretStr | None = None  # JSON POST, Slack-compatible ({"text": ...})
    email: EmailAlerts | None = None
    events: list[Literal["failure", "recovery", "guard"]] = ["failure", "recovery", "guard"]


class Metrics(ConfigModel):
    """Prometheus metrics: a textfile for node_exporter and/or a push to a Pushgateway."""

    textfile: Path | None = None
    pushgateway_url: str | None = None
    job: str = "audience_sync"


class Warehouse(ConfigModel):
    url: SecretStr
    demo: bool = False
    chunk_size: int | None = Field(default=None, ge=100, le=5_000_000)
    #: extracts of this process reading from it at once (`run --jobs`, the scheduler): the others wait
    max_connections: int = Field(default=4, ge=1, le=1000)


# --------------------------------------------------------------------------- activations


class FileOptions(ConfigModel):
    name: str | None = None
    separator: Literal[",", ";", "\t"] = ","
    compression: Literal["none", "gzip", "zip"] = "none"
    max_bytes: int = Field(default=100_000_000, ge=10_000, le=100_000_000)


ParamValue = str | int | float | bool | date | datetime


class ActivationBase(ConfigModel):
    description: str = ""
    #: the query: a SQL file, or a dbt model (exactly one of the two)
    sql: Path | None = None
    dbt: DbtModel | None = None
    warehouse: str | None = None
    destination: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    schedule: Schedule | None = None
    enabled: bool = True
    #: activations this one runs after when they run together (one `run`, one scheduler slot); it is skipped,
    #: not run, when one of them did not succeed
    after: list[str] = Field(default_factory=list)

    @field_validator("params", mode="before")
    @classmethod
    def _integers_fit_64_bits(cls, params: Any) -> Any:
        """Every warehouse driver binds at most a 64-bit integer; a larger one failed deep in the driver."""
        if isinstance(params, dict):
            for name, value in params.items():
                if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
                    raise ValueError(f"{name} = {value} does not fit a 64-bit integer: no warehouse can bind it")
        return params

    @model_validator(mode="after")
    def _one_query(self) -> Self:
        if (self.sql is None) == (self.dbt is None):
            raise ValueError('give exactly one of sql = "sql/audience.sql" or '
                             'dbt = { project_dir = "../analytics", model = "NAME" }')
        return self

    @property
    def delivers_file(self) -> bool:
        return False

    @property
    def needs_lasting_state(self) -> bool:
        """Whether a run is wrong, not only slower, when the previous run's snapshot is gone."""
        return False


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
    #: "transforms/vip.py:shape": a pandas function each chunk goes through between extract and cleaning
    transform: str | None = None
    #: "warehouse": the query is wrapped so the warehouse normalises and deduplicates the e-mail addresses
    #: (no dedupe memory here, however large the audience); "client": rows are cleaned here one by one
    clean_in: Literal["client", "warehouse"] = "client"
    #: ["actito_be", "actito_fr"] instead of ``destination``: extracted and cleaned once, delivered to each
    #: under its own lease, guard and ledger entry (`delivery_name`)
    destinations: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_or_several_destinations(cls, raw: Any) -> Any:
        """``destination`` stays the one the run delivers to: a fan-out's first, for what reads one."""
        if not isinstance(raw, dict) or "destinations" not in raw:
            return raw
        if "destination" in raw:
            raise ValueError('give destination = "name" or destinations = ["a", "b"], not both')
        several = raw["destinations"]
        if isinstance(several, list) and several and all(isinstance(name, str) for name in several):
            if len(set(several)) < len(several):
                raise ValueError("destinations names one destination twice: each receives the audience once")
            return {**raw, "destination": several[0]}
        raise ValueError('destinations is a non-empty list of destination names, e.g. ["actito_be", "actito_fr"]')

    @field_validator("transform")
    @classmethod
    def _file_and_function(cls, value: str | None) -> str | None:
        """Said when the file is read, before anything tries to open the path or import the module."""
        if value is not None:
            path, _, function = value.rpartition(":")
            if not path.endswith(".py") or not function.isidentifier():
                raise ValueError('write transform = "path/to/file.py:function" (the path relative to this file)')
        return value

    @property
    def transform_target(self) -> tuple[Path, str] | None:
        """(file as written, function name), or None without a transform step."""
        if self.transform is None:
            return None
        path, _, function = self.transform.rpartition(":")
        return Path(path), function

    @property
    def delivers_file(self) -> bool:
        return self.delivery == "file"

    @property
    def needs_lasting_state(self) -> bool:
        """A membership delivery compares each run with the members the previous run kept."""
        return self.delivery == "membership"


ImportMode = Literal["CREATE_UPDATE", "UPDATE_ONLY", "CREATE_ONLY"]
#: what an invalid value does: reject its whole row, or drop the value and send the row without it
InvalidPolicy = Literal["reject_row", "drop_value"]
_POLICIES = ("reject_row", "drop_value")


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
    #: one policy for every optional column, or a table column -> policy (``default``: the other columns);
    #: the key and required attributes always reject their row
    on_invalid: InvalidPolicy | dict[str, InvalidPolicy] = Field(default_factory=dict)
    #: a row the destination refuses for a missing dependency (its profile does not exist yet) is sent again
    #: on every run, unchanged, for this long ("7d", "12h"; "off": it waits for a change like any refused row)
    retry_refused_for: str = "7d"
    #: at most this many rows wait to be sent again; beyond, the longest-waiting are given up
    retry_queue_max: int = Field(default=100_000, ge=0)

    @field_validator("retry_refused_for")
    @classmethod
    def _retry_window(cls, value: str) -> str:
        if value.strip().lower() != "off":
            parse_interval(value)
        return value

    def retry_seconds(self) -> int:
        """0 when refused rows are not sent again unchanged."""
        return 0 if self.retry_refused_for.strip().lower() == "off" else parse_interval(self.retry_refused_for)

    @field_validator("on_invalid", mode="before")
    @classmethod
    def _policies(cls, value: Any) -> Any:
        """A wrong policy is named with its column, not as two failed union branches."""
        given = value.items() if isinstance(value, dict) else [(None, value)]
        for column, policy in given:
            if policy not in _POLICIES:
                where = f"on_invalid.{column}" if column is not None else "on_invalid"
                raise ValueError(f"{where} = {policy!r}: use \"reject_row\" (the whole row is rejected) or "
                                 "\"drop_value\" (the row is sent without the value)")
        return value

    def invalid_policies(self) -> tuple[dict[str, InvalidPolicy], InvalidPolicy]:
        """(policy per named column, policy of the others). Unless chosen, an invalid optional value is
        dropped — but with ``empty_values = "clear"`` its empty cell would erase what the destination
        holds, so the row is rejected instead."""
        if isinstance(self.on_invalid, str):
            return {}, self.on_invalid
        policies = dict(self.on_invalid)
        default = policies.pop("default", None)
        return policies, default or ("reject_row" if self.empty_values == "clear" else "drop_value")


class _QualifioOption(ImportActivationBase):
    """Qualifio's integration asks whether to push incomplete participations (people who did not finish
    the campaign): the preset's option, read on a ``completed`` column of the query."""

    preset: Literal["qualifio"] | None = None
    #: false (Qualifio's integration off by default): rows whose ``completed`` is no are left out
    incomplete_participations: bool = False

    @model_validator(mode="after")
    def _qualifio_only(self) -> Self:
        """Without the preset nothing reads the option: set anyway, it would promise a filter that never runs."""
        if "incomplete_participations" in self.model_fields_set and self.preset != "qualifio":
            raise ValueError('incomplete_participations is an option of preset = "qualifio" '
                             "(it reads the query's completed column): set the preset or remove the option")
        return self


class ProfilesActivation(_QualifioOption):
    kind: Literal["profiles"]
    key: str = "emailAddress"
    mode: ImportMode = "CREATE_UPDATE"
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


class InteractionsActivation(_QualifioOption):
    kind: Literal["interactions"]


#: the activations' kinds, as written in the file
KINDS = ("audience", "profiles", "subscriptions", "interactions")


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


_KindT = TypeVar("_KindT", AudienceActivation, ProfilesActivation, SubscriptionsActivation, InteractionsActivation,
                  ImportActivationBase)


# --------------------------------------------------------------------------- the configuration

#: between a fan-out activation's name and a destination's: never in a name the file may write
DELIVERY_SEPARATOR = "@"


def delivery_name(activation_name: str, destination: str) -> str:
    return f"{activation_name}{DELIVERY_SEPARATOR}{destination}"



class Config(ConfigModel):
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
        return anchored(self.base_dir, value)

    @property
    def state_dir(self) -> Path:
        return self.path(self.settings.state_dir)

    def warehouse_for(self, activation_name: str) -> tuple[str, Warehouse]:
        chosen = self.activations[activation_name].warehouse or next(iter(self.warehouses))
        return chosen, self.warehouses[chosen]

    def dbt_project(self, dbt: DbtModel) -> Path:
        """The project's directory, ``..`` resolved: messages name it, and the analyst runs dbt there."""
        return self.path(dbt.project_dir).resolve()

    def query_where(self, activation_name: str) -> str:
        """Where a message about an activation's query points, known without reading anything."""
        activation = self.activations[activation_name]
        if activation.dbt is not None:
            return dbt_where(self.dbt_project(activation.dbt), activation.dbt)
        assert activation.sql is not None  # one of the two, by the activation's validator
        return str(self.path(activation.sql))

    def query(self, activation_name: str) -> QuerySource:
        """The query an activation runs, from its SQL file or its dbt model's manifest.

        Raises ConfigError when a dbt model cannot be used (the manifest went missing or stale since the
        configuration was loaded)."""
        activation = self.activations[activation_name]
        if activation.dbt is not None:
            try:
                return dbt_source(self.dbt_project(activation.dbt), activation.dbt,
                                  f"[activations.{activation_name}] dbt")
            except DbtError as exc:
                raise ConfigError([exc.problem], source=self.source) from None
        assert activation.sql is not None
        file = self.path(activation.sql)
        return QuerySource(file.read_text(encoding="utf-8"), str(file), {
            "sql_file": activation.sql.as_posix(), "sql_sha256": hashlib.sha256(file.read_bytes()).hexdigest()})

    def alert_recipients(self, activation_name: str) -> list[str]:
        """Who gets an activation's e-mail alerts: the configured recipients, else the technical e-mail of
        its Actito destination — the address that already receives Actito's import reports."""
        if self.alerts.email is not None and self.alerts.email.recipients:
            return list(self.alerts.email.recipients)
        activation = self.activations.get(activation_name)
        destination = self.destinations.get(activation.destination) if activation is not None else None
        technical = destination.technical_email if isinstance(destination, Destination) else None
        return [technical] if technical else []

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

    def destinations_of(self, activation_name: str) -> list[str]:
        """Every destination an activation delivers to: several for a fan-out audience."""
        activation = self.activations[activation_name]
        if isinstance(activation, AudienceActivation) and activation.destinations:
            return list(activation.destinations)
        return [activation.destination]

    def part_of(self, name: str) -> tuple[str, str] | None:
        """(fan-out activation, destination) when ``name`` is one of the configured deliveries of a fan-out."""
        activation_name, separator, destination = name.rpartition(DELIVERY_SEPARATOR)
        if separator and activation_name in self.activations and destination in self.destinations_of(activation_name):
            return activation_name, destination
        return None

    def delivery(self, activation_name: str, destination: str) -> tuple[Config, str]:
        """A fan-out's delivery to one destination as an activation of its own, in a configuration that
        holds it: its runs, lease, members snapshot and shrink guard are its own, its file name the
        fan-out's."""
        activation = self.activation_of(activation_name, AudienceActivation)
        name = delivery_name(activation_name, destination)
        file = activation.file.model_copy(update={"name": self.file_name_pattern(activation_name)})
        part = activation.model_copy(update={"destination": destination, "destinations": [], "file": file})
        return self.model_copy(update={"activations": {**self.activations, name: part}}), name

    def file_name_pattern(self, activation_name: str) -> str:
        activation = self.activation_of(activation_name, AudienceActivation)
        return activation.file.name or f"{activation_name}.csv"

    def chunk_size_for(self, activation_name: str) -> int:
        return self.warehouse_for(activation_name)[1].chunk_size or self.settings.chunk_size
