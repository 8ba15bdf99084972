"""What Qualifio's integration lets into Actito's person fields: names with "no special characters"
and the device, ``desktop`` or ``mobile``. A name with a digit or a symbol is a form filled in
wrongly (``Emma2``, ``:-)``), not a spelling to keep; a name in any alphabet, with its accents, is
a name.

The name rule, precisely: after trimming, NFC composition (``e`` + combining acute → ``é``), the
typographic apostrophe ``’`` read as ``'`` and runs of spaces read as one, the value is letters of
any script (Unicode category L, each optionally followed by combining marks, category M), with at
most one space, hyphen ``-`` or apostrophe ``'`` between two letters: it starts and ends with a
letter. So ``Zoé``, ``O'Brien``, ``Jean-Pierre``, ``De Smet``, ``Nguyễn`` and ``Ngũgĩ`` pass;
``Emma2``, ``J.``, ``Anne--Marie``, ``-Léa``, ``Tom!`` and a tab inside do not.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, concat, explain, quote, saying, trim

#: a name's whole shape: letters with one separator at most between two of them
NAME_SHAPE = r"^\p{L}\p{M}*(?:[ '-]?\p{L}\p{M}*)*$"
#: the characters a name may hold; what remains after removing them is what the reason shows
_NAME_CHARACTERS = r"[\p{L}\p{M} '-]+"
_DEVICES = pa.array(["desktop", "mobile"], STRING)
#: a browser's user agent starts with a product/version token (``Mozilla/5.0``)
_USER_AGENT = r"^[A-Za-z][A-Za-z0-9._-]*/\S"


def name_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A person's first or last name, as Actito's ``firstName``/``lastName`` take it from Qualifio."""
    value = trim(text)
    value = pc.utf8_normalize(pc.fill_null(value, ""), "NFC")
    value = pc.replace_substring_regex(pc.replace_substring(value, "\u2019", "'"), " {2,}", " ")
    value = pc.if_else(pc.equal(value, ""), pa.scalar(None, STRING), value)
    others = pc.replace_substring_regex(value, _NAME_CHARACTERS, "")
    special = pc.greater(pc.utf8_length(others), 0)
    misshapen = pc.and_(pc.invert(special), pc.invert(pc.match_substring_regex(value, NAME_SHAPE)))
    reasons = pc.coalesce(
        explain(special, lambda mask: concat(quote(pc.filter(text, mask)), " has characters a name may not: ",
                                             quote(pc.filter(others, mask)),
                                             " (only letters, spaces, hyphens and apostrophes)")),
        explain(misshapen, saying(text, " is not a name: it starts and ends with a letter, with one space, "
                                        "hyphen or apostrophe at most between two letters")),
    )
    return value, reasons


def device_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``desktop`` or ``mobile`` in any case; a user agent is read as Qualifio reads it, ``Mobi`` in it
    meaning a mobile browser (as MDN advises). Anything else (``tablet``, ``tv``) is not guessed."""
    trimmed = trim(text)
    word = pc.utf8_lower(trimmed)
    agent = pc.fill_null(pc.match_substring_regex(trimmed, _USER_AGENT), False)
    from_agent = pc.if_else(agent, pc.if_else(pc.match_substring(trimmed, "Mobi"), "mobile", "desktop"),
                            pa.scalar(None, STRING))
    value = pc.if_else(pc.fill_null(pc.is_in(word, value_set=_DEVICES), False), word, from_agent)
    bad = pc.and_(pc.is_valid(trimmed), pc.is_null(value))
    return value, explain(bad, saying(text, " is not a device Qualifio's integration sends "
                                            "(desktop or mobile, or a browser's user agent)"))
