"""LocalDeliverer, and the parts of the delivery contract that do not depend on the protocol."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servers import TEMP_PREFIX, age, leftovers, watch

from etl.delivery import DeliveredFile, LocalDeliverer
from etl.delivery.base import temp_name
from etl.errors import DeliveryError

pytest_plugins = ["conftest_delivery"]

Outbox = Callable[..., Path]
RUN_ID = "20240501T060000Z-a1b2c3"


def test_delivers_and_creates_the_directory(tmp_path: Path, outbox: Outbox) -> None:
    target = tmp_path / "transfer" / "in"
    audience = outbox("audience.csv", b"email\na@example.com\n")

    with LocalDeliverer(target) as local:
        assert local.describe() == f"local directory {target}"
        delivered = local.deliver([audience], RUN_ID)

    assert (target / "audience.csv").read_bytes() == b"email\na@example.com\n"
    assert delivered == [DeliveredFile("audience.csv", 20, (target / "audience.csv").as_uri())]
    assert leftovers(target) == []


def test_replaces_the_previous_file(tmp_path: Path, outbox: Outbox) -> None:
    target = tmp_path / "in"
    target.mkdir()
    (target / "audience.csv").write_bytes(b"old content")

    with LocalDeliverer(target) as local:
        local.deliver([outbox("audience.csv", b"new")], RUN_ID)

    assert (target / "audience.csv").read_bytes() == b"new"
    assert leftovers(target) == []


def test_reader_never_sees_a_partial_file(tmp_path: Path, outbox: Outbox) -> None:
    target = tmp_path / "in"
    target.mkdir()
    old_size, new_size = 1_000_003, 4 * 1024 * 1024
    (target / "audience.csv").write_bytes(b"o" * old_size)
    new = outbox("audience.csv", size=new_size, fill=b"n")

    with LocalDeliverer(target) as local, watch(target, "audience.csv") as seen:
        for _ in range(3):
            local.deliver([new], RUN_ID)

    assert seen.final_sizes <= {old_size, new_size}
    assert (target / "audience.csv").read_bytes() == new.read_bytes()


def test_failure_before_the_renames_keeps_every_previous_file(tmp_path: Path, outbox: Outbox) -> None:
    target = tmp_path / "in"
    target.mkdir()
    (target / "a.csv").write_bytes(b"previous a")
    (target / "b.csv").write_bytes(b"previous b")
    # something in the way of b.csv's temporary file: its upload fails after a.csv's succeeded
    (target / temp_name(RUN_ID, "b.csv")).mkdir()

    with LocalDeliverer(target) as local, pytest.raises(DeliveryError, match="cannot write b.csv"):
        local.deliver([outbox("a.csv", b"new a"), outbox("b.csv", b"new b")], RUN_ID)

    assert (target / "a.csv").read_bytes() == b"previous a"
    assert (target / "b.csv").read_bytes() == b"previous b"
    assert not (target / temp_name(RUN_ID, "a.csv")).exists()


def test_directory_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    with pytest.raises(DeliveryError, match="cannot create the delivery directory") as caught:
        LocalDeliverer(blocker / "in").__enter__()
    assert caught.value.where == str(blocker / "in")

    with pytest.raises(DeliveryError, match="not a directory"):
        LocalDeliverer(blocker).__enter__()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that apply to us")
def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "in"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(DeliveryError, match="not writable"):
            LocalDeliverer(target).__enter__()
    finally:
        target.chmod(0o755)


def test_retention_removes_only_our_old_files(tmp_path: Path) -> None:
    target = tmp_path / "in"
    target.mkdir()
    day = 86_400
    files = {
        "audience_20240101.csv": 10 * day,
        "audience_20240501.csv": 1 * day,
        "partner_export.csv": 10 * day,
        f"{TEMP_PREFIX}20240101T000000Z-abc-audience_20240101.csv.part": 10 * day,
        f"{TEMP_PREFIX}20240501T060000Z-def-audience_20240501.csv.part": 60,
    }
    for name, seconds in files.items():
        (target / name).write_bytes(b"x")
        age(target / name, seconds)
    (target / "audience_archive.csv").mkdir()
    age(target / "audience_archive.csv", 10 * day)
    (target / "audience_link.csv").symlink_to(target / "partner_export.csv")  # not a regular file: kept

    with LocalDeliverer(target) as local:
        cutoff = datetime.now(UTC) - timedelta(days=5)
        removed = local.apply_retention(lambda name: name.startswith("audience_"), cutoff)

    assert sorted(removed) == [f"{TEMP_PREFIX}20240101T000000Z-abc-audience_20240101.csv.part", "audience_20240101.csv"]
    assert (target / "partner_export.csv").exists()
    assert (target / "audience_archive.csv").is_dir()
    assert (target / "audience_20240501.csv").exists()


# --------------------------------------------------------------------------- the contract, checked before any transfer


def test_local_problems_are_found_before_anything_is_sent(tmp_path: Path, outbox: Outbox) -> None:
    target = tmp_path / "in"
    audience = outbox("audience.csv", b"x")

    with LocalDeliverer(target) as local:
        with pytest.raises(DeliveryError, match="does not exist"):
            local.deliver([audience, tmp_path / "missing.csv"], RUN_ID)
        with pytest.raises(DeliveryError, match="both named audience.csv"):
            other = tmp_path / "elsewhere"
            other.mkdir()
            (other / "audience.csv").write_bytes(b"y")
            local.deliver([audience, other / "audience.csv"], RUN_ID)
        with pytest.raises(DeliveryError, match="cannot deliver a file named"):
            local.deliver([outbox(f"{TEMP_PREFIX}sneaky.csv", b"x")], RUN_ID)

    assert list(target.iterdir()) == []


def test_retention_needs_an_aware_cutoff(tmp_path: Path) -> None:
    with LocalDeliverer(tmp_path) as local, pytest.raises(ValueError, match="timezone-aware"):
        local.apply_retention(lambda name: True, datetime.now())


def test_must_be_used_as_a_context_manager(tmp_path: Path, outbox: Outbox) -> None:
    with pytest.raises(RuntimeError, match="with"):
        LocalDeliverer(tmp_path).deliver([outbox("a.csv", b"x")], RUN_ID)


def test_temp_names_are_safe_and_recognisable() -> None:
    name = temp_name("2024-05-01 06:00/../x", "audience.csv")
    assert name.startswith(TEMP_PREFIX) and name.endswith("-audience.csv.part")
    assert "/" not in name and " " not in name
