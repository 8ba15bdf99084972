"""Map warehouse rows to the columns of an Actito import file, every value in Actito's own format.

A :class:`Mapping` says what one activation sends: the key attribute, the attribute columns
(:class:`FieldMap`: source column, Actito attribute, format rule) and the subscription columns
(:class:`SubscriptionMap`). A :class:`RowMapper` applies it to the streamed chunks of the query.
A value that breaks its rule rejects its whole row, with a reason naming the source column, the
value and the rule, so nothing broken is ever sent: Actito would refuse the line anyway, later,
with a line number of an uploaded file instead of a warehouse row (docs/actito-wire.md, "File
rules the import applies").

Everything that depends on the column *names* is checked once, when the mapping is built
(:class:`MappingError`, every problem listed at once); per row only values are checked. On the
hot path each rule is a handful of whole-column ``pyarrow.compute`` passes; the Python loops run
over fields, never over rows. The wording of a reject (which check failed first) is computed only
for the rows that fail, which are few.

Rules (what is accepted → what is written; ``None`` is an empty cell)

``string``
    Any column, as text; trimmed (Unicode white space); empty → ``None``. More than
    ``max_length`` characters (default 255, Actito's string limit; the pre-flight tightens it to
    the attribute's own ``maxLength``) → rejected, "longer than 64 characters". Values are never
    truncated: a cut name or address is wrong data that looks right.
``email``
    ``etl.transform``'s rules, reused as they are: normalised (trim, ``mailto:``, lower case),
    then Actito's acceptance rules for ``emailAddress`` (reason from ``EMAIL_REASONS``).
``date`` → ``yyyy-MM-dd``
    Date columns; timestamp columns (their date, in the column's own time zone); strings
    ``yyyy-MM-dd`` optionally followed by a time (``T`` or space, ``HH:mm[:ss[.fff]]``, no zone),
    whose date is taken once the time too is valid. Impossible calendar dates (``1990-02-31``,
    ``1900-02-29``) are rejected.
    Decision: ``dd/MM/yyyy`` is **rejected**, not read. ``03/04/1990`` is the 3rd of April in
    Belgium and the 4th of March in the United States; a birth date silently wrong is worse than
    a rejected row whose reason says what to fix (format it in the SQL: ``to_char``/``strftime``).
``datetime`` → ``yyyy-MM-dd HH:mm:ss``
    Timestamp columns (wall-clock time in the column's time zone; fractions of a second dropped,
    rounding down); date columns and date-only strings (at ``00:00:00``); strings
    ``yyyy-MM-dd[T| ]HH:mm[:ss[.fff]]``. A string with a zone (``Z``, ``+02:00``) is rejected:
    which zone Actito reads the value in is not documented, so converting it is left to the SQL
    (``AT TIME ZONE``), where it is visible.
``sex`` → ``M`` / ``F``
    ``m``/``f`` in any case and with spaces around. Decision: nothing else (``male``, ``femme``,
    ``H``, ``X``) — Qualifio's integration passes only ``M`` and ``F``, and translating words of
    several languages would guess (``H`` is *homme* in French, *Herr* in German).
``phone`` → ``+`` and 8 to 15 digits
    Spaces (any Unicode space), dots, dashes and parentheses are removed; a ``(0)`` trunk prefix
    written after the country code (``+32 (0)470 ...``) is dropped, as its notation means. A
    number without ``+`` is rejected (including ``0032...``): we cannot guess the country. The
    country code cannot start with 0 (E.164).
``country`` → ISO 3166-1 alpha-2, upper case
    Validated against the 249 assigned codes (``etl/values/data/iso3166.txt``). ``UK`` and ``EL`` are
    rejected with a pointer to ``GB`` and ``GR``. Qualifio's table says "ISO 3166-2" for
    ``addressCountry``, but Actito's file format says ISO 3166-1 alpha-2 (``BE``), which is what
    the attribute stores; subdivision codes (``BE-BRU``) are rejected.
``language`` → ISO 639-1, upper case (``FR``)
    Validated against the 183 codes (``etl/values/data/iso639-1.txt``). A language tag (``fr-BE``,
    ``fr_BE``, ``en-GB``) gives its primary subtag, which is by definition its ISO 639-1 code.
``integer``
    Integer columns; whole floats (``42.0``); decimals and strings of digits with an optional
    sign and an optional all-zero fraction (``"042"``, ``"+7"``, ``"12.00"``). Written without
    sign ``+`` or leading zeros. Outside the signed 64-bit range → rejected.
``decimal``
    Numbers and strings ``[+-]digits[.digits][e[+-]exp]``; written with a decimal point ``.``
    and never an exponent (pyarrow writes ``1e+10`` for a float; Actito wants plain digits); an
    exponent beyond ±99 is "out of range". A decimal comma (``12,5``) is rejected: ``1,250`` may
    be one thousand two hundred and fifty or one and a quarter.
``boolean`` → ``TRUE`` / ``FALSE`` and ``yes_no`` → ``Y`` / ``N``
    Boolean columns; and, in any case, ``true/false``, ``1/0``, ``yes/no``, ``y/n``. Null or
    empty → ``None``: for a subscription an empty cell means "no change", never "unsubscribe".

A field with ``required=True`` — always the key — rejects a row where it is empty ("missing").

Names (checked when the mapping is built): an attribute name is 1 to 64 characters from
``A-Z a-z 0-9 _``, attributes and subscriptions are unique, the key is one of the attributes.
A subscription travels as a column ``subscription_<name>`` of ``Y``/``N`` mapped to the
subscription in the definition (docs/actito-wire.md).

Presets (:func:`qualifio_mapping`, :func:`didomi_mapping`, :func:`qualifio_interaction_mapping`)
map only the columns present, and a column they do not know is an error listing every such
column, never silently dropped: a column in the SELECT is data someone expects in Actito.
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import importlib.resources
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import TransformError
from etl.transform import NOT_UTF8, email_rejection_reasons, normalise_emails

FieldRule = Literal[
    "string", "email", "date", "datetime", "sex", "phone", "country", "language", "integer", "decimal", "boolean",
    "yes_no",
]
#: every rule, in the order of :data:`FieldRule`
RULES: tuple[FieldRule, ...] = get_args(FieldRule)

#: Actito's limit for a string value (a custom attribute's own ``maxLength`` may be lower)
MAX_STRING = 255
#: the longest attribute name we send (letters, digits and _ only)
MAX_NAME = 64
#: the column of the import file that carries a subscription (its name follows)
SUBSCRIPTION_PREFIX = "subscription_"

_NAME = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_NAME}}}")
_EMPTY: cabc.Mapping[str, str] = MappingProxyType({})
_NO_RULES: cabc.Mapping[str, FieldRule] = MappingProxyType({})

REJECTS_SCHEMA = pa.schema(
    [("row", pa.int64()), ("column", pa.string()), ("value", pa.string()), ("reason", pa.string())]
)


class MappingError(TransformError):
    """The columns cannot be mapped as asked. Raised when the mapping is built, before any row is
    read, with every problem found (not just the first), so one fix-and-retry cycle is enough."""

    def __init__(self, problems: Sequence[str], *, where: str = "", hint: str = "") -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            what = self.problems[0]
        else:
            listing = "\n".join(f"  - {problem}" for problem in self.problems)
            what = f"{len(self.problems)} problems in the mapping:\n{listing}"
        super().__init__(what, where=where, hint=hint)


# --------------------------------------------------------------------------- what one activation sends


@dataclass(frozen=True)
class FieldMap:
    """One source column → one Actito attribute, through one format rule."""

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
    """What one activation sends: the key attribute, attribute columns and subscription columns.

    Validated on construction (also by ``dataclasses.replace``), so a mapping that exists can be
    written: names Actito accepts, nothing mapped twice, the key among the attributes.
    """

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
    problems: list[str] = []
    targets: dict[str, list[str]] = {}
    for field in mapping.fields:
        targets.setdefault(field.target, []).append(field.source)
        if not _NAME.fullmatch(field.target):
            problems.append(
                f"column {field.source!r} → attribute {field.target!r}: an attribute name is 1 to {MAX_NAME} "
                "characters, only letters A-Z a-z, digits and _"
            )
    for target, sources in targets.items():
        if len(sources) > 1:
            problems.append(f"attribute {target!r} is fed by several columns: {_listing(sources)}")
    names: dict[str, list[str]] = {}
    for subscription in mapping.subscriptions:
        names.setdefault(subscription.subscription, []).append(subscription.source)
        name = subscription.subscription
        if not name or name != name.strip() or any(ord(c) < 32 for c in name):
            problems.append(
                f"column {subscription.source!r} → subscription {name!r}: a subscription name is not empty "
                "and has no spaces around it nor control characters"
            )
        if subscription.column in targets:
            problems.append(f"subscription {name!r}: its file column {subscription.column!r} is also an attribute")
    for name, sources in names.items():
        if len(sources) > 1:
            problems.append(f"subscription {name!r} is fed by several columns: {_listing(sources)}")
    if not mapping.key:
        problems.append("no key attribute: an import matches rows on one")
    elif mapping.key not in targets:
        problems.append(
            f"the key {mapping.key!r} is not among the mapped attributes ({_listing(list(targets)) or 'none'}): "
            f"a column must feed it"
        )
    return problems


@dataclass(frozen=True)
class MappedBatch:
    """One chunk, mapped."""

    #: string columns named by ``output_columns()``, values in Actito's formats, None for empty
    rows: pa.Table
    #: row (1-based source row), column (source column), value (as read), reason — one row per
    #: rejected source row, for the first field that failed
    rejects: pa.Table
    #: int64, the source row number of each row of ``rows`` (to map Actito's report lines back)
    source_rows: pa.Array


# --------------------------------------------------------------------------- reference lists


def _read_codes(name: str) -> pa.Array:
    text = importlib.resources.files("etl.values").joinpath("data", name).read_text(encoding="utf-8")
    codes = {line.split("\t")[0].strip().upper() for line in text.splitlines() if not line.startswith("#")}
    return pa.array(sorted(code for code in codes if code), pa.string())


@functools.cache
def country_codes() -> pa.Array:
    """ISO 3166-1 alpha-2 codes, upper case (read once from etl/values/data/iso3166.txt)."""
    return _read_codes("iso3166.txt")


@functools.cache
def language_codes() -> pa.Array:
    """ISO 639-1 codes, upper case (read once from etl/values/data/iso639-1.txt)."""
    return _read_codes("iso639-1.txt")


# --------------------------------------------------------------------------- vectorised helpers

_STRING = pa.string()


def _nulls(length: int) -> pa.Array:
    return pa.nulls(length, _STRING)


def _concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def _quote(values: pa.Array) -> pa.Array:
    """``'value'`` for a reason, cut to 40 characters: the reject file has the whole value."""
    long = pc.fill_null(pc.greater(pc.utf8_length(values), 40), False)
    short = pc.if_else(long, _concat(pc.utf8_slice_codeunits(values, 0, 39), "…"), values)
    return _concat("'", pc.fill_null(short, ""), "'")


def _trimmed(text: pa.Array) -> pa.Array:
    """Trimmed text, empty → null: the common first step of the text rules."""
    trimmed = pc.utf8_trim_whitespace(text)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, _STRING), trimmed)


def _explain(bad: pa.Array, build: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Per row: None where ``bad`` is false, else why. ``build`` gets the mask and returns the
    reasons of the bad rows only, so the wording is computed for the few rows that need it."""
    bad = pc.fill_null(bad, False)
    reasons = _nulls(len(bad))
    if not pc.any(bad).as_py():
        return reasons
    return pc.replace_with_mask(reasons, bad, build(bad))


