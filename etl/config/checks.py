"""Cross-checks: what each table cannot see alone (references, SQL parameters, shared file names)."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from etl.config.base import Problem
from etl.config.dbt import DbtError, DbtModel, dbt_source
from etl.config.model import AudienceActivation, Config
from etl.config.sql import BUILTIN_PARAMS, bind_parameter_names
from etl.config.transform_ref import transform_problems
from etl.files.names import Claim, name_pattern_problem, overlaps

log = logging.getLogger("audience_sync.config")

#: file.max_bytes is the ceiling of the one file an audience delivers (never split): nothing to cap without one
_MAX_BYTES_UNUSED = ('not used with delivery = "membership": members are imported through Actito\'s API and no '
                     "file is delivered; remove it")


def cross_check(config: Config, declared: dict[str, set[str]], raw_activations: dict[str, Any]) -> list[Problem]:
    """References between tables and to files; activations are read raw, so one typo hides no other problem."""
    problems = _warehouse_problems(config)
    for name, destination in config.destinations.items():
        problems += destination.problems(config.base_dir, f"[destinations.{name}]")
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
        problems += _reference_problems(config, declared, raw, where)
        if raw.get("kind", "audience") == "audience":
            problems += _audience_file_problems(config, name, raw, where, claims)
            problems += _transform_problems(config, name)
            problems += _clean_in_problems(config, name, raw, where)
        params = set(raw["params"]) if isinstance(raw.get("params"), dict) else set()
        # a transform function reads params too: one the SQL leaves unused is not worth a warning
        warn_unused = "transform" not in raw
        if isinstance(raw.get("sql"), str):
            sql_file = config.path(Path(raw["sql"]))
            if sql_file not in sql_parameters:
                sql_parameters[sql_file] = _sql_parameters(sql_file)
            problems += _param_problems(sql_parameters[sql_file], sql_file.name, params, where, warn_unused)
        problems += _dbt_problems(config, raw.get("dbt"), params, where, warn_unused)
    return problems + _name_overlaps(claims) + _after_problems(config, raw_activations) + _alert_problems(config)


def _transform_problems(config: Config, name: str) -> list[Problem]:
    activation = config.activations.get(name)
    target = activation.transform_target if isinstance(activation, AudienceActivation) else None
    if target is None:
        return []
    return transform_problems(config.path(target[0]), target[1], f"[activations.{name}] transform")


#: the warehouses `etl.extract.pushdown` writes SQL for, by SQLAlchemy dialect name (BigQuery: not yet)
PUSHDOWN_DIALECTS = ("postgresql", "mysql", "mariadb", "sqlite", "duckdb", "snowflake")


def warehouse_dialect(config: Config, name: str) -> str | None:
    """The SQLAlchemy dialect name of the activation's warehouse, from its URL (no connection); None for a
    URL that cannot be parsed (said at the warehouse's url)."""
    try:
        return make_url(config.warehouse_for(name)[1].url.get_secret_value()).get_backend_name()
    except (ArgumentError, ValueError):
        return None


def _clean_in_problems(config: Config, name: str, raw: dict[str, Any], where: str) -> list[Problem]:
    """What the warehouse cannot clean: a transform step sees raw rows, profile ids are canonical by their
    column's type (a float 7.0, a text "007"), and some dialects have no SQL written for them."""
    if raw.get("clean_in") != "warehouse" or not isinstance(config.activations.get(name), AudienceActivation):
        return []
    key = f"{where} clean_in"
    if "transform" in raw:
        return [(key, 'clean_in = "warehouse" cannot go with a transform step, which sees the raw rows the '
                      'warehouse no longer sends: remove transform, or use clean_in = "client"')]
    if raw.get("identifier") != "email":
        return [(key, 'clean_in = "warehouse" cleans e-mail addresses only (a profile id is canonical by its '
                      'column\'s type, which the warehouse does not tell): use clean_in = "client"')]
    dialect = warehouse_dialect(config, name)
    if dialect is None:
        return []  # said at the warehouse's url
    if dialect not in PUSHDOWN_DIALECTS:
        return [(key, f'clean_in = "warehouse" is not available for {dialect} yet; use client')]
    return []


def _alert_problems(config: Config) -> list[Problem]:
    """E-mail alerts without recipients go to each activation's technical_email: one without any would be lost."""
    email = config.alerts.email
    if email is None or email.recipients:
        return []
    orphans = [name for name in config.activations if not config.alert_recipients(name)]
    if not orphans:
        return []
    return [("[alerts.email] recipients", f"none listed, and {', '.join(orphans[:3])}"
             f"{' …' if len(orphans) > 3 else ''} has no Actito destination with a technical_email to send "
             "its alerts to: list recipients, or set technical_email on the destination")]


def _warehouse_problems(config: Config) -> list[Problem]:
    problems: list[Problem] = []
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
    return problems


def _reference_problems(config: Config, declared: dict[str, set[str]], raw: dict[str, Any], where: str
                        ) -> list[Problem]:
    """The activation's warehouse and destination exist, and the destination takes what it delivers."""
    problems: list[Problem] = []
    warehouse_ref = raw.get("warehouse")
    if isinstance(warehouse_ref, str) and warehouse_ref not in declared["warehouses"]:
        problems.append((f"{where} warehouse", f"no [warehouses.{warehouse_ref}] table"))
    key = "destinations" if "destinations" in raw else "destination"
    for destination_ref in _destination_refs(raw):
        if destination_ref not in declared["destinations"]:
            problems.append((f"{where} {key}", f"no [destinations.{destination_ref}] table"))
        elif destination_ref in config.destinations:
            problems += config.destinations[destination_ref].activation_problems(destination_ref, raw, where)
    return problems


def _destination_refs(raw: dict[str, Any]) -> list[str]:
    """The destinations an activation names as written: one, or several for a fan-out."""
    several = raw.get("destinations")
    named = several if isinstance(several, list) else [raw.get("destination")]
    return [name for name in named if isinstance(name, str)]


def _audience_file_problems(config: Config, name: str, raw: dict[str, Any], where: str, claims: list[Claim]
                            ) -> list[Problem]:
    """The audience's file options; the names it claims at its location are added to ``claims``."""
    problems: list[Problem] = []
    file_options: dict[str, Any] = raw["file"] if isinstance(raw.get("file"), dict) else {}
    if "max_bytes" in file_options and raw.get("delivery", "file") == "membership":
        problems.append((f"{where} file.max_bytes", _MAX_BYTES_UNUSED))
    pattern = file_options.get("name") or f"{name}.csv"
    if isinstance(pattern, str):
        if (problem := name_pattern_problem(pattern)) is not None:
            problems.append((f"{where} file.name", problem))
        else:
            claims += _file_claims(config, name, pattern, raw)
    return problems


def _file_claims(config: Config, name: str, pattern: str, raw: dict[str, Any]) -> list[Claim]:
    """The names an audience file claims at each of its locations: none without a file, none at a
    destination already reported. A fan-out claims its name at each destination's location, so two of
    its destinations in one directory are found like two activations."""
    if raw.get("delivery", "file") != "file":
        return []
    claims = []
    for destination_ref in _destination_refs(raw):
        destination = config.destinations.get(destination_ref)
        location = destination.file_location if destination is not None else None
        if location is not None:
            identity, shown = location.identity(config.base_dir)
            claims.append(Claim(name, pattern, identity, shown, destination_ref))
    return claims


def _name_overlaps(claims: list[Claim]) -> list[Problem]:
    """Two activations whose files can ever share a name at one location (see `etl.files.names`)."""
    return [(f"[activations.{second.activation}] file.name", _overlap_text(first, second, example))
            for first, second, example in overlaps(claims)]


def _overlap_text(first: Claim, second: Claim, example: str) -> str:
    if first.activation == second.activation:  # a fan-out whose destinations share a directory
        return (f"[destinations.{first.destination}] and [destinations.{second.destination}] are one directory "
                f"({second.shown}): both deliveries would write {example} there and remove each other's file; "
                "give the destinations different directories")
    clash = (f"same file name as [activations.{first.activation}] ({first.pattern!r})"
             if first.pattern == second.pattern else
             f"{second.pattern!r} and {first.pattern!r} of [activations.{first.activation}] can both write {example}")
    destinations = (f"[destinations.{second.destination}]" if first.destination == second.destination else
                    f"[destinations.{second.destination}] and [destinations.{first.destination}] are one directory")
    return (f"{clash} at {second.shown} ({destinations}): every name at a location belongs to one activation, "
            "whose runs replace and remove it; give one of them another file name or another directory")


def _param_problems(used: set[str] | str, query: str, declared_params: set[str], where: str, warn_unused: bool
                    ) -> list[Problem]:
    """Parameters ``query`` uses but are not declared, or declared but unused; ``used`` may be the problem
    that prevented reading the query."""
    if isinstance(used, str):
        return [(f"{where} sql", used)]
    problems = []
    if missing := used - declared_params - BUILTIN_PARAMS:
        problems.append((f"{where} params", f"{query} uses :{', :'.join(sorted(missing))} which is not declared"))
    if warn_unused and (unused := declared_params - used):  # harmless to a run: said, not refused
        log.warning("%s params: declared but unused in %s: %s", where, query, ", ".join(sorted(unused)))
    return problems


def _dbt_problems(config: Config, raw_dbt: Any, declared_params: set[str], where: str, warn_unused: bool
                  ) -> list[Problem]:
    """A dbt model's manifest, read as the run will read it, even when another key of the activation is
    wrong (read raw, like a SQL file); its query binds no parameter unless its compiled code happens to
    (dbt renders its own Jinja variables)."""
    try:
        dbt = DbtModel.model_validate(raw_dbt) if isinstance(raw_dbt, dict) else None
    except ValidationError:  # said by the activation's own validation
        return []
    if dbt is None:
        return []
    try:
        source = dbt_source(config.dbt_project(dbt), dbt, f"{where} dbt")
    except DbtError as exc:
        return [exc.problem]
    return _param_problems(bind_parameter_names(source.text), f"dbt model {dbt.model}", declared_params, where,
                           warn_unused)


def _sql_parameters(sql_file: Path) -> set[str] | str:
    """The parameters a SQL file binds, or the problem that prevents reading it."""
    if not sql_file.is_file():
        return f"no such file: {sql_file}"
    try:
        return bind_parameter_names(sql_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return f"{sql_file} is not UTF-8 text"


def _after_problems(config: Config, raw_activations: dict[str, Any]) -> list[Problem]:
    """``after`` names existing activations and draws no cycle; naming a disabled one is only said."""
    graph: dict[str, list[str]] = {}
    problems: list[Problem] = []
    for name, raw in raw_activations.items():
        after = raw.get("after") if isinstance(raw, dict) else None
        if not isinstance(after, list):
            continue
        where = f"[activations.{name}] after"
        graph[name] = [other for other in after if isinstance(other, str) and other in raw_activations]
        for other in after:
            if isinstance(other, str) and other not in raw_activations:
                close = difflib.get_close_matches(other, list(raw_activations), n=1, cutoff=0.75)
                hint = f": did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(raw_activations))})"
                problems.append((where, f"no activation {other!r}{hint}"))
            elif isinstance(other, str) and _disabled(config, other) and not _disabled(config, name):
                log.warning("%s: %s is disabled (enabled = false), so %s runs without waiting for it",
                            where, other, name)
    return problems + [(f"[activations.{cycle[0]}] after", f"{' → '.join(cycle)} is a cycle: none of them could "
                        "ever start; remove one of these `after`") for cycle in _cycles(graph)]


def _disabled(config: Config, name: str) -> bool:
    activation = config.activations.get(name)
    return activation is not None and not activation.enabled


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle of ``after`` once, as the path that closes it (``a → b → a``), found by depth-first search."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    for start in graph:
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                if node in done:
                    continue
                if node in path:
                    cycles.append([*path[path.index(node):], node])
                    continue
                path.append(node)
            edges = graph.get(node, [])
            if index < len(edges):
                stack += [(node, index + 1), (edges[index], 0)]
            else:
                path.pop()
                done.add(node)
    return cycles
