"""Real SFTP and FTPS servers on 127.0.0.1 for the delivery tests, and clients of them, usable without pytest.

Each server serves a directory of this machine, so a test can look at what a client really wrote
(and set modification times) straight on disk. Both run in a background thread of the test
process, listen on a free port and stop cleanly on ``stop()`` / leaving the ``with`` block.

A few switches make a server misbehave the way real ones do (refusing writes, running out of
disk, lacking an extension, refusing to rename over a file); they change the server, never the
client under test.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

with warnings.catch_warnings():
    # pyftpdlib is built on asyncore/asynchat, deprecated since Python 3.10: not our concern here
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.filesystems import AbstractedFS
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

from etl.destinations.filedrop.base import Deliverer
from etl.destinations.filedrop.ftps import FtpsDeliverer
from etl.destinations.filedrop.sftp import SftpDeliverer

HOST = "127.0.0.1"
#: the password every test server accepts, so that a test can check it never shows
PASSWORD = "correct horse battery"
#: what the delivery code prefixes its temporary files with (kept literal: the tests check the contract)
TEMP_PREFIX = ".audience-sync-"

# --------------------------------------------------------------------------- keys and certificates


def generate_ssh_key() -> asyncssh.SSHKey:
    """An Ed25519 key: fast to generate and understood by paramiko."""
    return asyncssh.generate_private_key("ssh-ed25519")


def write_private_key(key: asyncssh.SSHKey, path: Path, passphrase: str | None = None) -> Path:
    """OpenSSH private key file, optionally encrypted, as ssh-keygen would write it.

    One bcrypt round instead of ssh-keygen's default: each load of an encrypted key otherwise costs
    about a second, and the format is the same.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*bcrypt.kdf", category=UserWarning)
        key.write_private_key(str(path), passphrase=passphrase, rounds=1)
    path.chmod(0o600)
    return path


def known_hosts_line(key: asyncssh.SSHKey, port: int, host: str = HOST) -> str:
    # OpenSSH names a server on a non-standard port "[host]:port"
    name = host if port == 22 else f"[{host}]:{port}"
    public = key.export_public_key("openssh").decode().split()
    return f"{name} {public[0]} {public[1]}\n"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM certificate, also what a client trusts as its CA file
    key: Path  # PEM private key


