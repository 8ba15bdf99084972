"""SftpDeliverer against a real asyncssh SFTP server on 127.0.0.1: keys, host keys, logins and server
quirks (see test_delivery_contract.py for what every protocol does)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest
from servers import (
    HOST,
    SftpBehaviour,
    SftpServer,
    generate_ssh_key,
    known_hosts_line,
    leftovers,
    sftp_deliverer,
    silent_server,
    unused_port,
    write_private_key,
)

from etl.destinations.filedrop.base import DeliveredFile
from etl.destinations.filedrop.sftp import SftpDeliverer
from etl.errors import DeliveryError

pytest_plugins = ["conftest_delivery"]

Outbox = Callable[..., Path]
RUN_ID = "20240501T060000Z-a1b2c3"


# --------------------------------------------------------------------------- key files


def test_delivers_with_an_encrypted_key_file(
    make_sftp_server: Callable[..., SftpServer], client_key: asyncssh.SSHKey, tmp_path: Path, outbox: Outbox
) -> None:
    server = make_sftp_server(password=None)
    key_file = write_private_key(client_key, tmp_path / "id_ed25519", passphrase="open sesame")

    with sftp_deliverer(server, password=None, key_file=key_file, key_passphrase="open sesame") as sftp:
        assert "key file" in sftp.describe()
        delivered = sftp.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    assert (server.root / "in" / "audience.csv").read_bytes() == b"abc"
    assert delivered == [DeliveredFile("audience.csv", 3, f"sftp://actito@127.0.0.1:{server.port}/in/audience.csv")]


def test_encrypted_key_without_passphrase_is_a_clear_error(
    sftp_server: SftpServer, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key_file = write_private_key(client_key, tmp_path / "id_ed25519", passphrase="open sesame")

    with pytest.raises(DeliveryError, match="passphrase") as caught:
        sftp_deliverer(sftp_server, password=None, key_file=key_file).__enter__()
    assert caught.value.where == str(key_file)


def test_wrong_key_passphrase_is_a_clear_error(
    sftp_server: SftpServer, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key_file = write_private_key(client_key, tmp_path / "id_ed25519", passphrase="open sesame")

    with pytest.raises(DeliveryError, match="cannot read the SSH key file") as caught:
        sftp_deliverer(sftp_server, password=None, key_file=key_file, key_passphrase="wrong").__enter__()
    assert "check key_passphrase" in str(caught.value)
    assert "open sesame" not in str(caught.value)


# --------------------------------------------------------------------------- servers without posix-rename


def test_replaces_without_posix_rename(make_sftp_server: Callable[..., SftpServer], outbox: Outbox) -> None:
    server = make_sftp_server(SftpBehaviour(posix_rename=False))
    (server.root / "in" / "a.csv").write_bytes(b"old a")
    (server.root / "in" / "b.csv").write_bytes(b"old b")

    with sftp_deliverer(server) as sftp:
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
        sftp_deliverer(sftp_server, known_hosts=None).__enter__()

    message = str(caught.value)
    default_file = tmp_path / ".ssh" / "known_hosts"
    assert f"is not in {default_file}" in message
    assert sftp_server.host_key.get_fingerprint("sha256") in message  # what to check with the administrator
    assert f"ssh-keyscan -p {sftp_server.port} 127.0.0.1 >> {default_file}" in message


def test_host_key_missing_from_the_given_known_hosts_is_refused(sftp_server: SftpServer, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    other.write_text(known_hosts_line(generate_ssh_key(), 2222))  # a different server

    with pytest.raises(DeliveryError, match=f"not in {other}"):
        sftp_deliverer(sftp_server, known_hosts=other).__enter__()


def test_changed_host_key_is_refused(sftp_server: SftpServer, tmp_path: Path) -> None:
    stale = tmp_path / "known_hosts"
    stale.write_text(known_hosts_line(generate_ssh_key(), sftp_server.port))

    with pytest.raises(DeliveryError, match="host key CHANGED") as caught:
        sftp_deliverer(sftp_server, known_hosts=stale).__enter__()
    assert f"ssh-keygen -R '[127.0.0.1]:{sftp_server.port}'" in str(caught.value)


def test_given_known_hosts_file_must_exist(sftp_server: SftpServer, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError, match="known_hosts file does not exist"):
        sftp_deliverer(sftp_server, known_hosts=tmp_path / "nope").__enter__()


def test_host_key_check_can_be_switched_off_explicitly(
    sftp_server: SftpServer, tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="audience_sync.delivery")
    absent = tmp_path / "nope"

    with sftp_deliverer(sftp_server, known_hosts=absent, verify_host_key=False) as sftp:
        assert "NOT verified" in sftp.describe()
        sftp.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    assert (sftp_server.root / "in" / "audience.csv").read_bytes() == b"abc"
    assert any("verification is disabled" in r.getMessage() for r in caplog.records)
    # the warning shows the key accepted unchecked, which is never saved
    assert any(sftp_server.host_key.get_fingerprint("sha256") in r.getMessage() for r in caplog.records)
    assert not absent.exists()


# --------------------------------------------------------------------------- connection and login errors


def test_wrong_password_is_a_clear_error_without_the_password(sftp_server: SftpServer) -> None:
    with pytest.raises(DeliveryError, match="authentication failed for user 'actito'") as caught:
        sftp_deliverer(sftp_server, password="hunter2-wrong").__enter__()
    assert "hunter2-wrong" not in str(caught.value)
    assert "hunter2-wrong" not in repr(caught.value.__cause__)


def test_connection_refused() -> None:
    sftp = SftpDeliverer(
        host=HOST, port=unused_port(), username="u", password="p", remote_dir="in", verify_host_key=False
    )
    with pytest.raises(DeliveryError, match="connection refused"):
        sftp.__enter__()


def test_silent_server_times_out() -> None:
    with silent_server() as port:
        sftp = SftpDeliverer(
            host=HOST, port=port, username="u", password="p", remote_dir="in", verify_host_key=False, timeout=0.3
        )
        with pytest.raises(DeliveryError, match="did not greet as an SSH server"):
            sftp.__enter__()


def test_missing_remote_directory(sftp_server: SftpServer) -> None:
    with pytest.raises(DeliveryError, match="does not exist") as caught:
        sftp_deliverer(sftp_server, remote_dir="no/such/dir").__enter__()
    assert "no/such/dir" in caught.value.where


# --------------------------------------------------------------------------- failures keep the previous delivery


def test_permission_denied_leaves_the_previous_file(
    make_sftp_server: Callable[..., SftpServer], outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(read_only=True))
    (server.root / "in" / "audience.csv").write_bytes(b"previous")

    with sftp_deliverer(server) as sftp, pytest.raises(DeliveryError, match="permission denied"):
        sftp.deliver([outbox("audience.csv", b"new")], RUN_ID)

    assert (server.root / "in" / "audience.csv").read_bytes() == b"previous"


def test_short_upload_is_detected_by_the_size_check(
    make_sftp_server: Callable[..., SftpServer], outbox: Outbox
) -> None:
    server = make_sftp_server(SftpBehaviour(write_limit=100_000, silent_truncate=True))
    inbox = server.root / "in"
    (inbox / "audience.csv").write_bytes(b"previous")

    with sftp_deliverer(server) as sftp, pytest.raises(DeliveryError, match="100000 bytes instead of 300000"):
        sftp.deliver([outbox("audience.csv", size=300_000)], RUN_ID)

    assert (inbox / "audience.csv").read_bytes() == b"previous"
    assert leftovers(inbox) == []