def _first(checks: list[tuple[pa.Array, pa.Array | str]], otherwise: pa.Array | str) -> pa.Array:
    """Per row, the reason of the first check that holds (the most basic failure first)."""
    conditions = pc.make_struct(
        *[pc.fill_null(condition, False) for condition, _ in checks], field_names=[str(i) for i in range(len(checks))]
    )
    return pc.case_when(conditions, *[_as_arg(reason) for _, reason in checks], _as_arg(otherwise))


def _as_arg(value: pa.Array | str) -> pa.Array | pa.Scalar:
    return pa.scalar(value, _STRING) if isinstance(value, str) else value


def _decoded(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        return _decoded(values.dictionary_decode())
    return values


def _text(values: pa.Array, column: str) -> pa.Array:
    """Any column as strings (None stays None): what the text rules read and what a reject shows."""
    kind = values.type
    if pa.types.is_string(kind):
        return values
    if pa.types.is_null(kind):
        return _nulls(len(values))
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        try:
            return pc.cast(values, _STRING)
        except pa.ArrowInvalid:  # not UTF-8 (rare): decode what can be, so the value shows in the rejects
            return pa.array(
                [None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()], _STRING
            )
    try:
        return pc.cast(values, _STRING)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TransformError(
            f"column {column!r} has type {kind}, which cannot be read as text",
            hint="cast or flatten it in the SQL",
        ) from exc


# --------------------------------------------------------------------------- the rules
# Each rule: (raw column, the same as text) -> (written value or None, why not or None).
# The written value of a row that has a reason is never sent (the row is rejected).

RuleFunction = Callable[[pa.Array, pa.Array], tuple[pa.Array, pa.Array]]


def _string_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Trim and empty → None; the length check is common to every rule (see :func:`apply_rule`)."""
    return _trimmed(text), _nulls(len(text))


def _email_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``etl.transform``'s normalisation and reasons; "missing" is left to the required check."""
    emails = normalise_emails(text)
    emails = pc.if_else(pc.equal(emails, ""), pa.scalar(None, _STRING), emails)
    reasons = email_rejection_reasons(emails)
    bad = pc.and_(pc.is_valid(emails), pc.is_valid(reasons))
    return emails, _explain(
        bad,
        lambda m: _concat(_quote(pc.filter(text, m)), " is not an accepted e-mail address: ", pc.filter(reasons, m)),
    )


_DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}$"
_DATETIME_SHAPE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
#: a date, optionally with a time of day (checked here: its date alone must not hide a broken time)
_DATE_TEXT = (
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[ T](?P<hm>(?:[01]\d|2[0-3]):[0-5]\d)(?::(?P<s>[0-5]\d)(?:\.\d+)?)?)?$"
)


