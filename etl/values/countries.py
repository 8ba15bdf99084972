"""Countries as ISO 3166-1 alpha-2, upper case; ``UK``/``EL`` are rejected with a pointer to ``GB``/``GR``.
Subdivision codes (``BE-BRU``) are rejected: Qualifio's table says "ISO 3166-2" for ``addressCountry``,
but the attribute stores alpha-2."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc

from etl.values import code_list, reference_rows
from etl.values.text import concat, explain, first_reason, quote, trim


@functools.cache
def country_codes() -> pa.Array:
    """ISO 3166-1 alpha-2 codes, upper case (read once from etl/values/data/iso3166.txt)."""
    return code_list("iso3166.txt")


@functools.cache
def alpha3_of_alpha2() -> dict[str, str]:
    """ISO 3166-1 alpha-2 → alpha-3 (read once from etl/values/data/iso3166-alpha3.txt)."""
    return {row[0]: row[1] for row in reference_rows("iso3166-alpha3.txt")}


def country_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    value = pc.utf8_upper(trim(text))
    bad = pc.and_(pc.is_valid(value), pc.invert(pc.is_in(value, value_set=country_codes())))

    def why(mask: pa.Array) -> pa.Array:
        shown, code = quote(pc.filter(text, mask)), pc.filter(value, mask)
        generic = concat(shown, " is not an ISO 3166-1 alpha-2 country code (e.g. BE)")
        return first_reason(
            [
                (pc.equal(code, "UK"), concat(generic, ": the United Kingdom is GB")),
                (pc.equal(code, "EL"), concat(generic, ": Greece is GR")),
            ],
            generic,
        )

    return value, explain(bad, why)
