"""Map warehouse rows to the columns a destination is sent. Column *names* are checked once, when the
:class:`Mapping` is built; per row, only values. A value that breaks its rule is never sent: by its
column's ``on_invalid`` policy it is dropped (the row goes on without it: one bad optional field must
not lose a person) or it rejects its whole row (the key and required attributes always do). Every
problem of a row is listed with the column, the value, the rule and what was done."""

from __future__ import annotations

import collections.abc as cabc
import re
from collections.abc import Callable, Sequence
from collections import Counter
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import MappingError, TransformError
from etl.transform.json_object import json_properties
from etl.values.rules import RULES, FieldRule, checked, column_text
from etl.values.text import concat, decoded, listing

#: the longest string value sent (Actito's limit; a field's own ``maxLength`` may be lower)
MAX_STRING = 255
#: the longest field name we send (letters, digits and _ only)
MAX_NAME = 64
#: the column that carries a subscription (its name follows)
SUBSCRIPTION_PREFIX = "subscription_"

_NAME = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_NAME}}}")
_EMPTY: cabc.Mapping[str, str] = MappingProxyType({})
_NO_RULES: cabc.Mapping[str, FieldRule] = MappingProxyType({})

REJECTS_SCHEMA = pa.schema([("row", pa.int64()), ("column", pa.string()), ("value", pa.string()),
                            ("reason", pa.string()), ("action", pa.string())])

#: what an invalid value does: reject its whole row, or drop the value and send the row without it
OnInvalid = Literal["reject_row", "drop_value"]
ON_INVALID: tuple[OnInvalid, ...] = get_args(OnInvalid)
#: the ``action`` of a reject line
ROW_REJECTED, VALUE_DROPPED = "row rejected", "value dropped"

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
#: how a mapped row names a collected value (:attr:`Mapping.collected`): never a column of the file
COLLECTED_PREFIX = "dataCollection."
#: the step reading :attr:`Mapping.send_only_if` (a space: never an attribute's name)
_GATE = " send only if"


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
    #: what an invalid value does; None: drop it, unless the field is required (then the row is rejected)
    on_invalid: OnInvalid | None = None

    @property
    def policy(self) -> OnInvalid:
        return "reject_row" if self.required else self.on_invalid or "drop_value"

    def __post_init__(self) -> None:
        problems = []
        if self.on_invalid not in (None, *ON_INVALID):
            problems.append(f"column {self.source!r}: on_invalid must be one of {', '.join(ON_INVALID)}")
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
    #: what an invalid yes/no does (None: the value is dropped, the subscription left as it is)
    on_invalid: OnInvalid | None = None

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
    #: values that say how a row was collected rather than feed an attribute (Qualifio's campaign fields
    #: of a profile: its ``target`` is the dataCollection entry): checked like fields, carried with each
    #: mapped row as ``dataCollection.<target>``, never a column of the file
    collected: tuple[FieldMap, ...] = ()
    #: dataCollection entry → the attribute whose values also say it (an interaction's ``way`` column)
    collection: tuple[tuple[str, str], ...] = ()
    #: a yes/no column: rows where it says no are left out — neither sent nor rejected, only counted
    #: (Qualifio's incomplete participations, when the activation does not push them); never sent itself
    send_only_if: str | None = None
    #: a column holding a JSON object per row (Didomi's user ``metadata``): a field reads its property
    #: ``p`` as the column ``<json_object>.p``; the properties no field reads are counted, never sent
    json_object: str | None = None
    #: columns of the query this mapping sends nowhere on purpose (metadata the table has no attribute for)
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "subscriptions", tuple(self.subscriptions))
        object.__setattr__(self, "collected", tuple(self.collected))
        object.__setattr__(self, "collection", tuple(self.collection))
        object.__setattr__(self, "ignored", tuple(self.ignored))
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

    def collection_columns(self) -> dict[str, str]:
        """dataCollection entry → the column of the mapped rows holding each row's value of it."""
        return {**dict(self.collection), **{f.target: COLLECTED_PREFIX + f.target for f in self.collected}}

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
    #: string columns named by ``output_columns()``, values in Actito's formats, None for empty (or dropped)
    rows: pa.Table
    #: :data:`REJECTS_SCHEMA`: one line per invalid value — row (1-based source row), column (source
    #: column), value (as read), reason, action (``row rejected`` or ``value dropped``)
    rejects: pa.Table
    #: int64, the source row number of each row of ``rows`` (to map Actito's report lines back)
    source_rows: pa.Array
    #: rows left out by :attr:`Mapping.send_only_if` (not in ``rows``, nor in ``rejects``)
    left_out: int = 0
    #: properties of :attr:`Mapping.json_object` no field reads → rows holding each (not sent)
    unread: Counter[str] = field(default_factory=Counter)


