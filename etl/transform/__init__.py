"""Clean audience identifiers chunk by chunk: pick the column, normalise, validate, deduplicate.

Everything on the hot path is vectorised (``pyarrow.compute`` and numpy); no Python loop runs
per row. The cleaner keeps state across the chunks of one stream: the identifier column chosen
on the first chunk, the 1-based row number of the next source row, the counts, and the memory
of identifiers already kept (for deduplication over the whole stream, not per chunk).

E-mail addresses (``identifier = "email"``)
    Normalisation: trim white space (Unicode), strip a leading ``mailto:`` (any case, repeated),
    trim again, lowercase. Normalising twice gives the same result as normalising once.

    Validation mirrors Actito's acceptance rules for ``emailAddress``; one reason per rejected
    row, the most basic failure first (see :data:`EMAIL_REASONS` for the exact wording)::

        missing                          null, or empty after trimming
        not UTF-8 text                   bytes from the warehouse that do not decode as UTF-8
                                         (a blob, SQLite text); shown with U+FFFD in their place
        longer than 255 characters       Actito stores strings of at most 255 characters
        no @ / more than one @           exactly one @ is required
        nothing before the @
        nothing after the @
        character not allowed before the @
                                         only a-z 0-9 and . ! # $ % & ' * + - / = ? ^ _ ` { | } ~
                                         (no accented letters, no spaces, no quotes "...")
        two dots in a row                anywhere in the address
        dot at the start or end of the part before the @
        invalid domain                   labels of a-z 0-9 and '-', a label neither starts nor
                                         ends with '-', no empty label
        no dot after the @               Actito's shape is local@domain.suffix: ``x@localhost``
                                         and a bare top-level domain (``x@xn--p1ai``) are refused
        top-level domain shorter than 2 characters
        unknown top-level domain         not in IANA's list (etl/values/data/tlds.txt); ``xn--`` IDN
                                         top-level domains are in that list

    Decision — dots at the edges of the local part (``.john@x.be``, ``john.@x.be``): rejected.
    Actito's published rules do not mention them, but RFC 5322 (dot-atom) forbids them and
    mail servers refuse such addresses, so they could never be reached; rejecting them here
    names the problem instead of sending a line Actito may refuse or never deliver to.

Actito profile ids (``identifier = "profileId"``)
    Accepted: integer columns; strings that are, after trimming, digits only (no sign, no
    decimal point; leading zeros are dropped: ``"007"`` -> ``"7"``); float and decimal columns
    only when the value is a whole number (``42.0`` -> ``"42"``). Rejected: nulls and empty
    strings (``missing``), zero, negatives, values beyond the signed 64-bit range, and anything
    else (see :data:`PROFILE_ID_REASONS`). Output: canonical decimal strings.

Deduplication
    The first occurrence of an identifier (after normalisation) is kept; later ones are dropped,
    counted in ``counts.duplicates`` and listed in ``rejects`` with reason ``duplicate``, so the
    reject file accounts for every dropped row. See :class:`SeenHashes` for how this stays
    small and fast.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import TransformError

IdentifierKind = Literal["email", "profileId"]

#: the column header Actito matches on, per identifier kind
HEADER: dict[IdentifierKind, str] = {"email": "emailAddress", "profileId": "profileId"}

#: column names recognised without configuration, in order of preference (case-insensitive)
ALIASES: dict[IdentifierKind, tuple[str, ...]] = {
    "email": ("emailAddress", "email", "email_address", "mail"),
    "profileId": ("profileId", "profile_id", "actito_profile_id"),
}

#: Actito stores strings of at most this many characters
MAX_EMAIL_LENGTH = 255

MISSING = "missing"
NOT_UTF8 = "not UTF-8 text (undecodable bytes shown as U+FFFD)"
DUPLICATE = "duplicate"
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
EMAIL_REASONS = (
    MISSING,
    NOT_UTF8,
    TOO_LONG,
    NO_AT,
    SEVERAL_AT,
    NOTHING_BEFORE_AT,
    NOTHING_AFTER_AT,
    BAD_LOCAL_CHARACTER,
    DOUBLE_DOT,
    EDGE_DOT,
    BAD_DOMAIN,
    NO_DOT_IN_DOMAIN,
    SHORT_TLD,
    UNKNOWN_TLD,
)

NOT_A_NUMBER = "not a number"
HAS_SIGN = "sign not allowed"
HAS_DECIMAL_POINT = "decimal point not allowed"
NOT_WHOLE = "not a whole number"
NEGATIVE = "negative"
ZERO = "zero"
TOO_LARGE = "too large (beyond 9223372036854775807)"

#: every reason a profile id can be rejected with
PROFILE_ID_REASONS = (MISSING, NOT_A_NUMBER, HAS_SIGN, HAS_DECIMAL_POINT, NOT_WHOLE, NEGATIVE, ZERO, TOO_LARGE)

_LOCAL_CHARS = r"a-z0-9!#$%&'*+/=?^_`{|}~-"  # Actito's local-part characters, lowercase after normalising
_ATOM = f"[{_LOCAL_CHARS}]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
#: one RE2 pass that accepts exactly the shape rules above (the top-level domain is checked apart)
EMAIL_SHAPE = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+{_LABEL}$"

_INT64_MAX = str(np.iinfo(np.int64).max)

REJECTS_SCHEMA = pa.schema([("row", pa.int64()), ("value", pa.string()), ("reason", pa.string())])


@dataclass
class AudienceCounts:
    """Rows seen so far: extracted = kept + rejected + duplicates."""

    extracted: int = 0
    rejected: int = 0
    duplicates: int = 0
    kept: int = 0


@dataclass(frozen=True)
class CleanBatch:
    #: string identifiers, normalised, valid, not seen earlier in the stream
    identifiers: pa.Array
    #: every dropped row: row (1-based over the stream), value (original, as text), reason
    rejects: pa.Table = field(default_factory=REJECTS_SCHEMA.empty_table)
    #: `hash_identifiers` of ``identifiers``, computed for the dedupe: the members snapshot reuses them
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))


@functools.cache
def known_tlds() -> pa.Array:
    """IANA's top-level domains, lowercase (read once from etl/values/data/tlds.txt)."""
    text = importlib.resources.files("etl.values").joinpath("data", "tlds.txt").read_text(encoding="ascii")
    names = [line.strip().lower() for line in text.splitlines()]
    return pa.array(sorted({name for name in names if name and not name.startswith("#")}), pa.string())


