"""Identifier cleaning: e-mail rules, profile ids, deduplication over the stream, column choice."""

from __future__ import annotations

import datetime
import decimal
import importlib.resources
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.errors import TransformError
from etl.transform.audience import DUPLICATE, HEADER, AudienceCleaner, AudienceCounts
from etl.transform.dedupe import SeenHashes
from etl.values.email import EMAIL_REASONS, ONE_PASS_MIN_VALUES, email_rejection_reasons, known_tlds, normalise_emails
from etl.values.ids import PROFILE_ID_REASONS

TLDS = set(known_tlds().to_pylist())


def clean_one(value: object) -> tuple[str | None, str | None]:
    """(kept identifier or None, reject reason or None) for one e-mail value."""
    result = AudienceCleaner("email").clean(pa.record_batch({"email": pa.array([value])}))
    kept = result.identifiers.to_pylist()
    reasons = result.rejects.column("reason").to_pylist()
    return (kept[0] if kept else None), (reasons[0] if reasons else None)


# --------------------------------------------------------------------------- the TLD list


def test_the_shipped_tld_list_is_ianas_with_its_version_line() -> None:
    text = importlib.resources.files("etl.values").joinpath("data", "tlds.txt").read_text(encoding="ascii")
    assert re.match(r"# Version \d{10}, Last Updated ", text.splitlines()[0])
    assert {"com", "be", "uk", "xn--p1ai", "museum"} <= TLDS
    assert not {"invalid", "localhost", "example", "c", ""} & TLDS
    assert known_tlds() is known_tlds()  # read once


# --------------------------------------------------------------------------- e-mail rule matrix

VALID = [
    ("john.doe@example.com", "john.doe@example.com"),
    ("o'brien@x.be", "o'brien@x.be"),
    ("a+b@sub.example.co.uk", "a+b@sub.example.co.uk"),
    ("x@xn--e1afmkfd.xn--p1ai", "x@xn--e1afmkfd.xn--p1ai"),  # пример.рф: punycode TLD from IANA's list
    ("user@my-shop.be", "user@my-shop.be"),
    ("1234@123.com", "1234@123.com"),
    ("!#$%&'*+-/=?^_`{|}~@example.org", "!#$%&'*+-/=?^_`{|}~@example.org"),
    ("  Jane.Doe@Example.COM\t", "jane.doe@example.com"),  # trimmed, lowercased
    ("MAILTO:Jane@Example.com", "jane@example.com"),  # mailto: stripped, any case
    ("mailto: mailto:jane@example.com ", "jane@example.com"),  # repeated, spaces between
    ("\u00a0jane@example.com\u00a0", "jane@example.com"),  # non-breaking spaces are white space
    ("a@b.museum", "a@b.museum"),
    ("x" * 64 + "@" + "d" * 60 + ".com", "x" * 64 + "@" + "d" * 60 + ".com"),
    ("a" * 246 + "@x.be.com", "a" * 246 + "@x.be.com"),  # 255 characters: still fine
]

