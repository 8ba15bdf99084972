"""PostgreSQL's fast path through psycopg 3: ``COPY (query) TO STDOUT`` a chunk at a time, with the
generic path's values. **ADBC** when every column's Arrow form is the generic path's (binary COPY
converted in C without the GIL, on a second session; parameters bound client-side, since bound by
ADBC its driver returns the whole result as one batch), else **CSV COPY through psycopg**.

The query is first declared and described (nothing runs), so errors and column names come as on the
generic path. Float parameters, other drivers and non-UTF-8 connections take the generic path.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from etl.config.sql import QUOTED_OR_COMMENT
from etl.extract.generic import (CHUNK_BYTES, Batches, ColumnChoice, Query, selected, sqlalchemy_batches,
                                 to_array)

log = logging.getLogger("audience_sync.extract")

#: PostgreSQL types whose CSV text pyarrow parses to what the generic path gives (by type OID);
#: every other type is read as bytes and converted by psycopg's own loader, value by value
_PG_ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),  # bool
    20: pa.int64(),  # int8
    21: pa.int64(),  # int2
    23: pa.int64(),  # int4
    26: pa.int64(),  # oid
    19: pa.string(),  # name
    25: pa.string(),  # text
    1042: pa.string(),  # bpchar
    1043: pa.string(),  # varchar
    700: pa.float64(),  # float4
    701: pa.float64(),  # float8
}


def postgres_batches(
    connection: sa.Connection, statement: Query, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """The query's rows by COPY, on the pooled connection the generic path would use, in its
    transaction: errors, a lost connection and the release of the connection behave the same."""
    raw: Any = connection.connection.driver_connection
    if connection.dialect.driver != "psycopg" or not _copy_suits(raw, values):
        yield from sqlalchemy_batches(connection, statement, values, chunk_size, columns)
        return
    import psycopg

    compiled = statement.compile(dialect=connection.dialect)
    params = dict(compiled.construct_params(values))
    reader: _ReadAhead | None = None
    try:
        described = _pg_describe(raw, compiled.string, params)
        reader = _adbc_reader(raw, compiled.string, params, described, chunk_size) or _csv_copy_reader(
            raw, compiled.string, params, described, chunk_size
        )
        for batch in reader:
            yield selected(batch, columns)
    except psycopg.Error as exc:
        if reader is not None:
            reader.stop()  # it has ended: this is its error; the connection's state is final
        if _invalidated_if_lost(connection, raw, exc):
            raise sa.exc.DBAPIError.instance(
                None, None, exc, psycopg.Error, connection_invalidated=True, dialect=connection.dialect
            ) from exc
        raise
    except _AdbcFailure as failure:
        raise sa.exc.DBAPIError.instance(
            None, None, failure.error, psycopg.Error, connection_invalidated=failure.lost, dialect=connection.dialect
        ) from failure.__cause__
    finally:
        if reader is not None:
            reader.stop()


def _invalidated_if_lost(connection: sa.Connection, raw: Any, exc: Exception) -> bool:
    """Whether ``exc`` lost the connection, which is then invalidated as SQLAlchemy does on the generic
    path: never back to the pool, and reported as such (the caller names it)."""
    error: Any = exc  # the dialect's DBAPI error type, which mypy knows under another name
    if not connection.dialect.is_disconnect(error, raw, None):
        return False
    connection.invalidate(exc)
    return True


def _csv_copy_reader(
    raw: Any, query: str, params: dict[str, Any], columns: list[tuple[str, int]], chunk_size: int
) -> _ReadAhead:
    from psycopg import sql as pgsql

    # pyformat escapes a literal % as %%; psycopg undoes it only when it merges parameters
    body = without_trailing_semicolons(query if params else query.replace("%%", "%"))
    copy_sql = pgsql.SQL("COPY (\n{}\n) TO STDOUT (FORMAT csv)").format(pgsql.SQL(body))
    parse = _pg_csv_parser(raw, columns)
    cancel = getattr(raw, "cancel_safe", None) or raw.cancel
    return _ReadAhead(lambda: _csv_copy_batches(raw, copy_sql, params, chunk_size, parse), cancel)


def _csv_copy_batches(
    raw: Any, copy_sql: Any, params: dict[str, Any], chunk_size: int, parse: Callable[[bytearray], pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """COPY CSV rows gathered ``chunk_size`` at a time (fewer at ``CHUNK_BYTES``) and parsed; leaving the
    ``copy`` block early makes psycopg cancel the query."""
    with raw.cursor() as cursor, cursor.copy(copy_sql, params or None) as copy:
        messages = iter(copy)
        sent = False
        while True:
            block = bytearray()
            rows = 0
            while rows < chunk_size and len(block) < CHUNK_BYTES:
                size = len(block)
                step = min(chunk_size - rows, _ReadAhead.GIL_SLICE)
                for data in islice(messages, step):  # a message per row: islice counts rows
                    block += data
                if len(block) == size:  # no more rows
                    break
                rows += step  # (too many only when the rows ran out: the next step ends it)
                time.sleep(0)  # let the consumer take the GIL back
            if sent and not block:
                return
            sent = True
            yield parse(block)
            if not block:
                return


class _Stopped(Exception):
    """Raised in the reader thread when the consumer has gone: closing its rows then cancels the query."""


_END = object()


class _ReadAhead:
    """Runs ``produce`` on its own thread, one batch ahead, and re-raises what ended it. What ``produce``
    reads from belongs to the reader thread until :meth:`stop` returns."""

    #: seconds the reader may take to notice a stop before ``cancel`` is called
    STOP_GRACE = 1.0
    #: rows read between two offers of the GIL: each Arrow or numpy call of the consumer needs it back,
    #: and would otherwise wait for the interpreter's switch interval
    GIL_SLICE = 512

    def __init__(self, produce: Callable[[], Iterator[pa.RecordBatch]], cancel: Callable[[], None]) -> None:
        self._cancel = cancel
        self._handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(produce,), name="audience-sync-copy", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._handoff.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Make the reader stop, cancelling its query if it waits for the server; wait until it has."""
        self._stopping.set()
        self._thread.join(self.STOP_GRACE)
        if self._thread.is_alive():
            try:
                self._cancel()
            except Exception:  # the connection may be gone: the read then fails by itself
                pass
            self._thread.join()

    def _read(self, produce: Callable[[], Iterator[pa.RecordBatch]]) -> None:
        try:
            batches = produce()
            try:
                for batch in batches:
                    self._hand_over(batch)
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
        except _Stopped:
            return
        except BaseException as exc:  # the consumer's to raise
            self._hand_over(exc, final=True)
            return
        self._hand_over(_END, final=True)

    def _hand_over(self, item: Any, *, final: bool = False) -> None:
        while not self._stopping.is_set():
            try:
                self._handoff.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        if not final:
            raise _Stopped


