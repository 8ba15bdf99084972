"""A directory on this machine (or a mounted share) as the file transfer location."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from etl.destinations.filedrop.base import Deliverer, utc_from_timestamp
from etl.errors import DeliveryError
from etl.files import create_private

_COPY_BUFFER = 1024 * 1024


def _hint(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the process cannot write there: fix the directory's permissions or choose another path"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free some space (retention_days removes old deliveries)"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return "part of the path is an existing file, not a directory: fix the path"
    return ""


class LocalDeliverer(Deliverer):
    """The temporary file lives in the target directory itself, not in /tmp: ``os.replace`` is only
    atomic within one file system."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path).expanduser().absolute()

    def describe(self) -> str:
        return f"local directory {self._path}"

    def connect(self) -> None:
        if self._path.is_symlink():
            # a link swapped in for the outbox would have the audience written wherever it points
            raise DeliveryError(f"the delivery directory is a symbolic link (to {os.readlink(self._path)})",
                                where=str(self._path),
                                hint=f"set the location's path to the real directory, {self._path.resolve()}")
        try:
            self._path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(
                f"cannot create the delivery directory ({exc.strerror})", where=str(self._path), hint=_hint(exc)
            ) from exc
        if not self._path.is_dir():
            raise DeliveryError("the delivery path exists but is not a directory", where=str(self._path),
                                hint="point the location at a directory")
        if not os.access(self._path, os.W_OK | os.X_OK):
            raise DeliveryError("the delivery directory is not writable by this process", where=str(self._path),
                                hint="fix the directory's permissions or choose another path")

    def close(self) -> None:
        pass

    def _location(self, name: str) -> str:
        return (self._path / name).as_uri()

    def _upload(self, local: Path, remote_name: str) -> None:
        target = self._path / remote_name
        try:
            with local.open("rb") as source:
                with create_private(target) as sink:  # a leftover (or a link planted there) is replaced, never followed
                    shutil.copyfileobj(source, sink, _COPY_BUFFER)
                    sink.flush()
                    # on disk before the rename, or a crash could leave an empty file under the final name
                    os.fsync(sink.fileno())
        except OSError as exc:
            raise DeliveryError(
                f"cannot write {local.name} ({exc.strerror or exc})", where=str(target), hint=_hint(exc)
            ) from exc

    def _remote_size(self, remote_name: str) -> int:
        target = self._path / remote_name
        try:
            return target.stat().st_size
        except OSError as exc:
            raise DeliveryError(f"cannot check the written file ({exc.strerror})", where=str(target)) from exc

    def _replace(self, temp: str, final: str) -> None:
        try:
            os.replace(self._path / temp, self._path / final)
        except OSError as exc:
            raise DeliveryError(
                f"cannot rename {temp} to {final} ({exc.strerror})", where=str(self._path), hint=_hint(exc)
            ) from exc
        self._sync_directory()

    def _sync_directory(self) -> None:
        """Not possible everywhere (Windows, some network shares)."""
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _remove(self, remote_name: str) -> None:
        try:
            os.remove(self._path / remote_name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DeliveryError(
                f"cannot remove {remote_name} ({exc.strerror})", where=str(self._path), hint=_hint(exc)
            ) from exc

    def _modified_files(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, datetime]]:
        try:
            entries = list(os.scandir(self._path))
        except OSError as exc:
            raise DeliveryError(
                f"cannot list the delivery directory ({exc.strerror})", where=str(self._path), hint=_hint(exc)
            ) from exc
        for entry in entries:
            if not wanted(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                modified = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue  # removed meanwhile
            yield entry.name, utc_from_timestamp(modified)
