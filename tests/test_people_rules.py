"""Qualifio's person fields: names with "no special characters" and the device (desktop / mobile).

The name property is checked by hypothesis against the rule restated here in plain Python (Unicode
categories from ``unicodedata``), not the implementation's RE2 pattern; under CI the examples are
derandomised so that a failure reproduces."""

from __future__ import annotations

import os
import unicodedata

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.values.rules import apply_rule

CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
SEPARATORS = " -'"
#: letters of several scripts (accented, Greek, Cyrillic, CJK, Vietnamese), combining marks, the three
#: separators and the typographic apostrophe, and what a name may not hold: digits, dots, symbols, emoji, a tab
ALPHABET = list("aZéÈüßøñçłĳαΩжЯ王秀ễĩ") + ["\u0301", "\u0308"] + list(" -'’") + list("09._!?@#&/()+,;:\t") + ["🙂"]


def name_passes(value: str) -> str | None:
    """The rule of etl/values/people.py, restated: the value as sent, or None if refused."""
    value = unicodedata.normalize("NFC", value.strip()).replace("\u2019", "'")
    while "  " in value:
        value = value.replace("  ", " ")
    previous = None
    for character in value:
        kind = unicodedata.category(character)[0]
        if kind == "L" or (kind == "M" and previous not in (None, *SEPARATORS)):
            previous = character
        elif character in SEPARATORS and previous not in (None, *SEPARATORS):
            previous = character
        else:
            return None
    return value if previous not in (None, *SEPARATORS) else None


def names(values: list[str | None]) -> list[tuple[str | None, str | None]]:
    written, reasons = apply_rule("name", pa.array(values, pa.string()), max_length=None)
    return list(zip(written.to_pylist(), reasons.to_pylist(), strict=True))


@settings(max_examples=300, deadline=None, derandomize=CI)
@given(st.lists(st.text(alphabet=ALPHABET, max_size=12), max_size=30))
def test_a_name_is_sent_exactly_when_the_rule_takes_it(values: list[str]) -> None:
    for value, (written, reason) in zip(values, names(list(values)), strict=True):
        expected = name_passes(value)
        if not value.strip():
            assert (written, reason) == (None, None)  # empty: no value, no problem
        else:
            assert written == expected, value
            assert (reason is None) == (expected is not None), value


@settings(max_examples=100, deadline=None, derandomize=CI)
@given(st.lists(st.text(alphabet=ALPHABET, max_size=12), max_size=20))
def test_a_sent_name_passes_again_unchanged_and_holds_no_digit_nor_symbol(values: list[str]) -> None:
    sent = [written for written, _ in names(list(values)) if written is not None]
    assert [written for written, _ in names(list(sent))] == sent
    assert not any(unicodedata.category(c)[0] in "NPSZC" and c not in SEPARATORS for name in sent for c in name)


@pytest.mark.parametrize("value", ["Zoé", "O'Brien", "Jean-Pierre", "De Smet", "Müller", "García", "Nguyễn", "王秀英"])
def test_names_of_the_demo_and_of_other_scripts_pass(value: str) -> None:
    assert names([value]) == [(value, None)]


@pytest.mark.parametrize(("value", "said"), [
    ("Emma2", "'Emma2' has characters a name may not: '2'"),
    ("J.", "'.'"),
    ("🙂", "'🙂'"),
    ("Anne--Marie", "one space, hyphen or apostrophe at most between two letters"),
    ("-Léa", "starts and ends with a letter"),
])
def test_a_refused_name_says_which_characters_or_why(value: str, said: str) -> None:
    [(written, reason)] = names([value])
    assert written is None and reason is not None and said in reason


def test_a_name_is_composed_and_its_apostrophe_and_spaces_normalised() -> None:
    assert [w for w, _ in names(["E\u0301milie", "D’Artagnan", " Jean   Pierre "])] == [
        "Émilie", "D'Artagnan", "Jean Pierre"]


@pytest.mark.parametrize(("value", "device"), [
    ("desktop", "desktop"), ("Mobile", "mobile"), (" DESKTOP ", "desktop"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "mobile"),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36", "mobile"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.169 "
     "Safari/537.36", "desktop"),
])
def test_a_device_is_desktop_or_mobile(value: str, device: str) -> None:
    written, reasons = apply_rule("device", pa.array([value]))
    assert (written.to_pylist(), reasons.to_pylist()) == ([device], [None])


@pytest.mark.parametrize("value", ["tablet", "tv", "phone app", "X"])
def test_another_device_is_refused_with_its_reason(value: str) -> None:
    written, reasons = apply_rule("device", pa.array([value]))
    assert written.to_pylist() == [None]
    assert "is not a device Qualifio's integration sends (desktop or mobile" in reasons.to_pylist()[0]
