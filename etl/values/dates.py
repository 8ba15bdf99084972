"""Dates ``yyyy-MM-dd`` and date-times ``yyyy-MM-dd HH:mm:ss``. ``dd/MM/yyyy`` is rejected, not read:
``03/04/1990`` is April in Belgium and March in the United States, and a silently wrong birth date is
worse than a rejected row. A string with a zone is rejected: which zone the destination reads it in is
undocumented, so converting is left to the SQL (``AT TIME ZONE``), where it is visible."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.values.text import STRING, concat, explain, saying, trim

_DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}$"
_DATETIME_SHAPE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
#: a date, optionally with a time of day (checked here: its date alone must not hide a broken time)
_DATE_TEXT = (
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[ T](?P<hm>(?:[01]\d|2[0-3]):[0-5]\d)(?::(?P<s>[0-5]\d)(?:\.\d+)?)?)?$"
)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _real_calendar(candidates: pa.Array, shape: str) -> pa.Array:
    """True where the text has the shape and names a real day and time (``1990-02-31`` does not).
    Arrow's strict cast is tried first; the digits are checked only where it refuses (``strptime``
    would roll 1990-02-31 over to 1990-03-03)."""
    shaped = pc.fill_null(pc.match_substring_regex(candidates, shape), False)
    if not pc.any(shaped).as_py():
        return shaped
    safe = pc.if_else(shaped, candidates, "2000-01-01 00:00:00" if shape == _DATETIME_SHAPE else "2000-01-01")
    try:  # Arrow's own parser is strict about calendars: when it reads every value, all are real
        pc.cast(safe, pa.timestamp("s"))
        return shaped
    except pa.ArrowInvalid:
        pass  # at least one is not: find which

    def number(start: int, stop: int) -> np.ndarray:
        digits = pc.utf8_slice_codeunits(safe, start, stop)
        return np.asarray(pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    days = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    ok = month_ok & (day >= 1) & (day <= days)
    if shape == _DATETIME_SHAPE:
        ok &= (number(11, 13) <= 23) & (number(14, 16) <= 59) & (number(17, 19) <= 59)
    return pc.and_(shaped, pa.array(ok))


#: the seconds since 1970 of 0001-01-01 00:00:00 and 9999-12-31 23:59:59: four-digit years only
_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799


def _date_candidates(raw: pa.Array, text: pa.Array, with_time: bool) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(value present, canonical text, text is a real date or date-time). Typed columns are cast (they
    fail only by a year outside 0001–9999); only strings not already canonical go through the regex."""
    kind = raw.type
    width = 19 if with_time else 10
    if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        if pa.types.is_date(kind):
            seconds = pc.cast(pc.cast(raw, pa.date32()), pa.timestamp("s"))
        else:
            local = pc.local_timestamp(raw) if kind.tz else raw  # the wall-clock time of the column's zone
            seconds = pc.cast(pc.floor_temporal(local, unit="second"), pa.timestamp("s"))
        count = pc.cast(seconds, pa.int64())
        inside = pc.and_(pc.greater_equal(count, _FIRST_SECOND), pc.less_equal(count, _LAST_SECOND))
        safe = pc.if_else(inside, seconds, pa.scalar(0, pa.timestamp("s")))
        written = pc.utf8_slice_codeunits(pc.cast(safe, STRING), 0, width)
        return pc.is_valid(raw), written, pc.fill_null(inside, False)
    trimmed = trim(text)
    shape = _DATETIME_SHAPE if with_time else _DATE_SHAPE
    canonical = pc.fill_null(pc.match_substring_regex(trimmed, shape), False)
    other = pc.and_(pc.is_valid(trimmed), pc.invert(canonical))
    candidates = trimmed
    if pc.any(other).as_py():
        candidates = pc.replace_with_mask(trimmed, other, _canonical_dates(pc.filter(trimmed, other), with_time))
    return pc.is_valid(trimmed), candidates, _real_calendar(candidates, shape)


def _canonical_dates(values: pa.Array, with_time: bool) -> pa.Array:
    """``yyyy-MM-dd[T| ]HH:mm[:ss[.fff]]`` → ``yyyy-MM-dd`` or ``yyyy-MM-dd HH:mm:ss`` (None if not that)."""
    parts = pc.extract_regex(values, _DATE_TEXT)
    day = pc.struct_field(parts, "date")
    if not with_time:
        return day
    hm, seconds = pc.struct_field(parts, "hm"), pc.struct_field(parts, "s")
    return concat(day, " ", pc.if_else(pc.equal(hm, ""), "00:00", hm), ":",
                  pc.if_else(pc.equal(seconds, ""), "00", seconds))


def date_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    return _dates(raw, text, with_time=False, what=" is not a date (yyyy-MM-dd)")


def datetime_rule(raw: pa.Array, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    return _dates(raw, text, with_time=True, what=" is not a date-time (yyyy-MM-dd HH:mm:ss)")


def _dates(raw: pa.Array, text: pa.Array, *, with_time: bool, what: str) -> tuple[pa.Array, pa.Array]:
    present, candidates, ok = _date_candidates(raw, text, with_time)
    return candidates, explain(pc.and_(present, pc.invert(ok)), saying(text, what))
