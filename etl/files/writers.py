"""CSV files as Actito reads them, cut into parts under a size limit, and reject files for analysts.

LF line endings, not RFC 4180's CRLF: Actito accepts either, and a reader splitting on LF never sees a
CR glued to an identifier. Output is byte-identical whatever the batch boundaries: rows are re-cut into
blocks at fixed offsets before compression, and parts are cut only between blocks. A part is closed
before a block could push it over ``max_bytes`` even if the block compressed badly; zip's reserve is a
few hundred KB, so with a small ``max_bytes`` zip parts come out well below it (never above).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from isal import igzip, isal_zlib

from etl.errors import FileWriteError
from etl.files.manifest import file_sha256
from etl.files.names import Compression
from etl.files.private import FILE_MODE, _sync_directory, create_private, sync_close, write_error


SEPARATORS = (",", ";", "\t")
LINE_ENDINGS = ("\n", "\r\n")
#: zip members carry this fixed date (the earliest a zip can hold) so output is reproducible
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
#: upper bound of what the rows are cut into before compression (smaller for small max_bytes)
BLOCK_BYTES = 1 << 20
GZIP_LEVEL = 1


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    rows: int
    size: int
    sha256: str


# --------------------------------------------------------------------------- CSV rendering


def render_lines(
    values: pa.Array | pa.ChunkedArray | pa.Table, *, separator: str = ",", line_ending: str = "\n"
) -> pa.Array:
    """Each value (or table row) as one CSV line; a single column (identifiers) must hold no null."""
    if isinstance(values, pa.Table):
        cells = [_render_cells(column, separator) for column in values.columns]
        joined = pc.binary_join_element_wise(*cells, separator) if cells else pa.array([], pa.string())
        return pc.binary_join_element_wise(joined, line_ending, "")
    if values.null_count:
        raise ValueError("identifiers must not be null")
    return pc.binary_join_element_wise(_render_cells(values, separator), line_ending, "")


def _render_cells(values: pa.Array | pa.ChunkedArray, separator: str) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    values = pc.fill_null(values, "")
    special = pc.match_substring_regex(values, f'["\r\n{separator}]')
    if pc.any(special).as_py():
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
        values = pc.if_else(special, quoted, values)
    return values


def _offsets(lines: pa.Array) -> np.ndarray:
    """Byte offsets of each line in the array's data buffer (n + 1 of them)."""
    dtype = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    raw = np.frombuffer(lines.buffers()[1], dtype=dtype)
    return raw[lines.offset : lines.offset + len(lines) + 1].astype(np.int64)


def _deflate_bound(size: int) -> int:
    """Generous worst case of deflating ``size`` bytes (stored blocks, Huffman headers, flush markers)."""
    return size + size // 8 + 1024


