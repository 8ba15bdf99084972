"""E-mail addresses: one normalisation and one acceptance rule, for every destination, mirroring
Actito's rules for ``emailAddress`` (the strictest). Dots at the edges of the local part are rejected:
Actito's rules do not mention them, but RFC 5322 forbids them and mail servers refuse such addresses."""

from __future__ import annotations

import functools
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.values import reference_text
from etl.values.text import MISSING, NOT_UTF8, STRING, as_text, concat, explain, first_reason, quote

#: Actito stores strings of at most this many characters
MAX_EMAIL_LENGTH = 255

TOO_LONG = f"longer than {MAX_EMAIL_LENGTH} characters"
NO_AT = "no @"
SEVERAL_AT = "more than one @"
NOTHING_BEFORE_AT = "nothing before the @"
NOTHING_AFTER_AT = "nothing after the @"
BAD_LOCAL_CHARACTER = "character not allowed before the @"
DOUBLE_DOT = "two dots in a row"
EDGE_DOT = "dot at the start or end of the part before the @"
BAD_DOMAIN = "invalid domain"
NO_DOT_IN_DOMAIN = "no dot after the @"
SHORT_TLD = "top-level domain shorter than 2 characters"
UNKNOWN_TLD = "unknown top-level domain"
INVALID_EMAIL = "invalid e-mail address"  # never expected: every failure above is more precise

#: every reason an e-mail address can be rejected with, most basic first
EMAIL_REASONS = (MISSING, NOT_UTF8, TOO_LONG, NO_AT, SEVERAL_AT, NOTHING_BEFORE_AT, NOTHING_AFTER_AT,
                 BAD_LOCAL_CHARACTER, DOUBLE_DOT, EDGE_DOT, BAD_DOMAIN, NO_DOT_IN_DOMAIN, SHORT_TLD, UNKNOWN_TLD)

_LOCAL_CHARS = r"a-z0-9!#$%&'*+/=?^_`{|}~-"  # Actito's local-part characters, lowercase after normalising
_ATOM = f"[{_LOCAL_CHARS}]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
#: one RE2 pass that accepts exactly the shape rules above (the top-level domain is checked apart)
EMAIL_SHAPE = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+{_LABEL}$"

#: below this many values the TLD is looked up apart: RE2 compiles the one-pass pattern at each call
ONE_PASS_MIN_VALUES = 30_000


@functools.cache
def known_tlds() -> pa.Array:
    """IANA's top-level domains, lowercase (read once from etl/values/data/tlds.txt)."""
    names = [line.strip().lower() for line in reference_text("tlds.txt", encoding="ascii").splitlines()]
    return pa.array(sorted({name for name in names if name and not name.startswith("#")}), STRING)


def normalise_emails(values: pa.Array) -> pa.Array:
    """Trim, strip leading ``mailto:`` (any case, repeated), trim, lowercase. Idempotent."""
    text = pc.utf8_trim_whitespace(as_text(values, "the identifier column"))
    prefixed = pc.fill_null(pc.starts_with(text, "mailto:", ignore_case=True), False)
    if pc.any(prefixed).as_py():
        # a pass per repetition over the prefixed values only, never a pass per row
        subset = text.filter(prefixed)
        while True:
            again = pc.starts_with(subset, "mailto:", ignore_case=True)
            if not pc.any(again).as_py():
                break
            stripped = pc.utf8_trim_whitespace(
                pc.replace_substring_regex(subset, r"^(?i:mailto:)", "", max_replacements=1)
            )
            subset = pc.if_else(again, stripped, subset)
        text = pc.replace_with_mask(text, prefixed, subset)
    # lowercasing ASCII needs no Unicode tables; the result is the same for pure-ASCII text
    return pc.ascii_lower(text) if _is_ascii(text) else pc.utf8_lower(text)


def _is_ascii(values: pa.Array) -> bool:
    """Whether every byte of the string array's values is ASCII (one look at the data buffer)."""
    if len(values) == 0 or values.null_count == len(values):
        return True
    offsets = np.frombuffer(values.buffers()[1], np.int64 if pa.types.is_large_string(values.type) else np.int32)
    start, end = int(offsets[values.offset]), int(offsets[values.offset + len(values)])
    data = np.frombuffer(values.buffers()[2], np.uint8)[start:end]
    return len(data) == 0 or int(data.max()) < 0x80