def make_tls_certificate(directory: Path, host: str = HOST) -> TlsFiles:
    """A self-signed certificate valid for ``host`` (an IP address SAN for an address, else a DNS SAN).

    Marked as a CA, like ``openssl req -x509`` does, so that the file is also what a client passes
    as its ``ca_file`` to trust this server.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "server-cert.pem"
    key_path = directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TlsFiles(cert=cert_path, key=key_path)


# --------------------------------------------------------------------------- SFTP


@dataclass
class Cuts:
    """Cut the client's whole connection (no answer, TCP closed) once an upload has received more than
    ``after`` bytes, for ``times`` uploads; later ones go through, like a link that came back."""

    after: int | None = None
    times: int = 1_000_000
    #: uploads cut so far
    count: int = 0

    def due(self, written: int) -> bool:
        """Whether an upload that has now received ``written`` bytes is cut here (counted if so)."""
        if self.after is None or written <= self.after or self.count >= self.times:
            return False
        self.count += 1
        return True


@dataclass
class SftpBehaviour:
    """How the SFTP server misbehaves, if at all."""

    #: answer posix-rename@openssh.com with "operation unsupported", like servers without the extension
    posix_rename: bool = True
    #: refuse every open for writing with "permission denied"
    read_only: bool = False
    #: bytes a single file may hold; more is refused with a failure ("disk full") ...
    write_limit: int | None = None
    #: ... or, with this set, silently dropped, like a broken server
    silent_truncate: bool = False
    #: seconds each write request takes, like a slow link: stretches an upload so a watcher can see it
    write_delay: float = 0.0
    #: when the connection is cut mid-upload
    cut: Cuts = field(default_factory=Cuts)


class _SftpHandler(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel, root: Path, behaviour: SftpBehaviour) -> None:
        super().__init__(chan, chroot=os.fsencode(root))
        self._behaviour = behaviour

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        if self._behaviour.read_only and pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_CREAT):
            raise asyncssh.SFTPPermissionDenied("Permission denied")
        return super().open(path, pflags, attrs)

    async def write(self, file_obj: object, offset: int, data: bytes) -> Any:
        if self._behaviour.write_delay:
            await asyncio.sleep(self._behaviour.write_delay)
        if self._behaviour.cut.due(offset + len(data)):
            self.connection.abort()  # like a dropped link: no reply, the socket just closes
            raise asyncssh.SFTPConnectionLost("connection cut")  # never sent: the session ends, its files are closed
        limit = self._behaviour.write_limit
        if limit is not None and offset + len(data) > limit:
            if not self._behaviour.silent_truncate:
                raise asyncssh.SFTPFailure("No space left on device")
            data = data[: max(0, limit - offset)]
            if not data:
                return 0
        return super().write(file_obj, offset, data)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> Any:
        if not self._behaviour.posix_rename:
            raise asyncssh.SFTPOpUnsupported("Operation unsupported")
        return super().posix_rename(oldpath, newpath)


class _SshAuth(asyncssh.SSHServer):
    def __init__(self, server: SftpServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always ask for credentials

    def password_auth_supported(self) -> bool:
        return self._server.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._server.username and password == self._server.password

    def public_key_auth_supported(self) -> bool:
        return bool(self._server.client_keys)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        allowed = {k.public_data for k in self._server.client_keys}
        return username == self._server.username and key.public_data in allowed


class SftpServer:
    """An asyncssh SFTP server chrooted to ``root``, with its own event loop in a thread."""

    def __init__(
        self,
        root: Path,
        *,
        username: str = "actito",
        password: str | None = PASSWORD,
        client_keys: Iterable[asyncssh.SSHKey] = (),
        host_key: asyncssh.SSHKey | None = None,
        behaviour: SftpBehaviour | None = None,
    ) -> None:
        self.root = root
        self.username = username
        self.password = password
        self.client_keys = list(client_keys)
        self.host_key = host_key or generate_ssh_key()
        self.behaviour = behaviour or SftpBehaviour()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        #: open client connections, closed on stop (only touched from the server's loop)
        self.connections: set[asyncssh.SSHServerConnection] = set()

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.host_key, self.port)

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.known_hosts_line())
        return path

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            HOST,
            0,
            server_host_keys=[self.host_key],
            server_factory=lambda: _SshAuth(self),
            sftp_factory=lambda chan: _SftpHandler(chan, self.root, self.behaviour),
            allow_scp=False,
            login_timeout=10,
        )

    def start(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"sftp-server-{id(self):x}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        except BaseException:
            self.stop()
            raise
        self.port = self._acceptor.get_port()
        return self

    async def _close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for conn in list(self.connections):
            conn.close()
            await conn.wait_closed()
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- FTPS


@dataclass
class FtpsBehaviour:
    """How the FTPS server misbehaves, if at all."""

    #: answer RNTO onto an existing file with 550, like servers that will not rename over a file
    refuse_overwrite: bool = False
    #: bytes a single uploaded file may hold; more fails the transfer ("disk full")
    write_limit: int | None = None
    #: seconds each write of a received block takes, like a slow link or disk
    write_delay: float = 0.0
    #: when the connection (control and data) is cut mid-upload
    cut: Cuts = field(default_factory=Cuts)


class _ThrottledFile:
    def __init__(self, file: Any, limit: int | None, delay: float, cut: Cuts, session: Any) -> None:
        self._file = file
        self._left = limit
        self._delay = delay
        self._cut = cut
        self._session = session
        self._written = 0

    def write(self, data: bytes) -> int:
        if self._delay:
            time.sleep(self._delay)  # blocks the server loop: fine, it serves one client at a time here
        self._written += len(data)
        if self._cut.due(self._written):
            self._session.close()  # the control connection and its data connection, without a reply
            return len(data)  # dropped: nobody is left to tell
        if self._left is None:
            return int(self._file.write(data))
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return int(self._file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class FtpsServer:
    """A pyftpdlib FTPS server (explicit TLS required on control and data) serving ``root``."""

    def __init__(
        self,
        root: Path,
        tls: TlsFiles,
        *,
        username: str = "actito",
        password: str = PASSWORD,
        behaviour: FtpsBehaviour | None = None,
    ) -> None:
        self.root = root
        self.tls = tls
        self.username = username
        self.password = password
        self.behaviour = behaviour or FtpsBehaviour()
        self.port = 0
        self._server: FTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _handler(self) -> type[TLS_FTPHandler]:
        behaviour = self.behaviour
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.username, self.password, str(self.root), perm="elradfmwMT")

        class FS(AbstractedFS):
            def open(self, filename: str, mode: str) -> Any:
                file = super().open(filename, mode)
                throttled = behaviour.write_limit is not None or behaviour.write_delay or behaviour.cut.after
                if throttled and ("w" in mode or "a" in mode):
                    return _ThrottledFile(file, behaviour.write_limit, behaviour.write_delay, behaviour.cut,
                                          self.cmd_channel)
                return file

        class DataChannel(TLS_DTPHandler):
            def handle_error(self) -> None:
                # pyftpdlib's TLS data channel drops the "426" reply that its plain one sends when
                # the file cannot be written; real servers do reply (426/451/552), so do the same
                failure = sys.exc_info()[1]
                cause = failure.__cause__ if failure is not None else None
                reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else "Internal error"
                self._resp = (f"426 {reason}; transfer aborted.", logging.getLogger("pyftpdlib").warning)
                super().handle_error()

        class Handler(TLS_FTPHandler):
            def ftp_RNTO(self, path: str) -> Any:
                if behaviour.refuse_overwrite and getattr(self, "_rnfr", None) and self.fs.lexists(path):
                    self._rnfr = None
                    self.respond("550 File exists.")
                    return None
                return super().ftp_RNTO(path)

        # class attributes, on a class of our own: pyftpdlib caches the TLS context per handler class
        Handler.certfile = str(self.tls.cert)
        Handler.keyfile = str(self.tls.key)
        Handler.tls_control_required = True
        Handler.tls_data_required = True
        Handler.authorizer = authorizer
        Handler.abstracted_fs = FS
        Handler.dtp_handler = DataChannel
        Handler.auth_failed_timeout = 0  # reply to a wrong password at once
        Handler.banner = "audience-sync test FTPS server"
        return Handler

    def _serve(self) -> None:
        server = self._server
        assert server is not None
        try:
            while not self._stop.is_set():
                server.ioloop.loop(0.02, blocking=False)
        finally:
            server.close_all()

    def start(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        quiet = logging.getLogger("pyftpdlib")
        quiet.setLevel(logging.WARNING)
        if not quiet.handlers:
            # with a handler present, pyftpdlib leaves the process's logging configuration alone
            quiet.addHandler(logging.NullHandler())
        # an IOLoop of its own: pyftpdlib's default is a process-wide one, which stopping any server closes
        self._server = FTPServer((HOST, 0), self._handler(), ioloop=IOLoop())
        self.port = self._server.address[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"ftps-server-{id(self):x}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._stop.set()
        thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- clients


def sftp_deliverer(server: SftpServer, **overrides: Any) -> SftpDeliverer:
    """A client of ``server`` logging in with its password into ``in``; unless ``known_hosts`` is
    given, it trusts the server's host key through a known_hosts file written beside its root."""
    if "known_hosts" not in overrides:
        overrides["known_hosts"] = server.write_known_hosts(server.root.parent / f"known_hosts.{server.root.name}")
    options: dict[str, Any] = dict(
        host=HOST, port=server.port, username=server.username, password=server.password, remote_dir="in", timeout=5.0
    )
    return SftpDeliverer(**(options | overrides))


