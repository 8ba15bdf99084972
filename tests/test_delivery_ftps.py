"""FtpsDeliverer against a real pyftpdlib FTPS server (explicit TLS required) on 127.0.0.1: TLS, logins
and FTP quirks (see test_delivery_contract.py for what every protocol does)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from servers import HOST, FtpsBehaviour, FtpsServer, ftps_deliverer, make_tls_certificate, silent_server, unused_port

from etl.destinations.filedrop.base import DeliveredFile
from etl.destinations.filedrop.ftps import FtpsDeliverer
from etl.errors import DeliveryError

pytest_plugins = ["conftest_delivery"]

Outbox = Callable[..., Path]
RUN_ID = "20240501T060000Z-a1b2c3"


def test_describes_the_certificate_check_and_addresses_files_by_url(ftps_server: FtpsServer, outbox: Outbox) -> None:
    with ftps_deliverer(ftps_server) as ftps:
        assert "verified against" in ftps.describe()
        delivered = ftps.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    address = f"ftps://actito@127.0.0.1:{ftps_server.port}/in/audience.csv"
    assert delivered == [DeliveredFile("audience.csv", 3, address)]


def test_overwrites_on_a_server_that_will_not_rename_over_a_file(
    make_ftps_server: Callable[..., FtpsServer], outbox: Outbox
) -> None:
    server = make_ftps_server(FtpsBehaviour(refuse_overwrite=True))
    previous = server.root / "in" / "audience.csv"
    previous.write_bytes(b"old")

    with ftps_deliverer(server) as ftps:
        ftps.deliver([outbox("audience.csv", b"new"), outbox("fresh.csv", b"first time")], RUN_ID)

    assert previous.read_bytes() == b"new"
    assert (server.root / "in" / "fresh.csv").read_bytes() == b"first time"
    assert sorted(p.name for p in previous.parent.iterdir()) == ["audience.csv", "fresh.csv"]  # no leftovers


# --------------------------------------------------------------------------- TLS and login


def test_certificate_from_an_unknown_authority_is_refused(ftps_server: FtpsServer) -> None:
    with pytest.raises(DeliveryError, match="TLS certificate could not be verified") as caught:
        ftps_deliverer(ftps_server, ca_file=None).__enter__()
    assert "set ca_file" in str(caught.value)


def test_certificate_for_another_host_name_is_refused(tmp_path: Path) -> None:
    other = make_tls_certificate(tmp_path / "other", host="127.0.0.2")  # trusted, but not for 127.0.0.1
    with FtpsServer(tmp_path / "root", other) as server_for_other_name:
        with pytest.raises(DeliveryError, match="TLS certificate could not be verified"):
            ftps_deliverer(server_for_other_name, ca_file=other.cert).__enter__()


def test_verification_can_be_switched_off_explicitly(
    ftps_server: FtpsServer, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="audience_sync.delivery")
    unchecked = ftps_deliverer(ftps_server, ca_file=None, verify_tls=False)  # the certificate is self-signed
    assert "NOT verified" in unchecked.describe()

    with unchecked as ftps:
        ftps.deliver([outbox("audience.csv", b"abc")], RUN_ID)

    assert (ftps_server.root / "in" / "audience.csv").read_bytes() == b"abc"
    warnings = [r.getMessage() for r in caplog.records if "verification is disabled" in r.getMessage()]
    assert warnings and "set ca_file instead" in warnings[0]


def test_wrong_password_is_a_clear_error_without_the_password(ftps_server: FtpsServer) -> None:
    with pytest.raises(DeliveryError, match="authentication failed for user 'actito'") as caught:
        ftps_deliverer(ftps_server, password="hunter2-wrong").__enter__()
    assert "hunter2-wrong" not in str(caught.value)


def test_connection_refused() -> None:
    with pytest.raises(DeliveryError, match="connection refused"):
        FtpsDeliverer(host=HOST, port=unused_port(), username="u", password="p", remote_dir="in").__enter__()


def test_silent_server_times_out() -> None:
    with silent_server() as port:
        ftps = FtpsDeliverer(host=HOST, port=port, username="u", password="p", remote_dir="in", timeout=0.3)
        with pytest.raises(DeliveryError, match="no answer within 0.3 s"):
            ftps.__enter__()


def test_missing_ca_file(ftps_server: FtpsServer, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError, match="cannot load the CA file"):
        ftps_deliverer(ftps_server, ca_file=tmp_path / "nope.pem").__enter__()


def test_missing_remote_directory(ftps_server: FtpsServer) -> None:
    with pytest.raises(DeliveryError, match="cannot open the remote directory") as caught:
        ftps_deliverer(ftps_server, remote_dir="no/such/dir").__enter__()
    assert "no/such/dir" in caught.value.where
