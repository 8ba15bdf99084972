"""Yes/no values: ``boolean`` writes ``TRUE`` / ``FALSE``, ``yes_no`` writes ``Y`` / ``N``.

Boolean columns; and, in any case, ``true/false``, ``1/0``, ``yes/no``, ``y/n``. Null or empty →
``None``: for a subscription an empty cell means "no change", never "unsubscribe".
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, concat, explain, nulls, quote, trim


_TRUE_WORDS = pa.array(["true", "1", "yes", "y"], STRING)
_FALSE_WORDS = pa.array(["false", "0", "no", "n"], STRING)


def _truth(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(True/False/None per row, value present, why not) for the boolean and yes_no rules."""
    if pa.types.is_boolean(raw.type):
        return raw, pc.is_valid(raw), nulls(len(raw))
    words = pc.utf8_lower(trim(text))
    truth = pc.if_else(
        pc.is_in(words, value_set=_TRUE_WORDS),
        True,
        pc.if_else(pc.is_in(words, value_set=_FALSE_WORDS), False, pa.scalar(None, pa.bool_())),
    )
    bad = pc.and_(pc.is_valid(words), pc.is_null(truth))
    return truth, pc.is_valid(words), explain(
        bad, lambda m: concat(quote(pc.filter(text, m)), " is not yes or no (true/false, 1/0, yes/no, y/n)")
    )


def boolean_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    truth, _, reasons = _truth(raw, text)
    return pc.if_else(truth, "TRUE", "FALSE"), reasons


def yes_no_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    truth, _, reasons = _truth(raw, text)
    return pc.if_else(truth, "Y", "N"), reasons