# --------------------------------------------------------------------------- e-mail


def normalise_emails(values: pa.Array) -> pa.Array:
    """Trim, strip leading ``mailto:`` (any case, repeated), trim, lowercase. Idempotent."""
    text = pc.utf8_trim_whitespace(_as_text(values))
    prefixed = pc.fill_null(pc.starts_with(text, "mailto:", ignore_case=True), False)
    if pc.any(prefixed).as_py():
        # only the values that start with mailto: are stripped, repeatedly (almost always once):
        # a pass per repetition over those values, never a pass per row
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
    """EMAIL_SHAPE whose last label is one of IANA's top-level domains: shape and TLD in one RE2 pass.

    Every top-level domain is itself a valid label, so this accepts exactly what EMAIL_SHAPE and
    the TLD list accept together; splitting off the TLD and looking it up took longer than the
    shape check (5.7M addresses: 1.9 s of CPU for both, 1.35 s in one pass).
    """
    tlds = "|".join(re.escape(tld) for tld in sorted(known_tlds().to_pylist(), key=len, reverse=True))
    return EMAIL_SHAPE.removesuffix(f"{_LABEL}$") + f"(?:{tlds})$"


#: Below this many values the TLD is looked up apart from the shape: RE2 compiles the one-pass
#: pattern (every TLD spelled out) at each call, about 3 ms, and it saves about 0.1 µs a value, so
#: with small chunks (chunk_size = 100: 3,000 calls for 300k rows) the one pass doubled a run's time.
ONE_PASS_MIN_VALUES = 30_000


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
    values = _as_text(values)
    valid = _email_shape(values)
    reasons = pa.nulls(len(values), pa.string())
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
    return _first_reason(checks, INVALID_EMAIL)


def _first_reason(checks: list[tuple[pa.Array, str]], otherwise: str | None) -> pa.Array:
    conditions = pc.make_struct(
        *[pc.fill_null(condition, False) for condition, _ in checks], field_names=[str(i) for i in range(len(checks))]
    )
    return pc.case_when(conditions, *[pa.scalar(r, pa.string()) for _, r in checks], pa.scalar(otherwise, pa.string()))


# --------------------------------------------------------------------------- profileId