INVALID = [
    (None, "missing"),
    ("", "missing"),
    ("   ", "missing"),
    ("caf\ufffd@x.com", "not UTF-8 text (undecodable bytes shown as U+FFFD)"),  # what undecodable bytes become
    ("a" * 247 + "@x.be.com", "longer than 255 characters"),
    ("jane.example.com", "no @"),
    ("a@b@example.com", "more than one @"),
    ("@example.com", "nothing before the @"),
    ("jane@", "nothing after the @"),
    ("jérôme@example.fr", "character not allowed before the @"),
    ("jane doe@example.com", "character not allowed before the @"),
    ('"jane"@example.com', "character not allowed before the @"),
    ("jane,doe@example.com", "character not allowed before the @"),
    ("jane..doe@example.com", "two dots in a row"),
    ("jane@example..com", "two dots in a row"),
    (".jane@example.com", "dot at the start or end of the part before the @"),
    ("jane.@example.com", "dot at the start or end of the part before the @"),
    ("jane@-example.com", "invalid domain"),
    ("jane@example-.com", "invalid domain"),
    ("jane@exa mple.com", "invalid domain"),
    ("jane@exämple.com", "invalid domain"),
    ("jane@example_shop.com", "invalid domain"),
    ("jane@.example.com", "invalid domain"),
    ("jane@example.com.", "invalid domain"),
    ("jane@[192.168.0.1]", "invalid domain"),
    ("jane@localhost", "no dot after the @"),
    ("x@xn--p1ai", "no dot after the @"),  # a bare TLD: Actito's shape is local@domain.suffix
    ("jane@example.c", "top-level domain shorter than 2 characters"),
    ("jane@example.invalid", "unknown top-level domain"),
    ("jane@example.con", "unknown top-level domain"),
    ("jane@192.168.0.10", "unknown top-level domain"),
    ("mailto:", "missing"),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_addresses_are_kept_normalised(raw: str, expected: str) -> None:
    assert clean_one(raw) == (expected, None)


@pytest.mark.parametrize(("raw", "reason"), INVALID)
def test_invalid_addresses_are_rejected_with_the_most_basic_reason(raw: str | None, reason: str) -> None:
    assert clean_one(raw) == (None, reason)


def test_the_rule_matrix_covers_every_reason() -> None:
    assert {reason for _, reason in INVALID} == set(EMAIL_REASONS)


def test_small_and_large_chunks_judge_every_address_alike() -> None:
    """Large chunks check the shape and the TLD in one pass, small ones apart (see ONE_PASS_MIN_VALUES):
    the matrix repeated into one large chunk must get, value by value, the reason each gets alone."""
    values = normalise_emails(pa.array([raw for raw, _ in VALID] + [raw for raw, _ in INVALID]))
    alone = [email_rejection_reasons(values.slice(i, 1)).to_pylist()[0] for i in range(len(values))]
    repeats = ONE_PASS_MIN_VALUES // len(values) + 1
    together = email_rejection_reasons(pa.concat_arrays([values] * repeats)).to_pylist()
    assert together == alone * repeats
    assert alone.count(None) == len(VALID)


def test_reasons_of_already_normalised_values() -> None:
    values = pa.array(["a@b.be", None, "A@B.BE", "a@b.invalid"])
    assert email_rejection_reasons(values).to_pylist() == [
        None,
        "missing",
        "character not allowed before the @",  # uppercase: the function expects normalised values
        "unknown top-level domain",
    ]


def test_the_rejects_keep_the_original_text() -> None:
    result = AudienceCleaner("email").clean(pa.record_batch({"email": [" Jérôme@Example.FR "]}))
    assert result.rejects.to_pylist() == [
        {"row": 1, "value": " Jérôme@Example.FR ", "reason": "character not allowed before the @"}
    ]


def test_text_and_byte_columns_are_read_as_text() -> None:
    batch = pa.record_batch(
        {
            "email": pa.array(["a@b.be", "c@d.be", "a@b.be"], pa.large_string()),
        }
    )
    assert AudienceCleaner("email").clean(batch).identifiers.to_pylist() == ["a@b.be", "c@d.be"]
    encoded = pa.record_batch({"email": pa.array(["A@b.be", "a@b.be", None]).dictionary_encode()})
    result = AudienceCleaner("email").clean(encoded)
    assert result.identifiers.to_pylist() == ["a@b.be"]
    assert result.rejects.column("reason").to_pylist() == ["duplicate", "missing"]
    binary = AudienceCleaner("email").clean(pa.record_batch({"email": pa.array([b"a@b.be", b"\xff@b.be"])}))
    assert binary.identifiers.to_pylist() == ["a@b.be"]
    assert binary.rejects.column("value").to_pylist() == ["\ufffd@b.be"]


# --------------------------------------------------------------------------- profileId

PROFILE_IDS = [
    (pa.array([1, 42, 9223372036854775807], pa.int64()), ["1", "42", "9223372036854775807"], []),
    (pa.array([0, -3, None, 7], pa.int32()), ["7"], ["zero", "negative", "missing"]),
    (pa.array([5, 2**64 - 1], pa.uint64()), ["5"], ["too large (beyond 9223372036854775807)"]),
    (
        pa.array([42.0, 42.5, float("nan"), float("inf"), -1.0, 0.0, 1e30, None]),
        ["42"],
        ["not a whole number", "not a number", "not a number", "negative", "zero",
         "too large (beyond 9223372036854775807)", "missing"],
    ),
    (
        pa.array([decimal.Decimal("42.00"), decimal.Decimal("4.50"), decimal.Decimal("-3.00"), decimal.Decimal("0")]),
        ["42"],
        ["not a whole number", "negative", "zero"],
    ),
    (
        pa.array([" 42 ", "007", "+5", "-5", "5.0", "1e3", "abc", "", "0", "-0", "4 2",
                  "99999999999999999999", "9223372036854775808", None]),
        ["42", "7"],
        ["sign not allowed", "negative", "decimal point not allowed", "not a number", "not a number", "missing",
         "zero", "zero", "not a number", "too large (beyond 9223372036854775807)",
         "too large (beyond 9223372036854775807)", "missing"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("values", "kept", "reasons"), PROFILE_IDS, ids=lambda v: str(getattr(v, "type", "")))
def test_profile_ids(values: pa.Array, kept: list[str], reasons: list[str]) -> None:
    result = AudienceCleaner("profileId").clean(pa.record_batch({"profileId": values}))
    assert result.identifiers.to_pylist() == kept
    assert result.identifiers.type == pa.string()
    assert result.rejects.column("reason").to_pylist() == reasons
    assert set(reasons) <= set(PROFILE_ID_REASONS)


def test_profile_ids_in_different_types_are_the_same_identifier() -> None:
    cleaner = AudienceCleaner("profileId", column="id")
    assert cleaner.clean(pa.record_batch({"id": pa.array([7, 8])})).identifiers.to_pylist() == ["7", "8"]
    second = cleaner.clean(pa.record_batch({"id": pa.array(["007", "9"])}))
    assert second.identifiers.to_pylist() == ["9"]
    assert second.rejects.to_pylist() == [{"row": 3, "value": "007", "reason": "duplicate"}]


# --------------------------------------------------------------------------- deduplication


def test_duplicates_are_dropped_across_chunks_with_their_row_numbers() -> None:
    cleaner = AudienceCleaner("email")
    first = cleaner.clean(pa.record_batch({"email": ["a@x.be", "b@x.be", "A@X.BE", "bad"]}))
    second = cleaner.clean(pa.record_batch({"email": ["c@x.be", " b@x.be", "c@x.be"]}))
    third = cleaner.clean(pa.record_batch({"email": pa.array([], pa.string())}))
    fourth = cleaner.clean(pa.record_batch({"email": ["a@x.be"]}))
    assert first.identifiers.to_pylist() == ["a@x.be", "b@x.be"]
    assert first.rejects.to_pylist() == [
        {"row": 3, "value": "A@X.BE", "reason": DUPLICATE},
        {"row": 4, "value": "bad", "reason": "no @"},
    ]
    assert second.identifiers.to_pylist() == ["c@x.be"]
    assert second.rejects.to_pylist() == [
        {"row": 6, "value": " b@x.be", "reason": DUPLICATE},
        {"row": 7, "value": "c@x.be", "reason": DUPLICATE},
    ]
    assert len(third.identifiers) == 0 and third.rejects.num_rows == 0
    assert fourth.rejects.to_pylist() == [{"row": 8, "value": "a@x.be", "reason": DUPLICATE}]
    assert cleaner.counts == AudienceCounts(extracted=8, rejected=1, duplicates=4, kept=3)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a@x.be", "b@x.be", "B@x.be", "c@y.com", "bad", None]), max_size=40), st.data())
def test_dedup_and_row_numbers_do_not_depend_on_chunk_boundaries(values: list[str | None], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=5)))
    cleaner = AudienceCleaner("email")
    kept: list[str] = []
    rejects: list[dict[str, object]] = []
    for start, end in zip([0, *cuts], [*cuts, len(values)], strict=True):
        result = cleaner.clean(pa.record_batch({"email": pa.array(values[start:end], pa.string())}))
        kept += result.identifiers.to_pylist()
        rejects += result.rejects.to_pylist()
    expected_kept: list[str] = []
    expected_rejects = []
    for row, value in enumerate(values, start=1):
        normal = None if value is None else value.strip().lower()
        if normal in (None, ""):
            expected_rejects.append({"row": row, "value": value, "reason": "missing"})
        elif "@" not in normal:
            expected_rejects.append({"row": row, "value": value, "reason": "no @"})
        elif normal in expected_kept:
            expected_rejects.append({"row": row, "value": value, "reason": DUPLICATE})
        else:
            expected_kept.append(normal)
    assert kept == expected_kept
    assert rejects == expected_rejects
    counts = cleaner.counts
    assert counts.extracted == len(values) == counts.kept + counts.rejected + counts.duplicates


#: small numbers, half of them moved to the top bits too: some hashes share the bitmap's bit, some do not
_HASHES = st.integers(0, 50).map(lambda v: v if v % 2 else (v << 57) ^ v)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_HASHES, max_size=30), max_size=12))
def test_the_hash_memory_behaves_like_a_set(chunks: list[list[int]]) -> None:
    memory, reference = SeenHashes(), set()
    for chunk in chunks:
        hashes = np.array(chunk, dtype=np.uint64)
        keep = memory.add_new(hashes)
        expected = []
        for value in chunk:
            expected.append(value not in reference)
            reference.add(value)
        assert keep.tolist() == expected
    assert len(memory) == len(reference)
    probes = [v if v % 2 else (v << 57) ^ v for v in range(60)] + list(range(60))
    assert memory.contains(np.array(probes, dtype=np.uint64)).tolist() == [v in reference for v in probes]