_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _real_calendar(candidates: pa.Array, shape: str) -> pa.Array:
    """True where the text has the shape (``yyyy-MM-dd`` with or without `` HH:mm:ss``) and names a
    day that exists (``1990-02-31`` and ``1900-02-29`` do not) at a valid time of day.

    Arrow's own string → timestamp cast is strict about calendars and fast, so it is tried first;
    only when it refuses some value does arithmetic on the digits' fixed positions (numpy) find
    which. (``strptime`` is no help: it rolls 1990-02-31 over to 1990-03-03.)
    """
    shaped = pc.fill_null(pc.match_substring_regex(candidates, shape), False)
    if not pc.any(shaped).as_py():
        return shaped
    safe = pc.if_else(shaped, candidates, "2000-01-01 00:00:00" if shape == _DATETIME_SHAPE else "2000-01-01")
    try:  # Arrow's own parser is strict about calendars: when it reads every value, all are real
        pc.cast(safe, pa.timestamp("s"))
        return shaped
    except pa.ArrowInvalid:
        pass  # at least one is not: find which

    def number(start: int, stop: int) -> np.ndarray:
        digits = pc.utf8_slice_codeunits(safe, start, stop)
        return np.asarray(pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    days = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    ok = month_ok & (day >= 1) & (day <= days)
    if shape == _DATETIME_SHAPE:
        ok &= (number(11, 13) <= 23) & (number(14, 16) <= 59) & (number(17, 19) <= 59)
    return pc.and_(shaped, pa.array(ok))


#: the seconds since 1970 of 0001-01-01 00:00:00 and 9999-12-31 23:59:59: four-digit years only
_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799


def _date_candidates(raw: pa.Array, text: pa.Array, with_time: bool) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(value present, canonical text, text is a real date or date-time) for the date rules.

    Typed columns are written by casts (several times faster than ``strftime``) and can only
    fail by a year outside 0001–9999. Strings already in the canonical shape — what most
    warehouses return — are taken as they are; only the others are taken apart by the regex.
    """
    kind = raw.type
    width = 19 if with_time else 10
    if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        if pa.types.is_date(kind):
            seconds = pc.cast(pc.cast(raw, pa.date32()), pa.timestamp("s"))
        else:
            local = pc.local_timestamp(raw) if kind.tz else raw  # the wall-clock time of the column's zone
            seconds = pc.cast(pc.floor_temporal(local, unit="second"), pa.timestamp("s"))
        count = pc.cast(seconds, pa.int64())
        inside = pc.and_(pc.greater_equal(count, _FIRST_SECOND), pc.less_equal(count, _LAST_SECOND))
        safe = pc.if_else(inside, seconds, pa.scalar(0, pa.timestamp("s")))
        written = pc.utf8_slice_codeunits(pc.cast(safe, _STRING), 0, width)
        return pc.is_valid(raw), written, pc.fill_null(inside, False)
    trimmed = _trimmed(text)
    shape = _DATETIME_SHAPE if with_time else _DATE_SHAPE
    canonical = pc.fill_null(pc.match_substring_regex(trimmed, shape), False)
    other = pc.and_(pc.is_valid(trimmed), pc.invert(canonical))
    candidates = trimmed
    if pc.any(other).as_py():
        candidates = pc.replace_with_mask(trimmed, other, _canonical_dates(pc.filter(trimmed, other), with_time))
    return pc.is_valid(trimmed), candidates, _real_calendar(candidates, shape)


def _canonical_dates(values: pa.Array, with_time: bool) -> pa.Array:
    """``yyyy-MM-dd[T| ]HH:mm[:ss[.fff]]`` → ``yyyy-MM-dd`` or ``yyyy-MM-dd HH:mm:ss`` (None if not that)."""
    parts = pc.extract_regex(values, _DATE_TEXT)
    day = pc.struct_field(parts, "date")
    if not with_time:
        return day
    hm, seconds = pc.struct_field(parts, "hm"), pc.struct_field(parts, "s")
    time = _concat(
        pc.if_else(pc.equal(hm, ""), "00:00", hm), ":", pc.if_else(pc.equal(seconds, ""), "00", seconds)
    )
    return _concat(day, " ", time)


def _date_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    present, candidates, ok = _date_candidates(raw, text, with_time=False)
    bad = pc.and_(present, pc.invert(ok))
    return candidates, _explain(bad, lambda m: _concat(_quote(pc.filter(text, m)), " is not a date (yyyy-MM-dd)"))


def _datetime_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    present, candidates, ok = _date_candidates(raw, text, with_time=True)
    bad = pc.and_(present, pc.invert(ok))
    return candidates, _explain(
        bad, lambda m: _concat(_quote(pc.filter(text, m)), " is not a date-time (yyyy-MM-dd HH:mm:ss)")
    )


_SEXES = pa.array(["M", "F"], _STRING)


def _sex_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    value = pc.utf8_upper(_trimmed(text))
    bad = pc.and_(pc.is_valid(value), pc.invert(pc.is_in(value, value_set=_SEXES)))
    return value, _explain(bad, lambda m: _concat(_quote(pc.filter(text, m)), " is not a sex (M or F)"))


_PHONE_SEPARATORS = r"[\s\p{Z}.()\-]"
_PHONE = r"^\+[1-9][0-9]{7,14}$"


def _phone_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    trimmed = _trimmed(text)
    compact = pc.replace_substring_regex(pc.replace_substring(trimmed, "(0)", ""), _PHONE_SEPARATORS, "")
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(pc.match_substring_regex(compact, _PHONE)))

    def why(mask: pa.Array) -> pa.Array:
        shown, number = _quote(pc.filter(text, mask)), pc.filter(compact, mask)
        digits = pc.subtract(pc.utf8_length(number), 1)
        return _first(
            [
                (
                    pc.match_substring_regex(number, r"[^0-9+]"),
                    _concat(shown, " has characters other than digits, spaces, dots, dashes and parentheses"),
                ),
                (
                    pc.invert(pc.starts_with(number, "+")),
                    _concat(shown, " has no international prefix (+ and country code): the country cannot be guessed"),
                ),
                (pc.match_substring(pc.utf8_slice_codeunits(number, 1), "+"), _concat(shown, " has a + inside")),
                (
                    pc.or_(pc.less(digits, 8), pc.greater(digits, 15)),
                    _concat(shown, " has ", pc.cast(digits, _STRING), " digits after the + (8 to 15 expected)"),
                ),
                (pc.starts_with(number, "+0"), _concat(shown, " has a country code that starts with 0")),
            ],
            _concat(shown, " is not an international phone number (+ and 8 to 15 digits)"),
        )

    return compact, _explain(bad, why)


def _country_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    value = pc.utf8_upper(_trimmed(text))
    bad = pc.and_(pc.is_valid(value), pc.invert(pc.is_in(value, value_set=country_codes())))

    def why(mask: pa.Array) -> pa.Array:
        shown, code = _quote(pc.filter(text, mask)), pc.filter(value, mask)
        generic = _concat(shown, " is not an ISO 3166-1 alpha-2 country code (e.g. BE)")
        return _first(
            [
                (pc.equal(code, "UK"), _concat(generic, ": the United Kingdom is GB")),
                (pc.equal(code, "EL"), _concat(generic, ": Greece is GR")),
            ],
            generic,
        )

    return value, _explain(bad, why)


_LANGUAGE_TAG = r"^(?P<language>[A-Za-z]{2})(?:[-_][A-Za-z0-9]{1,8})*$"


def _language_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    trimmed = _trimmed(text)
    value = pc.utf8_upper(pc.struct_field(pc.extract_regex(trimmed, _LANGUAGE_TAG), "language"))
    known = pc.fill_null(pc.is_in(value, value_set=language_codes()), False)
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(known))
    return value, _explain(
        bad, lambda m: _concat(_quote(pc.filter(text, m)), " is not an ISO 639-1 language code (e.g. FR)")
    )


_INT64_MAX = str(np.iinfo(np.int64).max)
_INTEGER_TEXT = r"^(?P<sign>[+-]?)0*(?P<digits>[0-9]+?)(?:\.0*)?$"


def _integer_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    kind = raw.type
    if pa.types.is_signed_integer(kind):
        return pc.cast(raw, _STRING), _nulls(len(raw))
    if pa.types.is_floating(kind):
        return _integer_from_float(raw, text)
    trimmed = _trimmed(text)
    parts = pc.extract_regex(trimmed, _INTEGER_TEXT)
    sign, digits = pc.struct_field(parts, "sign"), pc.struct_field(parts, "digits")
    negative = pc.and_(pc.equal(sign, "-"), pc.not_equal(digits, "0"))
    limit = pc.if_else(negative, "9223372036854775808", _INT64_MAX)
    length = pc.utf8_length(digits)
    too_large = pc.or_(
        pc.greater(length, len(_INT64_MAX)),
        pc.and_(pc.equal(length, len(_INT64_MAX)), pc.greater(digits, limit)),
    )
    value = pc.if_else(negative, _concat("-", digits), digits)
    bad_shape = pc.and_(pc.is_valid(trimmed), pc.is_null(parts))
    bad = pc.or_(bad_shape, pc.fill_null(too_large, False))

    def why(mask: pa.Array) -> pa.Array:
        shown = _quote(pc.filter(text, mask))
        return pc.if_else(
            pc.filter(bad_shape, mask),
            _concat(shown, " is not an integer"),
            _concat(shown, " is out of range (64-bit integer)"),
        )

    return value, _explain(bad, why)


def _integer_from_float(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    values = pc.cast(raw, pa.float64())
    finite = pc.is_finite(values)
    whole = pc.and_(finite, pc.equal(values, pc.floor(values)))
    inside = pc.and_(pc.greater_equal(values, -(2.0**63)), pc.less(values, 2.0**63))
    ok = pc.fill_null(pc.and_(whole, inside), True)
    value = pc.cast(pc.cast(pc.if_else(ok, values, 0.0), pa.int64()), _STRING)

    def why(mask: pa.Array) -> pa.Array:
        shown = _quote(pc.filter(text, mask))
        return _first(
            [
                (pc.invert(pc.filter(finite, mask)), _concat(shown, " is not a number")),
                (pc.invert(pc.filter(whole, mask)), _concat(shown, " is not a whole number")),
            ],
            _concat(shown, " is out of range (64-bit integer)"),
        )

    return pc.if_else(pc.is_valid(values), value, pa.scalar(None, _STRING)), _explain(pc.invert(ok), why)


_DECIMAL_TEXT = r"^(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?:[eE](?P<exp>[+-]?[0-9]+))?$"
#: an exponent of more digits than this is refused before it is expanded into as many zeros
_EXPONENT_DIGITS = 2


def _decimal_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Plain decimal text: pyarrow writes floats from 1e10 up with an exponent, so an exponent is
    accepted from any source and expanded (vectorised, see :func:`_expand_exponent`)."""
    if pa.types.is_integer(raw.type):
        return pc.cast(raw, _STRING), _nulls(len(raw))
    trimmed = _trimmed(text)
    parts = pc.extract_regex(trimmed, _DECIMAL_TEXT)
    sign, whole = pc.struct_field(parts, "sign"), pc.struct_field(parts, "int")
    fraction, exponent = pc.struct_field(parts, "frac"), pc.struct_field(parts, "exp")
    shaped = pc.fill_null(pc.greater(pc.utf8_length(_concat(whole, fraction)), 0), False)
    has_exponent = pc.fill_null(pc.not_equal(exponent, ""), False)
    exponent_digits = pc.utf8_length(pc.utf8_ltrim(exponent, "+-0"))
    huge = pc.and_(has_exponent, pc.fill_null(pc.greater(exponent_digits, _EXPONENT_DIGITS), False))
    ok = pc.and_(shaped, pc.invert(huge))
    expand = pc.and_(ok, has_exponent)
    if pc.any(expand).as_py():
        whole, fraction = _expand_exponent(whole, fraction, exponent, expand)
    whole = pc.replace_substring_regex(whole, "^0+", "")
    whole = pc.if_else(pc.equal(whole, ""), "0", whole)
    digits = pc.if_else(pc.equal(fraction, ""), whole, _concat(whole, ".", fraction))
    zero = pc.invert(pc.match_substring_regex(digits, "[1-9]"))
    value = pc.if_else(pc.and_(pc.equal(sign, "-"), pc.invert(zero)), _concat("-", digits), digits)
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(ok))

    def why(mask: pa.Array) -> pa.Array:
        shown = _quote(pc.filter(text, mask))
        return _first(
            [
                (
                    pc.match_substring_regex(pc.filter(trimmed, mask), r"^[+-]?[0-9]*,[0-9]+$"),
                    _concat(shown, " is not a decimal number: the decimal separator is '.'"),
                ),
                (pc.filter(huge, mask), _concat(shown, " is out of range")),
            ],
            _concat(shown, " is not a decimal number (digits with an optional '.')"),
        )

    return value, _explain(bad, why)