def _profile_ids(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(canonical id or null, reason or null) per value."""
    kind = raw.type
    if pa.types.is_dictionary(kind):
        raw = raw.dictionary_decode()
        kind = raw.type
    if pa.types.is_integer(kind):
        return _integer_ids(raw)
    if pa.types.is_floating(kind):
        return _float_ids(raw)
    if pa.types.is_decimal(kind):
        return _digit_ids(text, allow_zero_fraction=True)
    return _digit_ids(text, allow_zero_fraction=False)


def _integer_ids(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    never = pa.array(np.zeros(len(raw), dtype=bool))
    if pa.types.is_unsigned_integer(raw.type):
        too_large = pc.greater(pc.cast(raw, pa.uint64()), pa.scalar(np.iinfo(np.int64).max, pa.uint64()))
        negative = never
    else:
        too_large, negative = never, pc.less(raw, 0)
    reasons = _first_reason(
        [
            (pc.is_null(raw), MISSING),
            (negative, NEGATIVE),
            (pc.equal(raw, pa.scalar(0, raw.type)), ZERO),
            (too_large, TOO_LARGE),
        ],
        None,
    )
    return pc.if_else(pc.is_null(reasons), pc.cast(raw, pa.string()), pa.scalar(None, pa.string())), reasons


def _float_ids(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    values = pc.cast(raw, pa.float64())
    finite = pc.is_finite(values)
    limit = float(2**63)
    reasons = _first_reason(
        [
            (pc.is_null(values), MISSING),
            (pc.invert(finite), NOT_A_NUMBER),
            (pc.not_equal(values, pc.floor(values)), NOT_WHOLE),
            (pc.less(values, 0), NEGATIVE),
            (pc.equal(values, 0), ZERO),
            (pc.greater_equal(values, limit), TOO_LARGE),
        ],
        None,
    )
    ok = pc.is_null(reasons)
    whole = pc.cast(pc.if_else(ok, values, 1.0), pa.int64())  # every remaining value is integral and in range
    return pc.if_else(ok, pc.cast(whole, pa.string()), pa.scalar(None, pa.string())), reasons


def _digit_ids(text: pa.Array, *, allow_zero_fraction: bool) -> tuple[pa.Array, pa.Array]:
    """Strings of digits (decimals as text when ``allow_zero_fraction``: ``42.00`` is 42)."""
    trimmed = pc.utf8_trim_whitespace(text)
    number = pc.extract_regex(trimmed, r"^(?P<sign>[+-]?)(?P<int>[0-9]*)(?P<frac>(?:\.[0-9]*)?)$")
    sign = pc.struct_field(number, "sign")
    digits = pc.replace_substring_regex(pc.struct_field(number, "int"), "^0+", "")
    frac = pc.struct_field(number, "frac")
    has_digits = pc.match_substring_regex(trimmed, "[0-9]")
    frac_nonzero = pc.match_substring_regex(frac, "[1-9]")
    frac_present = pc.not_equal(frac, "")
    if allow_zero_fraction:
        decimal_problem, decimal_reason = frac_nonzero, NOT_WHOLE
    else:
        decimal_problem, decimal_reason = frac_present, HAS_DECIMAL_POINT
    numeric = pc.and_kleene(pc.is_valid(number), has_digits)
    reasons = _first_reason(
        [
            (pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, "")), MISSING),
            (pc.invert(numeric), NOT_A_NUMBER),
            (pc.and_kleene(pc.equal(sign, "-"), pc.or_kleene(pc.not_equal(digits, ""), frac_nonzero)), NEGATIVE),
            (decimal_problem, decimal_reason),
            (pc.equal(sign, "+"), HAS_SIGN),
            (pc.equal(sign, "-"), ZERO),  # "-0": negative zero is still zero
            (pc.equal(digits, ""), ZERO),
            (
                pc.or_kleene(
                    pc.greater(pc.utf8_length(digits), len(_INT64_MAX)),
                    pc.and_kleene(pc.equal(pc.utf8_length(digits), len(_INT64_MAX)), pc.greater(digits, _INT64_MAX)),
                ),
                TOO_LARGE,
            ),
        ],
        None,
    )
    return pc.if_else(pc.is_null(reasons), digits, pa.scalar(None, pa.string())), reasons


# --------------------------------------------------------------------------- shared helpers


def _as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The values as a string array, whatever the database type (None stays None)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_dictionary(kind):
        return _as_text(values.dictionary_decode())
    if pa.types.is_string(kind):
        return values
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        try:
            return pc.cast(values, pa.string())
        except pa.ArrowInvalid:  # not UTF-8: decode what can be, so the value is visible in the rejects
            return pa.array(
                [None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()], pa.string()
            )
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TransformError(f"the identifier column has type {kind}, which cannot be read as text") from exc


def _splitmix64(seed: int, count: int) -> list[int]:
    """``count`` well-mixed 64-bit constants from ``seed`` (SplitMix64): the same on every platform and version."""
    mask = (1 << 64) - 1
    out = []
    for _ in range(count):
        seed = (seed + 0x9E3779B97F4A7C15) & mask
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


#: odd multipliers of the identifier hash: the length's, then one per 8-byte word position (cycling after 32)
_HASH_MULTIPLIERS = np.array([value | 1 for value in _splitmix64(0x5EED, 33)], dtype=np.uint64)


def hash_identifiers(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string's UTF-8 bytes, as a numpy uint64 array (nulls hash as empty strings).

    Vectorised over the Arrow buffers, without a Python object per value: the bytes are read as
    little-endian 8-byte words (the last one zero-padded), and each word is folded into the
    running hash through an odd multiplier and the MurmurHash3 finaliser, starting from the
    length. Every step is a bijection of the running hash, so two identifiers of the same length
    that differ in one word never collide; otherwise the hash behaves as a random 64-bit value.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    count = len(values)
    if count == 0:
        return np.empty(0, np.uint64)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], offset_type)[values.offset : values.offset + count + 1]
    offsets = offsets.astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.zeros(last - first + 8, np.uint8)  # 8 bytes of padding: a word may start at the last byte
    if last > first:
        data[: last - first] = np.frombuffer(values.buffers()[2], np.uint8)[first:last]
    words = np.ndarray(buffer=data, dtype="<u8", shape=(last - first + 1,), strides=(1,))  # a word at every byte
    starts = offsets[:-1] - first
    lengths = np.diff(offsets)
    if values.null_count:
        lengths[pc.is_null(values).to_numpy(zero_copy_only=False)] = 0
    with np.errstate(over="ignore"):
        hashes = _fmix64(lengths.astype(np.uint64) * _HASH_MULTIPLIERS[0] + np.uint64(0x5EED))
        rows = np.flatnonzero(lengths > 0)
        position = 0
        while len(rows):
            word = words[starts[rows] + position]
            left = lengths[rows] - position
            partial = left < 8
            if partial.any():  # keep only the string's own bytes of its last word
                shift = (8 - left[partial]).astype(np.uint64) * np.uint64(8)
                word[partial] = (word[partial] << shift) >> shift
            multiplier = _HASH_MULTIPLIERS[1 + (position // 8) % 32]
            if len(rows) == count:
                hashes = _fmix64(hashes + word * multiplier)
            else:
                hashes[rows] = _fmix64(hashes[rows] + word * multiplier)
            position += 8
            rows = rows[lengths[rows] > position]
    return hashes


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection with full avalanche), in place."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


class SeenHashes:
    """The set of 64-bit hashes of every identifier kept so far, with vectorised membership.

    Memory is 8 bytes per kept identifier whatever the identifiers' width (plus a transient copy
    while two runs merge). The hashes live in a few sorted numpy arrays whose sizes roughly
    halve from the first to the last (a log-structured merge): a new chunk's hashes are appended
    as one more sorted run, and the last two runs are merged while the newer one is at least
    half the size of the older, so each hash is merged O(log n) times. A run of
    ``MERGE_LIMIT`` hashes or more is not merged any further: a merge holds both runs and their
    copy at once, and merging the largest runs made the peak memory of a 5M-address audience
    jump by 40 MB. So there are O(n / MERGE_LIMIT + log n) runs; membership is one
    ``searchsorted`` per run.

    In front of the runs, a bitmap of ``FILTER_BITS`` bits (8 MB) has the bit of each kept hash
    set (its top bits pick it): a hash whose bit is clear was never kept, and only the others are
    searched for in the runs. With 5M identifiers kept, 7 % of the bits are set, so most new
    identifiers skip the search (5.7M e-mails: 1.6 s of CPU in the runs' searches before).

    Collisions: two different identifiers share a 64-bit hash with probability about
    n² / 2⁶⁵ over n kept identifiers — about 3·10⁻⁶ for 10 million. A collision would drop the
    later identifier as a "duplicate" (visible in the reject file), never add a wrong one.
    """

    #: runs of this many hashes (8 MB) or more are left as they are
    MERGE_LIMIT = 1 << 20
    #: bits of the bitmap in front of the runs (a power of two)
    FILTER_BITS = 1 << 26

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._filter: np.ndarray | None = None  # made at the first hash kept
        self._filter_shift = np.uint64(64 - (self.FILTER_BITS.bit_length() - 1))

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if self._filter is None:
            return found
        places, masks = self._filter_bits(hashes)
        maybe = np.flatnonzero(self._filter[places] & masks)
        if len(maybe) == 0:
            return found
        candidates = hashes[maybe]
        seen = np.zeros(len(candidates), dtype=bool)
        for run in self._runs:
            positions = np.searchsorted(run, candidates)
            np.minimum(positions, len(run) - 1, out=positions)  # past the end: compared with the last, unequal
            seen |= run[positions] == candidates
        found[maybe] = seen
        return found

    def add_new(self, hashes: np.ndarray) -> np.ndarray:
        """Mark which hashes are new (first occurrence in ``hashes``, never seen before) and remember them."""
        keep = np.zeros(len(hashes), dtype=bool)
        if len(hashes) == 0:
            return keep
        unique, first = _unique_first(hashes)
        new = ~self.contains(unique)
        keep[first[new]] = True
        self._add_sorted(unique[new])
        return keep

    def _filter_bits(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The byte of the bitmap for each hash, and the mask of its bit in that byte."""
        bits = (hashes >> self._filter_shift).astype(np.int64)
        return bits >> 3, np.left_shift(np.uint8(1), (bits & 7).astype(np.uint8))

    def _add_sorted(self, run: np.ndarray) -> None:
        if len(run) == 0:
            return
        if self._filter is None:
            self._filter = np.zeros(self.FILTER_BITS // 8, dtype=np.uint8)
        places, masks = self._filter_bits(run)  # sorted, as the run is
        starts = np.flatnonzero(np.concatenate(([True], places[1:] != places[:-1])))
        self._filter[places[starts]] |= np.bitwise_or.reduceat(masks, starts)
        self._runs.append(run)
        while (
            len(self._runs) > 1
            and 2 * len(self._runs[-1]) >= len(self._runs[-2])
            and len(self._runs[-2]) < self.MERGE_LIMIT
        ):
            newer = self._runs.pop()
            older = self._runs.pop()
            merged = np.concatenate([older, newer])
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self._runs.append(merged)


def _unique_first(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(hashes, return_index=True)``: the sorted distinct values and each one's first position.

    The same result from an unstable sort (several times faster than the stable one ``np.unique``
    needs for first positions): the first position of a value is the least of its positions.
    """
    order = np.argsort(hashes)
    ordered = hashes[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.minimum.reduceat(order, starts)


# --------------------------------------------------------------------------- the cleaner


class AudienceCleaner:
    """Turn the chunks of one audience query into clean, unique identifiers (stateful)."""

    def __init__(self, kind: IdentifierKind, *, column: str | None = None, where: str = "") -> None:
        if kind not in HEADER:
            raise ValueError(f"unknown identifier kind {kind!r}: use one of {', '.join(HEADER)}")
        self.kind: IdentifierKind = kind
        self.column = column
        self.where = where
        self.counts = AudienceCounts()
        self.column_used: str | None = None
        self._seen = SeenHashes()
        self._next_row = 1

    def clean(self, batch: pa.RecordBatch | pa.Table) -> CleanBatch:
        name = self.identifier_column(batch.schema.names)
        raw = batch.column(batch.schema.names.index(name))
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        _check_column_type(self.kind, name, raw.type, self.where)
        rows = len(raw)
        first_row = self._next_row
        self._next_row += rows
        text = _as_text(raw)

        if self.kind == "email":
            identifiers = normalise_emails(text)
            reasons = email_rejection_reasons(identifiers)
        else:
            identifiers, reasons = _profile_ids(raw, text)

        valid = pc.is_null(reasons)
        valid_positions = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
        candidates = identifiers.take(pa.array(valid_positions, pa.int64()))
        candidate_hashes = hash_identifiers(candidates)
        keep = self._seen.add_new(candidate_hashes)
        kept = candidates.filter(pa.array(keep))
        duplicate_positions = valid_positions[~keep]

        invalid = pc.invert(valid)
        invalid_positions = np.flatnonzero(invalid.to_numpy(zero_copy_only=False))
        positions = np.concatenate([invalid_positions, duplicate_positions])
        reasons_out = pa.concat_arrays(
            [
                reasons.filter(invalid),
                pa.array(np.full(len(duplicate_positions), DUPLICATE, dtype=object), pa.string()),
            ]
        )
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        rejects = pa.table(
            [
                pa.array(positions + first_row, pa.int64()),
                text.take(pa.array(positions, pa.int64())),
                reasons_out.take(pa.array(order, pa.int64())),
            ],
            schema=REJECTS_SCHEMA,
        )

        self.counts.extracted += rows
        self.counts.rejected += len(invalid_positions)
        self.counts.duplicates += len(duplicate_positions)
        self.counts.kept += len(kept)
        return CleanBatch(identifiers=kept, rejects=rejects, hashes=candidate_hashes[keep])

    def identifier_column(self, names: list[str]) -> str:
        """The column holding the identifiers, chosen once by name (the first chunk's)."""
        if self.column_used is not None:
            if self.column_used not in names:
                raise TransformError(
                    f"a later chunk of the result has no column {self.column_used!r} (columns: {_listing(names)})",
                    where=self.where,
                )
            return self.column_used
        chosen = self._choose_column(names)
        if names.count(chosen) > 1:
            raise TransformError(
                f"the query returns two columns named {chosen!r}",
                where=self.where,
                hint="give each column a distinct name in the SQL",
            )
        self.column_used = chosen
        return chosen

    def _choose_column(self, names: list[str]) -> str:
        if not names:
            raise TransformError("the query returns no columns", where=self.where)
        by_lower: dict[str, list[str]] = {}
        for name in names:
            by_lower.setdefault(name.lower(), []).append(name)
        hint = (
            f"alias the column in the SQL (e.g. SELECT {_example(self.kind)} AS \"{HEADER[self.kind]}\") "
            "or set identifier_column in the activation"
        )
        if self.column is not None:
            if self.column in names:
                return self.column
            found = _one_of_columns(by_lower.get(self.column.lower(), []), f"identifier_column {self.column!r} matches", self.where)
            if found:
                return found
            raise TransformError(
                f"identifier_column {self.column!r} is not a column of the query (columns: {_listing(names)})",
                where=self.where,
                hint=hint,
            )
        for alias in ALIASES[self.kind]:
            found = _one_of_columns(by_lower.get(alias.lower(), []), f"the {_what(self.kind)} could be in", self.where)
            if found:
                return found
        if len(names) == 1:
            return names[0]
        raise TransformError(
            f"cannot tell which column holds the {_what(self.kind)}: the query returns {_listing(names)}",
            where=self.where,
            hint=hint,
        )


def _holds_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
            or pa.types.is_null(kind))


def _column_type_fits(kind: IdentifierKind, column_type: pa.DataType) -> bool:
    """Whether a column of this type can hold identifiers of this kind at all (its values are then
    checked one by one). E-mails: text, or bytes (MySQL VARBINARY, a bytea) read as UTF-8.
    Profile ids: integers, whole floats and decimals, or text of digits."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    if _holds_text(column_type):
        return True
    if kind == "email":
        return pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type) or pa.types.is_binary_view(
            column_type)
    return pa.types.is_integer(column_type) or pa.types.is_floating(column_type) or pa.types.is_decimal(column_type)


def _check_column_type(kind: IdentifierKind, name: str, column_type: pa.DataType, where: str) -> None:
    """A date, a number or a flag in the e-mail column is the wrong column, not a million dirty rows:
    say so once instead of rejecting every row (and delivering an empty audience)."""
    if _column_type_fits(kind, column_type):
        return
    plural = "e-mail addresses" if kind == "email" else "Actito profile ids"
    wanted = "text" if kind == "email" else "integers, or text of digits"
    raise TransformError(
        f"the identifier column {name!r} has type {column_type}, which cannot hold {plural}",
        where=where,
        hint=f"select the column that holds the {plural} ({wanted}), or set identifier_column",
    )


def _one_of_columns(matches: list[str], what: str, where: str) -> str | None:
    """The one column matching a name case-insensitively; None if none; an error if several do."""
    if len(matches) > 1:
        raise TransformError(
            f"{what} several columns: {_listing(matches)}",
            where=where,
            hint="give the columns names that differ by more than case, or set identifier_column",
        )
    return matches[0] if matches else None


def _listing(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _what(kind: IdentifierKind) -> str:
    return "e-mail address" if kind == "email" else "Actito profile id"


def _example(kind: IdentifierKind) -> str:
    return "email" if kind == "email" else "customer_profile_id"
