"""What every Deliverer guarantees, whatever the protocol.

Each test runs against a local directory, a real SFTP server and a real FTPS server in turn (the
``location`` fixture), and checks the result where Actito would see it: in the served directory,
on disk. What only one protocol does (host keys, TLS, logins, server quirks) is tested in
test_delivery_<protocol>.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servers import PASSWORD, TEMP_PREFIX, DiskFull, Location, age, leftovers, watch

from etl.destinations.filedrop.base import temp_name
from etl.errors import DeliveryError
from etl.files import name_matcher

pytest_plugins = ["conftest_delivery"]

Outbox = Callable[..., Path]
RUN_ID = "20240501T060000Z-a1b2c3"


def test_delivers_every_file_under_its_own_name(location: Location, outbox: Outbox) -> None:
    connect, directory = location
    audience = outbox("audience.csv", b"email\na@example.com\n")
    manifest = outbox("audience.manifest.json", b"{}")

    with connect() as deliverer:
        description = deliverer.describe()
        delivered = deliverer.deliver([audience, manifest], RUN_ID)

    assert (directory / "audience.csv").read_bytes() == b"email\na@example.com\n"
    assert (directory / "audience.manifest.json").read_bytes() == b"{}"
    assert [(file.name, file.size) for file in delivered] == [("audience.csv", 20), ("audience.manifest.json", 2)]
    assert all(file.location.endswith(f"/in/{file.name}") for file in delivered)
    assert PASSWORD not in repr(delivered)
    assert PASSWORD not in description
    assert leftovers(directory) == []


def test_replaces_the_previous_file(location: Location, outbox: Outbox) -> None:
    connect, directory = location
    previous = directory / "audience.csv"
    previous.write_bytes(b"old content, longer than the new one\n")

    with connect() as deliverer:
        deliverer.deliver([outbox("audience.csv", b"new\n")], RUN_ID)

    assert previous.read_bytes() == b"new\n"
    assert leftovers(directory) == []


def test_reader_never_sees_a_partial_file(location: Location, outbox: Outbox) -> None:
    connect, directory = location
    old_size, new_size = 1_000_003, 4 * 1024 * 1024
    (directory / "audience.csv").write_bytes(b"o" * old_size)
    new = outbox("audience.csv", size=new_size, fill=b"n")

    with connect() as deliverer, watch(directory, "audience.csv") as seen:
        deliverer.deliver([new], RUN_ID)
        # a local copy takes milliseconds: on a busy machine the reader may need a few more chances
        deadline = time.monotonic() + 10
        while not seen.saw_upload_in_progress(new_size) and time.monotonic() < deadline:
            deliverer.deliver([new], RUN_ID)

    assert seen.final_sizes <= {old_size, new_size}, "a reader saw a partial file under the final name"
    assert seen.saw_upload_in_progress(new_size), "the watcher did not overlap the upload"
    assert (directory / "audience.csv").read_bytes() == new.read_bytes()


# --------------------------------------------------------------------------- failures keep the previous delivery


def test_failed_upload_removes_temp_files_and_keeps_previous_files(
    location: Location, disk_full: DiskFull, outbox: Outbox
) -> None:
    connect, directory = location
    (directory / "small.csv").write_bytes(b"previous small")
    (directory / "big.csv").write_bytes(b"previous big")
    files = [outbox("small.csv", b"new small"), outbox("big.csv", size=300_000)]

    # the server's error reports it, or the size check where a client loses that error (pipelined SFTP writes)
    with connect() as deliverer, disk_full(after=100_000), pytest.raises(DeliveryError, match="big.csv"):
        deliverer.deliver(files, RUN_ID)

    assert (directory / "small.csv").read_bytes() == b"previous small"  # uploaded fine, but never renamed
    assert (directory / "big.csv").read_bytes() == b"previous big"
    assert leftovers(directory) == []


def test_failure_before_the_renames_keeps_every_previous_file(location: Location, outbox: Outbox) -> None:
    connect, directory = location
    (directory / "a.csv").write_bytes(b"previous a")
    (directory / "b.csv").write_bytes(b"previous b")
    # something in the way of b.csv's temporary file: its upload fails after a.csv's succeeded
    in_the_way = directory / temp_name(RUN_ID, "b.csv")
    in_the_way.mkdir()

    with connect() as deliverer, pytest.raises(DeliveryError, match=r"cannot (write|upload) b\.csv"):
        deliverer.deliver([outbox("a.csv", b"new a"), outbox("b.csv", b"new b")], RUN_ID)

    assert (directory / "a.csv").read_bytes() == b"previous a"
    assert (directory / "b.csv").read_bytes() == b"previous b"
    assert leftovers(directory) == [in_the_way.name]  # a.csv's temporary file is gone, the directory is kept


def test_local_problems_are_found_before_anything_is_sent(location: Location, outbox: Outbox, tmp_path: Path) -> None:
    connect, directory = location
    audience = outbox("audience.csv", b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "audience.csv").write_bytes(b"y")

    with connect() as deliverer:
        with pytest.raises(DeliveryError, match="does not exist"):
            deliverer.deliver([audience, tmp_path / "missing.csv"], RUN_ID)
        with pytest.raises(DeliveryError, match="both named audience.csv"):
            deliverer.deliver([audience, elsewhere / "audience.csv"], RUN_ID)
        with pytest.raises(DeliveryError, match="cannot deliver a file named"):
            deliverer.deliver([outbox(f"{TEMP_PREFIX}sneaky.csv", b"x")], RUN_ID)

    assert list(directory.iterdir()) == []


# --------------------------------------------------------------------------- retention


def test_retention_removes_only_our_old_files(location: Location) -> None:
    connect, directory = location
    day = 86_400
    files = {
        "audience_20240101.csv": 10 * day,  # ours, old: removed
        "audience_20240501.csv": 1 * day,  # ours, recent: kept
        "partner_export.csv": 10 * day,  # not ours, old: kept
        f"{TEMP_PREFIX}20240101T000000Z-abc-audience_20240101.csv.part": 10 * day,  # our crashed leftover: removed
        f"{TEMP_PREFIX}20240501T060000Z-def-audience_20240501.csv.part": 60,  # perhaps in flight: kept
    }
    for name, seconds in files.items():
        (directory / name).write_bytes(b"x")
        age(directory / name, seconds)
    (directory / "audience_archive.csv").mkdir()  # matches, but a directory: kept
    age(directory / "audience_archive.csv", 10 * day)

    with connect() as deliverer:
        cutoff = datetime.now(UTC) - timedelta(days=5)
        removed = deliverer.apply_retention(lambda name: name.startswith("audience_"), cutoff)

    assert sorted(removed) == [f"{TEMP_PREFIX}20240101T000000Z-abc-audience_20240101.csv.part", "audience_20240101.csv"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(set(files) - set(removed) | {"audience_archive.csv"})
    assert (directory / "audience_archive.csv").is_dir()


def test_retention_on_an_empty_directory(location: Location) -> None:
    connect, _ = location
    with connect() as deliverer:
        assert deliverer.apply_retention(lambda name: True, datetime.now(UTC)) == []


def test_retention_needs_an_aware_cutoff(location: Location) -> None:
    connect, _ = location
    with connect() as deliverer, pytest.raises(ValueError, match="timezone-aware"):
        deliverer.apply_retention(lambda name: True, datetime.now())


def test_a_retired_activation_s_files_go_temporary_ones_included_and_nothing_else(location: Location) -> None:
    connect, directory = location
    ours = ["vip_20240101.csv", "vip_20240501.csv.gz", "vip_20240501.manifest.json",
            f"{TEMP_PREFIX}20240101T000000Z-abc-vip_20240101.csv.part"]
    theirs = ["vip_2024.csv", "vip_notes.txt", "VIP_20240101.csv", f"{TEMP_PREFIX}20240101T000000Z-abc-other.csv.part"]
    for name in ours + theirs:
        (directory / name).write_bytes(b"x")
    (directory / "vip_20240202.csv").mkdir()  # matches, but a directory: kept
    is_ours = name_matcher("vip_$yyyyMMdd.csv")

    with connect() as deliverer:
        assert deliverer.owned(is_ours) == sorted(ours)
        assert all((directory / name).exists() for name in ours)  # listing removes nothing
        assert deliverer.remove_owned(is_ours) == sorted(ours)
        assert deliverer.remove_owned(is_ours) == []
    assert sorted(p.name for p in directory.iterdir()) == sorted([*theirs, "vip_20240202.csv"])


# --------------------------------------------------------------------------- usage


def test_must_be_used_as_a_context_manager(location: Location, outbox: Outbox) -> None:
    connect, directory = location
    deliverer = connect()

    with pytest.raises(RuntimeError, match="with"):
        deliverer.deliver([outbox("a.csv", b"x")], RUN_ID)
    with pytest.raises(RuntimeError, match="with"):
        deliverer.apply_retention(lambda name: True, datetime.now(UTC))

    assert list(directory.iterdir()) == []


def test_temp_names_are_safe_and_recognisable() -> None:
    name = temp_name("2024-05-01 06:00/../x", "audience.csv")
    assert name.startswith(TEMP_PREFIX) and name.endswith("-audience.csv.part")
    assert "/" not in name and " " not in name
