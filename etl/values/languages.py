"""Languages, ISO 639-1 upper case (``FR``); a tag (``fr-BE``) gives its primary subtag, which is its code."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc

from etl.values import code_list
from etl.values.text import explain, saying, trim


@functools.cache
def language_codes() -> pa.Array:
    """ISO 639-1 codes, upper case (read once from etl/values/data/iso639-1.txt)."""
    return code_list("iso639-1.txt")


_LANGUAGE_TAG = r"^(?P<language>[A-Za-z]{2})(?:[-_][A-Za-z0-9]{1,8})*$"


def language_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    trimmed = trim(text)
    value = pc.utf8_upper(pc.struct_field(pc.extract_regex(trimmed, _LANGUAGE_TAG), "language"))
    known = pc.fill_null(pc.is_in(value, value_set=language_codes()), False)
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(known))
    return value, explain(bad, saying(text, " is not an ISO 639-1 language code (e.g. FR)"))