def ftps_deliverer(server: FtpsServer, **overrides: Any) -> FtpsDeliverer:
    """A client of ``server`` logging in with its password into ``in``, trusting its certificate."""
    options: dict[str, Any] = dict(
        host=HOST,
        port=server.port,
        username=server.username,
        password=server.password,
        remote_dir="in",
        ca_file=server.tls.cert,
        timeout=5.0,
    )
    return FtpsDeliverer(**(options | overrides))


#: makes a deliverer for a location under test; it connects when its ``with`` block starts
Connect = Callable[[], Deliverer]
#: a location under test: how to reach it, and the directory it serves, as seen on this machine's disk
Location = tuple[Connect, Path]
#: ``with disk_full(after=n):`` writing more than n bytes to one file of the location fails
DiskFull = Callable[..., AbstractContextManager[None]]


# --------------------------------------------------------------------------- servers that are not there


def unused_port() -> int:
    """A port of 127.0.0.1 nobody listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextmanager
def silent_server() -> Iterator[int]:
    """The port of a server that accepts connections and never says a word."""
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen()
        yield int(silent.getsockname()[1])


@dataclass
class BrokenTlsServer:
    """An FTP server that agrees to AUTH TLS and then breaks the handshake: it answers the client's
    TLS hello with plain text and closes, as a middlebox or a misconfigured server does."""

    port: int
    #: connections accepted so far, to tell whether a client tried again
    connections: int = 0


@contextmanager
def tls_breaking_server() -> Iterator[BrokenTlsServer]:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        listener.settimeout(0.2)
        server = BrokenTlsServer(port=int(listener.getsockname()[1]))

        def serve(stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                server.connections += 1
                with conn:
                    conn.settimeout(5)
                    try:
                        conn.sendall(b"220 ready\r\n")
                        conn.recv(1024)  # AUTH TLS
                        conn.sendall(b"234 AUTH TLS successful\r\n")
                        conn.recv(4096)  # the TLS ClientHello
                        conn.sendall(b"500 unexpected input\r\n")
                    except OSError:
                        pass

        with _in_background(serve, "broken-tls-server"):
            yield server


@contextmanager
def _in_background(work: Callable[[threading.Event], None], name: str) -> Iterator[None]:
    """Run ``work(stop)`` in a thread for the duration of the block; it returns once ``stop`` is set."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# --------------------------------------------------------------------------- observing a served directory