def _expand_exponent(
    whole: pa.Array, fraction: pa.Array, exponent: pa.Array, where: pa.Array
) -> tuple[pa.Array, pa.Array]:
    """Move the decimal point of ``whole.fraction`` by ``exponent`` places (where ``where``).

    Vectorised by point position: rows whose point lands at the same place are cut by the same
    slice, so the passes are one per distinct position (a few), never one per row.
    """
    digits = _concat(whole, fraction)
    count = pc.utf8_length(digits)
    moves = pc.cast(pc.utf8_ltrim(pc.if_else(where, exponent, "0"), "+"), pa.int64())
    point = pc.add(pc.utf8_length(whole), moves)  # digits before the point once it has moved
    left = pc.less_equal(point, 0)
    right = pc.greater_equal(point, count)
    zeros_left = pc.binary_repeat("0", pc.max_element_wise(pc.negate(point), 0))
    zeros_right = pc.binary_repeat("0", pc.max_element_wise(pc.subtract(point, count), 0))
    new_whole = pc.if_else(left, "", pc.if_else(right, _concat(digits, zeros_right), pa.scalar(None, _STRING)))
    new_fraction = pc.if_else(left, _concat(zeros_left, digits), pc.if_else(right, "", pa.scalar(None, _STRING)))
    inside = pc.fill_null(pc.and_(pc.invert(left), pc.invert(right)), False)
    for position in pc.unique(pc.filter(point, pc.and_(inside, where))).to_pylist():
        at = pc.and_(pc.and_(inside, where), pc.equal(point, position))
        new_whole = pc.if_else(at, pc.utf8_slice_codeunits(digits, 0, position), new_whole)
        new_fraction = pc.if_else(at, pc.utf8_slice_codeunits(digits, position), new_fraction)
    return pc.if_else(where, new_whole, whole), pc.if_else(where, new_fraction, fraction)


