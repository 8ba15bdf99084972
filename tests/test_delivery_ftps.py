"""FtpsDeliverer against a real pyftpdlib FTPS server (explicit TLS required) on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from servers import HOST, FtpsBehaviour, FtpsServer, age, leftovers, make_tls_certificate, watch

from etl.delivery import DeliveredFile, FtpsDeliverer
from etl.errors import DeliveryError

pytest_plugins = ["conftest_delivery"]

Outbox = Callable[..., Path]
RUN_ID = "20240501T060000Z-a1b2c3"


def deliverer(server: FtpsServer, **overrides: Any) -> FtpsDeliverer:
    options: dict[str, Any] = dict(
        host=HOST,
        port=server.port,
        username=server.username,
        password=server.password,
        remote_dir="in",
        ca_file=server.tls.cert,
        timeout=5.0,
    )
    options.update(overrides)
    return FtpsDeliverer(**options)


def test_delivers(ftps_server: FtpsServer, outbox: Outbox) -> None:
    audience = outbox("audience.csv", b"email\na@example.com\n")
    manifest = outbox("audience.manifest.json", b"{}")

    with deliverer(ftps_server) as ftps:
        assert "verified against" in ftps.describe()
        delivered = ftps.deliver([audience, manifest], RUN_ID)

    inbox = ftps_server.root / "in"
    assert (inbox / "audience.csv").read_bytes() == b"email\na@example.com\n"
    assert (inbox / "audience.manifest.json").read_bytes() == b"{}"
    base = f"ftps://actito@127.0.0.1:{ftps_server.port}/in"
    assert delivered == [
        DeliveredFile("audience.csv", 20, f"{base}/audience.csv"),
        DeliveredFile("audience.manifest.json", 2, f"{base}/audience.manifest.json"),
    ]
    assert ftps_server.password not in repr(delivered)
    assert leftovers(inbox) == []


def test_overwrites_the_previous_file(ftps_server: FtpsServer, outbox: Outbox) -> None:
    previous = ftps_server.root / "in" / "audience.csv"
    previous.write_bytes(b"old content, longer than the new one\n")

    with deliverer(ftps_server) as ftps:
        ftps.deliver([outbox("audience.csv", b"new\n")], RUN_ID)

    assert previous.read_bytes() == b"new\n"
    assert leftovers(previous.parent) == []


def test_overwrites_on_a_server_that_will_not_rename_over_a_file(
    make_ftps_server: Callable[..., FtpsServer], outbox: Outbox
) -> None:
    server = make_ftps_server(FtpsBehaviour(refuse_overwrite=True))
    previous = server.root / "in" / "audience.csv"
    previous.write_bytes(b"old")

    with deliverer(server) as ftps:
        ftps.deliver([outbox("audience.csv", b"new"), outbox("fresh.csv", b"first time")], RUN_ID)

    assert previous.read_bytes() == b"new"
    assert (server.root / "in" / "fresh.csv").read_bytes() == b"first time"
    assert leftovers(previous.parent) == []


# --------------------------------------------------------------------------- TLS and login


def test_certificate_from_an_unknown_authority_is_refused(ftps_server: FtpsServer) -> None:
    with pytest.raises(DeliveryError, match="TLS certificate could not be verified") as caught:
        deliverer(ftps_server, ca_file=None).__enter__()
    assert "set ca_file" in str(caught.value)


def test_certificate_for_another_host_name_is_refused(ftps_server: FtpsServer, tmp_path: Path) -> None:
    other = make_tls_certificate(tmp_path / "other", host="127.0.0.2")  # trusted, but not for 127.0.0.1
    server_for_other_name = FtpsServer(tmp_path / "root", other).start()
    try:
        with pytest.raises(DeliveryError, match="TLS certificate could not be verified"):
            deliverer(server_for_other_name, ca_file=other.cert).__enter__()
    finally:
        server_for_other_name.stop()


def test_verification_can_be_switched_off_explicitly(
    ftps_server: FtpsServer, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="audience_sync.delivery")

    with deliverer(ftps_server, ca_file=None, verify_tls=False) as ftps:
        assert "NOT verified" in ftps.describe()
        ftps.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    assert (ftps_server.root / "in" / "audience.csv").read_bytes() == b"abc"
    assert any("verification is disabled" in r.getMessage() for r in caplog.records)


def test_wrong_password_is_a_clear_error_without_the_password(ftps_server: FtpsServer) -> None:
    with pytest.raises(DeliveryError, match="authentication failed for user 'actito'") as caught:
        deliverer(ftps_server, password="hunter2-wrong").__enter__()
    assert "hunter2-wrong" not in str(caught.value)


def test_connection_refused() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]

    with pytest.raises(DeliveryError, match="connection refused"):
        FtpsDeliverer(host=HOST, port=port, username="u", password="p", remote_dir="in").__enter__()


def test_silent_server_times_out() -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind((HOST, 0))
        silent.listen()
        ftps = FtpsDeliverer(
            host=HOST, port=silent.getsockname()[1], username="u", password="p", remote_dir="in", timeout=0.3
        )
        with pytest.raises(DeliveryError, match="no answer within 0.3 s"):
            ftps.__enter__()


def test_missing_ca_file(ftps_server: FtpsServer, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError, match="cannot load the CA file"):
        deliverer(ftps_server, ca_file=tmp_path / "nope.pem").__enter__()


def test_missing_remote_directory(ftps_server: FtpsServer) -> None:
    with pytest.raises(DeliveryError, match="cannot open the remote directory") as caught:
        deliverer(ftps_server, remote_dir="no/such/dir").__enter__()
    assert "no/such/dir" in caught.value.where


# --------------------------------------------------------------------------- failures keep the previous delivery


def test_failed_upload_removes_temp_files_and_keeps_previous_files(
    make_ftps_server: Callable[..., FtpsServer], outbox: Outbox
) -> None:
    server = make_ftps_server(FtpsBehaviour(write_limit=100_000))  # the "disk" fills up during big.csv
    inbox = server.root / "in"
    (inbox / "small.csv").write_bytes(b"previous small")
    (inbox / "big.csv").write_bytes(b"previous big")

    with deliverer(server) as ftps, pytest.raises(DeliveryError, match="big.csv"):
        ftps.deliver([outbox("small.csv", b"new small"), outbox("big.csv", size=300_000)], RUN_ID)

    assert (inbox / "small.csv").read_bytes() == b"previous small"
    assert (inbox / "big.csv").read_bytes() == b"previous big"
    assert leftovers(inbox) == []


def test_reader_never_sees_a_partial_file(make_ftps_server: Callable[..., FtpsServer], outbox: Outbox) -> None:
    server = make_ftps_server(FtpsBehaviour(write_delay=0.001))
    inbox = server.root / "in"
    old_size, new_size = 1_000_003, 4 * 1024 * 1024
    (inbox / "audience.csv").write_bytes(b"o" * old_size)
    new = outbox("audience.csv", size=new_size, fill=b"n")

    with deliverer(server) as ftps, watch(inbox, "audience.csv") as seen:
        ftps.deliver([new], RUN_ID)

    assert seen.final_sizes <= {old_size, new_size}, "a reader saw a partial file under the final name"
    assert any(0 < size < new_size for size in seen.temp_sizes), "the watcher did not overlap the upload"
    assert (inbox / "audience.csv").read_bytes() == new.read_bytes()


# --------------------------------------------------------------------------- retention


def test_retention_removes_only_our_old_files(ftps_server: FtpsServer) -> None:
    inbox = ftps_server.root / "in"
    day = 86_400
    files = {
        "audience_20240101.csv": 10 * day,  # ours, old: removed
        "audience_20240501.csv": 1 * day,  # ours, recent: kept
        "partner_export.csv": 10 * day,  # not ours, old: kept
        ".audience-sync-20240101T000000Z-abc-audience_20240101.csv.part": 10 * day,  # our crashed leftover: removed
        ".audience-sync-20240501T060000Z-def-audience_20240501.csv.part": 60,  # perhaps in flight: kept
    }
    for name, seconds in files.items():
        (inbox / name).write_bytes(b"x")
        age(inbox / name, seconds)
    (inbox / "audience_archive.csv").mkdir()  # matches, but a directory: kept
    age(inbox / "audience_archive.csv", 10 * day)

    with deliverer(ftps_server) as ftps:
        cutoff = datetime.now(UTC) - timedelta(days=5)
        removed = ftps.apply_retention(lambda name: name.startswith("audience_"), cutoff)

    assert sorted(removed) == [
        ".audience-sync-20240101T000000Z-abc-audience_20240101.csv.part",
        "audience_20240101.csv",
    ]
    assert sorted(p.name for p in inbox.iterdir()) == sorted(set(files) - set(removed) | {"audience_archive.csv"})


def test_retention_on_an_empty_directory(ftps_server: FtpsServer) -> None:
    with deliverer(ftps_server) as ftps:
        assert ftps.apply_retention(lambda name: True, datetime.now(UTC)) == []

