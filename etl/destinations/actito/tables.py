"""What Actito's API answers, as values; read defensively: a missing or mistyped field is empty, never an exception."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from etl.config import ActitoWire

__all__ = ["ActitoWire", "Attribute", "Execution", "LineError", "Table", "execution_of", "list_in", "opt_str",
           "table_of"]


@dataclass(frozen=True)
class Attribute:
    """One attribute of a table; ``value_type`` and ``max_length`` only for CUSTOM attributes."""

    name: str
    type: str
    value_type: str | None
    unique: bool
    mandatory: bool
    max_length: int | None


@dataclass(frozen=True)
class Table:
    """A profile table or a custom table, as discovered: what an import may target and map to."""

    id: str
    name: str
    kind: Literal["profile", "custom"]
    attributes: tuple[Attribute, ...]
    #: subscription names (profile tables); the fixed technical values an import column maps to
    subscriptions: tuple[str, ...]
    #: ``INTERACTIONS`` or ``STANDARD`` for custom tables, None for profile tables
    custom_type: str | None
    primary_key: str | None
    foreign_keys: tuple[dict[str, str], ...]

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)


@dataclass(frozen=True)
class Execution:
    """One ETL execution: status PENDING / RUNNING / SUCCESS / PARTIAL_SUCCESS / ERROR (or one we do not know)."""

    id: str
    reference: str | None
    status: str
    #: lines, created, updated, rejected (empty until Actito has counted)
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True)
class LineError:
    """One rejected line of an import; ``line`` counts the header as line 1, so data row k is line k+1."""

    line: int
    column: str | None
    value: str | None
    #: the line's first problem
    message: str
    #: every problem of the line, the first included, when the report lists them
    problems: tuple[str, ...] = ()


def list_in(body: Any, key: str) -> list[Any]:
    if isinstance(body, Mapping):
        value = body.get(key)
        return list(value) if isinstance(value, list) else []
    return list(body) if isinstance(body, list) else []


def opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _attribute(raw: Mapping[str, Any]) -> Attribute:
    restriction = raw.get("valueRestriction")
    return Attribute(
        name=str(raw.get("name", "")),
        type=str(raw.get("type", "CUSTOM")),
        value_type=opt_str(raw.get("valueType")),
        unique=bool(raw.get("unique", False)),
        mandatory=bool(raw.get("mandatory", False)),
        max_length=_opt_int(restriction.get("maxLength")) if isinstance(restriction, Mapping) else None,
    )


def _names(items: Iterable[Any]) -> tuple[str, ...]:
    names: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and item.get("name") is not None:
            names.append(str(item["name"]))
        elif isinstance(item, str):
            names.append(item)
    return tuple(names)


def table_of(raw: Any, kind: Literal["profile", "custom"]) -> Table:
    if not isinstance(raw, Mapping):
        raw = {}
    attributes = raw.get("attributes")
    subscriptions = raw.get("subscriptions")
    foreign_keys = raw.get("foreignKeys")
    return Table(
        id=str(raw.get("id", "")),
        name=str(raw.get("name", raw.get("id", ""))),
        kind=kind,
        attributes=tuple(_attribute(a) for a in attributes if isinstance(a, Mapping))
        if isinstance(attributes, list)
        else (),
        subscriptions=_names(subscriptions) if isinstance(subscriptions, list) else (),
        custom_type=opt_str(raw.get("type")) if kind == "custom" else None,
        primary_key=opt_str(raw.get("primaryKeyAttribute")) if kind == "custom" else None,
        foreign_keys=tuple(
            {str(k): str(v) for k, v in fk.items()} for fk in foreign_keys if isinstance(fk, Mapping)
        )
        if isinstance(foreign_keys, list)
        else (),
    )


def execution_of(raw: Any, *, reference: str | None = None) -> Execution:
    """An Execution from a status, a creation answer (``{"id", "reference"}``: PENDING) or a search hit."""
    if not isinstance(raw, Mapping):
        raw = {}
    counts: dict[str, int] = {}
    if isinstance(raw.get("counts"), Mapping):
        for key, value in raw["counts"].items():
            number = _opt_int(value)
            if number is not None:
                counts[str(key)] = number
    return Execution(
        id=str(raw.get("id", "")),
        reference=opt_str(raw.get("reference")) or reference,
        status=str(raw.get("status") or "PENDING"),
        counts=counts,
        message=opt_str(raw.get("message")),
    )
