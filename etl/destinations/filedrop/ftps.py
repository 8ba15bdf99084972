"""FTPS (explicit TLS) file transfer location; plain FTP is not offered, as it sends the password
and the audience in clear text. Servers that refuse to rename over a file get DELE then rename:
a reader may briefly see no file, never a partial one."""

from __future__ import annotations

import ftplib
import logging
import posixpath
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.destinations.filedrop.base import RemoteDeliverer
from etl.errors import DeliveryError, DeliveryInterrupted

log = logging.getLogger("audience_sync.delivery")

_BLOCK_SIZE = 256 * 1024
#: OpenSSL's reason codes for a broken handshake, in words
_HANDSHAKE_WORDS = {
    "WRONG_VERSION_NUMBER": "the server answered in plain text, not TLS",
    "UNEXPECTED_EOF_WHILE_READING": "the server closed the connection during the handshake",
}
_FTP_ERRORS = (ftplib.Error, OSError, EOFError)


class _TlsSocket(ssl.SSLSocket):
    """With TLS 1.3, ``unwrap()`` after an empty transfer can fail (bpo-34391) and, raised, would
    desynchronise the control connection; the reply and size check decide success, so it is only logged."""

    def unwrap(self) -> socket.socket:
        try:
            return super().unwrap()
        except OSError as exc:  # ssl.SSLError included
            log.debug("TLS shutdown of an FTP data connection failed (ignored): %s", exc)
            return self


