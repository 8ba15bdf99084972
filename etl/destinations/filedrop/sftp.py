"""SFTP file transfer location. The host key is always checked unless explicitly disabled: audience
files are personal data. Servers without ``posix-rename`` get remove-then-rename, where a reader may
briefly see no file but never a partial one."""

from __future__ import annotations

import errno
import logging
import socket
import stat
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko

from etl.destinations.filedrop.base import RemoteDeliverer, utc_from_timestamp
from etl.errors import DeliveryError, DeliveryInterrupted

log = logging.getLogger("audience_sync.delivery")

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"host key for {hostname} is not known")
        self.hostname = hostname
        self.key = key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, but keeping the offered key so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


class _AcceptUnverified(paramiko.MissingHostKeyPolicy):
    """The explicit opt-out: accept any key for this connection only, never save it."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.warning(
            "SFTP host key verification is disabled for %s (verify_host_key = false): accepting %s %s "
            "unchecked; anyone able to intercept the connection could receive the audience files. "
            "Set known_hosts instead",
            hostname,
            key.get_name(),
            _fingerprint(key),
        )


def _fingerprint(key: paramiko.PKey) -> str:
    return str(key.fingerprint)  # "SHA256:…", the form ssh and ssh-keygen -l print


class SftpDeliverer(RemoteDeliverer):
    """Never an SSH agent or ``~/.ssh`` keys, so a run behaves the same on a laptop and in a container."""

    scheme = "sftp"

    def __init__(
        self, *, host: str, port: int = 22, username: str, password: str | None = None, key_file: Path | None = None,
        key_passphrase: str | None = None, known_hosts: Path | None = None, verify_host_key: bool = True,
        remote_dir: str, timeout: float = 30.0,
    ) -> None:
        super().__init__(host=host, port=port, username=username, remote_dir=remote_dir, timeout=timeout)
        self._password = password
        self._key_file = key_file
        self._key_passphrase = key_passphrase
        self._known_hosts_given = known_hosts is not None
        self._known_hosts = (known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self._verify_host_key = verify_host_key
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        #: None until the first rename tells whether the server has posix-rename
        self._posix_rename: bool | None = None

    @property
    def _hostkey_name(self) -> str:
        """How OpenSSH (and paramiko) name this server in known_hosts."""
        return self._host if self._port == 22 else f"[{self._host}]:{self._port}"

    def describe(self) -> str:
        auth = []
        if self._key_file is not None:
            auth.append(f"key file {self._key_file}")
        if self._password is not None:
            auth.append("password")
        trust = (
            f"host key checked against {self._known_hosts}"
            if self._verify_host_key
            else "host key NOT verified (verify_host_key = false)"
        )
        return (
            f"SFTP to {self._username}@{self._host} port {self._port}, directory {self._remote_dir}; "
            f"login with {' and '.join(auth) or 'no credentials'}; {trust}"
        )

    def _open(self) -> None:
        client = paramiko.SSHClient()
        self._client = client
        self._trust(client)
        self._login(client)
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(self._timeout)
        self._sftp = sftp
        self._dir = self._check_directory(sftp)

    def _trust(self, client: paramiko.SSHClient) -> None:
        if not self._verify_host_key:
            # no host keys loaded at all, so that even a changed key goes through the (warning) policy
            client.set_missing_host_key_policy(_AcceptUnverified())
            return
        client.set_missing_host_key_policy(_RejectUnknown())
        if not self._known_hosts.exists():
            if self._known_hosts_given:
                raise DeliveryError("the known_hosts file does not exist", where=str(self._known_hosts),
                                    hint=f"create it with the server's key: {self._keyscan_command()}")
            return  # the default file may be absent: the key is then reported unknown
        try:
            # into the client's own key set, not load_host_keys(): that one would also write back to the file
            client.get_host_keys().load(str(self._known_hosts))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise DeliveryError(f"cannot read the known_hosts file ({exc})", where=str(self._known_hosts),
                                hint="check that it is readable and in OpenSSH format") from exc

    def _keyscan_command(self) -> str:
        port = f"-p {self._port} " if self._port != 22 else ""
        return f"ssh-keyscan {port}{self._host} >> {self._known_hosts}"

    def _pkey(self) -> paramiko.PKey | None:
        if self._key_file is None:
            return None
        path = self._key_file.expanduser()
        # from_path hands the passphrase to `cryptography`, which wants bytes (a str raises TypeError)
        passphrase = self._key_passphrase.encode() if self._key_passphrase is not None else None
        try:
            try:
                return paramiko.PKey.from_path(path, passphrase)
            except TypeError:
                # cryptography's way of saying "passphrase missing" or "passphrase given but key not encrypted"
                if passphrase is None:
                    raise paramiko.PasswordRequiredException("private key file is encrypted") from None
                return paramiko.PKey.from_path(path, None)  # like ssh: a superfluous passphrase is ignored
        except FileNotFoundError as exc:
            raise DeliveryError("the SSH key file does not exist", where=str(path)) from exc
        except paramiko.PasswordRequiredException as exc:
            raise DeliveryError(
                "the SSH key file is protected by a passphrase", where=str(path), hint="set key_passphrase"
            ) from exc
        except (OSError, paramiko.SSHException, ValueError) as exc:
            hint = (
                "check key_passphrase"
                if self._key_passphrase
                else "use an RSA, ECDSA or Ed25519 private key in OpenSSH or PEM format"
            )
            raise DeliveryError(f"cannot read the SSH key file ({exc})", where=str(path), hint=hint) from exc

    def _login(self, client: paramiko.SSHClient) -> None:
        pkey = self._pkey()
        if pkey is None and self._password is None:
            raise DeliveryError(
                "no credentials to log in with", where=self._server, hint="set password or key_file"
            )
        try:
            client.connect(
                self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                pkey=pkey,
                allow_agent=False,
                look_for_keys=False,
                timeout=self._timeout,
                banner_timeout=self._timeout,
                auth_timeout=self._timeout,
                channel_timeout=self._timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._login_failure(exc, pkey) from None

    def _login_failure(self, exc: Exception, pkey: paramiko.PKey | None) -> DeliveryError:
        if isinstance(exc, (_UnknownHostKey, paramiko.BadHostKeyException)):
            return self._host_key_failure(exc)
        if isinstance(exc, paramiko.BadAuthenticationType):
            return DeliveryError(f"the server refused the login method for user {self._username!r}", where=self._server,
                                 hint=f"the server accepts: {', '.join(exc.allowed_types) or 'nothing'}")
        if isinstance(exc, paramiko.AuthenticationException):
            what = " and ".join(
                part
                for part, present in (("password", self._password is not None), ("key", pkey is not None))
                if present
            )
            return DeliveryError(f"authentication failed for user {self._username!r}", where=self._server,
                                 hint=f"check the username and the {what}")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return DeliveryError("connection refused", where=self._server,
                                 hint="check host and port, and that the server accepts connections from this machine")
        if isinstance(exc, (TimeoutError, socket.gaierror)):
            return self._unreachable(exc)
        # paramiko reports a silent or non-SSH peer as "Error reading SSH protocol banner", or
        # (when the transport thread gave up first) as the puzzling "No existing session"
        if isinstance(exc, paramiko.SSHException) and ("banner" in str(exc) or "No existing session" in str(exc)):
            return DeliveryError(
                f"the server did not greet as an SSH server (silent for {self._timeout:g} s, or closed)",
                where=self._server,
                hint="check that host and port point to an SFTP server (not FTP or HTTP), "
                "and that a firewall lets this machine through",
            )
        return DeliveryError(f"cannot open an SSH session ({self._reason(exc)})", where=self._server,
                             hint="check that host and port point to an SFTP server")

    def _host_key_failure(self, exc: _UnknownHostKey | paramiko.BadHostKeyException) -> DeliveryError:
        if isinstance(exc, _UnknownHostKey):
            return DeliveryError(
                f"the server's host key ({exc.key.get_name()} {_fingerprint(exc.key)}) is not in {self._known_hosts}",
                where=self._server,
                hint="check the fingerprint with the server's administrator, then add the key: "
                f"{self._keyscan_command()} (or set known_hosts to a file that has it)",
            )
        return DeliveryError(
            f"the server's host key CHANGED: it offered {exc.key.get_name()} {_fingerprint(exc.key)}, "
            f"{self._known_hosts} expects {exc.expected_key.get_name()} {_fingerprint(exc.expected_key)}",
            where=self._server,
            hint="this can be a reinstalled server or an attack; confirm the new key with the server's "
            f"administrator, then replace it: ssh-keygen -R '{self._hostkey_name}' -f {self._known_hosts} "
            f"&& {self._keyscan_command()}",
        )

    def _check_directory(self, sftp: paramiko.SFTPClient) -> str:
        where = f"{self._server} directory {self._remote_dir}"
        try:
            directory = str(sftp.normalize(self._remote_dir))
            attrs = sftp.stat(directory)
        except OSError as exc:
            raise self._io_error(exc, "cannot open the remote directory", where) from None
        if attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode):
            raise DeliveryError(
                "the remote directory is a file", where=where, hint="set remote_dir to a directory"
            )
        return directory

    def close(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        if sftp is not None:
            try:
                sftp.close()
            except Exception:
                pass
        if client is not None:
            client.close()

    @property
    def _session(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            raise RuntimeError("not connected")
        return self._sftp

    def _io_error(self, exc: BaseException, what: str, where: str) -> DeliveryError:
        if self._connection_broke(exc):
            return DeliveryInterrupted(f"{what}: the connection to the server broke ({self._reason(exc)})", where=where,
                                       hint="a network or server problem; the previous files were left in place")
        code = getattr(exc, "errno", None)
        if code == errno.ENOENT:
            return DeliveryError(
                f"{what}: it does not exist", where=where, hint="create it on the server or fix remote_dir"
            )
        if code == errno.EACCES:
            return DeliveryError(
                f"{what}: permission denied",
                where=where,
                hint=f"ask the server's administrator to let {self._username!r} create, rename and delete files there",
            )
        return DeliveryError(f"{what} ({self._reason(exc)})", where=where)

    def _connection_broke(self, exc: BaseException) -> bool:
        if isinstance(exc, (EOFError, paramiko.SSHException, ConnectionError, TimeoutError)):
            return True
        transport = self._client.get_transport() if self._client is not None else None
        return transport is None or not transport.is_active()

    def _upload(self, local: Path, remote_name: str) -> None:
        path = self._path(remote_name)
        try:
            # confirm=False: the caller checks the size itself, with a message of its own
            self._session.put(str(local), path, confirm=False)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._io_error(exc, f"cannot upload {local.name}", self._location(remote_name)) from None

    def _remote_size(self, remote_name: str) -> int:
        try:
            size = self._session.stat(self._path(remote_name)).st_size
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._io_error(exc, "cannot check the uploaded file", self._location(remote_name)) from None
        if size is None:
            raise DeliveryError("the server does not report file sizes", where=self._location(remote_name))
        return int(size)

    def _replace(self, temp: str, final: str) -> None:
        source, target = self._path(temp), self._path(final)
        where = self._location(final)
        if self._posix_rename is not False:
            try:
                self._session.posix_rename(source, target)
                self._posix_rename = True
                return
            except OSError as exc:
                if self._posix_rename or not _unsupported(exc):
                    raise self._io_error(exc, f"cannot rename {temp} to {final}", where) from None
                log.debug("server has no posix-rename: %s; removing then renaming", exc)
                self._posix_rename = False
            except (EOFError, paramiko.SSHException) as exc:
                raise self._io_error(exc, f"cannot rename {temp} to {final}", where) from None
        try:
            try:
                self._session.remove(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            self._session.rename(source, target)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._io_error(exc, f"cannot replace {final} with {temp}", where) from None

    def _remove(self, remote_name: str) -> None:
        try:
            self._session.remove(self._path(remote_name))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                return
            raise self._io_error(exc, f"cannot remove {remote_name}", self._location(remote_name)) from None

    def _modified_files(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, datetime]]:
        directory = self._directory
        try:
            entries: list[Any] = self._session.listdir_attr(directory)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._io_error(exc, "cannot list the remote directory", f"{self._server}{directory}") from None
        for entry in entries:
            name = entry.filename
            if not wanted(name) or entry.st_mode is None or not stat.S_ISREG(entry.st_mode):
                continue
            if entry.st_mtime is None:
                continue
            yield name, utc_from_timestamp(entry.st_mtime)


def _unsupported(exc: OSError) -> bool:
    """"Extension unknown" vs "rename failed": paramiko keeps only the server's text, not the status code."""
    if exc.errno is not None:
        return False
    text = str(exc).lower()
    return any(word in text for word in ("unsupported", "not supported", "unknown extended", "not implemented"))
