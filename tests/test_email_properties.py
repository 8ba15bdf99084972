"""Properties of identifier cleaning, checked by hypothesis against rules written here independently.

Each property is one a user relies on: an address the cleaner keeps is one Actito accepts (the
rules of docs/actito-api.md, restated below in plain Python rather than the implementation's RE2
pattern); cleaning twice changes nothing; the case, space and ``mailto:`` variants of an address
end as one audience member; no text, however odd, makes the cleaner raise; every row that does not
reach the file is in the rejects with a reason. Examples are few (the file runs in seconds) and,
under CI, derandomised so that a failure reproduces.
"""

from __future__ import annotations

import os

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.transform.audience import DUPLICATE, AudienceCleaner
from etl.values.email import EMAIL_REASONS, email_rejection_reasons, known_tlds, normalise_emails
from etl.values.ids import PROFILE_ID_REASONS

TLDS = frozenset(known_tlds().to_pylist())
LOCAL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+-/=?^_`{|}~")
LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
INT64_MAX = 2**63 - 1

CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def few(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=CI)


def actito_accepts(address: str) -> bool:
    """Actito's rules for emailAddress, one by one (plus ours: no dot at either end of the local part)."""
    if len(address) > 255 or address.count("@") != 1:
        return False
    local, domain = address.split("@")
    labels = domain.split(".")
    return (
        local != ""
        and set(local) <= LOCAL_CHARACTERS
        and ".." not in address
        and not local.startswith(".")
        and not local.endswith(".")
        and len(labels) >= 2
        and all(label and set(label) <= LABEL_CHARACTERS and label[0] != "-" and label[-1] != "-" for label in labels)
        and len(labels[-1]) >= 2
        and labels[-1] in TLDS
    )


# --------------------------------------------------------------------------- strategies

_PIECES = st.sampled_from(
    ["a", "Z", "0", ".", "..", "-", "_", "+", "'", "@", " ", "\t", "é", "mailto:", "MAILTO:", "com", "be",
     "invalid", "xn--p1ai", "c", '"', ",", "\u00a0", "!", "~", "\x00", "\r\n", "=", "\ufffd", "ß", "İ", "K"]
)  # fmt: skip
EDGY_TEXT = st.lists(_PIECES, max_size=14).map("".join)
#: any Unicode text Arrow can hold (no lone surrogates), control characters included
UNICODE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LONG_TEXT = st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=5), st.integers(50, 3000))
ADDRESS_LIKE = st.builds(
    lambda local, domain, tld, pad: f"{pad}{local}@{domain}.{tld}{pad}",
    st.from_regex(r"[a-zA-Z0-9.!#'+_~-]{0,12}", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9.-]{0,12}", fullmatch=True),
    st.sampled_from(["com", "be", "co.uk", "xn--p1ai", "invalid", "c", "COM", "bé"]),
    st.sampled_from(["", " ", "\t", "\u00a0"]),
)
ANY_TEXT = st.one_of(UNICODE_TEXT, EDGY_TEXT, ADDRESS_LIKE, LONG_TEXT, st.emails())
#: addresses Actito accepts, in lowercase
VALID_ADDRESS = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\.[a-z0-9_+-]{1,5})?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["com", "be", "fr", "org", "museum", "xn--p1ai"]),
)


def variant(address: str, draw: st.DrawFn) -> str:
    """The same address as a warehouse may hold it: any case, padded, behind mailto:."""
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in address)
    prefix = draw(st.sampled_from(["", "mailto:", "MAILTO:", "Mailto: ", "mailto:mailto:"]))
    pad = draw(st.sampled_from(["", " ", "\t", "\u00a0", "  \t"]))
    return f"{pad}{prefix}{cased}{pad}"


def clean(values: list[str | None]) -> tuple[AudienceCleaner, list[str], list[dict[str, object]]]:
    cleaner = AudienceCleaner("email")
    result = cleaner.clean(pa.record_batch({"email": pa.array(values, pa.string())}))
    return cleaner, result.identifiers.to_pylist(), result.rejects.to_pylist()


# --------------------------------------------------------------------------- e-mail properties


@few(120)
@given(st.lists(ANY_TEXT, max_size=20))
def test_normalisation_is_idempotent(values: list[str]) -> None:
    once = normalise_emails(pa.array(values, pa.string()))
    assert normalise_emails(once).to_pylist() == once.to_pylist()


@few(120)
@given(st.lists(ANY_TEXT, max_size=20))
def test_an_address_is_accepted_exactly_when_it_follows_actitos_rules(values: list[str]) -> None:
    normalised = normalise_emails(pa.array(values, pa.string()))
    reasons = email_rejection_reasons(normalised).to_pylist()
    for address, reason in zip(normalised.to_pylist(), reasons, strict=True):
        assert (reason is None) == actito_accepts(address), (address, reason)
        assert reason is None or reason in EMAIL_REASONS


@few(100)
@given(st.emails())
def test_real_world_addresses_are_kept_when_actito_takes_them(address: str) -> None:
    _, kept, rejects = clean([address])
    if actito_accepts(address.lower()):
        assert kept == [address.lower()] and rejects == []
    else:
        assert kept == [] and rejects[0]["reason"] in EMAIL_REASONS


@few(100)
@given(VALID_ADDRESS, st.data())
def test_case_space_and_mailto_variants_dedupe_to_one(address: str, data: st.DataObject) -> None:
    variants = [variant(address, data.draw) for _ in range(data.draw(st.integers(1, 6)))]
    cleaner, kept, rejects = clean(variants)
    assert kept == [address]
    assert [r["reason"] for r in rejects] == [DUPLICATE] * (len(variants) - 1)
    assert [r["row"] for r in rejects] == list(range(2, len(variants) + 1))


@few(150)
@given(st.lists(st.one_of(st.none(), ANY_TEXT), max_size=30))
def test_the_cleaner_never_raises_and_every_dropped_row_has_its_reason(values: list[str | None]) -> None:
    cleaner, kept, rejects = clean(values)
    rows = [r["row"] for r in rejects]
    assert rows == sorted(set(rows)) and all(1 <= row <= len(values) for row in rows)
    assert len(kept) + len(rejects) == len(values) == cleaner.counts.extracted
    assert all(r["reason"] in (*EMAIL_REASONS, DUPLICATE) for r in rejects)
    assert all(r["value"] == values[r["row"] - 1] for r in rejects)  # the original text, unchanged
    assert len(set(kept)) == len(kept) and all(actito_accepts(address) for address in kept)
    # an accepted address needs no CSV quoting: the file holds it bare
    assert not any(set(address) & set(',;"\t\r\n') for address in kept)


# --------------------------------------------------------------------------- profile ids


def clean_ids(values: pa.Array) -> tuple[list[str], list[str]]:
    result = AudienceCleaner("profileId").clean(pa.record_batch({"profileId": values}))
    return result.identifiers.to_pylist(), result.rejects.column("reason").to_pylist()


def canonical(number: int) -> list[str]:
    return [str(number)] if 1 <= number <= INT64_MAX else []


@few(150)
@given(st.integers(), st.sampled_from(["{}", " {} ", "0{}", "00{}"]))
def test_profile_ids_as_text_are_positive_64_bit_integers_only(number: int, shape: str) -> None:
    kept, reasons = clean_ids(pa.array([shape.format(number)]))
    assert kept == canonical(number)
    assert reasons == ([] if kept else [reasons[0]]) and set(reasons) <= set(PROFILE_ID_REASONS)


@few(100)
@given(st.integers(-(2**63), INT64_MAX))
def test_profile_ids_as_integers(number: int) -> None:
    assert clean_ids(pa.array([number], pa.int64()))[0] == canonical(number)


@few(150)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_profile_ids_as_floats_must_be_whole_and_in_range(number: float) -> None:
    kept, reasons = clean_ids(pa.array([number], pa.float64()))
    whole = number == number and abs(number) != float("inf") and number.is_integer() and 0 < number < 2.0**63
    assert kept == ([str(int(number))] if whole else [])
    assert len(reasons) == (0 if whole else 1) and set(reasons) <= set(PROFILE_ID_REASONS)


@few(150)
@given(st.lists(st.one_of(st.none(), UNICODE_TEXT, EDGY_TEXT, st.integers().map(str)), max_size=20))
def test_arbitrary_text_as_profile_ids_never_raises(values: list[str | None]) -> None:
    kept, reasons = clean_ids(pa.array(values, pa.string()))
    assert all(identifier.isascii() and identifier.isdigit() and 1 <= int(identifier) <= INT64_MAX
               for identifier in kept)
    assert len(kept) + len(reasons) == len(values)
    assert set(reasons) <= {*PROFILE_ID_REASONS, DUPLICATE}
