"""What every file transfer location must guarantee, whatever the protocol.

Actito polls the directory at any moment, so it must only ever see complete files: each is written
under a temporary name it ignores, checked, then renamed over the final name. Protocols provide the
primitives; ordering, checks, retry and clean-up live here once so the protocols cannot drift apart.
"""

from __future__ import annotations

import abc
import logging
import posixpath
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import quote

from etl.destinations.retry import RetryPolicy
from etl.errors import DeliveryError, DeliveryInterrupted, Retriable

log = logging.getLogger("audience_sync.delivery")

#: lets retention recognise our leftovers without touching others' files; the dot keeps them out
#: of Actito's file-name patterns
TEMP_PREFIX = ".audience-sync-"
TEMP_SUFFIX = ".part"

_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")


def temp_name(run_id: str, name: str) -> str:
    """The run id keeps two runs out of each other's temporary file; it is sanitised because it
    reaches FTP command lines verbatim."""
    return f"{TEMP_PREFIX}{_UNSAFE_IN_NAME.sub('_', run_id)}-{name}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


#: a temporary name as `temp_name` builds it for a run id of `etl.runtime.runs.new_run_id`
_TEMP_OF_RUN = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d{{8}}T\d{{6}}Z-[0-9a-f]+)-(.+){re.escape(TEMP_SUFFIX)}$")


def temp_name_parts(name: str) -> tuple[str, str] | None:
    """(run id, final name) of a temporary name, or None if it is not one of ours."""
    found = _TEMP_OF_RUN.match(name)
    return (found[1], found[2]) if found else None


def _with_temporaries(is_ours: Callable[[str], bool]) -> Callable[[str], bool]:
    """``is_ours``, also for the temporary names of those files (a run's upload, maybe cut short)."""

    def ours(name: str) -> bool:
        parts = temp_name_parts(name)
        return is_ours(parts[1] if parts else name)

    return ours


@dataclass(frozen=True)
class DeliveredFile:
    """One file as it now exists at the location, for the run ledger and the run report."""

    #: final remote file name
    name: str
    #: bytes, as verified on the remote side
    size: int
    #: URL-ish address for people; never contains credentials
    location: str


@dataclass(frozen=True)
class _Planned:
    local: Path
    name: str
    temp: str
    size: int


