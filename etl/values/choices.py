"""Closed word lists: ``sex`` (``M``/``F``) and yes/no (``boolean``, ``yes_no``). ``sex`` takes only
``m``/``f``: Qualifio passes only those, and translating words would guess (``H``: *homme* or *Herr*).
An empty yes/no is None: for a subscription it means "no change", never "unsubscribe"."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, explain, nulls, saying, trim

_SEXES = pa.array(["M", "F"], STRING)
_TRUE_WORDS = pa.array(["true", "1", "yes", "y"], STRING)
_FALSE_WORDS = pa.array(["false", "0", "no", "n"], STRING)


def sex_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    value = pc.utf8_upper(trim(text))
    bad = pc.and_(pc.is_valid(value), pc.invert(pc.is_in(value, value_set=_SEXES)))
    return value, explain(bad, saying(text, " is not a sex (M or F)"))


def _truth(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(True/False/None per row, why not) for the boolean and yes_no rules."""
    if pa.types.is_boolean(raw.type):
        return raw, nulls(len(raw))
    words = pc.utf8_lower(trim(text))
    truth = pc.if_else(
        pc.is_in(words, value_set=_TRUE_WORDS),
        True,
        pc.if_else(pc.is_in(words, value_set=_FALSE_WORDS), False, pa.scalar(None, pa.bool_())),
    )
    bad = pc.and_(pc.is_valid(words), pc.is_null(truth))
    return truth, explain(bad, saying(text, " is not yes or no (true/false, 1/0, yes/no, y/n)"))


def boolean_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    truth, reasons = _truth(raw, text)
    return pc.if_else(truth, "TRUE", "FALSE"), reasons


def yes_no_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    truth, reasons = _truth(raw, text)
    return pc.if_else(truth, "Y", "N"), reasons