class _Part:
    """One output file being written under its temporary name."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.rows = 0
        self.raw = create_private(path)

    def fits(self, size: int) -> bool:
        raise NotImplementedError

    def write(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _finish_stream(self) -> None:
        for close in self._closers():
            close()

    def _closers(self) -> list[Callable[[], None]]:
        return []

    def finish(self) -> None:
        self._finish_stream()
        sync_close(self.raw)

    def abort(self) -> None:
        for release in self._closers():  # what they still write is deleted below
            try:
                release()
            except Exception:
                pass
        try:
            self.raw.close()
        except OSError:
            pass
        self.path.unlink(missing_ok=True)


class _PlainPart(_Part):
    def fits(self, size: int) -> bool:
        return self.raw.tell() + size <= self.max_bytes

    def write(self, data: bytes | memoryview) -> None:
        self.raw.write(data)


class _GzipPart(_Part):
    _TRAILER = 16  # final empty deflate block + CRC32 + ISIZE, rounded up

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(path, max_bytes)
        # filename="" and mtime=0: the gzip header carries neither a name nor a date
        self.stream = igzip.IGzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=self.raw, mtime=0)

    def fits(self, size: int) -> bool:
        return self.raw.tell() + _deflate_bound(size) + self._TRAILER <= self.max_bytes

    def write(self, data: bytes | memoryview) -> None:
        self.stream.write(data)
        self.stream.flush(isal_zlib.Z_SYNC_FLUSH)  # everything written so far is now on disk: exact size

    def _closers(self) -> list[Callable[[], None]]:
        return [self.stream.close]  # does not close self.raw (a file object we passed in)


class _ZipPart(_Part):
    def __init__(self, path: Path, max_bytes: int, member: str, longest_member: str) -> None:
        super().__init__(path, max_bytes)
        self.member = member
        # central directory, end records (zip64 included) and a rename of the member
        self._tail = 512 + 2 * len(longest_member.encode("utf-8"))
        self._since_growth = 0
        #: lengths of every write, kept so that the part can be re-packed under another member name
        self.writes: list[int] = []
        self.archive = zipfile.ZipFile(self.raw, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        info = zipfile.ZipInfo(member, date_time=ZIP_DATE_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (0o100000 | FILE_MODE) << 16
        self.stream = self.archive.open(info, "w", force_zip64=True)

    def fits(self, size: int) -> bool:
        return self.raw.tell() + _deflate_bound(self._since_growth + size) + self._tail <= self.max_bytes

    def write(self, data: bytes | memoryview) -> None:
        before = self.raw.tell()
        self.stream.write(data)
        size = len(data)
        self._since_growth = size if self.raw.tell() > before else self._since_growth + size
        self.writes.append(size)

    def _closers(self) -> list[Callable[[], None]]:
        return [self.stream.close, self.archive.close]  # neither closes self.raw (a file object we passed in)


def _repack_zip(path: Path, old_member: str, new_member: str, writes: list[int]) -> None:
    """Rewrite a finished zip part with its member renamed (same writes, so the same deflate stream)."""
    temporary = path.with_name(path.name + ".repack")
    part = _ZipPart(temporary, max_bytes=0, member=new_member, longest_member=new_member)
    try:
        with zipfile.ZipFile(path) as source, source.open(old_member) as member:
            for size in writes:
                part.write(member.read(size))
        part.finish()
    except BaseException:
        part.abort()
        raise
    os.replace(temporary, path)


# --------------------------------------------------------------------------- the audience file


def _split_name(file_name: str) -> tuple[str, str]:
    for suffix in (".csv.gz", ".csv", ".zip"):
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)], suffix
    return file_name, ""


class ClosingWriter:
    """Closed when the ``with`` block ends; after a failure removed or kept, as its kind says."""

    def close(self) -> object:
        raise NotImplementedError

    def _after_failure(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._after_failure()


class CsvFileWriter(ClosingWriter):
    """One CSV file (or its parts) from batches; peak memory is one rendered batch plus one block."""

    def __init__(
        self,
        directory: Path,
        file_name: str,
        *,
        header: str | Sequence[str],
        separator: str = ",",
        compression: Compression = "none",
        max_bytes: int = 100_000_000,
        line_ending: str = "\n",
    ) -> None:
        if separator not in SEPARATORS:
            raise ValueError(f"separator must be one of {SEPARATORS!r}, not {separator!r}")
        if compression not in ("none", "gzip", "zip"):
            raise ValueError(f"compression must be none, gzip or zip, not {compression!r}")
        if line_ending not in LINE_ENDINGS:
            raise ValueError("line_ending must be '\\n' or '\\r\\n'")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.file_name = file_name
        self.compression: Compression = compression
        self.max_bytes = max_bytes
        self.separator = separator
        self.line_ending = line_ending
        self.block_bytes = max(256, min(BLOCK_BYTES, max_bytes // 16))
        self._stem, self._ext = _split_name(file_name)
        columns = [header] if isinstance(header, str) else list(header)
        lines = render_lines(pa.table({f"c{i}": [name] for i, name in enumerate(columns)}),
                             separator=separator, line_ending=line_ending)
        self._header = lines.buffers()[2].to_pybytes()[: _offsets(lines)[1]]
        self._finished: list[_Part] = []
        self._part: _Part | None = None
        self._pending = bytearray()
        self._pending_rows = 0
        self._position = 0  # bytes of data rows seen so far: the fixed grid blocks are cut on
        self._closed = False
        self._written: list[WrittenFile] = []
        self._created: list[Path] = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._start_part()
        except OSError as exc:
            self._abort()
            raise write_error(self.directory / file_name, exc) from exc
        except BaseException:
            self._abort()
            raise

    def write(self, rows: pa.Array | pa.ChunkedArray | pa.Table) -> None:
        """An array of identifiers, or a table whose columns follow the header."""
        if self._closed:
            raise ValueError("the file is already closed")
        lines = render_lines(rows, separator=self.separator, line_ending=self.line_ending)
        count = len(lines)
        if count == 0:
            return
        offsets = _offsets(lines)
        data = memoryview(lines.buffers()[2])
        ends = self._position + (offsets[1:] - offsets[0])
        starts = ends - np.diff(offsets)
        # a block ends after every row that reaches or crosses a multiple of block_bytes
        closing = np.flatnonzero(ends // self.block_bytes > starts // self.block_bytes)
        first = 0
        try:
            for last in closing.tolist():
                chunk = data[offsets[first] : offsets[last + 1]]
                rows = last + 1 - first
                if self._pending:
                    self._pending += chunk
                    self._emit(bytes(self._pending), self._pending_rows + rows)
                    self._pending.clear()
                    self._pending_rows = 0
                else:
                    self._emit(chunk, rows)
                first = last + 1
        except OSError as exc:
            raise write_error(self._current_path(), exc) from exc
        if first < count:
            self._pending += data[offsets[first] : offsets[count]]
            self._pending_rows += count - first
        self._position = int(ends[-1])

    def close(self) -> list[WrittenFile]:
        """Finish every part, rename it into place and describe it (idempotent)."""
        if self._closed:
            return self._written
        try:
            if self._pending_rows:
                self._emit(bytes(self._pending), self._pending_rows)
                self._pending.clear()
                self._pending_rows = 0
            assert self._part is not None
            self._part.finish()
            self._finished.append(self._part)
            self._part = None
            self._written = self._publish()
        except OSError as exc:
            self._abort()
            raise write_error(self.directory / self.file_name, exc) from exc
        except BaseException:
            self._abort()
            raise
        self._closed = True
        return self._written

    def _after_failure(self) -> None:
        if not self._closed:
            self._abort()

    def _part_name(self, number: int) -> str:
        return f"{self._stem}_part{number:03d}{self._ext}"

    def _member_name(self, file_name: str) -> str:
        stem, _ = _split_name(file_name)
        return f"{stem}.csv"

    def _current_path(self) -> Path:
        return self._part.path if self._part else self.directory / self.file_name

    def _start_part(self) -> None:
        number = len(self._finished) + 1
        path = self.directory / f".{self._part_name(number)}.partial"
        self._created.append(path)
        part: _Part
        if self.compression == "gzip":
            part = _GzipPart(path, self.max_bytes)
        elif self.compression == "zip":
            # a lone file's member is <stem>.csv; parts' members are named after their part
            member = self._member_name(self.file_name if number == 1 else self._part_name(number))
            part = _ZipPart(path, self.max_bytes, member, longest_member=self._member_name(self._part_name(number)))
        else:
            part = _PlainPart(path, self.max_bytes)
        self._part = part
        if not part.fits(len(self._header) + 1):
            raise FileWriteError(
                f"max_bytes={self.max_bytes} is too small to hold even the header",
                where=str(self.directory / self.file_name),
            )
        part.write(self._header)

    def _emit(self, data: bytes | memoryview, rows: int) -> None:
        part = self._part
        assert part is not None
        if part.rows and not part.fits(len(data)):
            part.finish()
            self._finished.append(part)
            self._start_part()
            part = self._part
            assert part is not None
        if not part.fits(len(data)):
            raise FileWriteError(
                f"max_bytes={self.max_bytes} is too small for {rows} row(s) of {len(data)} bytes",
                where=str(self.directory / self.file_name),
                hint="raise file.max_bytes",
            )
        part.write(data)
        part.rows += rows

    def _publish(self) -> list[WrittenFile]:
        parts = self._finished
        if len(parts) == 1:
            names = [self.file_name]
        else:
            names = [self._part_name(number) for number in range(1, len(parts) + 1)]
            first = parts[0]
            if isinstance(first, _ZipPart):
                _repack_zip(first.path, first.member, self._member_name(names[0]), first.writes)
        written = []
        for part, name in zip(parts, names, strict=True):
            final = self.directory / name
            self._created.append(final)
            os.replace(part.path, final)
        _sync_directory(self.directory)
        for part, name in zip(parts, names, strict=True):
            final = self.directory / name
            written.append(WrittenFile(final, part.rows, final.stat().st_size, file_sha256(final)))
        return written

    def _abort(self) -> None:
        if self._part is not None:
            self._part.abort()
            self._part = None
        for path in self._created:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        self._closed = True
        self._written = []


# --------------------------------------------------------------------------- the reject file

_FORMULA_START = r"^[=+\-@\t\r]"
#: a rejected value is written up to this many characters (a 1 MB cell would make every reject file huge)
MAX_REJECT_VALUE = 1000


def defuse_formulas(values: pa.Array) -> pa.Array:
    """Prefix ``'`` to values a spreadsheet would run as a formula (start = + - @ TAB CR)."""
    risky = pc.fill_null(pc.match_substring_regex(values, _FORMULA_START), False)
    if not pc.any(risky).as_py():
        return values
    return pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)


