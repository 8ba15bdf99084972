"""SftpDeliverer against a real asyncssh SFTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from servers import (
    HOST,
    SftpBehaviour,
    SftpServer,
    age,
    generate_ssh_key,
    known_hosts_line,
    leftovers,
    watch,
    write_private_key,
)

from etl.delivery import DeliveredFile, SftpDeliverer
from etl.errors import DeliveryError

pytest_plugins = ["conftest_delivery"]

Outbox = Callable[..., Path]
RUN_ID = "20240501T060000Z-a1b2c3"


def deliverer(server: SftpServer, known_hosts: Path | None, **overrides: Any) -> SftpDeliverer:
    options: dict[str, Any] = dict(
        host=HOST,
        port=server.port,
        username=server.username,
        password=server.password,
        known_hosts=known_hosts,
        remote_dir="in",
        timeout=5.0,
    )
    options.update(overrides)
    return SftpDeliverer(**options)


def test_delivers_with_password(sftp_server: SftpServer, known_hosts: Path, outbox: Outbox) -> None:
    audience = outbox("audience.csv", b"email\na@example.com\n")
    manifest = outbox("audience.manifest.json", b"{}")

    with deliverer(sftp_server, known_hosts) as sftp:
        delivered = sftp.deliver([audience, manifest], RUN_ID)

    inbox = sftp_server.root / "in"
    assert (inbox / "audience.csv").read_bytes() == b"email\na@example.com\n"
    assert (inbox / "audience.manifest.json").read_bytes() == b"{}"
    base = f"sftp://actito@127.0.0.1:{sftp_server.port}/in"
    assert delivered == [
        DeliveredFile("audience.csv", 20, f"{base}/audience.csv"),
        DeliveredFile("audience.manifest.json", 2, f"{base}/audience.manifest.json"),
    ]
    assert leftovers(inbox) == []


def test_delivers_with_an_encrypted_key_file(
    make_sftp_server: Callable[..., SftpServer], client_key: asyncssh.SSHKey, tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(password=None)
    key_file = write_private_key(client_key, tmp_path / "id_ed25519", passphrase="open sesame")
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")

    with deliverer(server, known_hosts, password=None, key_file=key_file, key_passphrase="open sesame") as sftp:
        assert "key file" in sftp.describe()
        sftp.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    assert (server.root / "in" / "audience.csv").read_bytes() == b"abc"


def test_encrypted_key_without_passphrase_is_a_clear_error(
    sftp_server: SftpServer, known_hosts: Path, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key_file = write_private_key(client_key, tmp_path / "id_ed25519", passphrase="open sesame")

    with pytest.raises(DeliveryError, match="passphrase") as caught:
        deliverer(sftp_server, known_hosts, password=None, key_file=key_file).__enter__()
    assert caught.value.where == str(key_file)


def test_wrong_key_passphrase_is_a_clear_error(
    sftp_server: SftpServer, known_hosts: Path, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key_file = write_private_key(client_key, tmp_path / "id_ed25519", passphrase="open sesame")

    with pytest.raises(DeliveryError, match="cannot read the SSH key file") as caught:
        deliverer(sftp_server, known_hosts, password=None, key_file=key_file, key_passphrase="wrong").__enter__()
    assert "check key_passphrase" in str(caught.value)
    assert "open sesame" not in str(caught.value)


def test_replaces_the_previous_file(sftp_server: SftpServer, known_hosts: Path, outbox: Outbox) -> None:
    previous = sftp_server.root / "in" / "audience.csv"
    previous.write_bytes(b"old content, longer than the new one\n")

    with deliverer(sftp_server, known_hosts) as sftp:
        sftp.deliver([outbox("audience.csv", b"new\n")], RUN_ID)

    assert previous.read_bytes() == b"new\n"
    assert leftovers(previous.parent) == []


def test_replaces_without_posix_rename(
    make_sftp_server: Callable[..., SftpServer], tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(posix_rename=False))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    (server.root / "in" / "a.csv").write_bytes(b"old a")
    (server.root / "in" / "b.csv").write_bytes(b"old b")

    with deliverer(server, known_hosts) as sftp:
        sftp.deliver([outbox("a.csv", b"new a"), outbox("b.csv", b"new b")], RUN_ID)

    assert (server.root / "in" / "a.csv").read_bytes() == b"new a"
    assert (server.root / "in" / "b.csv").read_bytes() == b"new b"
    assert leftovers(server.root / "in") == []


# --------------------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused_by_default(
    sftp_server: SftpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the default ~/.ssh/known_hosts does not exist there

    with pytest.raises(DeliveryError) as caught:
        deliverer(sftp_server, None).__enter__()

    message = str(caught.value)
    default_file = tmp_path / ".ssh" / "known_hosts"
    assert f"is not in {default_file}" in message
    assert sftp_server.host_key.get_fingerprint("sha256") in message  # what to check with the administrator
    assert f"ssh-keyscan -p {sftp_server.port} 127.0.0.1 >> {default_file}" in message


def test_host_key_missing_from_the_given_known_hosts_is_refused(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    other = tmp_path / "known_hosts"
    other.write_text(known_hosts_line(generate_ssh_key(), 2222))  # a different server

    with pytest.raises(DeliveryError, match=f"not in {other}"):
        deliverer(sftp_server, other).__enter__()


def test_changed_host_key_is_refused(sftp_server: SftpServer, tmp_path: Path) -> None:
    stale = tmp_path / "known_hosts"
    stale.write_text(known_hosts_line(generate_ssh_key(), sftp_server.port))

    with pytest.raises(DeliveryError, match="host key CHANGED") as caught:
        deliverer(sftp_server, stale).__enter__()
    assert f"ssh-keygen -R '[127.0.0.1]:{sftp_server.port}'" in str(caught.value)


def test_given_known_hosts_file_must_exist(sftp_server: SftpServer, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError, match="known_hosts file does not exist"):
        deliverer(sftp_server, tmp_path / "nope").__enter__()


def test_host_key_check_can_be_switched_off_explicitly(
    sftp_server: SftpServer, tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="audience_sync.delivery")

    with deliverer(sftp_server, tmp_path / "nope", verify_host_key=False) as sftp:
        assert "NOT verified" in sftp.describe()
        sftp.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    assert (sftp_server.root / "in" / "audience.csv").read_bytes() == b"abc"
    assert any("verification is disabled" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- connection and login errors


def test_wrong_password_is_a_clear_error_without_the_password(sftp_server: SftpServer, known_hosts: Path) -> None:
    with pytest.raises(DeliveryError, match="authentication failed for user 'actito'") as caught:
        deliverer(sftp_server, known_hosts, password="hunter2-wrong").__enter__()
    assert "hunter2-wrong" not in str(caught.value)
    assert "hunter2-wrong" not in repr(caught.value.__cause__)


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    sftp = SftpDeliverer(host=HOST, port=port, username="u", password="p", remote_dir="in", verify_host_key=False)

    with pytest.raises(DeliveryError, match="connection refused"):
        sftp.__enter__()


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind((HOST, 0))
        silent.listen()
        sftp = SftpDeliverer(
            host=HOST,
            port=silent.getsockname()[1],
            username="u",
            password="p",
            remote_dir="in",
            verify_host_key=False,
            timeout=0.3,
        )
        with pytest.raises(DeliveryError, match="did not greet as an SSH server"):
            sftp.__enter__()


def test_missing_remote_directory(sftp_server: SftpServer, known_hosts: Path) -> None:
    with pytest.raises(DeliveryError, match="does not exist") as caught:
        deliverer(sftp_server, known_hosts, remote_dir="no/such/dir").__enter__()
    assert "no/such/dir" in caught.value.where


def test_permission_denied_leaves_the_previous_file(
    make_sftp_server: Callable[..., SftpServer], tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(read_only=True))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    (server.root / "in" / "audience.csv").write_bytes(b"previous")

    with deliverer(server, known_hosts) as sftp, pytest.raises(DeliveryError, match="permission denied"):
        sftp.deliver([outbox("audience.csv", b"new")], RUN_ID)

    assert (server.root / "in" / "audience.csv").read_bytes() == b"previous"


# --------------------------------------------------------------------------- failures keep the previous delivery


def test_failed_upload_removes_temp_files_and_keeps_previous_files(
    make_sftp_server: Callable[..., SftpServer], tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(write_limit=100_000))  # the "disk" fills up during big.csv
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    inbox = server.root / "in"
    (inbox / "small.csv").write_bytes(b"previous small")
    (inbox / "big.csv").write_bytes(b"previous big")

    # paramiko's pipelined upload may drop the server's write error; the size check catches it then
    with deliverer(server, known_hosts) as sftp, pytest.raises(DeliveryError, match="big.csv"):
        sftp.deliver([outbox("small.csv", b"new small"), outbox("big.csv", size=300_000)], RUN_ID)

    assert (inbox / "small.csv").read_bytes() == b"previous small"  # uploaded fine, but never renamed
    assert (inbox / "big.csv").read_bytes() == b"previous big"
    assert leftovers(inbox) == []


def test_short_upload_is_detected_by_the_size_check(
    make_sftp_server: Callable[..., SftpServer], tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(write_limit=100_000, silent_truncate=True))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    inbox = server.root / "in"
    (inbox / "audience.csv").write_bytes(b"previous")

    with deliverer(server, known_hosts) as sftp, pytest.raises(DeliveryError, match="100000 bytes instead of 300000"):
        sftp.deliver([outbox("audience.csv", size=300_000)], RUN_ID)

    assert (inbox / "audience.csv").read_bytes() == b"previous"
    assert leftovers(inbox) == []


def test_reader_never_sees_a_partial_file(
    make_sftp_server: Callable[..., SftpServer], tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(write_delay=0.002))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    inbox = server.root / "in"
    old_size, new_size = 1_000_003, 4 * 1024 * 1024
    (inbox / "audience.csv").write_bytes(b"o" * old_size)
    new = outbox("audience.csv", size=new_size, fill=b"n")

    with deliverer(server, known_hosts) as sftp, watch(inbox, "audience.csv") as seen:
        sftp.deliver([new], RUN_ID)

    assert seen.final_sizes <= {old_size, new_size}, "a reader saw a partial file under the final name"
    assert any(0 < size < new_size for size in seen.temp_sizes), "the watcher did not overlap the upload"
    assert (inbox / "audience.csv").read_bytes() == new.read_bytes()


# --------------------------------------------------------------------------- retention


def test_retention_removes_only_our_old_files(sftp_server: SftpServer, known_hosts: Path) -> None:
    inbox = sftp_server.root / "in"
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

    with deliverer(sftp_server, known_hosts) as sftp:
        cutoff = datetime.now(UTC) - timedelta(days=5)
        removed = sftp.apply_retention(lambda name: name.startswith("audience_"), cutoff)

    assert sorted(removed) == [
        ".audience-sync-20240101T000000Z-abc-audience_20240101.csv.part",
        "audience_20240101.csv",
    ]
    assert sorted(p.name for p in inbox.iterdir()) == sorted(set(files) - set(removed) | {"audience_archive.csv"})
