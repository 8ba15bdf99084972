"""Every file holding personal data is created here: mode 0600, never through a link, synced before it counts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from etl.errors import FileWriteError

FILE_MODE = 0o600


#: a new file, never one that exists: O_EXCL refuses a planted symbolic link too
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_private(path: Path) -> BinaryIO:
    """A new file, mode 0600 whatever the umask; whatever was at ``path`` (a link) is removed, never written through."""
    path.unlink(missing_ok=True)
    fd = os.open(path, CREATE_FLAGS, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return open(fd, "wb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


def private_directory(path: Path, *, root: Path) -> Path:
    """Create ``path`` below ``root``, mode 0700, refusing a symbolic link on the way (``runs/x`` -> ``/etc``).

    ``root`` itself is the operator's choice and may be a link."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(root, exc) from exc
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            current.mkdir(mode=0o700)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise FileWriteError(
                    f"{'is a symbolic link' if current.is_symlink() else 'exists and is not a directory'}: "
                    "runs only write into real directories of their own",
                    where=str(current),
                    hint=f"remove {current}; the next run creates it again",
                ) from None
        except OSError as exc:
            raise write_error(current, exc) from exc
    return path


def share_private(source: Path, path: Path) -> None:
    """``path`` holds what ``source`` holds: a hard link where the file system allows it (one written
    file for every delivery of a fan-out, however large), else a private copy. Either way a new name,
    never written through a link planted at ``path``."""
    path.unlink(missing_ok=True)
    try:
        os.link(source, path, follow_symlinks=False)
        return
    except OSError:
        pass
    try:
        with open(source, "rb") as given, create_private(path) as copy:
            while block := given.read(1 << 20):
                copy.write(block)
    except OSError as exc:
        raise write_error(path, exc) from exc


def sync_close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the files themselves are synced
    finally:
        os.close(fd)


def write_error(path: Path, exc: OSError) -> FileWriteError:
    reason = exc.strerror or str(exc)
    return FileWriteError(f"cannot write the file: {reason}", where=str(path), hint="check free space and permissions")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A full disk or a permission problem is the user's to fix: said as such, with the file or directory
    written (never taken for a damaged file, nor shown as an internal error)."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from exc


def replace_text(path: Path, text: str, *, mode: int) -> None:
    """Replace a file atomically: readers see the old file or the new one, never half of one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