def _shortened(values: pa.Array) -> pa.Array:
    """Values beyond MAX_REJECT_VALUE characters cut there, saying how long they were."""
    lengths = pc.utf8_length(values)
    long = pc.fill_null(pc.greater(lengths, MAX_REJECT_VALUE), False)
    if not pc.any(long).as_py():
        return values
    cut = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(values, 0, MAX_REJECT_VALUE),
        pc.binary_join_element_wise("… (", pc.cast(lengths, pa.string()), " characters)", ""),
        "",
    )
    return pc.if_else(long, cut, values)


class RejectWriter(ClosingWriter):
    """What was not delivered, for analysts: ``row,value,reason``, values defused and shortened. An
    import's file (``by_field``) also says the ``column`` and the ``action``: whether the whole row was
    rejected or only the value dropped (the row went on without it); a line without them rejects its row.

    Mode 0600 (personal data). On an exception the file is kept: it is correct as far as it goes.
    """

    COLUMNS: tuple[str, ...] = ("row", "value", "reason")
    FIELD_COLUMNS: tuple[str, ...] = ("row", "column", "value", "reason", "action")

    def __init__(self, path: Path, *, by_field: bool = False) -> None:
        self.path = Path(path)
        self.rows = 0
        self._closed = False
        self.columns = self.FIELD_COLUMNS if by_field else self.COLUMNS
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = create_private(self.path)
            self._file.write(",".join(self.columns).encode("ascii") + b"\n")
            schema = pa.schema([("row", pa.int64())] + [(name, pa.string()) for name in self.columns[1:]])
            options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
            self._writer = pacsv.CSVWriter(self._file, schema, write_options=options)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self._schema = schema

    def write(self, rejects: pa.Table) -> None:
        if self._closed:
            raise ValueError("the reject file is already closed")
        if rejects.num_rows == 0:
            return
        table = pa.table([self._column(rejects, name) for name in self.columns], schema=self._schema)
        try:
            self._writer.write_table(table)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self.rows += table.num_rows

    @staticmethod
    def _column(rejects: pa.Table, name: str) -> pa.Array:
        """One column as written: the row number, or text defused (a reason may quote Actito's words, a
        column is named by the SQL); a missing column or action is empty or rejects the row."""
        if name == "row":
            return pc.cast(rejects.column("row").combine_chunks(), pa.int64())
        if name not in rejects.column_names:
            return pa.array([None if name == "column" else "row rejected"] * rejects.num_rows, pa.string())
        text = pc.cast(rejects.column(name).combine_chunks(), pa.string())
        return defuse_formulas(_shortened(text) if name == "value" else text)

    def close(self) -> int:
        if not self._closed:
            self._closed = True
            try:
                self._writer.close()
                sync_close(self._file)
            except OSError as exc:
                raise write_error(self.path, exc) from exc
        return self.rows

    def _after_failure(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # the original exception matters more
