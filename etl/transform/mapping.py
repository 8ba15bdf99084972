"""Map warehouse rows to the columns a destination is sent. Column *names* are checked once, when the
:class:`Mapping` is built; per row, only values. A value that breaks its rule rejects its whole row,
with a reason naming the column, the value and the rule, so nothing broken is ever sent."""

from __future__ import annotations

import collections.abc as cabc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import MappingError, TransformError
from etl.values.rules import RULES, FieldRule, checked, column_text
from etl.values.text import concat, decoded, listing, nulls

#: the longest string value sent (Actito's limit; a field's own ``maxLength`` may be lower)
MAX_STRING = 255
#: the longest field name we send (letters, digits and _ only)
MAX_NAME = 64
#: the column that carries a subscription (its name follows)
SUBSCRIPTION_PREFIX = "subscription_"

_NAME = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_NAME}}}")
_EMPTY: cabc.Mapping[str, str] = MappingProxyType({})
_NO_RULES: cabc.Mapping[str, FieldRule] = MappingProxyType({})

REJECTS_SCHEMA = pa.schema(
    [("row", pa.int64()), ("column", pa.string()), ("value", pa.string()), ("reason", pa.string())]
)

#: predefined attributes and the rule their values follow (other names: ``string``)
PREDEFINED_RULES: dict[str, FieldRule] = {
    "emailAddress": "email",
    "birthDate": "date",
    "sex": "sex",
    "telephoneNumber": "phone",
    "addressCountry": "country",
    "motherLanguage": "language",
}

#: Qualifio's opt-in variables, ``optin_<name>``: a subscription in every destination
QUALIFIO_OPTIN_PREFIX = "optin_"


@dataclass(frozen=True)
class FieldMap:
    """One source column → one attribute of the destination, through one format rule."""

    source: str
    target: str
    rule: FieldRule = "string"
    #: at most this many characters in the written value (None: no limit of ours)
    max_length: int | None = MAX_STRING
    #: an empty value rejects the row (the key is always required)
    required: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.rule not in RULES:
            problems.append(f"column {self.source!r}: unknown rule {self.rule!r} (rules: {', '.join(RULES)})")
        if self.max_length is not None and self.max_length < 1:
            problems.append(f"column {self.source!r}: max_length must be at least 1, not {self.max_length}")
        if problems:
            raise MappingError(problems)


@dataclass(frozen=True)
class SubscriptionMap:
    """A source column of yes/no values → the column ``subscription_<name>`` (``Y``/``N``) of the file."""

    source: str
    subscription: str

    @property
    def column(self) -> str:
        return SUBSCRIPTION_PREFIX + self.subscription


@dataclass(frozen=True)
class Mapping:
    """What one activation sends. Validated on construction (also by ``dataclasses.replace``), so a
    mapping that exists can be written."""

    #: the Actito attribute that identifies a row (a target of ``fields``), e.g. ``emailAddress``
    key: str
    fields: tuple[FieldMap, ...]
    subscriptions: tuple[SubscriptionMap, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "subscriptions", tuple(self.subscriptions))
        problems = _mapping_problems(self)
        if problems:
            raise MappingError(
                problems,
                hint="alias the SQL columns or change the activation's mapping; "
                "an attribute name is 1 to 64 letters, digits or _",
            )

    @property
    def key_field(self) -> FieldMap:
        return next(field for field in self.fields if field.target == self.key)

    def output_columns(self) -> list[str]:
        """The CSV header: the key, the other attributes in mapping order, then the subscriptions."""
        return [self.key] + [f.target for f in self.fields if f.target != self.key] + [
            s.column for s in self.subscriptions
        ]

    def definition_parts(self) -> dict[str, list[dict[str, str]]]:
        """The ``attributes`` and ``subscriptions`` of the import definition. Every column of the
        file is listed, the key included: Actito ends an import whose header has a column the
        definition does not map in ERROR."""
        attributes = [self.key] + [f.target for f in self.fields if f.target != self.key]
        return {
            "attributes": [{"column": name, "attribute": name} for name in attributes],
            "subscriptions": [{"column": s.column, "subscription": s.subscription} for s in self.subscriptions],
        }