class Deliverer(abc.ABC):
    """A connection to one location, as a context manager (connecting in ``__enter__`` lets a
    deliverer be described without the network). ``retry`` applies to a broken connection
    (`DeliveryInterrupted`) only: refusals and configuration problems would fail the same way again."""

    retry: ClassVar[RetryPolicy] = RetryPolicy(attempts=3, first_pause=2.0, max_pause=30.0, jitter=0.5)

    def __init__(self) -> None:
        self._connected = False

    def __enter__(self) -> Self:
        self.connect()
        self._connected = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self._connected = False
        try:
            self.close()
        except Exception:  # closing must never hide the error that ended the block
            log.debug("error while closing %s", self.describe(), exc_info=True)

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection and check that the target directory is usable; raise DeliveryError if not."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; may be called after a failed or partial ``connect``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for a setup sheet or a log: protocol, address, directory, how trust is checked. No secrets."""

    @abc.abstractmethod
    def _location(self, name: str) -> str:
        """Address of ``name`` in the target directory, for people (no credentials)."""

    @abc.abstractmethod
    def _upload(self, local: Path, remote_name: str) -> None:
        """Write the local file to ``remote_name`` in the target directory, replacing it if present."""

    @abc.abstractmethod
    def _remote_size(self, remote_name: str) -> int:
        """Size in bytes of ``remote_name`` as the server reports it."""

    @abc.abstractmethod
    def _replace(self, temp: str, final: str) -> None:
        """Rename ``temp`` to ``final``, replacing ``final``; atomically where the protocol allows."""

    @abc.abstractmethod
    def _remove(self, remote_name: str) -> None:
        """Delete one file of the target directory."""

    @abc.abstractmethod
    def _modified_files(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, datetime]]:
        """(name, aware mtime) of the wanted regular files; ``wanted`` is applied before any per-file
        request (FTP's MDTM costs a round trip each)."""

    def deliver(
        self, files: Sequence[Path], run_id: str, *, all_uploaded: Callable[[], None] | None = None
    ) -> list[DeliveredFile]:
        """All or nothing as far as possible: every file is uploaded and size-checked before *any*
        final name is touched. Renames follow the order of ``files``, so a manifest listed last appears
        last. If ``all_uploaded`` (called between the phases) raises, nothing is renamed."""
        self._require_connected()
        plan = self._plan(files, run_id)
        self._upload_retrying(plan)
        if all_uploaded is not None:
            try:
                all_uploaded()
            except BaseException:
                self._discard(item.temp for item in plan)
                raise

        delivered: list[DeliveredFile] = []
        for index, item in enumerate(plan):
            try:
                self._replace(item.temp, item.name)
            except BaseException as exc:
                self._discard(later.temp for later in plan[index:])
                if delivered and isinstance(exc, DeliveryError):
                    done = ", ".join(d.name for d in delivered)
                    raise DeliveryError(
                        exc.what,
                        where=exc.where,
                        hint=f"{done} {'was' if len(delivered) == 1 else 'were'} already replaced; "
                        f"the other files were not. {exc.hint}".strip(),
                    ) from exc
                raise
            delivered.append(DeliveredFile(name=item.name, size=item.size, location=self._location(item.name)))
            log.info("delivered %s (%d bytes) to %s", item.name, item.size, delivered[-1].location)
        return delivered

    def _upload_retrying(self, plan: Sequence[_Planned]) -> None:
        """After a broken connection, reconnect and upload all again over the same temporary names."""
        attempts = 0

        def upload_all() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self._reconnect()
            self._upload_all(plan)

        try:
            self.retry.run(upload_all, self._reconnecting)
        except DeliveryInterrupted as exc:
            self._clean_up_after_cut(plan)
            raise DeliveryInterrupted(
                f"{exc.what}; gave up after {attempts} attempts",
                where=exc.where,
                hint="nothing was replaced: the previous files are still in place; "
                "check the network and the server, the next run tries again",
            ) from None

    def _reconnecting(self, exc: Retriable, attempt: int, pause: float) -> None:
        log.warning(
            "delivery interrupted, reconnecting: %s", exc.message(),
            extra={"fields": {"attempt": attempt, "max_attempts": self.retry.attempts, "wait_s": round(pause, 2)}},
        )

    def _upload_all(self, plan: Sequence[_Planned]) -> None:
        uploaded: list[_Planned] = []
        try:
            for item in plan:
                # recorded before the upload so that a partial temporary file is cleaned up too
                uploaded.append(item)
                self._upload(item.local, item.temp)
                remote_size = self._remote_size(item.temp)
                if remote_size != item.size:
                    raise DeliveryError(
                        f"the uploaded copy of {item.name} has {remote_size} bytes instead of {item.size}",
                        where=self._location(item.temp),
                        hint="the transfer was cut short (connection or server disk); "
                        "the previous file was left in place, run again",
                    )
        except DeliveryInterrupted as exc:
            # nothing can be removed over a dead connection: the caller reconnects first
            raise DeliveryInterrupted(exc.what, where=self._location(uploaded[-1].name), hint=exc.hint) from None
        except BaseException:
            self._discard(item.temp for item in uploaded)
            raise

    def _reconnect(self) -> None:
        self._connected = False
        self.close()
        self.connect()
        self._connected = True

    def _clean_up_after_cut(self, plan: Sequence[_Planned]) -> None:
        """Best effort, on a new connection: the cut one cannot remove what it left."""
        try:
            self._reconnect()
        except Exception as exc:
            log.debug("could not reconnect to remove temporary files: %s", exc)
            return
        self._discard(item.temp for item in plan)

    def discard_leftovers(self, is_ours: Callable[[str], bool], run_id: str) -> list[str]:
        """Remove temporary files of other runs of this activation; safe because the caller holds its lock."""
        self._require_connected()

        def leftover(name: str) -> bool:
            parts = temp_name_parts(name)
            return parts is not None and parts[0] != run_id and is_ours(parts[1])

        names = [name for name, _ in self._modified_files(leftover)]
        self._discard(names)
        return names

    def remove_stale(self, is_ours: Callable[[str], bool], current: Iterable[str]) -> list[str]:
        """Remove the activation's files not in ``current``, once the new ones are in place: a stale file
        beside them would be read as current. Failing to remove one fails the delivery."""
        self._require_connected()
        keep = set(current)
        stale = [name for name, _ in self._modified_files(
            lambda name: is_ours(name) and name not in keep and not is_temp_name(name))]
        self._remove_all(stale, "left over from an earlier delivery",
                         "the new files are in place; remove the old ones by hand or fix the permissions, the next "
                         "run tries again")
        return stale

    def owned(self, is_ours: Callable[[str], bool]) -> list[str]:
        """Every file of the activation here, temporary ones of its runs included, sorted."""
        self._require_connected()
        return sorted(name for name, _ in self._modified_files(_with_temporaries(is_ours)))

    def remove_owned(self, is_ours: Callable[[str], bool]) -> list[str]:
        """Remove every file of a retired activation; one that cannot be removed fails, after trying the others."""
        names = self.owned(is_ours)
        self._remove_all(names, "files of the retired activation",
                         "fix the permissions or remove them by hand, then retire again")
        return names

    def _remove_all(self, names: Sequence[str], what: str, hint: str) -> None:
        failed: dict[str, DeliveryError] = {}
        for name in names:
            try:
                self._remove(name)
            except DeliveryError as exc:
                failed[name] = exc
        if failed:
            first = next(iter(failed.values()))
            raise DeliveryError(f"cannot remove {', '.join(failed)}, {what}: {first.what}", where=first.where,
                                hint=hint)

    def apply_retention(self, is_ours: Callable[[str], bool], older_than: datetime) -> list[str]:
        """Only ``is_ours`` files (the directory is shared); a failed removal is only logged, because
        housekeeping must not fail a delivery that succeeded."""
        self._require_connected()
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise ValueError("older_than must be timezone-aware")

        removed: list[str] = []
        for name, modified in list(self._modified_files(_with_temporaries(is_ours))):
            if modified >= older_than:
                continue
            try:
                self._remove(name)
            except DeliveryError as exc:
                log.warning("retention could not remove %s: %s", name, exc)
                continue
            removed.append(name)
            log.info("retention removed %s (modified %s)", name, modified.isoformat())
        return removed

    def _require_connected(self) -> None:
        if not self._connected:
            raise RuntimeError(f"{type(self).__name__} must be used inside a 'with' block")

    def _plan(self, files: Sequence[Path], run_id: str) -> list[_Planned]:
        plan: list[_Planned] = []
        seen: dict[str, Path] = {}
        for path in files:
            name = path.name
            if not name or is_temp_name(name) or any(ord(c) < 32 or c == "\x7f" for c in name):
                raise DeliveryError(
                    f"cannot deliver a file named {name!r}",
                    where=str(path),
                    hint=f"names must not be empty, contain control characters or start with {TEMP_PREFIX!r}",
                )
            if name in seen:
                raise DeliveryError(f"two files to deliver are both named {name}", where=f"{seen[name]} and {path}",
                                    hint="the remote directory is flat: give every file of a run its own name")
            seen[name] = path
            try:
                if not path.is_file():
                    raise FileNotFoundError(path)
                size = path.stat().st_size
            except OSError:
                raise DeliveryError(
                    "the file to deliver does not exist or is not a regular file",
                    where=str(path),
                    hint="it should have been written by this run just before; check the run directory",
                ) from None
            plan.append(_Planned(local=path, name=name, temp=temp_name(run_id, name), size=size))
        return plan

    def _discard(self, temps: Iterable[str]) -> None:
        """Best effort: a leftover is only untidy (retention removes it later), never wrong."""
        for name in temps:
            try:
                self._remove(name)
            except Exception as exc:  # the original error matters more
                log.debug("could not remove temporary file %s: %s", name, exc)