class RowMapper:
    """Map the chunks of one query (stateful: the 1-based number of the next source row)."""

    def __init__(self, mapping: Mapping, *, where: str = "") -> None:
        self.mapping = mapping
        self.where = where
        self._next_row = 1
        key = mapping.key_field
        #: key first: a row's problems are listed with its key's first
        self._steps = (replace(key, required=True), *(f for f in mapping.fields if f is not key),
                       *(FieldMap(s.source, s.column, "yes_no", None, on_invalid=s.on_invalid)
                         for s in mapping.subscriptions),
                       *(replace(f, target=COLLECTED_PREFIX + f.target) for f in mapping.collected),
                       # unreadable, it cannot say whether to send the row: the row is rejected
                       *([FieldMap(mapping.send_only_if, _GATE, "boolean", None, on_invalid="reject_row")]
                         if mapping.send_only_if else []))
        self._columns = mapping.output_columns() + [COLLECTED_PREFIX + f.target for f in mapping.collected]

    def map(self, batch: pa.RecordBatch | pa.Table) -> MappedBatch:
        rows = batch.num_rows
        problems = Problems(rows)
        unread: Counter[str] = Counter()
        if self.mapping.json_object and self.mapping.json_object in batch.schema.names:
            batch, unread = self._with_properties(batch, self.mapping.json_object, problems)
        names = batch.schema.names
        self._check_columns(names)
        first_row = self._next_row
        self._next_row += rows

        written: dict[str, pa.Array] = {}
        texts: dict[str, pa.Array] = {}
        for step in self._steps:
            raw = decoded(batch.column(names.index(step.source)))
            if step.source not in texts:
                texts[step.source] = column_text(raw, step.source)
            out, why = checked(step.rule, raw, texts[step.source], step.max_length, step.required)
            written[step.target] = out  # None where invalid: a dropped value is sent empty
            problems.add(step.source, texts[step.source], why, step.policy)

        table = pa.table([written[name] for name in self._columns], names=self._columns)
        left_out = (pc.fill_null(pc.equal(written[_GATE], "FALSE"), False).to_numpy(zero_copy_only=False)
                    if _GATE in written else np.zeros(rows, bool))
        keep = ~problems.rejected & ~left_out
        numbers = np.arange(first_row, first_row + rows)
        rejects = problems.table(numbers)
        if left_out.any():  # a row not meant to be sent has no problem to report
            rejects = rejects.filter(pc.invert(pc.is_in(rejects.column("row"), pa.array(numbers[left_out]))))
        return MappedBatch(table.filter(pa.array(keep)) if not keep.all() else table,
                           rejects, pa.array(numbers[keep], pa.int64()), int(left_out.sum()), unread)

    def _with_properties(
        self, batch: pa.RecordBatch | pa.Table, column: str, problems: Problems
    ) -> tuple[pa.Table, Counter[str]]:
        """``batch`` with a column per property the steps read; a value that is no JSON object drops them all."""
        prefix = column + "."
        read = [step.source[len(prefix):] for step in self._steps if step.source.startswith(prefix)]
        values = decoded(batch.column(batch.schema.names.index(column)))
        properties, unread, why = json_properties(values, column, read)
        problems.add(column, column_text(values, column), why, "drop_value")
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        for name, array in properties.items():
            table = table.append_column(name, array)
        return table, unread

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