def _mapping_problems(mapping: Mapping) -> list[str]:
    targets = list(dict.fromkeys(field.target for field in mapping.fields))
    problems = [
        f"column {field.source!r} → attribute {field.target!r}: an attribute name is 1 to {MAX_NAME} "
        "characters, only letters A-Z a-z, digits and _"
        for field in mapping.fields if not _NAME.fullmatch(field.target)
    ]
    problems += _fed_twice("attribute", [(field.target, field.source) for field in mapping.fields])
    for subscription in mapping.subscriptions:
        name = subscription.subscription
        if not name or name != name.strip() or any(ord(c) < 32 for c in name):
            problems.append(
                f"column {subscription.source!r} → subscription {name!r}: a subscription name is not empty "
                "and has no spaces around it nor control characters"
            )
        if subscription.column in targets:
            problems.append(f"subscription {name!r}: its file column {subscription.column!r} is also an attribute")
    problems += _fed_twice("subscription", [(s.subscription, s.source) for s in mapping.subscriptions])
    if not mapping.key:
        problems.append("no key attribute: an import matches rows on one")
    elif mapping.key not in targets:
        problems.append(
            f"the key {mapping.key!r} is not among the mapped attributes ({listing(targets) or 'none'}): "
            f"a column must feed it"
        )
    return problems


def _fed_twice(what: str, names_and_sources: list[tuple[str, str]]) -> list[str]:
    sources: dict[str, list[str]] = {}
    for name, source in names_and_sources:
        sources.setdefault(name, []).append(source)
    return [f"{what} {name!r} is fed by several columns: {listing(fed)}"
            for name, fed in sources.items() if len(fed) > 1]


@dataclass(frozen=True)
class MappedBatch:
    #: string columns named by ``output_columns()``, values in Actito's formats, None for empty
    rows: pa.Table
    #: row (1-based source row), column (source column), value (as read), reason — one row per
    #: rejected source row, for the first field that failed
    rejects: pa.Table
    #: int64, the source row number of each row of ``rows`` (to map Actito's report lines back)
    source_rows: pa.Array


class RowMapper:
    """Map the chunks of one query (stateful: the 1-based number of the next source row)."""

    def __init__(self, mapping: Mapping, *, where: str = "") -> None:
        self.mapping = mapping
        self.where = where
        self._next_row = 1
        key = mapping.key_field
        #: key first: a row is explained by its key's problem before any other
        self._steps = (replace(key, required=True), *(f for f in mapping.fields if f is not key),
                       *(FieldMap(s.source, s.column, "yes_no", None) for s in mapping.subscriptions))
        self._columns = mapping.output_columns()

    def map(self, batch: pa.RecordBatch | pa.Table) -> MappedBatch:
        names = batch.schema.names
        self._check_columns(names)
        rows = batch.num_rows
        first_row = self._next_row
        self._next_row += rows

        written: dict[str, pa.Array] = {}
        texts: dict[str, pa.Array] = {}
        reason, column, value = nulls(rows), nulls(rows), nulls(rows)
        failing = False
        for step in self._steps:
            raw = decoded(batch.column(names.index(step.source)))
            if step.source not in texts:
                texts[step.source] = column_text(raw, step.source)
            out, why = checked(step.rule, raw, texts[step.source], step.max_length, step.required)
            written[step.target] = out
            if pc.any(pc.is_valid(why)).as_py():
                failing = True
                reason, new = first_reasons(reason, why, f"{step.source}: ")
                column = pc.if_else(new, step.source, column)
                value = pc.if_else(new, texts[step.source], value)

        table = pa.table([written[name] for name in self._columns], names=self._columns)
        if not failing:
            numbers = pa.array(np.arange(first_row, first_row + rows), pa.int64())
            return MappedBatch(table, REJECTS_SCHEMA.empty_table(), numbers)
        keep = pc.is_null(reason)
        kept = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        dropped = np.flatnonzero(~keep.to_numpy(zero_copy_only=False))
        dropped_rows = pa.array(dropped, pa.int64())
        rejects = pa.table([pa.array(dropped + first_row, pa.int64()), column.take(dropped_rows),
                            value.take(dropped_rows), reason.take(dropped_rows)], schema=REJECTS_SCHEMA)
        return MappedBatch(table.filter(keep), rejects, pa.array(kept + first_row, pa.int64()))

    def _check_columns(self, names: list[str]) -> None:
        needed = list(dict.fromkeys(step.source for step in self._steps))
        missing = [name for name in needed if name not in names]
        twice = [name for name in needed if names.count(name) > 1]
        if missing:
            lower = {name.lower(): name for name in names}
            near = [f"{name!r} (the query has {lower[name.lower()]!r})" for name in missing if name.lower() in lower]
            raise TransformError(
                f"the query has no column {listing(missing)} (columns: {listing(names) or 'none'})",
                where=self.where,
                hint=("names differ only by case: " + ", ".join(near) + "; quote the alias in the SQL")
                if near
                else "alias the column in the SQL, or change the activation's mapping",
            )
        if twice:
            raise TransformError(
                f"the query returns several columns named {listing(twice)}",
                where=self.where,
                hint="give each column a distinct name in the SQL",
            )


