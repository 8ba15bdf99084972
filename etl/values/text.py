"""Any warehouse column read as text, and the vectorised pieces every value rule is built from.
A reason's wording is built only for the values that fail (:func:`explain`): they are few."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import TransformError

STRING = pa.string()

MISSING = "missing"
NOT_UTF8 = "not UTF-8 text (undecodable bytes shown as U+FFFD)"


def nulls(length: int) -> pa.Array:
    return pa.nulls(length, STRING)


def concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def quote(values: pa.Array) -> pa.Array:
    """``'value'`` for a reason, cut to 40 characters: the reject file has the whole value."""
    long = pc.fill_null(pc.greater(pc.utf8_length(values), 40), False)
    short = pc.if_else(long, concat(pc.utf8_slice_codeunits(values, 0, 39), "…"), values)
    return concat("'", pc.fill_null(short, ""), "'")


def trim(text: pa.Array) -> pa.Array:
    """Trimmed text, empty → null: the common first step of the text rules."""
    trimmed = pc.utf8_trim_whitespace(text)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, STRING), trimmed)


def explain(bad: pa.Array, build: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Per row: None where ``bad`` is false, else why; ``build`` words the bad rows only."""
    bad = pc.fill_null(bad, False)
    reasons = nulls(len(bad))
    if not pc.any(bad).as_py():
        return reasons
    return pc.replace_with_mask(reasons, bad, build(bad))


def saying(text: pa.Array, what: str) -> Callable[[pa.Array], pa.Array]:
    """For :func:`explain`: each bad value quoted, followed by ``what`` is wrong with it."""
    return lambda mask: concat(quote(pc.filter(text, mask)), what)


def first_reason(checks: Sequence[tuple[pa.Array, pa.Array | str]], otherwise: pa.Array | str | None) -> pa.Array:
    """Per row, the reason of the first check that holds (the most basic failure first)."""
    conditions = pc.make_struct(
        *[pc.fill_null(condition, False) for condition, _ in checks], field_names=[str(i) for i in range(len(checks))]
    )
    return pc.case_when(conditions, *[_as_arg(reason) for _, reason in checks], _as_arg(otherwise))


def _as_arg(value: pa.Array | str | None) -> pa.Array | pa.Scalar:
    return value if isinstance(value, pa.Array) else pa.scalar(value, STRING)


def decoded(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        return decoded(values.dictionary_decode())
    return values


def as_text(values: pa.Array | pa.ChunkedArray, what: str = "the column", hint: str = "") -> pa.Array:
    """Any column as strings (None stays None): what the text rules read and what a reject shows.
    Bytes that are not UTF-8 are decoded with U+FFFD in their place, so the value still shows."""
    values = decoded(values)
    kind = values.type
    if pa.types.is_string(kind):
        return values
    if pa.types.is_null(kind):
        return nulls(len(values))
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        try:
            return pc.cast(values, STRING)
        except pa.ArrowInvalid:
            return pa.array([None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()], STRING)
    try:
        return pc.cast(values, STRING)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TransformError(f"{what} has type {kind}, which cannot be read as text", hint=hint) from exc


def listing(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)