#: PostgreSQL types whose ADBC Arrow form, cast to ``_PG_ARROW_TYPES``, is the generic path's value
#: (ADBC reads float4 as float32, which widens with binary noise, and oid as a signed int32)
_ADBC_TYPE_OIDS = frozenset({16, 20, 21, 23, 19, 25, 1042, 1043, 701})


class _AdbcFailure(Exception):
    """An ADBC error as the DBAPI error the generic path would raise: the database's message, and
    whether the session was lost (a FATAL error, or the server gone)."""

    def __init__(self, exc: BaseException) -> None:
        import psycopg

        text = str(exc).strip()
        found = re.search(r"\b(ERROR|FATAL|PANIC):\s+(.*)", text)
        message = found.group(2) if found else text
        super().__init__(message)
        self.error = psycopg.OperationalError(message)
        self.lost = (found.group(1) != "ERROR") if found else "connection" in text.lower()


def _adbc_reader(
    raw: Any, query: str, params: dict[str, Any], columns: list[tuple[str, int]], chunk_size: int
) -> _ReadAhead | None:
    """ADBC's read of the query on a session of its own, or None where its values would differ,
    ADBC is not installed, or its session cannot be opened (the CSV COPY then runs)."""
    if not all(oid in _ADBC_TYPE_OIDS for _, oid in columns):
        return None
    try:
        import adbc_driver_manager
        import adbc_driver_postgresql
    except ImportError:
        return None
    from psycopg import ClientCursor
    from psycopg.conninfo import make_conninfo

    bound = ClientCursor(raw).mogrify(query, params) if params else query.replace("%%", "%")
    with raw.cursor() as cursor:  # the session's own, which a connect event may have set
        search_path = cursor.execute("SELECT pg_catalog.current_setting('search_path')").fetchone()[0]
    opened: list[Any] = []
    try:
        database = adbc_driver_postgresql.connect(make_conninfo(raw.info.dsn, password=raw.info.password))
        opened.append(database)
        session = adbc_driver_manager.AdbcConnection(database)
        opened.append(session)
        setup = adbc_driver_manager.AdbcStatement(session)
        opened.append(setup)
        setup.set_sql_query(ClientCursor(raw).mogrify(
            "SELECT pg_catalog.set_config('search_path', %s, false), "
            "pg_catalog.set_config('default_transaction_read_only', 'on', false)", [search_path]
        ))  # fmt: skip  the second session reads only, as the first
        handle, _ = setup.execute_query()
        pa.RecordBatchReader.from_stream(handle).read_all()
        setup.close()
        opened.remove(setup)
        statement = adbc_driver_manager.AdbcStatement(session)
        opened.append(statement)
        statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_adbc_batch_bytes(chunk_size))})
        statement.set_sql_query(without_trailing_semicolons(bound))
    except adbc_driver_manager.Error as exc:
        _close_all(opened)
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        password = raw.info.password
        log.info("rows through COPY CSV: no ADBC session (%s)", lines[0].replace(password, "***") if password else lines[0])
        return None
    names = [name for name, _ in columns]
    types = [_PG_ARROW_TYPES[oid] for _, oid in columns]
    return _ReadAhead(lambda: _adbc_batches(statement, names, types, chunk_size, opened), statement.cancel)


