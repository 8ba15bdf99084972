"""Phone numbers in E.164: ``+`` and 8 to 15 digits; separators and a ``(0)`` after the country code
are dropped. A number without ``+`` (``0032...`` included) is rejected: we cannot guess the country."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, concat, explain, first_reason, quote, trim


_PHONE_SEPARATORS = r"[\s\p{Z}.()\-]"
_PHONE = r"^\+[1-9][0-9]{7,14}$"


def phone_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    trimmed = trim(text)
    compact = pc.replace_substring_regex(pc.replace_substring(trimmed, "(0)", ""), _PHONE_SEPARATORS, "")
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(pc.match_substring_regex(compact, _PHONE)))

    def why(mask: pa.Array) -> pa.Array:
        shown, number = quote(pc.filter(text, mask)), pc.filter(compact, mask)
        digits = pc.subtract(pc.utf8_length(number), 1)
        return first_reason(
            [
                (
                    pc.match_substring_regex(number, r"[^0-9+]"),
                    concat(shown, " has characters other than digits, spaces, dots, dashes and parentheses"),
                ),
                (
                    pc.invert(pc.starts_with(number, "+")),
                    concat(shown, " has no international prefix (+ and country code): the country cannot be guessed"),
                ),
                (pc.match_substring(pc.utf8_slice_codeunits(number, 1), "+"), concat(shown, " has a + inside")),
                (
                    pc.or_(pc.less(digits, 8), pc.greater(digits, 15)),
                    concat(shown, " has ", pc.cast(digits, STRING), " digits after the + (8 to 15 expected)"),
                ),
                (pc.starts_with(number, "+0"), concat(shown, " has a country code that starts with 0")),
            ],
            concat(shown, " is not an international phone number (+ and 8 to 15 digits)"),
        )

    return compact, explain(bad, why)