@functools.cache
def _acceptable_email() -> str:
    """EMAIL_SHAPE whose last label is one of IANA's TLDs: shape and TLD in one RE2 pass (every TLD is
    itself a valid label, so this accepts exactly what both accept)."""
    tlds = "|".join(re.escape(tld) for tld in sorted(known_tlds().to_pylist(), key=len, reverse=True))
    return EMAIL_SHAPE.removesuffix(f"{_LABEL}$") + f"(?:{tlds})$"


def _email_shape(values: pa.Array) -> pa.Array:
    """Boolean per value: the whole address is acceptable (shape, known TLD and length)."""
    if len(values) >= ONE_PASS_MIN_VALUES:
        acceptable = pc.match_substring_regex(values, _acceptable_email())
    else:
        shaped = pc.fill_null(pc.match_substring_regex(values, EMAIL_SHAPE), False)
        # the text after the last dot; every shaped value has one (others are given a dummy)
        parts = pc.split_pattern(pc.if_else(shaped, values, "."), ".", max_splits=1, reverse=True)
        acceptable = pc.and_kleene(shaped, pc.is_in(pc.list_element(parts, 1), value_set=known_tlds()))
    # an acceptable address is ASCII, so its length in bytes is its length in characters
    short = pc.less_equal(pc.binary_length(values), MAX_EMAIL_LENGTH)
    return pc.fill_null(pc.and_kleene(acceptable, short), False)


def email_rejection_reasons(values: pa.Array) -> pa.Array:
    """Per value: None when it is an acceptable e-mail address, else why not (values already normalised)."""
    values = as_text(values, "the identifier column")
    valid = _email_shape(values)
    reasons = pa.nulls(len(values), STRING)
    invalid = pc.invert(valid)
    if not pc.any(invalid).as_py():
        return reasons
    return pc.replace_with_mask(reasons, invalid, _email_reasons(pc.filter(values, invalid)))


def _email_reasons(values: pa.Array) -> pa.Array:
    """The reason for each value, all of which are known to be invalid (the slow, rare path)."""
    at_count = pc.count_substring(values, "@")
    local = pc.struct_field(pc.extract_regex(values, r"^(?P<local>[^@]*)@"), "local")
    domain = pc.struct_field(pc.extract_regex(values, r"@(?P<domain>[^@]*)$"), "domain")
    tld = pc.struct_field(pc.extract_regex(domain, r"\.(?P<tld>[^.]*)$"), "tld")
    checks = [
        (pc.or_kleene(pc.is_null(values), pc.equal(values, "")), MISSING),
        (pc.match_substring(values, "\ufffd"), NOT_UTF8),
        (pc.greater(pc.utf8_length(values), MAX_EMAIL_LENGTH), TOO_LONG),
        (pc.equal(at_count, 0), NO_AT),
        (pc.greater(at_count, 1), SEVERAL_AT),
        (pc.equal(local, ""), NOTHING_BEFORE_AT),
        (pc.equal(domain, ""), NOTHING_AFTER_AT),
        (pc.invert(pc.match_substring_regex(local, f"^[.{_LOCAL_CHARS}]+$")), BAD_LOCAL_CHARACTER),
        (pc.match_substring(values, ".."), DOUBLE_DOT),
        (pc.or_kleene(pc.starts_with(local, "."), pc.ends_with(local, ".")), EDGE_DOT),
        (pc.invert(pc.match_substring_regex(domain, rf"^{_LABEL}(?:\.{_LABEL})*$")), BAD_DOMAIN),
        (pc.invert(pc.match_substring(domain, ".")), NO_DOT_IN_DOMAIN),
        (pc.less(pc.utf8_length(tld), 2), SHORT_TLD),
        (pc.invert(pc.is_in(tld, value_set=known_tlds())), UNKNOWN_TLD),
    ]
    return first_reason(checks, INVALID_EMAIL)


def email_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The field rule: normalised address, or why not; "missing" is left to the required check."""
    emails = normalise_emails(text)
    emails = pc.if_else(pc.equal(emails, ""), pa.scalar(None, STRING), emails)
    reasons = email_rejection_reasons(emails)
    bad = pc.and_(pc.is_valid(emails), pc.is_valid(reasons))
    return emails, explain(
        bad, lambda m: concat(quote(pc.filter(text, m)), " is not an accepted e-mail address: ", pc.filter(reasons, m))
    )