def _adbc_batch_bytes(chunk_size: int) -> int:
    """ADBC's batch size is in bytes: about a chunk of e-mail-wide rows, at most 16 MB."""
    return min(chunk_size * 32, 16 << 20)


def _adbc_batches(
    statement: Any, names: list[str], types: list[pa.DataType], chunk_size: int, opened: list[Any]
) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``chunk_size`` rows (the last smaller), as the CSV COPY gives them. An early stop
    cancels the query and reads on until the server gives up, so the query has stopped once the reader has."""
    import adbc_driver_manager

    reader: pa.RecordBatchReader | None = None
    finished = False
    try:
        try:
            handle, _ = statement.execute_query()
            reader = pa.RecordBatchReader.from_stream(handle)
        except adbc_driver_manager.Error as exc:
            raise _AdbcFailure(exc) from exc
        sent = False
        for chunk in _in_chunks(reader, chunk_size):
            sent = True
            yield _typed(chunk.columns, names, types)
        if not sent:
            yield _typed([pa.nulls(0, kind) for kind in types], names, types)
        finished = True
    finally:
        if reader is not None:
            if not finished:
                _cancel_and_drain(statement, reader)
            reader.close()
        _close_all(opened)


def _in_chunks(reader: pa.RecordBatchReader, chunk_size: int) -> Iterator[pa.RecordBatch]:
    """ADBC's batches (sized in bytes) cut and joined into batches of ``chunk_size`` rows, the last smaller."""
    import adbc_driver_manager

    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (OSError, pa.ArrowException, adbc_driver_manager.Error) as exc:  # the server's come as OSError
            raise _AdbcFailure(exc) from exc
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= chunk_size:
            chunks = pa.Table.from_batches(pending).combine_chunks().to_batches(max_chunksize=chunk_size)
            pending = [chunks.pop()] if chunks[-1].num_rows < chunk_size else []
            pending_rows = sum(rest.num_rows for rest in pending)
            yield from chunks
    if pending_rows:
        yield from pa.Table.from_batches(pending, reader.schema).combine_chunks().to_batches()