def first_reasons(reason: pa.Array, why: pa.Array, prefix: str) -> tuple[pa.Array, pa.Array]:
    """Each row keeps its first reason (fields checked in order): the reasons, and where ``why``
    gave a row its first one (to record the value that failed beside it)."""
    new = pc.and_(pc.is_null(reason), pc.is_valid(why))
    return pc.if_else(new, concat(prefix, why), reason), new


def explicit_mapping(
    key: str,
    attributes: cabc.Mapping[str, str],
    subscriptions: cabc.Mapping[str, str] = _EMPTY,
    rules: cabc.Mapping[str, FieldRule] = _NO_RULES,
) -> Mapping:
    """``attributes``: source column → attribute; ``subscriptions``: source column → subscription;
    ``rules``: attribute → rule (typically from the destination table's types; a predefined attribute
    without one gets its own rule, any other ``string``). The key attribute is required."""
    fields = tuple(FieldMap(source, target, rule_of(target, rules), required=target == key)
                   for source, target in attributes.items())
    return Mapping(key=key, fields=fields, subscriptions=subscription_maps(subscriptions))


def rule_of(target: str, rules: cabc.Mapping[str, FieldRule] = _NO_RULES) -> FieldRule:
    """The rule of a field: the one given, else a predefined attribute's own, else ``string``."""
    return rules.get(target, PREDEFINED_RULES.get(target, "string"))


def subscription_maps(subscriptions: cabc.Mapping[str, str]) -> tuple[SubscriptionMap, ...]:
    return tuple(SubscriptionMap(source, name) for source, name in subscriptions.items())


def qualifio_subscription_name(variable: str) -> str:
    """``optin_special_offers`` → ``Special offers``: ``_`` read as a space, first letter upper case
    (the rest kept as written: ``optin_SMS`` → ``SMS``), as Qualifio's page pairs them."""
    name = variable[len(QUALIFIO_OPTIN_PREFIX):].replace("_", " ").strip()
    return name[:1].upper() + name[1:]


#: what a preset makes of one column: a field, a subscription, a problem (its text), or None (unknown)
ColumnUse = FieldMap | SubscriptionMap | str | None


def sort_columns(
    columns: Sequence[str], use: Callable[[str], ColumnUse]
) -> tuple[list[FieldMap], list[SubscriptionMap], list[str], list[str]]:
    """(fields, subscriptions, unknown columns, problems): each column sorted by what ``use`` made
    of it, in column order, so a preset reports every column it cannot map at once."""
    fields: list[FieldMap] = []
    subscriptions: list[SubscriptionMap] = []
    unknown: list[str] = []
    problems: list[str] = []
    for column in columns:
        found = use(column)
        if isinstance(found, FieldMap):
            fields.append(found)
        elif isinstance(found, SubscriptionMap):
            subscriptions.append(found)
        elif isinstance(found, str):
            problems.append(found)
        else:
            unknown.append(column)
    return fields, subscriptions, unknown, problems
