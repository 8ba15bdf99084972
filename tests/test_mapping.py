"""Rows → Actito import columns: each format rule, the presets, row numbers across chunks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.destinations.actito.presets import didomi_mapping, qualifio_interaction_mapping, qualifio_mapping
from etl.errors import MappingError
from etl.transform.mapping import (
    REJECTS_SCHEMA,
    FieldMap,
    Mapping,
    RowMapper,
    SubscriptionMap,
    explicit_mapping,
    qualifio_subscription_name,
    reject_counts,
    with_policy,
)
from etl.values.countries import country_codes
from etl.values.languages import language_codes
from etl.values.rules import RULES, FieldRule, apply_rule
from etl.errors import TransformError

COUNTRIES = set(country_codes().to_pylist())
LANGUAGES = set(language_codes().to_pylist())

# the columns of sql/qualifio_profiles.sql, sql/didomi_consents.sql and sql/qualifio_participations.sql
QUALIFIO_PROFILE_COLUMNS = [
    "firstname", "lastname", "email", "address", "number", "box", "zip", "locality", "country", "birthday",
    "gender", "phone", "actito_footballTeam", "optin_newsletter", "optin_partners",
]
DIDOMI_COLUMNS = ["organization_user_id", "consent_newsletter", "consent_partners", "consent_promotions",
                  "preferred_language"]
DIDOMI_SUBSCRIPTIONS = {"consent_newsletter": "Newsletter", "consent_partners": "Partners",
                        "consent_promotions": "Promotions"}
INTERACTION_COLUMNS = [
    "participationId", "email", "source", "updateSource", "way", "date", "surveyName", "surveyType", "surveyDate",
    "motherLanguage", "deviceName", "userAgent",
]


def one(rule: FieldRule, value: Any, kind: pa.DataType | None = None, **options: Any) -> tuple[Any, Any]:
    """(written value, reason) for one value through one rule."""
    written, reasons = apply_rule(rule, pa.array([value], kind), **options)
    return written[0].as_py(), reasons[0].as_py()


def accepted(rule: FieldRule, value: Any, expected: Any, kind: pa.DataType | None = None) -> None:
    assert one(rule, value, kind) == (expected, None)


def rejected(rule: FieldRule, value: Any, reason: str, kind: pa.DataType | None = None) -> None:
    written, why = one(rule, value, kind)
    assert (written, why) == (None, reason)


# --------------------------------------------------------------------------- reference lists


def test_the_shipped_country_list_is_iso_3166_1_alpha_2() -> None:
    assert len(COUNTRIES) == 249
    assert {"BE", "FR", "NL", "DE", "GB", "US", "LU", "CH", "AX", "SS", "BQ"} <= COUNTRIES
    assert not {"UK", "EL", "EU", "XK", "AN", "YU", ""} & COUNTRIES
    assert all(re.fullmatch("[A-Z]{2}", code) for code in COUNTRIES)
    assert country_codes() is country_codes()  # read once


def test_the_shipped_language_list_is_iso_639_1() -> None:
    assert len(LANGUAGES) == 183
    assert {"FR", "NL", "EN", "DE", "ES", "IT", "LB", "WA", "ZH"} <= LANGUAGES
    assert not {"BH", "XX", "FRE", "FRA", ""} & LANGUAGES
    assert all(re.fullmatch("[A-Z]{2}", code) for code in LANGUAGES)


# --------------------------------------------------------------------------- the rules, one by one


@pytest.mark.parametrize(
    ("value", "expected"),
    [("  Jean  ", "Jean"), ("\u00a0Zoë\t", "Zoë"), ("", None), ("   ", None), (None, None), ("a" * 255, "a" * 255)],
)
def test_string_is_trimmed_and_empty_is_none(value: Any, expected: Any) -> None:
    assert one("string", value, pa.string(), max_length=255) == (expected, None)


def test_string_longer_than_its_limit_is_rejected_not_cut() -> None:
    assert one("string", "x" * 65, max_length=64) == (None, "longer than 64 characters")
    assert one("string", " " + "x" * 64 + " ", max_length=64) == ("x" * 64, None)  # counted after trimming
    assert one("string", "é" * 64, max_length=64) == ("é" * 64, None)  # characters, not bytes


def test_string_reads_any_column_type() -> None:
    assert one("string", 1000, pa.int64()) == ("1000", None)
    assert one("string", True) == ("true", None)
    assert one("string", None, pa.null()) == (None, None)
    assert one("string", "x", pa.large_string()) == ("x", None)
    written, _ = apply_rule("string", pa.array(["a", "b", "a"]).dictionary_encode())
    assert written.to_pylist() == ["a", "b", "a"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(" MAILTO:Jean.Dupont@Example.BE ", "jean.dupont@example.be"), ("a+b@x.co.uk", "a+b@x.co.uk"), ("", None),
     (None, None)],
)
def test_email_is_normalised_like_audiences(value: Any, expected: Any) -> None:
    assert one("email", value, pa.string()) == (expected, None)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("jean.dupont", "no @"),
        ("a@b@c.be", "more than one @"),
        ("jéan@example.be", "character not allowed before the @"),
        ("jean..d@example.be", "two dots in a row"),
        ("jean@localhost", "no dot after the @"),
        ("jean@example.invalid", "unknown top-level domain"),
    ],
)
def test_email_reasons_are_etl_transforms(value: str, why: str) -> None:
    rejected("email", value, f"'{value}' is not an accepted e-mail address: {why}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-02-28", "1990-02-28"),
        (" 2000-02-29 ", "2000-02-29"),  # divisible by 400: a leap year
        ("2024-02-29", "2024-02-29"),
        ("2024-05-17 14:03:00", "2024-05-17"),  # a date-time string gives its date
        ("2024-05-17T14:03", "2024-05-17"),
        ("2024-05-17 14:03:00.123456", "2024-05-17"),
        ("", None),
        (None, None),
    ],
)
def test_date_accepts_iso_dates(value: Any, expected: Any) -> None:
    assert one("date", value, pa.string()) == (expected, None)


@pytest.mark.parametrize(
    "value",
    ["1990-02-31", "1900-02-29", "2023-02-29", "1990-13-01", "1990-00-10", "1990-04-31", "0000-00-00",
     "31/02/1990", "17/05/1990", "05/17/1990", "1990/05/17", "17-05-1990", "1990-5-17", "19900517", "yesterday",
     "2024-05-17Z", "2024-05-17T10:00:00+02:00", "2024-05-17 25:00:00"],
)
def test_date_rejects_impossible_days_and_other_formats(value: str) -> None:
    rejected("date", value, f"'{value}' is not a date (yyyy-MM-dd)")


def test_date_from_typed_columns() -> None:
    accepted("date", dt.date(1990, 5, 17), "1990-05-17")
    accepted("date", dt.date(1, 1, 1), "0001-01-01")
    accepted("date", dt.date(1990, 5, 17), "1990-05-17", pa.date64())
    accepted("date", dt.datetime(1990, 5, 17, 23, 59, 59, 999999), "1990-05-17", pa.timestamp("us"))
    # a zoned timestamp gives the day on the column's own clock: 22:30 UTC is already the next day in Brussels
    zoned = pa.array([dt.datetime(2024, 3, 30, 23, 30, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC"))
    assert apply_rule("date", zoned)[0].to_pylist() == ["2024-03-30"]
    assert apply_rule("date", zoned.cast(pa.timestamp("us", tz="Europe/Brussels")))[0].to_pylist() == ["2024-03-31"]
    # beyond year 9999: not four digits
    far = pa.array([300_000_000_000], pa.timestamp("s"))
    written, why = apply_rule("date", far)
    assert written.to_pylist() == [None]
    assert why[0].as_py().endswith("is not a date (yyyy-MM-dd)")
    rejected("date", 19900517, "'19900517' is not a date (yyyy-MM-dd)", pa.int64())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-17 14:03:09", "2024-05-17 14:03:09"),
        ("2024-05-17T14:03:09", "2024-05-17 14:03:09"),
        ("2024-05-17 14:03", "2024-05-17 14:03:00"),
        ("2024-05-17 14:03:09.999", "2024-05-17 14:03:09"),  # a fraction is dropped, never rounded up
        ("2024-05-17", "2024-05-17 00:00:00"),
        ("2024-02-29 23:59:59", "2024-02-29 23:59:59"),
        (None, None),
    ],
)
def test_datetime_accepts_iso_date_times(value: Any, expected: Any) -> None:
    assert one("datetime", value, pa.string()) == (expected, None)


@pytest.mark.parametrize(
    "value",
    ["2024-05-17 24:00:00", "2024-05-17 23:60:00", "2024-05-17 23:59:60", "2023-02-29 10:00:00",
     "2024-05-17 14:03:09Z", "2024-05-17T14:03:09+02:00", "17/05/2024 14:03", "2024-05-17 14h03", "2024-05-17 1:03"],
)
def test_datetime_rejects(value: str) -> None:
    rejected("datetime", value, f"'{value}' is not a date-time (yyyy-MM-dd HH:mm:ss)")


def test_datetime_from_typed_columns() -> None:
    accepted("datetime", dt.datetime(2024, 5, 17, 14, 3, 9, 999999), "2024-05-17 14:03:09", pa.timestamp("us"))
    accepted("datetime", dt.datetime(2024, 5, 17, 14, 3, 9), "2024-05-17 14:03:09", pa.timestamp("ns"))
    accepted("datetime", dt.date(2024, 5, 17), "2024-05-17 00:00:00")
    # before 1970 a fraction still rounds down
    accepted("datetime", dt.datetime(1969, 12, 31, 23, 59, 59, 500000), "1969-12-31 23:59:59", pa.timestamp("ms"))
    zoned = pa.array([dt.datetime(2024, 7, 1, 8, 0, tzinfo=dt.UTC)], pa.timestamp("s", tz="UTC"))
    assert apply_rule("datetime", zoned)[0].to_pylist() == ["2024-07-01 08:00:00"]
    brussels = zoned.cast(pa.timestamp("s", tz="Europe/Brussels"))
    assert apply_rule("datetime", brussels)[0].to_pylist() == ["2024-07-01 10:00:00"]


@pytest.mark.parametrize(("value", "expected"), [("M", "M"), ("F", "F"), ("m", "M"), (" f ", "F"), ("", None),
                                                 (None, None)])
def test_sex_accepts_m_and_f_in_any_case(value: Any, expected: Any) -> None:
    assert one("sex", value, pa.string()) == (expected, None)


@pytest.mark.parametrize("value", ["male", "female", "Homme", "femme", "H", "X", "1", "Mr"])
def test_sex_rejects_everything_else(value: str) -> None:
    rejected("sex", value, f"'{value}' is not a sex (M or F)")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+32470123456", "+32470123456"),
        ("+32 470 12 34 56", "+32470123456"),
        ("+32 470.12.34.56", "+32470123456"),
        ("+32-470-12-34-56", "+32470123456"),
        ("+1 (212) 555-0100", "+12125550100"),
        ("+32 (0)470 12 34 56", "+32470123456"),  # (0): the trunk prefix not dialled from abroad
        ("+32\u00a0470\u202f12\u00a034\u00a056", "+32470123456"),  # no-break and narrow no-break spaces
        ("+12345678", "+12345678"),
        ("+123456789012345", "+123456789012345"),
        ("", None),
        (None, None),
    ],
)
def test_phone_accepts_international_numbers(value: Any, expected: Any) -> None:
    assert one("phone", value, pa.string()) == (expected, None)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0470 12 34 56", "has no international prefix (+ and country code): the country cannot be guessed"),
        ("0032 470 12 34 56", "has no international prefix (+ and country code): the country cannot be guessed"),
        ("+32 470 12 34 56 ext 3", "has characters other than digits, spaces, dots, dashes and parentheses"),
        ("+32/470123456", "has characters other than digits, spaces, dots, dashes and parentheses"),
        ("+32 470 +12 34 56", "has a + inside"),
        ("+1234567", "has 7 digits after the + (8 to 15 expected)"),
        ("+1234567890123456", "has 16 digits after the + (8 to 15 expected)"),
        ("+032470123456", "has a country code that starts with 0"),
    ],
)
def test_phone_rejects(value: str, why: str) -> None:
    rejected("phone", value, f"'{value}' {why}")


def test_phone_from_a_number_column_has_no_prefix() -> None:
    written, why = one("phone", 32470123456, pa.int64())
    assert written is None and "no international prefix" in why


@pytest.mark.parametrize(("value", "expected"), [("BE", "BE"), ("be", "BE"), (" Fr ", "FR"), ("gb", "GB"),
                                                 ("", None), (None, None)])
def test_country_accepts_iso_3166_1_alpha_2(value: Any, expected: Any) -> None:
    assert one("country", value, pa.string()) == (expected, None)


@pytest.mark.parametrize(
    ("value", "hint"),
    [("Belgium", ""), ("BEL", ""), ("BE-BRU", ""), ("XX", ""), ("XK", ""), ("UK", ": the United Kingdom is GB"),
     ("el", ": Greece is GR")],
)
def test_country_rejects(value: str, hint: str) -> None:
    rejected("country", value, f"'{value}' is not an ISO 3166-1 alpha-2 country code (e.g. BE){hint}")


@pytest.mark.parametrize(("value", "expected"), [("fr", "FR"), ("NL", "NL"), (" en ", "EN"), ("fr-BE", "FR"),
                                                 ("nl_BE", "NL"), ("zh-Hant-TW", "ZH"), ("", None), (None, None)])
def test_language_accepts_iso_639_1_and_language_tags(value: Any, expected: Any) -> None:
    assert one("language", value, pa.string()) == (expected, None)


@pytest.mark.parametrize("value", ["French", "fra", "fre", "xx", "bh", "f", "fr BE", "1"])
def test_language_rejects(value: str) -> None:
    rejected("language", value, f"'{value}' is not an ISO 639-1 language code (e.g. FR)")


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("13", None, "13"), (" 007 ", None, "7"), ("+7", None, "7"), ("-12", None, "-12"), ("-0", None, "0"),
        ("12.00", None, "12"), ("9223372036854775807", None, "9223372036854775807"),
        ("-9223372036854775808", None, "-9223372036854775808"), (13, pa.int8(), "13"), (-5, pa.int64(), "-5"),
        (42.0, pa.float64(), "42"), (7, pa.uint64(), "7"), (decimal.Decimal("12.00"), pa.decimal128(5, 2), "12"),
        ("", None, None), (None, pa.float64(), None),
    ],
)
def test_integer_accepts(value: Any, kind: pa.DataType | None, expected: Any) -> None:
    assert one("integer", value, kind) == (expected, None)


@pytest.mark.parametrize(
    ("value", "kind", "why"),
    [
        ("12.5", None, "is not an integer"), ("1,000", None, "is not an integer"), ("1 000", None, "is not an integer"),
        ("thirteen", None, "is not an integer"), ("1e3", None, "is not an integer"), (True, None, "is not an integer"),
        ("9223372036854775808", None, "is out of range (64-bit integer)"),
        ("-9223372036854775809", None, "is out of range (64-bit integer)"),
        (2**64 - 1, pa.uint64(), "is out of range (64-bit integer)"),
        (12.5, pa.float64(), "is not a whole number"), (float("nan"), pa.float64(), "is not a number"),
        (1e19, pa.float64(), "is out of range (64-bit integer)"),
    ],
)
def test_integer_rejects(value: Any, kind: pa.DataType | None, why: str) -> None:
    written, reason = one("integer", value, kind)
    assert written is None and reason.endswith(why)


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("12.50", None, "12.50"), ("-0.5", None, "-0.5"), (".5", None, "0.5"), ("5.", None, "5"), ("+3", None, "3"),
        ("007.10", None, "7.10"), ("-0.00", None, "0.00"), ("1.5e3", None, "1500"), ("-1.23E-2", None, "-0.0123"),
        (12.5, pa.float64(), "12.5"), (1e10, pa.float64(), "10000000000"),  # pyarrow writes 1e+10
        (1.5e-7, pa.float64(), "0.00000015"), (0.1, pa.float32(), "0.1"), (42, pa.int32(), "42"),
        (decimal.Decimal("-3.140"), pa.decimal128(6, 3), "-3.140"), (None, None, None),
    ],
)
def test_decimal_accepts_and_writes_plain_digits(value: Any, kind: pa.DataType | None, expected: Any) -> None:
    assert one("decimal", value, kind) == (expected, None)


@pytest.mark.parametrize(
    ("value", "kind", "why"),
    [
        ("12,5", None, "is not a decimal number: the decimal separator is '.'"),
        ("1.250,5", None, "is not a decimal number (digits with an optional '.')"),
        ("abc", None, "is not a decimal number (digits with an optional '.')"),
        (".", None, "is not a decimal number (digits with an optional '.')"),
        ("1e400", None, "is out of range"),
        (float("inf"), pa.float64(), "is not a decimal number (digits with an optional '.')"),
        (1e300, pa.float64(), "is out of range"),
    ],
)
def test_decimal_rejects(value: Any, kind: pa.DataType | None, why: str) -> None:
    written, reason = one("decimal", value, kind)
    assert written is None and reason.endswith(why)


@pytest.mark.parametrize(
    ("value", "kind", "boolean", "yes_no"),
    [
        (True, pa.bool_(), "TRUE", "Y"), (False, pa.bool_(), "FALSE", "N"), (None, pa.bool_(), None, None),
        (1, pa.int64(), "TRUE", "Y"), (0, pa.int8(), "FALSE", "N"), (1.0, pa.float64(), "TRUE", "Y"),
        ("true", None, "TRUE", "Y"), ("FALSE", None, "FALSE", "N"), (" Yes ", None, "TRUE", "Y"),
        ("no", None, "FALSE", "N"), ("Y", None, "TRUE", "Y"), ("n", None, "FALSE", "N"), ("1", None, "TRUE", "Y"),
        ("0", None, "FALSE", "N"), ("", None, None, None), (None, pa.string(), None, None),
    ],
)
def test_boolean_and_yes_no(value: Any, kind: pa.DataType | None, boolean: Any, yes_no: Any) -> None:
    assert one("boolean", value, kind) == (boolean, None)
    assert one("yes_no", value, kind) == (yes_no, None)


@pytest.mark.parametrize(("value", "kind"), [("maybe", None), ("2", None), ("oui", None), ("on", None),
                                             (2, pa.int64()), (0.5, pa.float64())])
def test_boolean_and_yes_no_reject(value: Any, kind: pa.DataType | None) -> None:
    reason = f"'{value}' is not yes or no (true/false, 1/0, yes/no, y/n)"
    assert one("boolean", value, kind) == (None, reason)
    assert one("yes_no", value, kind) == (None, reason)


def test_required_empty_values_are_missing_and_long_values_are_cut_in_the_reason() -> None:
    for rule in RULES:
        assert one(rule, None, pa.string(), required=True) == (None, "missing")
    assert one("string", "   ", required=True) == (None, "missing")
    _, why = one("sex", "x" * 100)
    assert why == "'" + "x" * 39 + "…' is not a sex (M or F)"


def test_every_rule_writes_strings_even_for_an_all_null_column() -> None:
    for rule in RULES:
        written, reasons = apply_rule(rule, pa.nulls(3))
        assert written.type == pa.string() and written.null_count == 3 and reasons.null_count == 3


# --------------------------------------------------------------------------- properties

_WORDS = ["true", "false", "yes", "no", "y", "n", "1", "0", "TRUE", "No", "Y", " yes ", "maybe", "", "2", "oui"]


@given(st.lists(st.one_of(st.none(), st.sampled_from(_WORDS), st.text(max_size=6)), max_size=30))
def test_yes_no_writes_only_y_n_or_nothing(values: list[str | None]) -> None:
    written, reasons = apply_rule("yes_no", pa.array(values, pa.string()))
    for value, out, why in zip(values, written.to_pylist(), reasons.to_pylist()):
        assert out in {"Y", "N", None}
        assert (why is None) == (value is None or value.strip().lower() in {"true", "false", "yes", "no", "y", "n",
                                                                              "1", "0", ""})


@given(st.lists(st.one_of(st.booleans(), st.none()), max_size=20))
def test_yes_no_of_booleans_never_rejects(values: list[bool | None]) -> None:
    written, reasons = apply_rule("yes_no", pa.array(values, pa.bool_()))
    assert reasons.null_count == len(values)
    assert written.to_pylist() == [None if v is None else ("Y" if v else "N") for v in values]


_PHONE_CHARS = st.sampled_from(list("0123456789+ .-()/x\u00a0"))


@given(st.lists(st.one_of(st.none(), st.text(_PHONE_CHARS, max_size=24), st.text(max_size=8)), max_size=30))
def test_phone_output_is_always_international(values: list[str | None]) -> None:
    written, reasons = apply_rule("phone", pa.array(values, pa.string()))
    for out, why in zip(written.to_pylist(), reasons.to_pylist()):
        assert out is None or re.fullmatch(r"\+\d{8,15}", out)
        assert out is None or why is None


@given(
    st.from_regex(r"[1-9][0-9]{7,14}", fullmatch=True),
    st.lists(st.sampled_from([" ", ".", "-", "\u00a0"]), max_size=14),
)
def test_phone_keeps_every_digit(digits: str, separators: list[str]) -> None:
    written_digits = list(digits)
    for position, separator in enumerate(separators):
        written_digits[position % len(digits)] += separator
    assert one("phone", "+" + "".join(written_digits), pa.string()) == ("+" + digits, None)


@given(st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32))
def test_date_accepts_exactly_the_days_that_exist(year: int, month: int, day: int) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}"
    try:
        exists = dt.date(year, month, day).isoformat() == text
    except ValueError:
        # year 0 (1 BC, proleptic Gregorian, a leap year) is beyond Python's dates but a valid ISO 8601 year
        days = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        exists = year == 0 and 1 <= month <= 12 and 1 <= day <= days[month - 1]
    expected = (text, None) if exists else (None, f"'{text}' is not a date (yyyy-MM-dd)")
    assert one("date", text, pa.string()) == expected


@given(st.lists(st.one_of(st.none(), st.dates().map(dt.date.isoformat), st.text(max_size=12)), max_size=20))
def test_date_output_parses(values: list[str | None]) -> None:
    written, _ = apply_rule("date", pa.array(values, pa.string()))
    for out in written.to_pylist():
        assert out is None or dt.date.fromisoformat(out).isoformat() == out


@given(st.lists(st.dates(), max_size=20))
def test_typed_dates_round_trip(values: list[dt.date]) -> None:
    written, reasons = apply_rule("date", pa.array(values, pa.date32()))
    assert reasons.null_count == len(values)
    assert written.to_pylist() == [v.isoformat() for v in values]


@given(st.lists(st.datetimes(), max_size=20))
def test_typed_datetimes_round_trip(values: list[dt.datetime]) -> None:
    written, reasons = apply_rule("datetime", pa.array(values, pa.timestamp("us")))
    assert reasons.null_count == len(values)
    assert written.to_pylist() == [v.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0") for v in values]
    for out in written.to_pylist():
        assert dt.datetime.strptime(out, "%Y-%m-%d %H:%M:%S")


@given(st.lists(st.one_of(st.none(), st.datetimes().map(lambda v: v.isoformat(sep=" ")), st.text(max_size=20)),
                max_size=20))
def test_datetime_output_parses(values: list[str | None]) -> None:
    written, _ = apply_rule("datetime", pa.array(values, pa.string()))
    for out in written.to_pylist():
        assert out is None or re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", out)
        assert out is None or dt.datetime.fromisoformat(out)


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20), st.sampled_from(["", "0", "00", "+"]))
def test_integer_text_round_trips(values: list[int], pad: str) -> None:
    texts = [(pad + str(v)) if v >= 0 else str(v) for v in values]
    written, reasons = apply_rule("integer", pa.array(texts, pa.string()))
    assert reasons.null_count == len(values)
    assert [int(v) for v in written.to_pylist()] == values
    assert all(re.fullmatch(r"-?(0|[1-9][0-9]*)", v) for v in written.to_pylist())


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=20))
def test_decimal_of_floats_is_exact_and_plain(values: list[float]) -> None:
    written, reasons = apply_rule("decimal", pa.array(values, pa.float64()))
    for value, out, why in zip(values, written.to_pylist(), reasons.to_pylist()):
        if why is not None:
            assert why.endswith("is out of range") and (abs(value) >= 1e100 or 0 < abs(value) < 1e-99)
            continue
        assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", out)
        assert float(out) == value


@given(st.lists(st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: abs(d.adjusted()) < 60), max_size=20))
def test_decimal_of_text_keeps_the_value(values: list[decimal.Decimal]) -> None:
    written, reasons = apply_rule("decimal", pa.array([str(v) for v in values], pa.string()))
    assert reasons.null_count == len(values)
    for value, out in zip(values, written.to_pylist()):
        assert decimal.Decimal(out) == value
        assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", out)


@settings(max_examples=60)
@given(st.sampled_from(RULES), st.lists(st.one_of(st.none(), st.text(max_size=25)), max_size=20),
       st.integers(1, 30))
def test_written_values_are_fixed_points_and_fit(rule: FieldRule, values: list[str | None], limit: int) -> None:
    """What a rule writes, read again by the same rule, is written unchanged: normalising is
    idempotent, so a delta run compares like with like."""
    written, reasons = apply_rule(rule, pa.array(values, pa.string()), max_length=limit)
    for out, why in zip(written.to_pylist(), reasons.to_pylist()):
        assert out is None or why is None
        assert out is None or (len(out) <= limit and out == out.strip() and out != "")
        if rule == "country":
            assert out is None or out in COUNTRIES
        if rule == "language":
            assert out is None or out in LANGUAGES
    again, still = apply_rule(rule, written, max_length=limit)
    assert again.to_pylist() == written.to_pylist()
    assert still.null_count == len(values)


# --------------------------------------------------------------------------- the mapper


def profile_mapping() -> Mapping:
    return Mapping(
        key="emailAddress",
        fields=(
            FieldMap("email", "emailAddress", "email", required=True),
            FieldMap("firstname", "firstName", max_length=64),
            FieldMap("birthday", "birthDate", "date"),
            FieldMap("gender", "sex", "sex"),
        ),
        subscriptions=(SubscriptionMap("optin_newsletter", "Newsletter"),),
    )


def profile_batch(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    names = ["email", "firstname", "birthday", "gender", "optin_newsletter"]
    columns: list[tuple[Any, ...]] = list(zip(*rows)) if rows else [() for _ in names]
    kinds = [pa.string(), pa.string(), pa.string(), pa.string(), pa.int64()]
    return pa.record_batch([pa.array(list(c), k) for c, k in zip(columns, kinds)], names=names)


ROWS = [
    ("jean@example.be", "Jean", "1990-05-17", "m", 1),
    ("marie@example.be", "Marie", "31/02/1990", "F", 0),
    ("nobody", "No", "1990-05-17", "X", 1),
    (None, "Anon", None, None, None),
    ("paul@example.be", " Paul ", None, "male", 1),
    ("zoe@example.be", "Zoë", "2000-02-29", None, None),
]


def test_rows_are_written_in_actito_formats_and_rejects_say_why() -> None:
    mapper = RowMapper(profile_mapping(), where="sql/qualifio_profiles.sql")
    result = mapper.map(profile_batch(ROWS))
    assert result.rows.column_names == ["emailAddress", "firstName", "birthDate", "sex", "subscription_Newsletter"]
    assert all(column.type == pa.string() for column in result.rows.columns)
    assert result.rows.to_pylist() == [
        {"emailAddress": "jean@example.be", "firstName": "Jean", "birthDate": "1990-05-17", "sex": "M",
         "subscription_Newsletter": "Y"},
        # an invalid optional value is dropped: the row goes on without it
        {"emailAddress": "marie@example.be", "firstName": "Marie", "birthDate": None, "sex": "F",
         "subscription_Newsletter": "N"},
        {"emailAddress": "paul@example.be", "firstName": "Paul", "birthDate": None, "sex": None,
         "subscription_Newsletter": "Y"},
        {"emailAddress": "zoe@example.be", "firstName": "Zoë", "birthDate": "2000-02-29", "sex": None,
         "subscription_Newsletter": None},
    ]
    assert result.source_rows.type == pa.int64()
    assert result.source_rows.to_pylist() == [1, 2, 5, 6]
    assert result.rejects.schema == REJECTS_SCHEMA
    assert result.rejects.to_pylist() == [
        {"row": 2, "column": "birthday", "value": "31/02/1990",
         "reason": "birthday: '31/02/1990' is not a date (yyyy-MM-dd)", "action": "value dropped"},
        # the key rejects its row; every problem of the row is listed, the key's first
        {"row": 3, "column": "email", "value": "nobody",
         "reason": "email: 'nobody' is not an accepted e-mail address: no @", "action": "row rejected"},
        {"row": 3, "column": "gender", "value": "X", "reason": "gender: 'X' is not a sex (M or F)",
         "action": "row rejected"},
        {"row": 4, "column": "email", "value": None, "reason": "email: missing", "action": "row rejected"},
        {"row": 5, "column": "gender", "value": "male", "reason": "gender: 'male' is not a sex (M or F)",
         "action": "value dropped"},
    ]


def test_reject_row_on_a_column_rejects_its_rows_again() -> None:
    mapping = with_policy(profile_mapping(), {"gender": "reject_row"}, "drop_value")
    result = RowMapper(mapping).map(profile_batch(ROWS))
    assert result.source_rows.to_pylist() == [1, 2, 6]
    assert [(r["row"], r["action"]) for r in result.rejects.to_pylist() if r["column"] == "gender"] == [
        (3, "row rejected"), (5, "row rejected")]
    assert reject_counts(result.rejects) == (3, 1)


def test_a_policy_naming_nothing_or_dropping_the_key_is_refused() -> None:
    with pytest.raises(MappingError) as caught:
        with_policy(profile_mapping(), {"email": "drop_value", "phone": "reject_row"}, "drop_value")
    text = str(caught.value)
    assert "on_invalid.email: the key or a required attribute cannot be dropped" in text
    assert "on_invalid.phone: no column of the query nor attribute is named 'phone'" in text


def test_the_key_is_required_even_when_its_field_says_not() -> None:
    mapping = Mapping(key="customerId", fields=(FieldMap("id", "customerId"),))
    result = RowMapper(mapping).map(pa.record_batch({"id": pa.array(["7", " ", None])}))
    assert result.rows.column("customerId").to_pylist() == ["7"]
    assert result.rejects.column("reason").to_pylist() == ["id: missing", "id: missing"]


def test_row_numbers_run_on_across_chunks() -> None:
    mapper = RowMapper(profile_mapping())
    batch = profile_batch(ROWS)
    first, second, third = mapper.map(batch.slice(0, 3)), mapper.map(batch.slice(3, 0)), mapper.map(batch.slice(3))
    assert first.source_rows.to_pylist() == [1, 2]
    assert second.rows.num_rows == 0 and second.rejects.num_rows == 0
    assert second.rows.column_names == profile_mapping().output_columns()
    assert third.source_rows.to_pylist() == [5, 6]
    assert first.rejects.column("row").to_pylist() == [2, 3, 3]
    assert third.rejects.column("row").to_pylist() == [4, 5]
    clean = mapper.map(profile_batch([ROWS[0], ROWS[5]]))  # a chunk without rejects takes the fast path
    assert clean.source_rows.to_pylist() == [7, 8] and clean.rejects.num_rows == 0


@settings(max_examples=40)
@given(st.lists(st.integers(0, len(ROWS) * 3), max_size=4), st.integers(1, 3))
def test_any_chunking_gives_the_same_result(cuts: list[int], copies: int) -> None:
    batch = profile_batch(ROWS * copies)
    whole = RowMapper(profile_mapping()).map(batch)
    bounds = sorted({0, batch.num_rows, *[min(c, batch.num_rows) for c in cuts]})
    mapper = RowMapper(profile_mapping())
    parts = [mapper.map(batch.slice(a, b - a)) for a, b in zip(bounds, bounds[1:])]
    assert pa.concat_tables([p.rows for p in parts]).to_pylist() == whole.rows.to_pylist()
    assert pa.concat_tables([p.rejects for p in parts]).to_pylist() == whole.rejects.to_pylist()
    assert sum((p.source_rows.to_pylist() for p in parts), []) == whole.source_rows.to_pylist()
    # every source row is either kept or rejected, exactly once
    kept = whole.source_rows.to_pylist()
    dropped = {r["row"] for r in whole.rejects.to_pylist() if r["action"] == "row rejected"}
    assert sorted(kept + list(dropped)) == list(range(1, batch.num_rows + 1))


def test_column_types_may_change_between_chunks() -> None:
    mapper = RowMapper(profile_mapping())
    nulls = pa.record_batch(
        {"email": pa.array(["a@example.be"]), "firstname": pa.nulls(1), "birthday": pa.nulls(1),
         "gender": pa.array(["f"]).dictionary_encode(), "optin_newsletter": pa.array([True])}
    )
    typed = pa.table(
        {"email": pa.array(["b@example.be"], pa.large_string()), "firstname": pa.array(["B"]),
         "birthday": pa.array([dt.date(1990, 1, 2)]), "gender": pa.array(["M"]), "optin_newsletter": pa.array(["no"])}
    )
    rows = mapper.map(nulls).rows.to_pylist() + mapper.map(typed).rows.to_pylist()
    assert [(r["emailAddress"], r["birthDate"], r["sex"], r["subscription_Newsletter"]) for r in rows] == [
        ("a@example.be", None, "F", "Y"), ("b@example.be", "1990-01-02", "M", "N"),
    ]


def test_a_missing_column_names_it_the_columns_found_and_the_sql_file() -> None:
    mapper = RowMapper(profile_mapping(), where="sql/qualifio_profiles.sql")
    batch = profile_batch(ROWS).drop_columns(["birthday"])
    with pytest.raises(TransformError) as caught:
        mapper.map(batch)
    message = str(caught.value)
    assert message.startswith("sql/qualifio_profiles.sql: the query has no column 'birthday'")
    assert "(columns: 'email', 'firstname', 'gender', 'optin_newsletter')" in message


def test_a_column_that_differs_by_case_is_pointed_at() -> None:
    batch = profile_batch(ROWS)
    renamed = batch.rename_columns(["EMAIL", *batch.schema.names[1:]])
    with pytest.raises(TransformError, match=r"'email' \(the query has 'EMAIL'\); quote the alias"):
        RowMapper(profile_mapping()).map(renamed)


def test_two_columns_of_the_same_name_are_refused() -> None:
    batch = profile_batch(ROWS)
    doubled = pa.RecordBatch.from_arrays([*batch.columns, batch.column(0)], names=[*batch.schema.names, "email"])
    with pytest.raises(TransformError, match="several columns named 'email'"):
        RowMapper(profile_mapping()).map(doubled)


def test_a_column_that_cannot_be_text_is_named() -> None:
    mapping = Mapping(key="k", fields=(FieldMap("k", "k"),))
    with pytest.raises(TransformError, match="column 'k' has type"):
        RowMapper(mapping).map(pa.record_batch({"k": pa.array([{"a": 1}])}))


def test_one_source_may_feed_two_attributes() -> None:
    mapping = Mapping(key="emailAddress", fields=(FieldMap("email", "emailAddress", "email"),
                                                  FieldMap("email", "login", max_length=12)))
    result = RowMapper(with_policy(mapping, {}, "reject_row")).map(
        pa.record_batch({"email": ["a@example.be", "abcdefghij@example.be"]}))
    assert result.rows.to_pylist() == [{"emailAddress": "a@example.be", "login": "a@example.be"}]
    assert result.rejects.column("reason").to_pylist() == ["email: longer than 12 characters"]


# --------------------------------------------------------------------------- mapping validation


def test_output_columns_and_definition_parts() -> None:
    mapping = profile_mapping()
    assert mapping.output_columns() == ["emailAddress", "firstName", "birthDate", "sex", "subscription_Newsletter"]
    parts = mapping.definition_parts()
    assert parts == {
        "attributes": [{"column": c, "attribute": c} for c in ["emailAddress", "firstName", "birthDate", "sex"]],
        "subscriptions": [{"column": "subscription_Newsletter", "subscription": "Newsletter"}],
    }
    listed = [a["column"] for a in parts["attributes"]] + [s["column"] for s in parts["subscriptions"]]
    assert listed == mapping.output_columns()  # every column of the file is mapped, once


def test_the_key_comes_first_wherever_it_is_mapped() -> None:
    fields = (FieldMap("name", "firstName"), FieldMap("mail", "emailAddress", "email"))
    mapping = Mapping(key="emailAddress", fields=fields)
    assert mapping.output_columns() == ["emailAddress", "firstName"]
    assert mapping.definition_parts()["attributes"][0] == {"column": "emailAddress", "attribute": "emailAddress"}


@pytest.mark.parametrize(
    ("fields", "subscriptions", "problem"),
    [
        ((FieldMap("a", "emailAddress"), FieldMap("b", "foot-ball")), (), "attribute 'foot-ball': an attribute name"),
        ((FieldMap("a", "emailAddress"), FieldMap("b", "x" * 65)), (), "an attribute name is 1 to 64 characters"),
        ((FieldMap("a", "emailAddress"), FieldMap("b", "équipe")), (), "attribute 'équipe'"),
        ((FieldMap("a", "emailAddress"), FieldMap("b", "emailAddress")), (),
         "attribute 'emailAddress' is fed by several columns: 'a', 'b'"),
        ((FieldMap("a", "firstName"),), (), "the key 'emailAddress' is not among the mapped attributes"),
        ((FieldMap("a", "emailAddress"),), (SubscriptionMap("b", ""),), "a subscription name is not empty"),
        ((FieldMap("a", "emailAddress"),), (SubscriptionMap("b", " News"),), "no spaces around it"),
        ((FieldMap("a", "emailAddress"),), (SubscriptionMap("b", "News"), SubscriptionMap("c", "News")),
         "subscription 'News' is fed by several columns: 'b', 'c'"),
        ((FieldMap("a", "emailAddress"), FieldMap("b", "subscription_News")), (SubscriptionMap("c", "News"),),
         "its file column 'subscription_News' is also an attribute"),
    ],
)
def test_bad_mappings_are_refused_when_built(
    fields: tuple[FieldMap, ...], subscriptions: tuple[SubscriptionMap, ...], problem: str
) -> None:
    with pytest.raises(MappingError) as caught:
        Mapping(key="emailAddress", fields=fields, subscriptions=subscriptions)
    assert any(problem in p for p in caught.value.problems)
    assert isinstance(caught.value, TransformError)  # the CLI and `actito check` print it as one line


def test_names_of_64_characters_and_every_problem_at_once() -> None:
    Mapping(key="emailAddress", fields=(FieldMap("a", "emailAddress"), FieldMap("b", "x_9" * 21 + "z")))
    with pytest.raises(MappingError) as caught:
        Mapping(key="k", fields=(FieldMap("a", "bad name"), FieldMap("b", "bad-name")))
    assert len(caught.value.problems) == 3
    assert str(caught.value).startswith("3 problems in the mapping:\n  - ")


def test_field_maps_check_their_rule_and_limit() -> None:
    with pytest.raises(MappingError, match="unknown rule 'text'"):
        FieldMap("a", "b", "text")  # type: ignore[arg-type]
    with pytest.raises(MappingError, match="max_length must be at least 1"):
        FieldMap("a", "b", max_length=0)


def test_replace_revalidates_and_tightens() -> None:
    mapping = profile_mapping()
    tightened = dataclasses.replace(mapping, fields=tuple(dataclasses.replace(f, max_length=3) if f.target ==
                                                          "firstName" else f for f in mapping.fields))
    result = RowMapper(tightened).map(profile_batch([ROWS[0]]))
    assert result.rejects.column("reason").to_pylist() == ["firstname: longer than 3 characters"]
    with pytest.raises(MappingError):
        dataclasses.replace(mapping, key="nope")


# --------------------------------------------------------------------------- Qualifio


def test_qualifio_profile_columns_map_to_actito_names() -> None:
    mapping = qualifio_mapping(QUALIFIO_PROFILE_COLUMNS)
    assert mapping.key == "emailAddress"
    by_source = {f.source: (f.target, f.rule, f.max_length, f.required) for f in mapping.fields}
    assert by_source == {
        "firstname": ("firstName", "name", 64, False),
        "lastname": ("lastName", "name", 64, False),
        "email": ("emailAddress", "email", 255, True),
        "address": ("addressStreet", "string", 225, False),
        "number": ("addressNumber", "string", 10, False),
        "box": ("addressBox", "string", 10, False),
        "zip": ("addressPostalCode", "string", 10, False),
        "locality": ("addressLocality", "string", 50, False),
        "country": ("addressCountry", "country", 255, False),
        "birthday": ("birthDate", "date", 255, False),
        "gender": ("sex", "sex", 255, False),
        "phone": ("telephoneNumber", "phone", 255, False),
        "actito_footballTeam": ("footballTeam", "string", 255, False),
    }
    assert mapping.subscriptions == (SubscriptionMap("optin_newsletter", "Newsletter"),
                                     SubscriptionMap("optin_partners", "Partners"))
    assert mapping.output_columns()[0] == "emailAddress"
    assert mapping.output_columns()[-2:] == ["subscription_Newsletter", "subscription_Partners"]


def test_qualifio_function_and_company_and_only_the_columns_present() -> None:
    mapping = qualifio_mapping(["email", "function", "company"])
    assert mapping.output_columns() == ["emailAddress", "profession", "company"]
    assert qualifio_mapping(["EMAIL", "FirstName"]).output_columns() == ["emailAddress", "firstName"]


@pytest.mark.parametrize(
    ("variable", "name"),
    [("optin_newsletter", "Newsletter"), ("optin_partners", "Partners"), ("optin_special_offers", "Special offers"),
     ("optin_SMS", "SMS"), ("OPTIN_newsletter", "Newsletter")],
)
def test_qualifio_optins_become_subscriptions_named_as_qualifio_shows(variable: str, name: str) -> None:
    assert qualifio_subscription_name(variable) == name
    assert qualifio_mapping(["email", variable]).subscriptions == (SubscriptionMap(variable, name),)


def test_qualifio_unknown_columns_are_listed() -> None:
    with pytest.raises(MappingError) as caught:
        qualifio_mapping(["email", "firstame", "surveyName", "optin-newsletter", "firstname"])
    message = str(caught.value)
    assert "'firstame', 'surveyName', 'optin-newsletter' are not Qualifio variables" in message
    assert "actito_<name>" in message and "optin_<name>" in message
    with pytest.raises(MappingError, match="'nickname' is not a Qualifio variable"):
        qualifio_mapping(["email", "nickname"])


def test_qualifio_bad_custom_names_are_refused_at_build_time() -> None:
    with pytest.raises(MappingError, match="'actito_foot-ball' → attribute 'foot-ball'"):
        qualifio_mapping(["email", "actito_foot-ball"])
    with pytest.raises(MappingError, match="1 to 64 characters"):
        qualifio_mapping(["email", "actito_" + "x" * 65])
    with pytest.raises(MappingError, match="no attribute name after 'actito_'"):
        qualifio_mapping(["email", "actito_"])
    with pytest.raises(MappingError, match="no subscription name after 'optin_'"):
        qualifio_mapping(["email", "optin_"])


def test_qualifio_key() -> None:
    with pytest.raises(MappingError, match="the key 'emailAddress' has no column: select the Qualifio variable 'emai"):
        qualifio_mapping(["firstname"])
    mapping = qualifio_mapping(["email", "actito_customerId"], key="customerId")
    assert mapping.output_columns() == ["customerId", "emailAddress"]
    assert [f.required for f in mapping.fields] == [False, True]
    with pytest.raises(MappingError, match="select the Qualifio variable 'actito_loyaltyCard'"):
        qualifio_mapping(["email"], key="loyaltyCard")


def test_qualifio_custom_rules_from_the_table() -> None:
    mapping = qualifio_mapping(["email", "actito_dogs", "actito_gsmNumber"], rules={"dogs": "integer"})
    assert [f.rule for f in mapping.fields] == ["email", "integer", "string"]


def test_qualifio_rows_end_to_end() -> None:
    batch = pa.record_batch(
        {
            "firstname": ["Jean", "Marie"], "lastname": ["Dupont", "Durand"],
            "email": ["Jean@Example.be", "marie@example.be"], "address": ["Rue de la Loi", None],
            "number": ["16", None], "box": [None, None], "zip": ["1000", None], "locality": ["Bruxelles", None],
            "country": ["be", "Belgium"], "birthday": ["1990-05-17", "1985-01-01"], "gender": ["M", "f"],
            "phone": ["+32 470 12 34 56", None], "actito_footballTeam": ["Club Brugge", None],
            "optin_newsletter": pa.array([1, 0]), "optin_partners": pa.array([0, None], pa.int64()),
        }
    )
    result = RowMapper(with_policy(qualifio_mapping(batch.schema.names), {}, "reject_row")).map(batch)
    assert result.rows.to_pylist() == [{
        "emailAddress": "jean@example.be", "firstName": "Jean", "lastName": "Dupont", "addressStreet": "Rue de la Loi",
        "addressNumber": "16", "addressBox": None, "addressPostalCode": "1000", "addressLocality": "Bruxelles",
        "addressCountry": "BE", "birthDate": "1990-05-17", "sex": "M", "telephoneNumber": "+32470123456",
        "footballTeam": "Club Brugge", "subscription_Newsletter": "Y", "subscription_Partners": "N",
    }]
    assert result.rejects.to_pylist() == [{
        "row": 2, "column": "country", "value": "Belgium",
        "reason": "country: 'Belgium' is not an ISO 3166-1 alpha-2 country code (e.g. BE)", "action": "row rejected",
    }]


# --------------------------------------------------------------------------- Didomi


def test_didomi_consents_map_to_subscriptions() -> None:
    mapping = didomi_mapping(DIDOMI_COLUMNS, user_key="emailAddress", subscriptions=DIDOMI_SUBSCRIPTIONS,
                             metadata_columns=["preferred_language"])
    assert mapping.key == "emailAddress"
    assert mapping.fields == (
        FieldMap("organization_user_id", "emailAddress", "email", required=True),
        FieldMap("preferred_language", "preferred_language", "string"),
    )
    assert mapping.output_columns() == ["emailAddress", "preferred_language", "subscription_Newsletter",
                                        "subscription_Partners", "subscription_Promotions"]
    assert mapping.definition_parts()["subscriptions"] == [
        {"column": "subscription_Newsletter", "subscription": "Newsletter"},
        {"column": "subscription_Partners", "subscription": "Partners"},
        {"column": "subscription_Promotions", "subscription": "Promotions"},
    ]
    batch = pa.record_batch({
        "organization_user_id": ["a@example.be", "b@example.be", "c@example.be"],
        "consent_newsletter": ["true", "false", "true"], "consent_partners": ["false", None, "perhaps"],
        "consent_promotions": ["1", "0", "1"], "preferred_language": ["fr", "nl", "en"],
    })
    result = RowMapper(with_policy(mapping, {}, "reject_row")).map(batch)
    assert [(r["subscription_Newsletter"], r["subscription_Partners"], r["subscription_Promotions"])
            for r in result.rows.to_pylist()] == [("Y", "N", "Y"), ("N", None, "N")]
    assert result.rejects.column("reason").to_pylist() == [
        "consent_partners: 'perhaps' is not yes or no (true/false, 1/0, yes/no, y/n)"
    ]


def test_didomi_key_column_and_problems() -> None:
    mapping = didomi_mapping(["customerId", "consent_newsletter"], user_key="customerId",
                             subscriptions={"consent_newsletter": "Newsletter"})
    assert mapping.fields == (FieldMap("customerId", "customerId", "string", required=True),)
    with pytest.raises(MappingError) as caught:
        didomi_mapping(["user", "consent_newsletter", "updated_at"], user_key="emailAddress",
                       subscriptions={"consent_newsletter": "Newsletter", "consent_sms": "SMS"})
    problems = "\n".join(caught.value.problems)
    assert "no column for the user key: expected 'organization_user_id' (Didomi's) or 'emailAddress'" in problems
    assert "column 'consent_sms' is not in the query" in problems
    assert len(caught.value.problems) == 2  # the extra column updated_at is metadata, not a mistake


def test_didomi_metadata_goes_to_the_attributes_the_table_has() -> None:
    table = ["emailAddress", "motherLanguage", "loyaltyTier", "gdprConsent", "profileId"]
    mapping = didomi_mapping(["organization_user_id", "consent_newsletter", "motherlanguage", "updated_at",
                              "metadata"], user_key="emailAddress", subscriptions={"consent_newsletter": "Newsletter"},
                             table_attributes=table)
    assert [(f.source, f.target) for f in mapping.fields] == [
        ("organization_user_id", "emailAddress"), ("motherlanguage", "motherLanguage"),  # case folded by the warehouse
        ("metadata.loyaltyTier", "loyaltyTier"), ("metadata.gdprConsent", "gdprConsent")]  # never profileId
    assert mapping.ignored == ("updated_at",) and mapping.json_object == "metadata"
    batch = pa.table({"organization_user_id": ["a@b.be", "c@d.be", "e@f.be", "g@h.be"],
                      "consent_newsletter": ["true"] * 4, "motherlanguage": ["fr"] * 4, "updated_at": ["x"] * 4,
                      "metadata": ['{"loyaltyTier": "gold", "gdprConsent": true, "favouriteShop": "Gent"}',
                                   '{"favouriteShop": "Namur"}', None, "{oops"]})
    mapped = RowMapper(mapping).map(batch)
    assert mapped.rows.column("loyaltyTier").to_pylist() == ["gold", None, None, None]
    assert mapped.rows.column("gdprConsent").to_pylist() == ["true", None, None, None]
    assert dict(mapped.unread) == {"favouriteShop": 2}
    assert mapped.rows.num_rows == 4  # a broken object drops its properties, not the person
    assert mapped.rejects.to_pylist() == [{"row": 4, "column": "metadata", "value": "{oops", "action": "value dropped",
                                           "reason": "metadata: '{oops' is not a JSON object: none of its "
                                                     "properties is sent"}]


def test_a_didomi_metadata_column_named_in_the_configuration_is_required_of_the_table() -> None:
    mapping = didomi_mapping(["organization_user_id", "consent_newsletter", "shoeSize"], user_key="emailAddress",
                             subscriptions={"consent_newsletter": "Newsletter"}, metadata_columns=["shoeSize"],
                             table_attributes=["emailAddress"])
    assert [f.target for f in mapping.fields] == ["emailAddress", "shoeSize"] and not mapping.ignored  # pre-flight fails


# --------------------------------------------------------------------------- explicit mappings


def test_explicit_mapping_rules() -> None:
    mapping = explicit_mapping(
        "emailAddress",
        {"mail": "emailAddress", "born": "birthDate", "team": "footballTeam", "dogs": "dogs"},
        {"newsletter": "Newsletter"},
        rules={"dogs": "integer"},
    )
    assert [(f.source, f.target, f.rule, f.required) for f in mapping.fields] == [
        ("mail", "emailAddress", "email", True), ("born", "birthDate", "date", False),
        ("team", "footballTeam", "string", False), ("dogs", "dogs", "integer", False),
    ]
    assert mapping.subscriptions == (SubscriptionMap("newsletter", "Newsletter"),)
    with pytest.raises(MappingError, match="the key 'emailAddress' is not among the mapped attributes"):
        explicit_mapping("emailAddress", {"name": "firstName"})


# --------------------------------------------------------------------------- interactions


def test_qualifio_interactions() -> None:
    mapping = qualifio_interaction_mapping(INTERACTION_COLUMNS)
    assert mapping.key == "participationId"
    assert mapping.output_columns() == [
        "participationId", "emailAddress", "source", "updateSource", "way", "date", "surveyName", "surveyType",
        "surveyDate", "motherLanguage", "deviceName", "userAgent",
    ]
    rules = {f.target: (f.rule, f.max_length, f.required) for f in mapping.fields}
    assert rules["date"][0] == "datetime" and rules["surveyDate"][0] == "date"
    assert rules["surveyType"][0] == "integer" and rules["motherLanguage"][0] == "language"
    assert rules["userAgent"] == ("string", 255, False)
    assert rules["emailAddress"] == ("email", 255, True)
    # PostgreSQL folds unquoted aliases to lower case
    lower = qualifio_interaction_mapping([c.lower() for c in INTERACTION_COLUMNS])
    assert lower.output_columns() == mapping.output_columns()
    batch = pa.record_batch({
        "participationId": pa.array([900001, 900002]), "email": ["a@example.be", "b@example.be"],
        "source": ["Qualifio"] * 2, "updateSource": ["Qualifio"] * 2, "way": pa.array([4101, 4102]),
        "date": ["2024-05-17 14:03:09", "2024-05-17 14:03:09"], "surveyName": ["Summer quiz", "City trip"],
        "surveyType": pa.array([13, 2]), "surveyDate": ["2024-05-17", "2024-05-17"], "motherLanguage": ["fr", "nl"],
        "deviceName": ["mobile", "desktop"], "userAgent": ["Mozilla/5.0 (demo)", "Mozilla/5.0 " + "x" * 300],
    })
    result = RowMapper(with_policy(mapping, {}, "reject_row")).map(batch)  # the old behaviour, on request
    assert result.rows.to_pylist() == [{
        "participationId": "900001", "emailAddress": "a@example.be", "source": "Qualifio", "updateSource": "Qualifio",
        "way": "4101", "date": "2024-05-17 14:03:09", "surveyName": "Summer quiz", "surveyType": "13",
        "surveyDate": "2024-05-17", "motherLanguage": "FR", "deviceName": "mobile", "userAgent": "Mozilla/5.0 (demo)",
    }]
    assert result.rejects.column("reason").to_pylist() == ["userAgent: longer than 255 characters"]


def test_qualifio_interaction_problems() -> None:
    with pytest.raises(MappingError) as caught:
        qualifio_interaction_mapping(["way", "campaign"])
    problems = "\n".join(caught.value.problems)
    assert "no participation id column" in problems
    assert "no e-mail column to link the participant" in problems
    assert "'campaign': not a campaign field of Qualifio's integration" in problems


def test_qualifio_campaign_fields_of_a_profile_are_its_data_collection_not_attributes() -> None:
    mapping = qualifio_mapping(["email", "firstname", "Source", "updateSource", "way", "date"])
    assert [f.target for f in mapping.fields] == ["emailAddress", "firstName"]
    assert [(f.source, f.target, f.rule) for f in mapping.collected] == [
        ("Source", "source", "string"), ("updateSource", "updateSource", "string"), ("way", "way", "string"),
        ("date", "date", "datetime")]
    assert mapping.output_columns() == ["emailAddress", "firstName"]  # never a column of the file
    batch = pa.table({"email": ["a@b.be", "c@d.be"], "firstname": ["Zoé", "Tom"], "Source": ["Qualifio"] * 2,
                      "updateSource": ["Qualifio"] * 2, "way": ["4101", "4102"],
                      "date": ["2026-11-20 10:00:00", "yesterday"]})
    mapped = RowMapper(mapping).map(batch)
    assert mapped.rows.column("dataCollection.way").to_pylist() == ["4101", "4102"]
    assert mapped.rows.column("dataCollection.date").to_pylist() == ["2026-11-20 10:00:00", None]
    assert mapped.rejects.column("action").to_pylist() == ["value dropped"]  # a bad date never loses the person