def _cancel_and_drain(statement: Any, reader: pa.RecordBatchReader) -> None:
    try:
        statement.cancel()
        while True:
            reader.read_next_batch()
    except Exception:  # the end, the cancellation's error or the stream's after an error: it has stopped
        pass


def _typed(columns: Sequence[Any], names: list[str], types: list[pa.DataType]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([column.cast(kind) for column, kind in zip(columns, types)], names=names)


def _close_all(handles: list[Any]) -> None:
    """Close ADBC handles, the last opened first (a statement before its connection before its database)."""
    for handle in reversed(handles):
        try:
            handle.close()
        except Exception:  # closing what failed: nothing left to do with it
            pass
    handles.clear()


def _copy_suits(raw: Any, values: dict[str, Any]) -> bool:
    """COPY's CSV gives the generic path's values: UTF-8 text, no parameter whose literal changes its type."""
    return raw.info.encoding == "utf-8" and not any(isinstance(value, float) for value in values.values())


def _pg_describe(raw: Any, query: str, params: dict[str, Any]) -> list[tuple[str, int]]:
    """Names and type OIDs of the query's columns: a cursor declared and described, never fetched."""
    with raw.cursor(name="audience_sync_describe") as cursor:
        cursor.execute(query, params)
        return [(column.name, column.type_code) for column in cursor.description or ()]


def _pg_csv_parser(raw: Any, columns: list[tuple[str, int]]) -> Callable[[bytearray], pa.RecordBatch]:
    import pyarrow.csv as pacsv
    from psycopg import adapt, pq

    names = [name for name, _ in columns]
    keys = [f"c{i}" for i in range(len(columns))]  # the query's names may repeat
    arrow_types = [_PG_ARROW_TYPES.get(oid) for _, oid in columns]
    transformer = adapt.Transformer(raw)
    loaders = [None if kind is not None else transformer.get_loader(oid, pq.Format.TEXT)
               for (_, oid), kind in zip(columns, arrow_types)]  # fmt: skip
    parse_options = pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
    convert_options = pacsv.ConvertOptions(
        column_types={key: kind or pa.binary() for key, kind in zip(keys, arrow_types)},
        null_values=[""],  # COPY writes NULL as an empty field, and an empty string as ""
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )

    def parse(block: bytearray) -> pa.RecordBatch:
        if not block:
            arrays = [pa.array([], kind) if kind is not None else to_array([]) for kind in arrow_types]
            return pa.RecordBatch.from_arrays(arrays, names=names)
        read_options = pacsv.ReadOptions(column_names=keys, use_threads=False, block_size=len(block) + 1)
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(block)),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
        arrays = []
        for column, loader in zip(table.columns, loaders):
            array = column.combine_chunks()
            if loader is not None:
                array = to_array([None if value is None else loader.load(value) for value in array.to_pylist()])
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    return parse


def without_trailing_semicolons(sql: str) -> str:
    """The query without the trailing semicolons, white space and comments ``COPY (...)`` refuses (a ``;``
    or ``--`` inside quoted text stays)."""
    comment_starts = {match.end(): match.start() for match in QUOTED_OR_COMMENT.finditer(sql)
                      if match.group().startswith(("--", "/*"))}  # fmt: skip
    end = len(sql)
    while True:
        end = len(sql[:end].rstrip())
        if end in comment_starts:
            end = comment_starts[end]
        elif sql[:end].endswith(";"):
            end -= 1
        else:
            return sql[:end]