def test_the_hash_memory_stays_a_few_sorted_runs() -> None:
    memory = SeenHashes()
    rng = np.random.default_rng(7)
    for _ in range(200):
        memory.add_new(rng.integers(0, 2**63, 1000, dtype=np.uint64))
    runs = memory._runs
    assert len(runs) <= 2 * int(np.log2(len(memory))) + 1
    assert all(np.all(run[1:] > run[:-1]) for run in runs)


# --------------------------------------------------------------------------- column resolution


@pytest.mark.parametrize(
    ("kind", "columns", "column", "chosen"),
    [
        ("email", ["id", "EMAIL", "name"], None, "EMAIL"),
        ("email", ["mail", "email_address", "emailaddress"], None, "emailaddress"),  # alias order wins
        ("email", ["contact"], None, "contact"),  # the only column
        ("email", ["id", "Contact_Mail"], "contact_mail", "Contact_Mail"),  # configured, any case
        ("profileId", ["email", "ACTITO_PROFILE_ID"], None, "ACTITO_PROFILE_ID"),
        ("profileId", ["profile_id", "profileId"], None, "profileId"),
    ],
)
def test_the_identifier_column(kind: str, columns: list[str], column: str | None, chosen: str) -> None:
    cleaner = AudienceCleaner(kind, column=column)  # type: ignore[arg-type]
    cleaner.clean(pa.record_batch({name: pa.array(["1"]) for name in columns}))
    assert cleaner.column_used == chosen


