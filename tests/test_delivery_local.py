"""LocalDeliverer: what only a directory of this machine does (see test_delivery_contract.py for the rest)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servers import leftovers

from etl.destinations.filedrop.base import DeliveredFile
from etl.destinations.filedrop.local import LocalDeliverer
from etl.destinations.filedrop.base import temp_name
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


def test_retention_leaves_links_alone(tmp_path: Path) -> None:
    target = tmp_path / "in"
    target.mkdir()
    (target / "partner_export.csv").write_bytes(b"x")
    link = target / "audience_link.csv"  # named like ours, but not a regular file
    link.symlink_to(target / "partner_export.csv")
    old = time.time() - 10 * 86_400
    os.utime(link, (old, old), follow_symlinks=False)
    os.utime(target / "partner_export.csv", (old, old))

    with LocalDeliverer(target) as local:
        cutoff = datetime.now(UTC) - timedelta(days=5)
        removed = local.apply_retention(lambda name: name.startswith("audience_"), cutoff)

    assert removed == []
    assert link.is_symlink()
    assert (target / "partner_export.csv").exists()


def test_links_planted_at_the_temporary_or_final_name_are_replaced_never_written_through(
    tmp_path: Path, outbox: Outbox
) -> None:
    target = tmp_path / "transfer"
    target.mkdir()
    victims = [tmp_path / "victim-temp", tmp_path / "victim-final"]
    for victim in victims:
        victim.write_bytes(b"precious\n")
    (target / temp_name(RUN_ID, "audience.csv")).symlink_to(victims[0])
    (target / "audience.csv").symlink_to(victims[1])

    with LocalDeliverer(target) as local:
        local.deliver([outbox("audience.csv", b"email\na@example.com\n")], RUN_ID)

    assert [victim.read_bytes() for victim in victims] == [b"precious\n", b"precious\n"]
    final = target / "audience.csv"
    assert not final.is_symlink() and final.read_bytes() == b"email\na@example.com\n"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert leftovers(target) == []


def test_a_delivery_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "outbox").symlink_to(real)
    with pytest.raises(DeliveryError, match="is a symbolic link") as caught:
        LocalDeliverer(tmp_path / "outbox").connect()
    assert str(real) in caught.value.hint
