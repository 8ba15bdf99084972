"""Audience and reject files: bytes as Actito reads them, determinism, parts, modes, names, manifests."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import stat
import zipfile
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.errors import FileWriteError
from etl.files import (
    ZIP_DATE_TIME,
    Compression,
    CsvFileWriter,
    RejectWriter,
    WrittenFile,
    final_file_name,
    name_matcher,
    name_pattern_problem,
    render_file_name,
    write_manifest,
)

NAMES: dict[Compression, str] = {"none": "audience.csv", "gzip": "audience.csv.gz", "zip": "audience.zip"}
EMAILS = [f"user{i:05d}.{(i * 7919) % 10007:05x}@example.com" for i in range(6000)]


def write(
    directory: Path,
    values: list[str],
    *,
    cuts: tuple[int, ...] = (),
    compression: Compression = "none",
    separator: str = ",",
    max_bytes: int = 100_000_000,
    line_ending: str = "\n",
) -> list[WrittenFile]:
    """Write ``values`` cut into batches at ``cuts``; return what the writer reports."""
    bounds = [0, *cuts, len(values)]
    with CsvFileWriter(
        directory,
        NAMES[compression],
        header="emailAddress",
        separator=separator,
        compression=compression,
        max_bytes=max_bytes,
        line_ending=line_ending,
    ) as writer:
        for start, end in zip(bounds, bounds[1:], strict=False):
            writer.write(pa.array(values[start:end], pa.string()))
        return writer.close()


def csv_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            (member,) = archive.namelist()
            return archive.read(member)
    return raw


# --------------------------------------------------------------------------- bytes


def test_plain_file_bytes(tmp_path: Path) -> None:
    (written,) = write(tmp_path, ["a@b.be", "c@d.be"])
    assert written.path == tmp_path / "audience.csv"
    assert written.path.read_bytes() == b"emailAddress\na@b.be\nc@d.be\n"  # no BOM, LF, bare values
    assert written.rows == 2
    assert written.size == 27
    assert written.sha256 == hashlib.sha256(b"emailAddress\na@b.be\nc@d.be\n").hexdigest()


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_quoting_where_needed_only(tmp_path: Path, separator: str) -> None:
    values = ["plain@x.be", f"has{separator}sep", 'has"quote', "has\nnewline", "has\rcr", "o'brien@x.be"]
    (written,) = write(tmp_path, values, separator=separator)
    raw = written.path.read_bytes()
    assert raw.startswith(b"emailAddress\nplain@x.be\n")
    assert f'"has{separator}sep"'.encode() in raw
    assert b'"has""quote"' in raw and b'"has\nnewline"' in raw and b"\no'brien@x.be\n" in raw
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter=separator))
    assert rows == [["emailAddress"], *[[v] for v in values]]  # every line one column


def test_crlf_can_be_chosen(tmp_path: Path) -> None:
    (written,) = write(tmp_path, ["a@b.be"], line_ending="\r\n")
    assert written.path.read_bytes() == b"emailAddress\r\na@b.be\r\n"


def test_an_empty_audience_is_a_header(tmp_path: Path) -> None:
    for compression in ("none", "gzip", "zip"):
        (written,) = write(tmp_path / compression, [], compression=compression)
        assert written.rows == 0
        assert csv_bytes(written.path) == b"emailAddress\n"


def test_gzip_header_has_no_date_and_no_name(tmp_path: Path) -> None:
    (written,) = write(tmp_path, ["a@b.be"], compression="gzip")
    header = written.path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0  # no FNAME
    assert header[4:8] == b"\0\0\0\0"  # mtime 0


def test_zip_holds_one_csv_member_with_a_fixed_date(tmp_path: Path) -> None:
    (written,) = write(tmp_path, ["a@b.be"], compression="zip")
    with zipfile.ZipFile(written.path) as archive:
        (info,) = archive.infolist()
        assert info.filename == "audience.csv"
        assert info.date_time == ZIP_DATE_TIME
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert archive.read(info) == b"emailAddress\na@b.be\n"


def test_profile_id_header_and_separator(tmp_path: Path) -> None:
    with CsvFileWriter(tmp_path, "vip.csv", header="profileId", separator=";") as writer:
        writer.write(pa.array(["1", "22"]))
    assert (tmp_path / "vip.csv").read_bytes() == b"profileId\n1\n22\n"


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("compression", ["none", "gzip", "zip"])
def test_bytes_do_not_depend_on_batch_boundaries(tmp_path: Path, compression: Compression) -> None:
    splits = [(), (1,), (1, 2, 3, 4000), tuple(range(0, 6000, 7)), (5999,)]
    digests = set()
    for number, cuts in enumerate(splits):
        (written,) = write(tmp_path / str(number), EMAILS, cuts=cuts, compression=compression)
        digests.add(written.sha256)
        assert written.rows == len(EMAILS)
    assert len(digests) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    compression=st.sampled_from(["none", "gzip", "zip"]),
    cuts=st.lists(st.integers(0, len(EMAILS[:1500])), max_size=8).map(lambda c: tuple(sorted(c))),
)
def test_parts_do_not_depend_on_batch_boundaries(
    tmp_path: Path, compression: Compression, cuts: tuple[int, ...]
) -> None:
    values = EMAILS[:1500]
    max_bytes = {"none": 12_000, "gzip": 4_000, "zip": 4_000}[compression]
    directory = tmp_path / f"{compression}-{'-'.join(map(str, cuts))}"
    reference_dir = tmp_path / f"{compression}-reference"
    if not reference_dir.exists():
        write(reference_dir, values, compression=compression, max_bytes=max_bytes)
    written = write(directory, values, cuts=cuts, compression=compression, max_bytes=max_bytes)
    assert len(written) > 1
    for part in written:
        assert part.path.read_bytes() == (reference_dir / part.path.name).read_bytes()


# --------------------------------------------------------------------------- parts


@pytest.mark.parametrize(("compression", "max_bytes"), [("none", 20_000), ("gzip", 10_000), ("zip", 10_000)])
def test_parts_stay_under_max_bytes_and_hold_every_row(
    tmp_path: Path, compression: Compression, max_bytes: int
) -> None:
    written = write(tmp_path, EMAILS, cuts=(10, 333, 4000), compression=compression, max_bytes=max_bytes)
    assert len(written) > 2
    stem, ext = "audience", {"none": ".csv", "gzip": ".csv.gz", "zip": ".zip"}[compression]
    assert [w.path.name for w in written] == [f"{stem}_part{n:03d}{ext}" for n in range(1, len(written) + 1)]
    rows: list[str] = []
    for part in written:
        assert part.size == part.path.stat().st_size <= max_bytes
        assert part.sha256 == hashlib.sha256(part.path.read_bytes()).hexdigest()
        lines = csv_bytes(part.path).decode("utf-8").split("\n")
        assert lines[0] == "emailAddress" and lines[-1] == ""
        assert len(lines) - 2 == part.rows > 0
        rows += lines[1:-1]
    assert rows == EMAILS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(w.path.name for w in written)  # no temporaries


def test_zip_parts_name_their_member_after_the_part(tmp_path: Path) -> None:
    written = write(tmp_path, EMAILS[:2000], compression="zip", max_bytes=10_000)
    for part in written:
        with zipfile.ZipFile(part.path) as archive:
            assert archive.namelist() == [part.path.name.replace(".zip", ".csv")]
            assert archive.testzip() is None


def test_a_single_part_keeps_the_plain_name(tmp_path: Path) -> None:
    written = write(tmp_path, EMAILS[:100], compression="gzip", max_bytes=10_000)
    assert [w.path.name for w in written] == ["audience.csv.gz"]


def test_max_bytes_too_small(tmp_path: Path) -> None:
    with pytest.raises(FileWriteError, match="too small"):
        write(tmp_path, ["a@b.be"], compression="zip", max_bytes=600)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileWriteError, match="too small"):
        write(tmp_path, ["x" * 5000 + "@b.be"], max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("compression", ["none", "gzip", "zip"])
def test_a_failure_inside_with_removes_partial_files(tmp_path: Path, compression: Compression) -> None:
    with pytest.raises(RuntimeError):
        with CsvFileWriter(tmp_path, NAMES[compression], header="emailAddress", compression=compression,
                                max_bytes=10_000) as writer:  # fmt: skip
            writer.write(pa.array(EMAILS))
            raise RuntimeError("the warehouse went away")
    assert list(tmp_path.iterdir()) == []


def test_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        (written,) = write(tmp_path, ["a@b.be"], compression="gzip")
        with RejectWriter(tmp_path / "rejects.csv") as rejects:
            rejects.write(pa.table({"row": [1], "value": ["x"], "reason": ["no @"]}))
        write_manifest(tmp_path / "m.json", {"rows": 1})
    finally:
        os.umask(old)
    for path in (written.path, tmp_path / "rejects.csv", tmp_path / "m.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_write_after_close_is_refused(tmp_path: Path) -> None:
    writer = CsvFileWriter(tmp_path, "a.csv", header="profileId")
    assert writer.close() == writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(pa.array(["1"]))


# --------------------------------------------------------------------------- reject file


def test_reject_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "audience.rejects.csv"
    with RejectWriter(path) as rejects:
        rejects.write(
            pa.table(
                {
                    "row": pa.array([1, 2, 3, 4, 5, 6, 7, 8], pa.int64()),
                    "value": ["=HYPERLINK(\"x\")", "+32 2 123", "-1", "@SUM(A1)", "\tx", "\rx", None, "Jérôme, \"J\""],
                    "reason": ["no @", "no @", "negative", "no @", "missing", "missing", "missing", "duplicate"],
                }
            )
        )
        rejects.write(pa.table({"row": pa.array([], pa.int64()), "value": pa.array([], pa.string()),
                                "reason": pa.array([], pa.string())}))  # fmt: skip
        assert rejects.close() == 8
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert [r["value"] for r in rows] == [
        "'=HYPERLINK(\"x\")", "'+32 2 123", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "", 'Jérôme, "J"'
    ]  # fmt: skip
    assert [r["row"] for r in rows] == [str(n) for n in range(1, 9)]
    assert rows[2]["reason"] == "negative"


def test_an_empty_reject_file_has_its_header(tmp_path: Path) -> None:
    with RejectWriter(tmp_path / "r.csv") as rejects:
        pass
    assert rejects.rows == 0
    assert (tmp_path / "r.csv").read_bytes() == b"row,value,reason\n"
    with RejectWriter(tmp_path / "i.csv", by_field=True) as rejects:
        pass
    assert (tmp_path / "i.csv").read_bytes() == b"row,column,value,reason,action\n"


# --------------------------------------------------------------------------- names

WHEN = datetime(2026, 3, 7, 8, 5, 9)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("audience.csv", "audience.csv"),
        ("audience_$yyyyMMdd.csv", "audience_20260307.csv"),
        ("a_$yyyyMMddHHmmss.csv", "a_20260307080509.csv"),
        ("a_$yyyy-$MM-$dd_$HH.$mm.$ss.csv", "a_2026-03-07_08.05.09.csv"),
        ("a_$yy$M$d.csv", "a_2637.csv"),
        ("a_$MMM.csv", "a_Mar.csv"),
    ],
)
def test_render_file_name(pattern: str, name: str) -> None:
    assert render_file_name(pattern, WHEN) == name
    assert name_pattern_problem(pattern) is None
    assert name_matcher(pattern)(name)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("audience.txt", "must end in .csv"),
        ("audience.CSV", "must end in .csv"),
        ("out/audience.csv", "without /"),
        ("out\\audience.csv", "without /"),
        ("..audience.csv", "'..'"),
        (".audience.csv", "dot"),
        ("my audience.csv", "may only use"),
        ("audiénce.csv", "may only use"),
        ("a;b.csv", "may only use"),
        ("-a.csv", "may only use"),
        ("a_$today.csv", "date placeholder"),
        ("a" * 200 + ".csv", "at most 200"),
    ],
)
def test_unusable_name_patterns(pattern: str, problem: str) -> None:
    reason = name_pattern_problem(pattern)
    assert reason is not None and problem in reason


def test_name_matcher_for_retention() -> None:
    matches = name_matcher("lapsed_$yyyyMMdd.csv")
    for name in ("lapsed_20260307.csv", "lapsed_20251231.csv.gz", "lapsed_20260101.zip", "lapsed_20260307_part002.zip",
                 "lapsed_20260307_part1000.csv"):  # fmt: skip
        assert matches(name), name
    for name in ("lapsed_2026037.csv", "lapsed_20260307.csv.tmp", "other_20260307.csv", "lapsed_20260307.json",
                 "xlapsed_20260307.csv", "lapsed_20260307_part2.csv"):  # fmt: skip
        assert not matches(name), name
    assert not matches(".lapsed_20260307_part001.csv.partial")
    plain = name_matcher("vip.customers.csv")
    assert plain("vip.customers.csv") and plain("vip.customers_part003.csv.gz")
    assert not plain("vipxcustomers.csv")


def test_final_file_name() -> None:
    assert final_file_name("a_$yyyyMMdd.csv", WHEN, "none") == "a_20260307.csv"
    assert final_file_name("a_$yyyyMMdd.csv", WHEN, "gzip") == "a_20260307.csv.gz"
    assert final_file_name("a_$yyyyMMdd.csv", WHEN, "zip") == "a_20260307.zip"


# --------------------------------------------------------------------------- manifest


def test_manifest_is_sorted_indented_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "audience.manifest.json"
    write_manifest(path, {"rows": 1, "activation": "vip", "files": [{"name": "a.csv", "bytes": 3}]})
    write_manifest(path, {"rows": 2, "activation": "vip", "generated_at": datetime(2026, 1, 1)})
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(
        {"activation": "vip", "generated_at": "2026-01-01 00:00:00", "rows": 2}, indent=2, sort_keys=True
    ) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["audience.manifest.json"]


def test_a_table_is_written_with_its_header_quoting_and_empty_cells(tmp_path: Path) -> None:
    rows = pa.table({
        "emailAddress": ["a@b.be", "c@d.be"],
        "lastName": ['O"Brien, Jr', None],
        "customerId": pa.array([7, None], pa.int64()),
    })
    with CsvFileWriter(tmp_path, "p.csv", header=["emailAddress", "lastName", "customerId"]) as writer:
        writer.write(rows)
        (written,) = writer.close()
    assert written.path.read_bytes() == (
        b'emailAddress,lastName,customerId\na@b.be,"O""Brien, Jr",7\nc@d.be,,\n'
    )
    assert written.rows == 2