def leftovers(directory: Path) -> list[str]:
    """Our temporary files still lying in a served directory."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old to the server (and so to retention)."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


@dataclass
class Sightings:
    """What a reader polling the directory saw while a delivery ran."""

    final_sizes: set[int] = field(default_factory=set)
    temp_sizes: set[int] = field(default_factory=set)
    polls: int = 0

    def saw_upload_in_progress(self, total: int) -> bool:
        """Whether the temporary file was seen holding some, but not all, of its ``total`` bytes."""
        return any(0 < size < total for size in set(self.temp_sizes))  # a copy: the watcher may still be adding


@contextmanager
def watch(directory: Path, name: str) -> Iterator[Sightings]:
    """Poll ``directory`` in a tight loop, like Actito looking for files, recording the sizes seen.

    ``final_sizes`` are the sizes ever seen under ``name``; ``temp_sizes`` those of our temporary
    file for it, which proves the polling overlapped the upload.
    """
    seen = Sightings()
    temp_suffix = f"-{name}.part"

    def poll(stop: threading.Event) -> None:
        while not stop.is_set():
            seen.polls += 1
            try:
                seen.final_sizes.add(os.stat(directory / name).st_size)
            except FileNotFoundError:
                pass  # possible between remove and rename on servers without an atomic replace
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(temp_suffix):
                            seen.temp_sizes.add(entry.stat().st_size)
            except FileNotFoundError:
                pass  # renamed between listing and stat

    with _in_background(poll, "directory-watcher"):
        yield seen


def with_actito_sandbox(config_text: str, url: str, key_variable: str = "TEST_ACTITO_KEY") -> str:
    """The shipped configuration with its Actito destination pointed at a test's own sandbox (the
    OpenField destination, also ``environment = "sandbox"``, keeps its in-process sandbox)."""
    section = "[destinations.actito_demo]\n"
    head, found, rest = config_text.partition(section)
    assert found, "the shipped schedules.toml has no [destinations.actito_demo]"
    replaced = re.sub(r'(?m)^environment = "sandbox".*$',
                      f'base_url = "{url}"\napi_key = "${{{key_variable}}}"', rest, count=1)
    return head + section + replaced
