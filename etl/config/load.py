"""Reading ``schedules.toml``: TOML, then interpolation over the raw tree, then each table's model, then
the cross-checks, so that one ConfigError lists every problem with its location."""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from etl.config.base import SECRET_KEYS, VARIABLE, ConfigModel, Problem, dotted
from etl.config.checks import cross_check
from etl.config.destinations import AnyDestination
from etl.config.model import DEFAULT_CONFIG, KINDS, Activation, Alerts, Config, Metrics, Settings, Warehouse
from etl.config.secrets import LeftAsWritten, interpolate, register_secrets
from etl.errors import ConfigError

CONFIG_ENV = "AUDIENCE_SYNC_CONFIG"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def valid_name(name: str) -> bool:
    """An activation, warehouse or destination name as the file may write it (never a path: no '/', no '..')."""
    return bool(_NAME.fullmatch(name))


_TABLES: dict[str, TypeAdapter[Any]] = {
    "warehouses": TypeAdapter(Warehouse),
    "destinations": TypeAdapter(AnyDestination),
    "activations": TypeAdapter(Activation),
}


def config_path(explicit: str | Path | None = None) -> Path:
    """The file to read: ``--config``, else ``$AUDIENCE_SYNC_CONFIG``, else ``./schedules.toml``."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


#: the environment variable that sets how many identifiers the dedupe and each pass of the diff hold
IDS_IN_MEMORY_ENV = "AUDIENCE_SYNC_IDS_IN_MEMORY"
#: its default: 2,097,152 identifiers, 16 MB of hashes (plus the dedupe's 8 MB bitmap): a 28.6M-row
#: audience then peaks at 276 MB (docs/benchmarks.md)
IDS_IN_MEMORY = 1 << 21


def ids_in_memory(environ: Mapping[str, str] = os.environ) -> int:
    """The budget, from the environment: lower it for a pod with little memory, raise it to spill less.
    Checked when the configuration is loaded, so a typo stops every command before anything runs."""
    raw = environ.get(IDS_IN_MEMORY_ENV, "").replace("_", "").replace(",", "")
    if not raw:
        return IDS_IN_MEMORY
    if not raw.isdigit() or int(raw) < 1024:
        raise ConfigError([(IDS_IN_MEMORY_ENV, f"{environ[IDS_IN_MEMORY_ENV]!r} is not a number of "
                            "identifiers of at least 1024 (e.g. 2097152, 16 MB of hashes)")], source="environment")
    return int(raw)


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None, *, ledger_only: bool = False
) -> Config:
    """Read, interpolate and validate a configuration, raising one ConfigError that lists every problem.

    ``ledger_only``: unset variables stay as written unless ``[settings]`` needs them; history needs no keys."""
    file = config_path(path)
    environ = os.environ if environ is None else environ
    raw = _read_toml(file)
    problems: list[Problem] = []
    try:
        ids_in_memory(environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if ledger_only:
        environ = LeftAsWritten(environ, needed=set(VARIABLE.findall(str(raw.get("settings", "")))))
    resolved = interpolate(raw, (), environ, problems)
    _check_sections(resolved, problems)
    config = _validated_config(resolved, file, problems)
    declared = {table: set(entries) if isinstance(entries := resolved.get(table), dict) else set()
                for table in _TABLES}
    raw_activations = resolved.get("activations") if isinstance(resolved.get("activations"), dict) else {}
    problems.extend(cross_check(config, declared, raw_activations))
    if problems:
        raise ConfigError(problems, source=str(file))
    register_secrets(config)
    return config


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
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


def _validated_config(resolved: dict[str, Any], file: Path, problems: list[Problem]) -> Config:
    """Each entry checked on its own, so one broken table does not hide the others' problems."""
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
    return Config.model_construct(
        settings=settings,
        alerts=alerts,
        metrics=metrics,
        warehouses=tables["warehouses"],
        destinations=tables["destinations"],
        activations=tables["activations"],
        base_dir=file.parent.resolve(),
        source=str(file),
    )