def test_no_identifier_column_says_what_to_do() -> None:
    cleaner = AudienceCleaner("email", where="sql/x.sql")
    with pytest.raises(TransformError) as caught:
        cleaner.clean(pa.record_batch({"id": [1], "contact": ["a@b.be"]}))
    message = str(caught.value)
    assert caught.value.where == "sql/x.sql"
    assert "'id', 'contact'" in message
    assert 'SELECT email AS "emailAddress"' in message and "identifier_column" in message


def test_a_configured_column_that_does_not_exist() -> None:
    with pytest.raises(TransformError, match="'customer_mail' is not a column of the query.*'email'"):
        AudienceCleaner("email", column="customer_mail").clean(pa.record_batch({"email": ["a@b.be"], "x": [1]}))


def test_columns_differing_only_by_case_are_ambiguous() -> None:
    with pytest.raises(TransformError, match="several columns"):
        AudienceCleaner("email").clean(pa.record_batch({"Email": ["a@b.be"], "email": ["c@d.be"]}))


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("email", pa.array([12, None])),
        ("email", pa.array([datetime.date(2020, 1, 1)])),
        ("email", pa.array([True])),
        ("profileId", pa.array([True, None])),
        ("profileId", pa.array([datetime.datetime(2020, 1, 1)])),
        ("profileId", pa.array([b"42"])),
    ],
    ids=lambda v: str(getattr(v, "type", v)),
)
def test_a_column_of_the_wrong_type_is_one_clear_error(kind: str, values: pa.Array) -> None:
    cleaner = AudienceCleaner(kind, where="sql/a.sql")  # type: ignore[arg-type]
    with pytest.raises(TransformError, match=re.escape(f"'id' has type {values.type}, which cannot hold")) as caught:
        cleaner.clean(pa.record_batch({"id": values}))
    assert caught.value.where == "sql/a.sql" and "identifier_column" in caught.value.hint


def test_no_columns_at_all() -> None:
    with pytest.raises(TransformError, match="no columns"):
        AudienceCleaner("email").clean(pa.RecordBatch.from_pydict({}))


def test_every_later_chunk_must_have_the_column_chosen_first() -> None:
    cleaner = AudienceCleaner("email")
    cleaner.clean(pa.record_batch({"email": ["a@b.be"], "other": [1]}))
    cleaner.clean(pa.record_batch({"other": [2], "email": ["c@d.be"]}))
    with pytest.raises(TransformError, match="no column 'email'"):
        cleaner.clean(pa.record_batch({"emailAddress": ["e@f.be"]}))


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown identifier kind"):
        AudienceCleaner("phone")  # type: ignore[arg-type]


def test_headers() -> None:
    assert HEADER == {"email": "emailAddress", "profileId": "profileId"}


def test_an_empty_chunk_gives_empty_typed_results() -> None:
    result = AudienceCleaner("profileId").clean(pa.record_batch({"profileId": pa.array([], pa.int64())}))
    assert result.identifiers.type == pa.string() and len(result.identifiers) == 0
    assert result.rejects.schema.names == ["row", "value", "reason"]
    assert result.rejects.schema.field("row").type == pa.int64()