_TRUE_WORDS = pa.array(["true", "1", "yes", "y"], _STRING)
_FALSE_WORDS = pa.array(["false", "0", "no", "n"], _STRING)


def _truth(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(True/False/None per row, value present, why not) for the boolean and yes_no rules."""
    if pa.types.is_boolean(raw.type):
        return raw, pc.is_valid(raw), _nulls(len(raw))
    words = pc.utf8_lower(_trimmed(text))
    truth = pc.if_else(
        pc.is_in(words, value_set=_TRUE_WORDS),
        True,
        pc.if_else(pc.is_in(words, value_set=_FALSE_WORDS), False, pa.scalar(None, pa.bool_())),
    )
    bad = pc.and_(pc.is_valid(words), pc.is_null(truth))
    return truth, pc.is_valid(words), _explain(
        bad, lambda m: _concat(_quote(pc.filter(text, m)), " is not yes or no (true/false, 1/0, yes/no, y/n)")
    )


def _boolean_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    truth, _, reasons = _truth(raw, text)
    return pc.if_else(truth, "TRUE", "FALSE"), reasons


def _yes_no_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    truth, _, reasons = _truth(raw, text)
    return pc.if_else(truth, "Y", "N"), reasons


RULE_FUNCTIONS: dict[FieldRule, RuleFunction] = {
    "string": _string_rule,
    "email": _email_rule,
    "date": _date_rule,
    "datetime": _datetime_rule,
    "sex": _sex_rule,
    "phone": _phone_rule,
    "country": _country_rule,
    "language": _language_rule,
    "integer": _integer_rule,
    "decimal": _decimal_rule,
    "boolean": _boolean_rule,
    "yes_no": _yes_no_rule,
}


def apply_rule(
    rule: FieldRule, values: pa.Array, *, max_length: int | None = None, required: bool = False, column: str = ""
) -> tuple[pa.Array, pa.Array]:
    """(written value or None, why not or None) for each value: one field's whole check."""
    raw = _decoded(values)
    return _checked(rule, raw, _text(raw, column), max_length, required)


def _checked(
    rule: FieldRule, raw: pa.Array, text: pa.Array, max_length: int | None, required: bool
) -> tuple[pa.Array, pa.Array]:
    written, reasons = RULE_FUNCTIONS[rule](raw, text)
    undecodable = pc.fill_null(pc.match_substring(text, "\ufffd"), False)  # bytes that were not UTF-8
    if pc.any(undecodable).as_py():
        reasons = pc.if_else(undecodable, NOT_UTF8, reasons)
    written = pc.if_else(pc.is_valid(reasons), pa.scalar(None, _STRING), written)
    if max_length is not None:
        long = pc.fill_null(pc.greater(pc.utf8_length(written), max_length), False)
        if pc.any(long).as_py():
            reasons = pc.if_else(long, f"longer than {max_length} characters", reasons)
            written = pc.if_else(long, pa.scalar(None, _STRING), written)
    if required:
        missing = pc.and_(pc.is_null(written), pc.is_null(reasons))
        reasons = pc.if_else(missing, "missing", reasons)
    return written, reasons


# --------------------------------------------------------------------------- the mapper


@dataclass(frozen=True)
class _Step:
    source: str
    column: str
    rule: FieldRule
    max_length: int | None
    required: bool


class RowMapper:
    """Map the chunks of one query (stateful: the 1-based number of the next source row)."""

    def __init__(self, mapping: Mapping, *, where: str = "") -> None:
        self.mapping = mapping
        self.where = where
        self._next_row = 1
        key = mapping.key_field
        steps = [_Step(key.source, key.target, key.rule, key.max_length, True)]
        steps += [_Step(f.source, f.target, f.rule, f.max_length, f.required) for f in mapping.fields if f is not key]
        steps += [_Step(s.source, s.column, "yes_no", None, False) for s in mapping.subscriptions]
        #: key first: a row is explained by its key's problem before any other
        self._steps = tuple(steps)
        self._columns = mapping.output_columns()

    def map(self, batch: pa.RecordBatch | pa.Table) -> MappedBatch:
        names = batch.schema.names
        self._check_columns(names)
        rows = batch.num_rows
        first_row = self._next_row
        self._next_row += rows

        written: dict[str, pa.Array] = {}
        texts: dict[str, pa.Array] = {}
        reason, column, value = _nulls(rows), _nulls(rows), _nulls(rows)
        failing = False
        for step in self._steps:
            raw = _decoded(batch.column(names.index(step.source)))
            if step.source not in texts:
                texts[step.source] = _text(raw, step.source)
            out, why = _checked(step.rule, raw, texts[step.source], step.max_length, step.required)
            written[step.column] = out
            if pc.any(pc.is_valid(why)).as_py():
                failing = True
                new = pc.and_(pc.is_null(reason), pc.is_valid(why))
                reason = pc.if_else(new, _concat(f"{step.source}: ", why), reason)
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
        rejects = pa.table(
            [
                pa.array(dropped + first_row, pa.int64()),
                column.take(dropped_rows),
                value.take(dropped_rows),
                reason.take(dropped_rows),
            ],
            schema=REJECTS_SCHEMA,
        )
        return MappedBatch(table.filter(keep), rejects, pa.array(kept + first_row, pa.int64()))

    def _check_columns(self, names: list[str]) -> None:
        needed = list(dict.fromkeys(step.source for step in self._steps))
        missing = [name for name in needed if name not in names]
        twice = [name for name in needed if names.count(name) > 1]
        if missing:
            lower = {name.lower(): name for name in names}
            near = [f"{name!r} (the query has {lower[name.lower()]!r})" for name in missing if name.lower() in lower]
            raise TransformError(
                f"the query has no column {_listing(missing)} (columns: {_listing(names) or 'none'})",
                where=self.where,
                hint=("names differ only by case: " + ", ".join(near) + "; quote the alias in the SQL")
                if near
                else "alias the column in the SQL, or change the activation's mapping",
            )
        if twice:
            raise TransformError(
                f"the query returns several columns named {_listing(twice)}",
                where=self.where,
                hint="give each column a distinct name in the SQL",
            )


# --------------------------------------------------------------------------- presets

#: predefined Actito attributes and the rule their values follow (other names: ``string``)
PREDEFINED_RULES: dict[str, FieldRule] = {
    "emailAddress": "email",
    "birthDate": "date",
    "sex": "sex",
    "telephoneNumber": "phone",
    "addressCountry": "country",
    "motherLanguage": "language",
}

#: Qualifio's variable → (Actito attribute, rule, max length), from Qualifio's integration page
QUALIFIO_FIELDS: dict[str, tuple[str, FieldRule, int | None]] = {
    "firstname": ("firstName", "string", 64),
    "lastname": ("lastName", "string", 64),
    "email": ("emailAddress", "email", MAX_STRING),
    "address": ("addressStreet", "string", 225),
    "number": ("addressNumber", "string", 10),
    "box": ("addressBox", "string", 10),
    "zip": ("addressPostalCode", "string", 10),
    "locality": ("addressLocality", "string", 50),
    "country": ("addressCountry", "country", MAX_STRING),
    "birthday": ("birthDate", "date", MAX_STRING),
    "gender": ("sex", "sex", MAX_STRING),
    "function": ("profession", "string", MAX_STRING),
    "phone": ("telephoneNumber", "phone", MAX_STRING),
    "company": ("company", "string", MAX_STRING),
}
QUALIFIO_CUSTOM_PREFIX = "actito_"
QUALIFIO_OPTIN_PREFIX = "optin_"


def qualifio_subscription_name(variable: str) -> str:
    """``optin_special_offers`` → ``Special offers``: ``_`` read as a space, first letter upper case
    (the rest kept as written: ``optin_SMS`` → ``SMS``), as Qualifio's page pairs them."""
    name = variable[len(QUALIFIO_OPTIN_PREFIX):].replace("_", " ").strip()
    return name[:1].upper() + name[1:]


def qualifio_mapping(
    columns: Sequence[str], *, key: str = "emailAddress", rules: cabc.Mapping[str, FieldRule] = _NO_RULES
) -> Mapping:
    """Qualifio's variable names → Actito, as Qualifio's own integration maps them.

    Standard variables (``firstname`` ... ``company``, any case) → the standard attributes;
    ``actito_<name>`` → the custom attribute ``<name>`` (``string`` unless ``rules`` — keyed by
    attribute name, e.g. from the Actito table — says otherwise); ``optin_<name>`` → subscription
    (see :func:`qualifio_subscription_name`). Only the columns present are mapped.

    Decision: any other column is an error, listing them. A column in the SELECT is data someone
    expects in Actito; dropping it silently would hide a typo (``firstame``, ``optin-news``) until a
    marketer notices the empty attribute. The fix is one alias or one deleted line.
    """
    fields: list[FieldMap] = []
    subscriptions: list[SubscriptionMap] = []
    unknown: list[str] = []
    problems: list[str] = []
    for column in columns:
        lower = column.lower()
        if lower in QUALIFIO_FIELDS:
            target, rule, length = QUALIFIO_FIELDS[lower]
            fields.append(FieldMap(column, target, rule, length, required=target == key))
        elif lower.startswith(QUALIFIO_CUSTOM_PREFIX):
            target = column[len(QUALIFIO_CUSTOM_PREFIX):]
            if not target:
                problems.append(f"column {column!r}: no attribute name after {QUALIFIO_CUSTOM_PREFIX!r}")
                continue
            rule = rules.get(target, PREDEFINED_RULES.get(target, "string"))
            fields.append(FieldMap(column, target, rule, MAX_STRING, required=target == key))
        elif lower.startswith(QUALIFIO_OPTIN_PREFIX):
            name = qualifio_subscription_name(column)
            if not name:
                problems.append(f"column {column!r}: no subscription name after {QUALIFIO_OPTIN_PREFIX!r}")
                continue
            subscriptions.append(SubscriptionMap(column, name))
        else:
            unknown.append(column)
    if unknown:
        problems.append(
            f"{_listing(unknown)} {'is not a Qualifio variable' if len(unknown) == 1 else 'are not Qualifio variables'}"
            " "
            f"(known: {', '.join(QUALIFIO_FIELDS)}, actito_<name>, optin_<name>)"
        )
    if key not in {f.target for f in fields}:
        source = next((v for v, (t, _, _) in QUALIFIO_FIELDS.items() if t == key), QUALIFIO_CUSTOM_PREFIX + key)
        problems.append(f"the key {key!r} has no column: select the Qualifio variable {source!r}")
    if problems:
        raise MappingError(
            problems,
            hint="rename a column actito_<name> to send it as the attribute <name>, optin_<name> for the "
            "subscription <Name>, or remove it from the SELECT",
        )
    return Mapping(key=key, fields=tuple(fields), subscriptions=tuple(subscriptions))


#: the column Didomi matches users on
DIDOMI_USER_ID = "organization_user_id"


def didomi_mapping(
    columns: Sequence[str],
    *,
    user_key: str,
    subscriptions: cabc.Mapping[str, str],
    metadata_columns: Sequence[str] = (),
) -> Mapping:
    """Consents as Didomi's integration sends them: the user's key, its subscriptions, its metadata.

    The key column is Didomi's ``organization_user_id`` (or, without one, a column named like the
    ``user_key`` attribute); ``subscriptions`` maps source columns to subscription names;
    ``metadata_columns`` become attributes of the same name (``string``, as Didomi's metadata
    properties are). Decision: any other column is an error, as for Qualifio — Didomi sends
    every metadata property, but here "metadata" is what the activation lists, so an extra column
    is a mistake to point at rather than an attribute to invent.
    """
    by_lower: dict[str, list[str]] = {}
    for column in columns:
        by_lower.setdefault(column.lower(), []).append(column)
    problems: list[str] = []
    key_column = next(
        (by_lower[name.lower()][0] for name in (DIDOMI_USER_ID, user_key) if name.lower() in by_lower), None
    )
    if key_column is None:
        problems.append(
            f"no column for the user key: expected {DIDOMI_USER_ID!r} (Didomi's) or {user_key!r} "
            f"(columns: {_listing(list(columns)) or 'none'})"
        )
    for source in [*subscriptions, *metadata_columns]:
        if source not in columns:
            problems.append(f"column {source!r} is not in the query (columns: {_listing(list(columns)) or 'none'})")
    used = {key_column, *subscriptions, *metadata_columns}
    unknown = [column for column in columns if column not in used]
    if unknown:
        problems.append(
            f"{_listing(unknown)}: neither the user key, a subscription nor a metadata column "
            "(list it under metadata to send it as an attribute, or remove it from the SELECT)"
        )
    if problems:
        raise MappingError(problems)
    assert key_column is not None
    fields = [FieldMap(key_column, user_key, PREDEFINED_RULES.get(user_key, "string"), required=True)]
    fields += [FieldMap(column, column, "string") for column in metadata_columns]
    return Mapping(
        key=user_key,
        fields=tuple(fields),
        subscriptions=tuple(SubscriptionMap(source, name) for source, name in subscriptions.items()),
    )


def explicit_mapping(
    key: str,
    attributes: cabc.Mapping[str, str],
    subscriptions: cabc.Mapping[str, str] = _EMPTY,
    rules: cabc.Mapping[str, FieldRule] = _NO_RULES,
) -> Mapping:
    """``attributes``: source column → attribute; ``subscriptions``: source column → subscription;
    ``rules``: attribute → rule (typically from the Actito table's types; a predefined attribute
    without one gets its own rule, any other ``string``). The key attribute is required."""
    fields = tuple(
        FieldMap(source, target, rules.get(target, PREDEFINED_RULES.get(target, "string")), required=target == key)
        for source, target in attributes.items()
    )
    return Mapping(
        key=key,
        fields=fields,
        subscriptions=tuple(SubscriptionMap(source, name) for source, name in subscriptions.items()),
    )


#: the campaign fields of Qualifio's integration: Actito question → (rule, max length)
QUALIFIO_INTERACTION_FIELDS: dict[str, tuple[FieldRule, int | None]] = {
    "source": ("string", MAX_STRING),
    "updateSource": ("string", MAX_STRING),
    "way": ("string", MAX_STRING),
    "date": ("datetime", None),
    "surveyName": ("string", MAX_STRING),
    "surveyType": ("integer", None),
    "surveyDate": ("date", None),
    "motherLanguage": ("language", None),
    "deviceName": ("string", MAX_STRING),
    "userAgent": ("string", MAX_STRING),
}
#: accepted names of the participation id column (the interaction's key) and of the e-mail link
QUALIFIO_PARTICIPATION_COLUMNS = ("participationId", "participation_id")
QUALIFIO_EMAIL_COLUMNS = ("emailAddress", "email", "email_address")


def qualifio_interaction_mapping(
    columns: Sequence[str], *, key: str = "participationId", email: str = "emailAddress"
) -> Mapping:
    """One Qualifio participation → one record of an INTERACTIONS custom table.

    The participation id (``participationId`` / ``participation_id``) is the key (attribute
    ``key``, the table's primary key); the participant's e-mail (``email``, ``emailAddress``,
    ``email_address``) links the record to its profile and is required. The campaign fields of
    Qualifio's page, named as Actito's questions (any case), follow their rules: ``date``
    date-time, ``surveyDate`` date, ``surveyType`` integer, ``motherLanguage`` ISO 639-1.

    Decision: ``userAgent`` keeps Actito's 255-character string limit. Real user agents are
    usually 100–200 characters; a longer one is rejected with its row rather than cut, as every
    string is (a table declared with a lower ``maxLength`` tightens it at pre-flight). Other
    columns are an error, as in :func:`qualifio_mapping`.
    """
    known = {name.lower(): name for name in QUALIFIO_INTERACTION_FIELDS}
    participation = {name.lower() for name in QUALIFIO_PARTICIPATION_COLUMNS}
    emails = {name.lower() for name in QUALIFIO_EMAIL_COLUMNS}
    key_fields: list[FieldMap] = []
    email_fields: list[FieldMap] = []
    fields: list[FieldMap] = []
    unknown: list[str] = []
    for column in columns:
        lower = column.lower()
        if lower in participation:
            key_fields.append(FieldMap(column, key, "string", required=True))
        elif lower in emails:
            email_fields.append(FieldMap(column, email, "email", required=True))
        elif lower in known:
            rule, length = QUALIFIO_INTERACTION_FIELDS[known[lower]]
            fields.append(FieldMap(column, known[lower], rule, length))
        else:
            unknown.append(column)
    problems = []
    if not key_fields:
        problems.append(f"no participation id column (one of {_listing(list(QUALIFIO_PARTICIPATION_COLUMNS))})")
    if not email_fields:
        problems.append(f"no e-mail column to link the participant (one of {_listing(list(QUALIFIO_EMAIL_COLUMNS))})")
    if unknown:
        problems.append(
            f"{_listing(unknown)}: not a campaign field of Qualifio's integration "
            f"(known: {', '.join(QUALIFIO_INTERACTION_FIELDS)})"
        )
    if problems:
        raise MappingError(problems, hint="alias the columns in the SQL to these names, or remove them from the SELECT")
    return Mapping(key=key, fields=(*key_fields, *email_fields, *fields))


def _listing(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


__all__ = [
    "FieldMap",
    "FieldRule",
    "MappedBatch",
    "Mapping",
    "MappingError",
    "RowMapper",
    "SubscriptionMap",
    "apply_rule",
    "country_codes",
    "didomi_mapping",
    "explicit_mapping",
    "language_codes",
    "qualifio_interaction_mapping",
    "qualifio_mapping",
]