def _validated(model: TypeAdapter[Any], value: Any, where: tuple[str, ...], problems: list[Problem]) -> Any:
    if not isinstance(value, dict):
        problems.append((dotted(where), "expected a table of keys"))
        return None
    try:
        return model.validate_python(value)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, where))
        return None


def _check_sections(raw: dict[str, Any], problems: list[Problem]) -> None:
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


def _check_actito_endpoints(destinations: Any, problems: list[Problem]) -> None:
    """Said with the table's other problems, from what was written: one pass of `validate` lists them all."""
    for name, entry in destinations.items() if isinstance(destinations, dict) else ():
        if isinstance(entry, dict) and entry.get("type", "actito") == "actito" and not (
                entry.get("environment") or entry.get("base_url")):
            problems.append((f"[destinations.{name}]",
                             "set environment (ENV-0, ENV-1, ENV-3, PREPROD, TEST, sandbox) or base_url"))


# --------------------------------------------------------------------------- pydantic's errors in people's words


def _pydantic_problems(exc: ValidationError, where: tuple[str, ...]) -> list[Problem]:
    problems = []
    for error in exc.errors():
        inner = [str(part) for part in error["loc"]]
        if inner and inner[0] in (*KINDS, "actito", "openfield"):  # the union's tag, which users never wrote
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
        problems.append((dotted(loc), message))
    return _without_missing_of_typos(problems)


def _without_missing_of_typos(problems: list[Problem]) -> list[Problem]:
    """A misspelt key is one problem: its "did you mean" replaces the "required key is missing"."""
    meant = {re.sub(r"[^ .]+$", "", where) + message.split("'")[1]
             for where, message in problems if message.startswith("unknown key: did you mean")}
    return [(where, message) for where, message in problems
            if not (message == "required key is missing" and where in meant)]


def _did_you_mean(key: str) -> str:
    """A key of another kind of table (not a typo: said as such), a key close to ``key`` (a typo), else a
    pointer to the reference."""
    owners = _known_keys().get(key)
    if owners:
        return f" here: {key!r} is a key of {' and '.join(owners)} only"
    close = difflib.get_close_matches(key, list(_known_keys()), n=1, cutoff=0.75)
    return (f": did you mean {close[0]!r}?" if close
            else " (check its spelling against the README's configuration reference)")


@functools.cache
def _known_keys() -> dict[str, list[str]]:
    """Every key any table of the configuration accepts -> the tables that declare it (an activation's by
    its kind), e.g. 'incomplete_participations' -> 'kind = "profiles" activations', ..."""
    models: list[type[ConfigModel]] = [ConfigModel]
    owners: dict[str, set[str]] = {}
    while models:
        model = models.pop()
        subclasses = model.__subclasses__()
        if not subclasses:  # a table one writes; its bases are only shared parts
            for name in model.model_fields:
                owners.setdefault(name, set()).add(_table_of(model))
        models.extend(subclasses)
    return {key: sorted(tables) for key, tables in sorted(owners.items())}


def _table_of(model: type[ConfigModel]) -> str:
    kind = model.model_fields.get("kind")
    choices: tuple[object, ...] = getattr(kind.annotation, "__args__", ()) if kind is not None else ()
    if len(choices) == 1 and isinstance(choices[0], str):
        return f'kind = "{choices[0]}" activations'
    return f"[{model.__name__}] tables"


def _shows_input(error: Any, loc: list[str]) -> bool:
    """Whether to quote what the user wrote: for a wrong type or a value out of range, but never a secret."""
    wrong_value = error["type"].endswith(("_parsing", "_type", "_from_float")) or error["type"] in (
        "literal_error", "greater_than", "greater_than_equal", "less_than", "less_than_equal")
    secret = any(part in SECRET_KEYS or part.endswith("url") for part in loc)
    return wrong_value and not secret and isinstance(error.get("input"), str | int | float | bool)