class Problems:
    """Every invalid value of one chunk, each with what its column's policy made of it; which rows are rejected."""

    def __init__(self, rows: int) -> None:
        self.rejected = np.zeros(rows, bool)
        self._lines: list[tuple[np.ndarray, str, pa.Array, pa.Array]] = []

    def add(self, column: str, values: pa.Array, why: pa.Array, policy: OnInvalid) -> np.ndarray:
        """``why``: a reason or None per row; returns the positions that had one."""
        at = np.flatnonzero(pc.fill_null(pc.is_valid(why), False).to_numpy(zero_copy_only=False))
        if len(at):
            taken = pa.array(at, pa.int64())
            self._lines.append((at, column, pc.cast(values.take(taken), pa.string()),
                                concat(f"{column}: ", why.take(taken))))
            if policy == "reject_row":
                self.rejected[at] = True
        return at

    def table(self, numbers: np.ndarray) -> pa.Table:
        """:data:`REJECTS_SCHEMA`, by row then in the order the problems were found; ``numbers``: each
        position's source row number."""
        if not self._lines:
            return REJECTS_SCHEMA.empty_table()
        at = np.concatenate([line[0] for line in self._lines])
        order = pa.array(np.argsort(at, kind="stable"), pa.int64())
        columns = pa.array(np.concatenate([np.full(len(line[0]), line[1], object) for line in self._lines]),
                           pa.string())
        actions = np.where(self.rejected[at], ROW_REJECTED, VALUE_DROPPED).astype(object)
        table = pa.table([pa.array(numbers[at], pa.int64()), columns,
                          pa.concat_arrays([line[2] for line in self._lines]),
                          pa.concat_arrays([line[3] for line in self._lines]), pa.array(actions, pa.string())],
                         schema=REJECTS_SCHEMA)
        return table.take(order)


def rows_rejected_later(rejects: pa.Table, rows: np.ndarray) -> pa.Table:
    """Reject lines with ``rows`` (source row numbers) marked ``row rejected``: a later check rejected
    rows whose earlier problems only dropped a value."""
    if not len(rows) or not rejects.num_rows:
        return rejects
    later = pc.is_in(rejects.column("row"), value_set=pa.array(rows, pa.int64()))
    action = pc.if_else(later, ROW_REJECTED, rejects.column("action"))
    return rejects.set_column(rejects.schema.get_field_index("action"), "action", action)


def reject_counts(rejects: pa.Table) -> tuple[int, int]:
    """(rows rejected, values dropped) of reject lines; a line without ``action`` rejects its row."""
    if "action" not in rejects.column_names:
        return len(pc.unique(rejects.column("row"))) if rejects.num_rows else 0, 0
    dropped = pc.equal(rejects.column("action"), VALUE_DROPPED)
    count = int(pc.sum(dropped).as_py() or 0)
    rejected_rows = rejects.column("row").filter(pc.invert(dropped))
    return len(pc.unique(rejected_rows)), count


def with_policy(mapping: Mapping, policies: cabc.Mapping[str, OnInvalid], default: OnInvalid) -> Mapping:
    """``mapping`` with each column's ``on_invalid``: ``policies`` names a column of the query or the
    attribute / subscription it feeds; the others get ``default`` (required fields keep rejecting)."""
    names = {f.source for f in mapping.fields} | {f.target for f in mapping.fields}
    names |= {s.source for s in mapping.subscriptions} | {s.subscription for s in mapping.subscriptions}
    problems = [f"on_invalid.{name}: no column of the query nor attribute is named {name!r} "
                f"(mapped: {listing(sorted({f.source for f in mapping.fields}))})"
                for name in policies if name not in names]
    for field in mapping.fields:
        chosen = policies.get(field.source, policies.get(field.target))
        if (field.required or field.target == mapping.key) and chosen == "drop_value":
            problems.append(f"on_invalid.{field.source if field.source in policies else field.target}: "
                            "the key or a required attribute cannot be dropped: an invalid one rejects its row")
    if problems:
        raise MappingError(problems, hint='on_invalid takes "reject_row" or "drop_value" per mapped column')
    fields = tuple(field if field.required or field.target == mapping.key else
                   replace(field, on_invalid=policies.get(field.source, policies.get(field.target, default)))
                   for field in mapping.fields)
    subscriptions = tuple(replace(s, on_invalid=policies.get(s.source, policies.get(s.subscription, default)))
                          for s in mapping.subscriptions)
    return replace(mapping, fields=fields, subscriptions=subscriptions)


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
