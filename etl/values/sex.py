"""Sex, written ``M`` / ``F``.

``m``/``f`` in any case and with spaces around. Decision: nothing else (``male``, ``femme``,
``H``, ``X``) — Qualifio's integration passes only ``M`` and ``F``, and translating words of
several languages would guess (``H`` is *homme* in French, *Herr* in German).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, concat, explain, quote, trim


_SEXES = pa.array(["M", "F"], STRING)


def sex_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    value = pc.utf8_upper(trim(text))
    bad = pc.and_(pc.is_valid(value), pc.invert(pc.is_in(value, value_set=_SEXES)))
    return value, explain(bad, lambda m: concat(quote(pc.filter(text, m)), " is not a sex (M or F)"))
