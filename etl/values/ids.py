"""Actito profile ids: positive 64-bit integers written as canonical decimal strings, whatever the
column type (a float or decimal only when whole; ``"007"`` → ``"7"``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.values.numbers import INT64_MAX, digits_beyond
from etl.values.text import MISSING, STRING, decoded, first_reason

NOT_A_NUMBER = "not a number"
HAS_SIGN = "sign not allowed"
HAS_DECIMAL_POINT = "decimal point not allowed"
NOT_WHOLE = "not a whole number"
NEGATIVE = "negative"
ZERO = "zero"
TOO_LARGE = "too large (beyond 9223372036854775807)"

#: every reason a profile id can be rejected with
PROFILE_ID_REASONS = (MISSING, NOT_A_NUMBER, HAS_SIGN, HAS_DECIMAL_POINT, NOT_WHOLE, NEGATIVE, ZERO, TOO_LARGE)


def profile_ids(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(canonical id or null, reason or null) per value."""
    raw = decoded(raw)
    kind = raw.type
    if pa.types.is_integer(kind):
        return _integer_ids(raw)
    if pa.types.is_floating(kind):
        return _float_ids(raw)
    if pa.types.is_decimal(kind):
        return _digit_ids(text, allow_zero_fraction=True)
    return _digit_ids(text, allow_zero_fraction=False)


def _kept(ids: pa.Array, reasons: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The ids of the values without a reason, null for the others; and the reasons."""
    return pc.if_else(pc.is_null(reasons), ids, pa.scalar(None, STRING)), reasons


def _integer_ids(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    never = pa.array(np.zeros(len(raw), dtype=bool))
    unsigned = pa.types.is_unsigned_integer(raw.type)
    int64_max = pa.scalar(np.iinfo(np.int64).max, pa.uint64())
    too_large = pc.greater(pc.cast(raw, pa.uint64()), int64_max) if unsigned else never
    negative = never if unsigned else pc.less(raw, 0)
    reasons = first_reason([(pc.is_null(raw), MISSING), (negative, NEGATIVE),
                            (pc.equal(raw, pa.scalar(0, raw.type)), ZERO), (too_large, TOO_LARGE)], None)
    return _kept(pc.cast(raw, STRING), reasons)


def _float_ids(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    values = pc.cast(raw, pa.float64())
    finite = pc.is_finite(values)
    limit = float(2**63)
    reasons = first_reason(
        [
            (pc.is_null(values), MISSING),
            (pc.invert(finite), NOT_A_NUMBER),
            (pc.not_equal(values, pc.floor(values)), NOT_WHOLE),
            (pc.less(values, 0), NEGATIVE),
            (pc.equal(values, 0), ZERO),
            (pc.greater_equal(values, limit), TOO_LARGE),
        ],
        None,
    )
    whole = pc.cast(pc.if_else(pc.is_null(reasons), values, 1.0), pa.int64())  # each kept one is integral, in range
    return _kept(pc.cast(whole, STRING), reasons)


def _digit_ids(text: pa.Array, *, allow_zero_fraction: bool) -> tuple[pa.Array, pa.Array]:
    """Strings of digits (decimals as text when ``allow_zero_fraction``: ``42.00`` is 42)."""
    trimmed = pc.utf8_trim_whitespace(text)
    number = pc.extract_regex(trimmed, r"^(?P<sign>[+-]?)(?P<int>[0-9]*)(?P<frac>(?:\.[0-9]*)?)$")
    sign = pc.struct_field(number, "sign")
    digits = pc.replace_substring_regex(pc.struct_field(number, "int"), "^0+", "")
    frac = pc.struct_field(number, "frac")
    has_digits = pc.match_substring_regex(trimmed, "[0-9]")
    frac_nonzero = pc.match_substring_regex(frac, "[1-9]")
    frac_present = pc.not_equal(frac, "")
    if allow_zero_fraction:
        decimal_problem, decimal_reason = frac_nonzero, NOT_WHOLE
    else:
        decimal_problem, decimal_reason = frac_present, HAS_DECIMAL_POINT
    numeric = pc.and_kleene(pc.is_valid(number), has_digits)
    reasons = first_reason(
        [
            (pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, "")), MISSING),
            (pc.invert(numeric), NOT_A_NUMBER),
            (pc.and_kleene(pc.equal(sign, "-"), pc.or_kleene(pc.not_equal(digits, ""), frac_nonzero)), NEGATIVE),
            (decimal_problem, decimal_reason),
            (pc.equal(sign, "+"), HAS_SIGN),
            (pc.equal(sign, "-"), ZERO),  # "-0": negative zero is still zero
            (pc.equal(digits, ""), ZERO),
            (digits_beyond(digits, INT64_MAX), TOO_LARGE),
        ],
        None,
    )
    return _kept(digits, reasons)