class RemoteDeliverer(Deliverer):
    """A directory on a server (SFTP, FTPS); addresses name the user but never carry a secret."""

    #: scheme of the addresses shown to people ("sftp", "ftps")
    scheme: ClassVar[str]

    def __init__(self, *, host: str, port: int, username: str, remote_dir: str, timeout: float) -> None:
        super().__init__()
        self._host = host
        self._port = port
        self._username = username
        self._remote_dir = remote_dir or "."
        self._timeout = timeout
        #: absolute directory as the server resolved it; set on connect
        self._dir: str | None = None

    @property
    def _server(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address in a URL
        return f"{self.scheme}://{quote(self._username, safe='')}@{host}:{self._port}"

    @property
    def _directory(self) -> str:
        return self._dir or self._remote_dir

    def _path(self, name: str) -> str:
        return posixpath.join(self._directory, name)

    def _location(self, name: str) -> str:
        path = self._path(name)
        return f"{self._server}{path if path.startswith('/') else '/' + path}"

    def connect(self) -> None:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        log.debug("connected to %s, directory %s", self._server, self._dir)

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect, log in, check the target directory and set ``_dir``; ``close`` cleans up if this raises."""

    def _unreachable(self, exc: OSError) -> DeliveryError:
        if isinstance(exc, socket.gaierror):
            return DeliveryError(
                f"cannot resolve the host name ({exc.strerror})", where=self._server, hint="check the host"
            )
        return DeliveryError(f"no answer within {self._timeout:g} s", where=self._server,
                             hint="check host and port, and that a firewall lets this machine through")

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._timeout:g} s"
        if isinstance(exc, EOFError) and not str(exc):
            return "closed by the server"
        return str(exc).strip().rstrip(":") or type(exc).__name__  # paramiko: "Server connection dropped: "


def utc_from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
