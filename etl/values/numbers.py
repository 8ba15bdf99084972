"""Integers and decimals, written as plain digits: no ``+``, no leading zeros, never an exponent.

A decimal comma (``12,5``) is rejected: ``1,250`` may be one thousand two hundred and fifty or one
and a quarter."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, concat, explain, first_reason, nulls, quote, trim

INT64_MAX = str(np.iinfo(np.int64).max)
_INTEGER_TEXT = r"^(?P<sign>[+-]?)0*(?P<digits>[0-9]+?)(?:\.0*)?$"


def digits_beyond(digits: pa.Array, limit: pa.Array | str) -> pa.Array:
    """Whether unsigned digits without leading zeros exceed ``limit`` (as long as INT64_MAX):
    a longer number does; one as long does if it sorts after it."""
    length = pc.utf8_length(digits)
    return pc.or_kleene(pc.greater(length, len(INT64_MAX)),
                        pc.and_kleene(pc.equal(length, len(INT64_MAX)), pc.greater(digits, limit)))


def integer_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    kind = raw.type
    if pa.types.is_signed_integer(kind):
        return pc.cast(raw, STRING), nulls(len(raw))
    if pa.types.is_floating(kind):
        return _integer_from_float(raw, text)
    trimmed = trim(text)
    parts = pc.extract_regex(trimmed, _INTEGER_TEXT)
    sign, digits = pc.struct_field(parts, "sign"), pc.struct_field(parts, "digits")
    negative = pc.and_(pc.equal(sign, "-"), pc.not_equal(digits, "0"))
    limit = pc.if_else(negative, "9223372036854775808", INT64_MAX)
    too_large = digits_beyond(digits, limit)
    value = pc.if_else(negative, concat("-", digits), digits)
    bad_shape = pc.and_(pc.is_valid(trimmed), pc.is_null(parts))
    bad = pc.or_(bad_shape, pc.fill_null(too_large, False))

    def why(mask: pa.Array) -> pa.Array:
        shown = quote(pc.filter(text, mask))
        return pc.if_else(
            pc.filter(bad_shape, mask),
            concat(shown, " is not an integer"),
            concat(shown, " is out of range (64-bit integer)"),
        )

    return value, explain(bad, why)


def _integer_from_float(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    values = pc.cast(raw, pa.float64())
    finite = pc.is_finite(values)
    whole = pc.and_(finite, pc.equal(values, pc.floor(values)))
    inside = pc.and_(pc.greater_equal(values, -(2.0**63)), pc.less(values, 2.0**63))
    ok = pc.fill_null(pc.and_(whole, inside), True)
    value = pc.cast(pc.cast(pc.if_else(ok, values, 0.0), pa.int64()), STRING)

    def why(mask: pa.Array) -> pa.Array:
        shown = quote(pc.filter(text, mask))
        return first_reason(
            [
                (pc.invert(pc.filter(finite, mask)), concat(shown, " is not a number")),
                (pc.invert(pc.filter(whole, mask)), concat(shown, " is not a whole number")),
            ],
            concat(shown, " is out of range (64-bit integer)"),
        )

    return pc.if_else(pc.is_valid(values), value, pa.scalar(None, STRING)), explain(pc.invert(ok), why)


_DECIMAL_TEXT = r"^(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?:[eE](?P<exp>[+-]?[0-9]+))?$"
#: an exponent of more digits than this is refused before it is expanded into as many zeros
_EXPONENT_DIGITS = 2


def decimal_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Plain decimal text: pyarrow writes floats from 1e10 up with an exponent, so an exponent is
    accepted from any source and expanded (vectorised, see :func:`_expand_exponent`)."""
    if pa.types.is_integer(raw.type):
        return pc.cast(raw, STRING), nulls(len(raw))
    trimmed = trim(text)
    parts = pc.extract_regex(trimmed, _DECIMAL_TEXT)
    sign, whole = pc.struct_field(parts, "sign"), pc.struct_field(parts, "int")
    fraction, exponent = pc.struct_field(parts, "frac"), pc.struct_field(parts, "exp")
    shaped = pc.fill_null(pc.greater(pc.utf8_length(concat(whole, fraction)), 0), False)
    has_exponent = pc.fill_null(pc.not_equal(exponent, ""), False)
    exponent_digits = pc.utf8_length(pc.utf8_ltrim(exponent, "+-0"))
    huge = pc.and_(has_exponent, pc.fill_null(pc.greater(exponent_digits, _EXPONENT_DIGITS), False))
    ok = pc.and_(shaped, pc.invert(huge))
    expand = pc.and_(ok, has_exponent)
    if pc.any(expand).as_py():
        whole, fraction = _expand_exponent(whole, fraction, exponent, expand)
    whole = pc.replace_substring_regex(whole, "^0+", "")
    whole = pc.if_else(pc.equal(whole, ""), "0", whole)
    digits = pc.if_else(pc.equal(fraction, ""), whole, concat(whole, ".", fraction))
    zero = pc.invert(pc.match_substring_regex(digits, "[1-9]"))
    value = pc.if_else(pc.and_(pc.equal(sign, "-"), pc.invert(zero)), concat("-", digits), digits)
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(ok))

    def why(mask: pa.Array) -> pa.Array:
        shown = quote(pc.filter(text, mask))
        return first_reason(
            [
                (
                    pc.match_substring_regex(pc.filter(trimmed, mask), r"^[+-]?[0-9]*,[0-9]+$"),
                    concat(shown, " is not a decimal number: the decimal separator is '.'"),
                ),
                (pc.filter(huge, mask), concat(shown, " is out of range")),
            ],
            concat(shown, " is not a decimal number (digits with an optional '.')"),
        )

    return value, explain(bad, why)


def _expand_exponent(
    whole: pa.Array, fraction: pa.Array, exponent: pa.Array, where: pa.Array
) -> tuple[pa.Array, pa.Array]:
    """Move the decimal point of ``whole.fraction`` by ``exponent`` places (where ``where``): one pass
    per distinct point position, never one per row."""
    digits = concat(whole, fraction)
    count = pc.utf8_length(digits)
    moves = pc.cast(pc.utf8_ltrim(pc.if_else(where, exponent, "0"), "+"), pa.int64())
    point = pc.add(pc.utf8_length(whole), moves)  # digits before the point once it has moved
    left = pc.less_equal(point, 0)
    right = pc.greater_equal(point, count)
    zeros_left = pc.binary_repeat("0", pc.max_element_wise(pc.negate(point), 0))
    zeros_right = pc.binary_repeat("0", pc.max_element_wise(pc.subtract(point, count), 0))
    new_whole = pc.if_else(left, "", pc.if_else(right, concat(digits, zeros_right), pa.scalar(None, STRING)))
    new_fraction = pc.if_else(left, concat(zeros_left, digits), pc.if_else(right, "", pa.scalar(None, STRING)))
    inside = pc.fill_null(pc.and_(pc.invert(left), pc.invert(right)), False)
    for position in pc.unique(pc.filter(point, pc.and_(inside, where))).to_pylist():
        at = pc.and_(pc.and_(inside, where), pc.equal(point, position))
        new_whole = pc.if_else(at, pc.utf8_slice_codeunits(digits, 0, position), new_whole)
        new_fraction = pc.if_else(at, pc.utf8_slice_codeunits(digits, position), new_fraction)
    return pc.if_else(where, new_whole, whole), pc.if_else(where, new_fraction, fraction)