class _FtpTls(ftplib.FTP_TLS):
    """Data connections resume the control connection's TLS session, which many servers require
    (vsftpd ``require_ssl_reuse``) and ftplib does not do by itself."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if getattr(self, "_prot_p", False):
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


def _parse_mdtm(reply: str) -> datetime | None:
    """``213 YYYYMMDDHHMMSS[.fff]``, always UTC (RFC 3659)."""
    parts = reply.split()
    if len(parts) < 2 or parts[0] != "213":
        return None
    stamp = parts[1].split(".")[0]
    try:
        return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


class FtpsDeliverer(RemoteDeliverer):
    """Passive mode, ignoring the announced data address: servers behind NAT announce a private one."""

    scheme = "ftps"

    def __init__(
        self, *, host: str, port: int = 21, username: str, password: str, remote_dir: str, ca_file: Path | None = None,
        verify_tls: bool = True, timeout: float = 30.0,
    ) -> None:
        super().__init__(host=host, port=port, username=username, remote_dir=remote_dir, timeout=timeout)
        self._password = password
        self._ca_file = ca_file.expanduser() if ca_file is not None else None
        self._verify_tls = verify_tls
        self._ftp: _FtpTls | None = None

    def describe(self) -> str:
        if not self._verify_tls:
            trust = "certificate NOT verified (verify_tls = false)"
        elif self._ca_file is not None:
            trust = f"certificate and host name verified against {self._ca_file}"
        else:
            trust = "certificate and host name verified against the system's certificate authorities"
        return (
            f"FTPS (explicit TLS) to {self._username}@{self._host} port {self._port}, "
            f"directory {self._remote_dir}; login with password; {trust}"
        )

    def _context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(
                f"cannot load the CA file ({exc.strerror or exc})",
                where=str(self._ca_file),
                hint="ca_file must be a PEM file with the certificate(s) of the authority that signed the server's",
            ) from exc
        context.sslsocket_class = _TlsSocket
        if not self._verify_tls:
            log.warning(
                "FTPS certificate verification is disabled for %s:%s (verify_tls = false): anyone able to "
                "intercept the connection could receive the password and the audience files; set ca_file instead",
                self._host,
                self._port,
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _open(self) -> None:
        ftp = _FtpTls(context=self._context(), timeout=self._timeout)
        self._ftp = ftp
        self._reach(ftp)
        self._start_tls(ftp)
        self._log_in(ftp)
        self._enter_directory(ftp)

    def _reach(self, ftp: _FtpTls) -> None:
        server = self._server
        try:
            ftp.connect(self._host, self._port)
        except ConnectionRefusedError:
            raise DeliveryError("connection refused", where=server,
                                hint="check host and port (explicit FTPS usually listens on 21)") from None
        except (TimeoutError, socket.gaierror) as exc:
            raise self._unreachable(exc) from None
        except _FTP_ERRORS as exc:
            raise DeliveryError(f"cannot connect ({self._reason(exc)})", where=server,
                                hint="check that host and port point to an FTP server") from None

    def _start_tls(self, ftp: _FtpTls) -> None:
        server = self._server
        try:
            ftp.auth()
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or exc.reason or str(exc)
            raise DeliveryError(
                f"the server's TLS certificate could not be verified ({reason})",
                where=server,
                hint=(
                    f"check that {self._ca_file} holds the authority that signed the server's certificate, "
                    "and that the certificate is issued for this host name"
                    if self._ca_file is not None
                    else "if the server uses a private or self-signed certificate, set ca_file to its CA "
                    "certificate (PEM); also check that the certificate is issued for this host name"
                ),
            ) from None
        except ssl.SSLError as exc:
            reason = _HANDSHAKE_WORDS.get(str(exc.reason), str(exc.reason or exc))
            raise DeliveryError(
                f"the TLS handshake failed ({reason})",
                where=server,
                hint="the server may only offer implicit FTPS (port 990) or outdated TLS versions, or "
                "something between here and the server interferes; not retried: check the server's TLS set-up",
            ) from None
        except ftplib.error_perm as exc:
            raise DeliveryError(
                f"the server does not accept AUTH TLS ({self._reason(exc)})",
                where=server,
                hint="the server must support explicit FTPS; plain FTP is not offered because it sends "
                "the password in clear text",
            ) from None
        except _FTP_ERRORS as exc:
            raise DeliveryError(f"cannot start TLS ({self._reason(exc)})", where=server) from None

    def _log_in(self, ftp: _FtpTls) -> None:
        server = self._server
        try:
            ftp.login(self._username, self._password)
        except ftplib.error_perm as exc:
            raise DeliveryError(f"authentication failed for user {self._username!r} ({self._reason(exc)})",
                                where=server, hint="check the username and the password") from None
        except _FTP_ERRORS as exc:
            raise DeliveryError(f"cannot log in ({self._reason(exc)})", where=server) from None

        with self._failing_as("the server refused the encrypted binary data channel", server):
            ftp.prot_p()
            ftp.set_pasv(True)
            ftp.voidcmd("TYPE I")  # SIZE must count bytes, not ASCII-converted lines

    def _enter_directory(self, ftp: _FtpTls) -> None:
        where = f"{self._server} directory {self._remote_dir}"
        with self._failing_as("cannot open the remote directory", where, "create it on the server or fix remote_dir"):
            ftp.cwd(self._remote_dir)
            self._dir = ftp.pwd()

    @contextmanager
    def _failing_as(self, what: str, where: str, refused_hint: str = "") -> Iterator[None]:
        """A refusal (5xx) also gets ``refused_hint``."""
        try:
            yield
        except _FTP_ERRORS as exc:
            hint = refused_hint if isinstance(exc, ftplib.error_perm) else ""
            raise DeliveryError(f"{what} ({self._reason(exc)})", where=where, hint=hint) from None

    def close(self) -> None:
        ftp = self._ftp
        self._ftp = None
        if ftp is None:
            return
        try:
            if ftp.sock is not None:
                ftp.quit()
        except Exception:
            pass
        finally:
            ftp.close()

    @property
    def _session(self) -> _FtpTls:
        if self._ftp is None:
            raise RuntimeError("not connected")
        return self._ftp

    def _error(self, exc: BaseException, what: str, name: str, hint: str = "") -> DeliveryError:
        if isinstance(exc, ftplib.error_perm) and not hint:
            hint = f"check that {self._username!r} may create, rename and delete files in {self._directory}"
        return DeliveryError(f"{what} ({self._reason(exc)})", where=self._location(name), hint=hint)

    def _upload(self, local: Path, remote_name: str) -> None:
        ftp = self._session
        try:
            source = local.open("rb")
        except OSError as exc:
            raise DeliveryError(f"cannot read {local.name} ({exc.strerror})", where=str(local)) from exc
        with source:
            try:
                ftp.storbinary(f"STOR {remote_name}", source, blocksize=_BLOCK_SIZE)
            except ftplib.Error as exc:
                raise self._error(exc, f"cannot upload {local.name}", remote_name) from None
            except (OSError, EOFError) as exc:
                # the control connection's reply says why ("426 No space left"); reading it keeps it in step
                reply = self._pending_reply()
                if reply is None:
                    raise DeliveryInterrupted(
                        f"cannot upload {local.name}: the connection to the server broke ({self._reason(exc)})",
                        where=self._location(remote_name),
                        hint="a network or server problem; the previous files were left in place",
                    ) from None
                raise self._error(reply, f"cannot upload {local.name}", remote_name) from None

    def _pending_reply(self) -> ftplib.Error | None:
        ftp = self._session
        if ftp.sock is None:
            return None
        previous = ftp.sock.gettimeout()
        try:
            ftp.sock.settimeout(min(self._timeout, 5.0))
            ftp.voidresp()
        except ftplib.Error as reply:
            return reply
        except (OSError, EOFError):
            pass
        finally:
            try:
                ftp.sock.settimeout(previous)
            except OSError:
                pass
        return None

    def _remote_size(self, remote_name: str) -> int:
        try:
            size = self._session.size(remote_name)
        except ftplib.error_perm as exc:
            raise self._error(
                exc, "cannot check the uploaded file's size", remote_name, hint="the server must support SIZE"
            ) from None
        except _FTP_ERRORS as exc:
            raise self._error(exc, "cannot check the uploaded file's size", remote_name) from None
        if size is None:
            raise DeliveryError("the server did not answer SIZE with a size", where=self._location(remote_name))
        return int(size)

    def _replace(self, temp: str, final: str) -> None:
        ftp = self._session
        try:
            # RNFR alone first: only a refused RNTO may be "target exists", never a missing source
            reply = ftp.sendcmd(f"RNFR {temp}")
            if not reply.startswith("3"):
                raise ftplib.error_reply(reply)
        except _FTP_ERRORS as exc:
            raise self._error(exc, f"cannot rename {temp} to {final}", final) from None
        try:
            ftp.voidcmd(f"RNTO {final}")
            return
        except ftplib.error_perm as exc:
            refused: BaseException = exc
        except _FTP_ERRORS as exc:
            raise self._error(exc, f"cannot rename {temp} to {final}", final) from None
        # some servers (IIS, some vsftpd set-ups) will not rename over an existing file
        try:
            ftp.delete(final)
        except ftplib.error_perm:
            # nothing to delete: the rename failed for another reason
            raise self._error(refused, f"cannot rename {temp} to {final}", final) from None
        except _FTP_ERRORS as exc:
            raise self._error(exc, f"cannot remove the previous {final}", final) from None
        log.debug("server refused to rename over %s (%s); deleted it first", final, self._reason(refused))
        try:
            ftp.rename(temp, final)
        except _FTP_ERRORS as exc:
            raise self._error(exc, f"cannot rename {temp} to {final} after removing the previous file", final) from None

    def _remove(self, remote_name: str) -> None:
        try:
            self._session.delete(remote_name)
        except _FTP_ERRORS as exc:
            raise self._error(exc, f"cannot remove {remote_name}", remote_name) from None

    def _names(self) -> list[str]:
        try:
            listing: list[Any] = self._session.nlst()
        except ftplib.error_perm as exc:
            # several servers answer an empty directory with "550 No files found"
            if str(exc).startswith("550"):
                return []
            raise self._error(exc, "cannot list the remote directory", "") from None
        except _FTP_ERRORS as exc:
            raise self._error(exc, "cannot list the remote directory", "") from None
        # some servers answer with paths rather than names
        names = {posixpath.basename(str(entry).rstrip("/")) for entry in listing}
        return sorted(names - {"", ".", ".."})

    def _modified_files(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, datetime]]:
        for name in self._names():
            if not wanted(name):
                continue
            try:
                reply = self._session.sendcmd(f"MDTM {name}")
            except ftplib.error_perm:
                continue  # a directory, or vanished meanwhile: not a file we may remove
            except _FTP_ERRORS as exc:
                raise self._error(exc, f"cannot read the modification time of {name}", name) from None
            modified = _parse_mdtm(reply)
            if modified is not None:
                yield name, modified
