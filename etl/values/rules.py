"""The format rules a field can follow, by name, and one field's whole check; a row with a reason is
rejected, never sent. ``string`` never truncates: a cut name is wrong data that looks right."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from etl.values.choices import boolean_rule, sex_rule, yes_no_rule
from etl.values.countries import country_rule
from etl.values.dates import date_rule, datetime_rule
from etl.values.email import email_rule
from etl.values.languages import language_rule
from etl.values.numbers import decimal_rule, integer_rule
from etl.values.people import device_rule, name_rule
from etl.values.phone import phone_rule
from etl.values.text import MISSING, NOT_UTF8, STRING, as_text, decoded, nulls, trim

FieldRule = Literal[
    "string", "email", "date", "datetime", "sex", "phone", "country", "language", "integer", "decimal", "boolean",
    "yes_no", "name", "device",
]
#: every rule, in the order of :data:`FieldRule`
RULES: tuple[FieldRule, ...] = get_args(FieldRule)

RuleFunction = Callable[[pa.Array, pa.Array], tuple[pa.Array, pa.Array]]


def string_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Trim and empty → None; the length check is common to every rule (see :func:`checked`)."""
    return trim(text), nulls(len(text))


RULE_FUNCTIONS: dict[FieldRule, RuleFunction] = {
    "string": string_rule,
    "email": email_rule,
    "date": date_rule,
    "datetime": datetime_rule,
    "sex": sex_rule,
    "phone": phone_rule,
    "country": country_rule,
    "language": language_rule,
    "integer": integer_rule,
    "decimal": decimal_rule,
    "boolean": boolean_rule,
    "yes_no": yes_no_rule,
    "name": name_rule,
    "device": device_rule,
}


def column_text(values: pa.Array, column: str) -> pa.Array:
    """A source column as the text rules read it and a reject shows it."""
    return as_text(values, f"column {column!r}", hint="cast or flatten it in the SQL")


def apply_rule(
    rule: FieldRule, values: pa.Array, *, max_length: int | None = None, required: bool = False, column: str = ""
) -> tuple[pa.Array, pa.Array]:
    """(written value or None, why not or None) for each value: one field's whole check."""
    raw = decoded(values)
    return checked(rule, raw, column_text(raw, column), max_length, required)


def checked(
    rule: FieldRule, raw: pa.Array, text: pa.Array, max_length: int | None, required: bool
) -> tuple[pa.Array, pa.Array]:
    """The rule, then what every rule shares: undecodable bytes, the length limit, a required value."""
    written, reasons = RULE_FUNCTIONS[rule](raw, text)
    undecodable = pc.fill_null(pc.match_substring(text, "\ufffd"), False)  # bytes that were not UTF-8
    if pc.any(undecodable).as_py():
        reasons = pc.if_else(undecodable, NOT_UTF8, reasons)
    written = pc.if_else(pc.is_valid(reasons), pa.scalar(None, STRING), written)
    if max_length is not None:
        long = pc.fill_null(pc.greater(pc.utf8_length(written), max_length), False)
        if pc.any(long).as_py():
            reasons = pc.if_else(long, f"longer than {max_length} characters", reasons)
            written = pc.if_else(long, pa.scalar(None, STRING), written)
    if required:
        missing = pc.and_(pc.is_null(written), pc.is_null(reasons))
        reasons = pc.if_else(missing, MISSING, reasons)
    return written, reasons
