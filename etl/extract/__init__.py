"""Extraction: run an audience query on the warehouse and hand its rows on as Arrow record batches.

Audiences run to millions of rows, so rows are streamed: memory is bounded by ``chunk_size``,
never by the size of the result. Every dialect goes through one generic SQLAlchemy streaming path
unless it has a fast path in ``_FAST_PATHS`` (a dialect whose SQLAlchemy driver cannot stream, or
one with a faster native Arrow export); adding a dialect is adding one function to that table.

Database failures become :class:`~etl.errors.ExtractError` carrying the database's own message,
never a password and never the SQL echo that drivers append.
"""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL

from etl.config import ActivationBase, Config
from etl.errors import AudienceSyncError, ExtractError
from etl.logs import redact

#: what to install for a missing driver module: the project's extra when we ship one
_EXTRA_FOR_MODULE = {"psycopg": "postgres", "pymysql": "mysql", "duckdb": "duckdb", "duckdb_engine": "duckdb"}
#: the URL form our extras support, for a dialect asked for with another driver (``postgresql+psycopg2``)
_SUPPORTED_URL = {
    "postgresql": ("postgresql+psycopg://", "postgres"),
    "mysql": ("mysql+pymysql://", "mysql"),
    "mariadb": ("mariadb+pymysql://", "mysql"),
    "duckdb": ("duckdb:///", "duckdb"),
}
#: packages providing third-party dialects the README documents
_DIALECT_PACKAGES = {"snowflake": "snowflake-sqlalchemy", "bigquery": "sqlalchemy-bigquery", "trino": "trino"}
#: file-backed dialects: a missing file means a wrong path, not a new empty warehouse
_FILE_DIALECTS = ("sqlite", "duckdb")

log = logging.getLogger("audience_sync.extract")

_QUERY_HINT = "fix the query, then try it with `audience-sync preview NAME`"

# ``:name::type`` — sqlalchemy.text() does not take ``:name`` before ``::`` as a parameter (see below)
_CAST_AFTER_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)::(\w+)")


# --------------------------------------------------------------------------- engine


def create_warehouse_engine(url: str, *, where: str) -> sa.Engine:
    """An engine for the warehouse URL, or an ExtractError a user can act on.

    SQLAlchemy imports the driver here, not at the first query, so a missing driver is reported
    before any work starts, with the extra to install. Messages show the URL with its password
    masked: URLs usually carry one, interpolated from the environment.
    """
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        # the raw string is never echoed: it may hold a password
        detail = "a part is invalid, e.g. a non-numeric port" if isinstance(exc, ValueError) else "cannot be parsed"
        raise ExtractError(
            f"not a SQLAlchemy URL ({detail})",
            where=where,
            hint="write it as dialect+driver://user:password@host:port/database, e.g. postgresql+psycopg://host/db",
        ) from None
    if parsed.host and "@" in parsed.host:
        # "user:p@ss@host" parses with password "p" and host "ss@host": showing the URL would leak the rest
        raise ExtractError(
            "the URL has more than one '@': a user name or password contains a reserved character",
            where=where,
            hint="percent-encode it in the URL (@ as %40, / as %2F, : as %3A, # as %23)",
        )
    safe = _safe(parsed)
    _check_database_file(parsed, safe, where)
    try:
        engine = sa.create_engine(parsed)
    except sa.exc.NoSuchModuleError:
        raise ExtractError(
            f"no SQLAlchemy dialect '{parsed.get_backend_name()}' is installed (URL {safe})",
            where=where,
            hint=_dialect_hint(parsed),
        ) from None
    except ImportError as exc:
        module = (exc.name or "").split(".")[0]
        raise ExtractError(
            f"the database driver for {parsed.drivername} is not installed (no module '{module or exc}')",
            where=where,
            hint=_driver_hint(parsed, module),
        ) from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
        raise ExtractError(
            f"unusable warehouse URL {safe}: {_first_line(str(exc), parsed)}", where=where
        ) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _lenient_sqlite_text)
    return engine


def _lenient_sqlite_text(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLite stores whatever bytes it was given as TEXT, and sqlite3 aborts the whole query on the first
    value that is not UTF-8. Decoded with U+FFFD in place of the bad bytes, such a value is one rejected row
    ("not UTF-8 text") instead of a failed run."""
    dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "replace")


def _safe(url: URL) -> str:
    return redact(url.render_as_string(hide_password=True))


def _check_database_file(url: URL, safe: str, where: str) -> None:
    """SQLite and DuckDB create a missing file silently: a mistyped path would read an empty warehouse."""
    database = url.database or ""
    if url.get_backend_name() not in _FILE_DIALECTS or not database or database == ":memory:":
        return
    if database.startswith(("file:", "md:", "motherduck:")) or "://" in database:
        return  # URI filenames and remote databases: not a local path to check
    if not Path(database).exists():
        raise ExtractError(
            f"no database file at {database} (URL {safe})",
            where=where,
            hint="check the path; a relative path is relative to the configuration file",
        )


def _driver_hint(url: URL, module: str) -> str:
    extra = _EXTRA_FOR_MODULE.get(module)
    if extra is not None:
        return f"pip install 'audience-sync[{extra}]'"
    supported = _SUPPORTED_URL.get(url.get_backend_name())
    if supported is not None:
        form, extra = supported
        return f"use a {form} URL with pip install 'audience-sync[{extra}]', or install the package for '{module}'"
    return f"install the Python package that provides the '{module}' module (the {url.drivername} driver)"


def _dialect_hint(url: URL) -> str:
    name = url.get_backend_name()
    if name in _SUPPORTED_URL:
        return f"pip install 'audience-sync[{_SUPPORTED_URL[name][1]}]'"
    if name in _DIALECT_PACKAGES:
        return f"pip install {_DIALECT_PACKAGES[name]}"
    return f"install the package that provides SQLAlchemy's '{name}' dialect, or check the URL's spelling"


# --------------------------------------------------------------------------- parameters


def bind_parameter_names(sql: str) -> set[str]:
    """The parameters a query binds, computed exactly as the run will bind them.

    sqlalchemy.text() decides (``x::int`` is a cast, ``\\:x`` an escaped colon, ``:x::int`` is *not*
    a parameter: write ``CAST(:x AS int)``), after ``_shield`` has hidden comments and quoted text.
    """
    return set(_statement(sql).compile().params)


def _statement(sql: str) -> sa.TextClause:
    return sa.text(_shield(sql))


_QUOTED_OR_COMMENT = re.compile(
    r"""
      \$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$   # PostgreSQL dollar quotes: $$…$$, $tag$…$tag$
    | (?<![A-Za-z0-9_])[Ee]'(?:[^'\\]|\\.|'')*'       # PostgreSQL escape string: E'it\'s'
    | '(?:[^']|'')*'      # string literal ('' is a quote)
    | "(?:[^"]|"")*"      # quoted identifier (a string in MySQL)
    | `[^`]*`             # MySQL quoted identifier
    | --[^\n]*            # line comment
    | /\*.*?\*/           # block comment
    """,
    re.VERBOSE | re.DOTALL,
)


def _shield(sql: str) -> str:
    """Escape the colons of comments and quoted text, so that text() takes none of them for a parameter.

    text() alone binds ``:name`` wherever it appears. A ``-- uses :min_days`` comment then became
    a ``?`` that SQLite does not count ("The current statement uses 4, and there are 7 supplied"),
    and a parameter named only in a comment passed the configuration check as used. Escaping
    rather than removing keeps the SQL the database sees, and its line numbers, unchanged.
    Dollar-quoted bodies count as quoted text too: the PostgreSQL fast paths bind values client-side
    as '…' literals, and a value holding ``$$`` inside a ``$$…$$`` body would have closed it.
    """
    return _QUOTED_OR_COMMENT.sub(lambda match: re.sub(r"(?<!\\):", r"\\:", match.group()), sql)


# --------------------------------------------------------------------------- streaming

Batches = Generator[pa.RecordBatch, None, None]
#: which of the result's columns the consumer uses, from their names (positions); None: all of them
ColumnChoice = Callable[[list[str]], list[int]]
#: a dialect's own way to stream: (connection, statement, bound values, chunk size, columns) -> batches
FastPath = Callable[[sa.Connection, sa.TextClause, dict[str, Any], int, ColumnChoice | None], Batches]
#: about the most memory the rows of one chunk may take while being read on the generic path: a chunk
#: of a wide result (``SELECT *`` of hundreds of columns) holds fewer rows than ``chunk_size``
CHUNK_BYTES = 64 << 20
#: rows read first on the generic path, to measure how wide a row is
_PROBE_ROWS = 500


def stream_batches(
    engine: sa.Engine,
    sql: str,
    params: Mapping[str, object],
    *,
    chunk_size: int,
    where: str,
    columns: ColumnChoice | None = None,
    connect_where: str | None = None,
) -> Batches:
    """Run ``sql`` with bound ``params`` and yield its rows in Arrow batches of at most ``chunk_size`` rows.

    ``columns`` picks the columns the consumer uses: the others are dropped as early as each path
    allows (on the generic path, never converted), since an audience needs one column of what may be
    a ``SELECT *`` of hundreds. Chunks of wide rows are also cut by their size (``CHUNK_BYTES``).
    ``connect_where`` is where a refused connection is said (the warehouse's URL, not the SQL file).

    Parameters the query does not use are ignored, so callers can always offer the built-in ones;
    one the query uses but ``params`` lacks is reported now, before connecting. An empty result
    yields one empty batch, so that the consumer still sees the column names.

    The connection is taken at the first ``next()`` and given back when the rows are exhausted,
    on an error, or when the generator is closed; a consumer that may stop early should close it
    (``contextlib.closing``) rather than wait for garbage collection.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    used = bind_parameter_names(sql)
    missing = used - params.keys()
    if missing:
        names = ", ".join(f":{name}" for name in sorted(missing))
        raise ExtractError(
            f"the query uses {names} but no value is given for {'it' if len(missing) == 1 else 'them'}",
            where=where,
            hint="declare it under the activation's params, or fix its spelling in the query",
        )
    values = {name: params[name] for name in used}
    return _guarded_batches(engine, _statement(sql), values, chunk_size, where, sql, columns,
                            connect_where or where)


def _guarded_batches(
    engine: sa.Engine,
    statement: sa.TextClause,
    values: dict[str, Any],
    chunk_size: int,
    where: str,
    sql: str,
    columns: ColumnChoice | None,
    connect_where: str,
) -> Batches:
    """Translate the database's errors and hand the connection back however iteration ends.

    Only the database calls sit inside ``try``: an exception thrown in by the consumer at a
    ``yield`` is the consumer's, not the warehouse's.
    """
    dialect = engine.dialect
    errors = _database_errors(engine)
    path = _FAST_PATHS.get(dialect.name, _sqlalchemy_batches)
    try:
        connection = engine.connect()
    except errors as exc:
        raise ExtractError(
            f"cannot connect to {_safe(engine.url)}: {_database_message(exc, engine.url)}",
            where=connect_where,
            hint="check the warehouse URL and that the server accepts connections from here",
        ) from None
    # kept for the early-stop handling: after an invalidation the Connection no longer reaches it
    dbapi_connection = connection.connection.dbapi_connection
    source: Batches | None = None
    finished = False
    try:
        try:
            _read_only(connection)
        except errors as exc:
            raise _query_error(exc, engine.url, where, sql) from exc
        source = path(connection, statement, values, chunk_size, columns)
        while True:
            try:
                batch = next(source)
            except StopIteration:
                finished = True
                break
            except errors as exc:
                raise _query_error(exc, engine.url, where, sql) from exc
            # a driver's batch size is a hint to some drivers: cut anything larger, without copying
            for start in range(0, batch.num_rows, chunk_size):
                yield batch.slice(start, chunk_size)
            if batch.num_rows == 0:
                yield batch
    finally:
        if not finished:
            abandon = _ABANDON.get(dialect.driver)
            if abandon is not None:
                abandon(connection, dbapi_connection)
        if source is not None:
            source.close()
        _end_read_only(connection)
        connection.close()


#: how each dialect makes the audience query read-only, before it runs; MySQL and MariaDB need the
#: session's setting, since DDL commits the current transaction and would run outside it
_READ_ONLY = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}  # DuckDB: _refuse_duckdb_writes
#: the session settings above, undone before the connection goes back to the pool
_READ_WRITE = {
    "mysql": "SET SESSION TRANSACTION READ WRITE",
    "mariadb": "SET SESSION TRANSACTION READ WRITE",
    "sqlite": "PRAGMA query_only = OFF",
}
#: what a read-only refusal says, per dialect, to explain it instead of showing the bare error
_READ_ONLY_REFUSALS = ("read-only transaction", "read only transaction", "readonly database",
                       "attempt to write a readonly", "query_only")


def _read_only(connection: sa.Connection) -> None:
    """An audience query only reads: ``preview`` promises to write nothing, and a run must never change
    the warehouse (a ``DROP`` or ``CREATE TABLE … AS`` pasted into an audience file). The database
    enforces it, not a parse of the SQL. DuckDB has no read-only transaction: its parser says what
    each statement is (`_refuse_duckdb_writes`), and its path always rolls back besides."""
    statement = _READ_ONLY.get(connection.dialect.name)
    if statement is not None:
        connection.exec_driver_sql(statement)


def _end_read_only(connection: sa.Connection) -> None:
    """A session setting goes back to the pool with the connection: undone, or the connection dropped."""
    statement = _READ_WRITE.get(connection.dialect.name)
    if statement is None or connection.invalidated:
        return
    try:
        connection.rollback()
        connection.exec_driver_sql(statement)
    except sa.exc.SQLAlchemyError:
        connection.invalidate()


def _sqlalchemy_batches(
    connection: sa.Connection, statement: sa.TextClause, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """The generic path: a server-side cursor read a chunk at a time, only the used columns converted.

    ``stream_results`` gives PostgreSQL a named cursor and MySQL an unbuffered SSCursor (SQLite
    steps its cursor lazily anyway). Each read asks for an explicit number of rows: ``yield_per`` is
    not applied to text() statements, and without a size the whole result came back at once;
    ``max_row_buffer`` keeps SQLAlchemy's own read-ahead within a chunk too. That number is
    ``chunk_size``, or fewer when the first rows show that a chunk of them would take more than
    ``CHUNK_BYTES`` (measured: ``SELECT *`` of 500 text columns, 50k-row chunks, 5 GB).
    """
    probe = min(chunk_size, _PROBE_ROWS)
    result = connection.execution_options(stream_results=True, max_row_buffer=probe).execute(statement, values)
    with result:
        names = list(result.keys())
        keep = columns(names) if columns is not None else list(range(len(names)))
        first: list[Any] = list(result.fetchmany(probe))
        size = _rows_within(CHUNK_BYTES, first, chunk_size) if first else chunk_size
        if len(first) == probe and size > probe:  # the first chunk as full as the others
            first += result.fetchmany(size - probe)
        yield _rows_to_batch(names, first, keep)
        while rows := result.fetchmany(size):
            yield _rows_to_batch(names, rows, keep)


def _rows_within(budget: int, sample: Sequence[Sequence[Any]], chunk_size: int) -> int:
    """How many rows like ``sample``'s first few fit in ``budget`` bytes of Python objects, at most ``chunk_size``."""
    few = sample[:20]
    width = sum(sys.getsizeof(row) + sum(sys.getsizeof(value) for value in row) for row in few) / len(few)
    return max(1, min(chunk_size, int(budget // max(width, 1))))


def _rows_to_batch(names: list[str], rows: Sequence[Sequence[Any]], keep: list[int]) -> pa.RecordBatch:
    arrays = [_to_array([row[index] for row in rows]) for index in keep]
    return pa.RecordBatch.from_arrays(arrays, names=[names[index] for index in keep])


def _selected(batch: pa.RecordBatch, columns: ColumnChoice | None) -> pa.RecordBatch:
    """The columns the consumer uses, for the paths that read Arrow batches whole."""
    return batch if columns is None else batch.select(columns(batch.schema.names))


def _to_array(values: Sequence[Any]) -> pa.Array:
    """Arrow's inference, with text as the fallback for what it cannot hold.

    A column that is NULL throughout the chunk comes out as null type; the consumer casts. Text
    instead of an error covers SQLite's mixed-type columns, integers beyond 64 bits, decimal NaN,
    and UUIDs (Arrow's uuid extension type cannot be cast to text by the consumer).
    """
    try:
        array = pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError):
        return _as_text(values)
    if isinstance(array.type, pa.ExtensionType):
        return _as_text(values)
    return array


def _as_text(values: Sequence[Any]) -> pa.Array:
    return pa.array(
        [None if value is None else value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
         for value in values],
        type=pa.string(),
    )


def _duckdb_batches(
    connection: sa.Connection, statement: sa.TextClause, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """DuckDB's own Arrow reader: duckdb-engine does not stream through SQLAlchemy.

    The statement is compiled for the dialect, so text()'s parameter rules hold here too, and run
    as a relation: on DuckDB 2.0, ``execute(...).to_arrow_reader()`` first copied the whole result
    (20M rows: 1.2 GB, 4 s before the first batch), ``sql(...).to_arrow_reader()`` streams
    (110 MB, first batch at once).
    """
    compiled = statement.compile(dialect=connection.dialect)
    bound = compiled.construct_params(values)
    positional = [bound[name] for name in compiled.positiontup or ()]
    # duckdb-engine's connection wrapper passes every other attribute to the DuckDB connection
    raw: Any = connection.connection.driver_connection
    _refuse_duckdb_writes(compiled.string)
    # sql() runs anything but a read at once, in autocommit: a transaction that is always rolled
    # back leaves the warehouse as it was, as closing the connection does on the generic path
    raw.begin()
    try:
        relation = raw.sql(compiled.string, params=positional or None)
        if relation is None:  # a statement that returns nothing
            return
        if hasattr(relation, "to_arrow_reader"):
            reader = relation.to_arrow_reader(chunk_size)
        else:  # DuckDB 1.x
            reader = relation.fetch_arrow_reader(chunk_size)
        try:
            empty = True
            for batch in reader:
                if batch.num_rows:
                    empty = False
                    yield _selected(batch, columns)
            if empty:
                yield _selected(pa.RecordBatch.from_pylist([], schema=reader.schema), columns)
        finally:
            reader.close()
    finally:
        raw.rollback()


def _refuse_duckdb_writes(sql: str) -> None:
    """DuckDB has no read-only transaction: a statement other than a query is refused before it runs,
    in the words the other dialects' refusals use (a ``COPY … TO`` would write a file, too)."""
    import duckdb

    for statement in duckdb.extract_statements(sql):
        if statement.type != duckdb.StatementType.SELECT:
            raise duckdb.InvalidInputException(
                f"cannot execute {statement.type.name} in a read-only transaction (only queries run)")


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


def _postgres_batches(
    connection: sa.Connection, statement: sa.TextClause, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """PostgreSQL through psycopg 3: the query's rows by ``COPY (query) TO STDOUT``, a chunk at a time.

    It runs on the pooled connection the generic path would use, in its transaction, so errors, a
    lost connection and the release of the connection behave the same; the rows come one of two
    ways, both giving the generic path's values:

    * **ADBC** (``adbc-driver-postgresql``, the ``postgres`` extra), when every column has a type
      whose Arrow form is the generic path's (booleans, integers, float8, text): a binary COPY
      read and converted to Arrow in C, without the GIL, on a second session opened with the same
      connection parameters and search_path. Reading 571k e-mails took 0.2 s of CPU, where
      psycopg's COPY, one Python call per row, took about 1 s and held the GIL while the cleaner
      needed it (docs/benchmarks.md). psycopg binds the parameters client-side
      (``ClientCursor.mogrify``, each value quoted as a literal, never formatted in by us), so
      ADBC runs a query without parameters: with parameters bound by ADBC, its driver ran the
      query eagerly and returned the whole result as one batch.
    * **CSV COPY through psycopg** otherwise (other types, ADBC not installed, or its session
      refused): rows gathered until ``chunk_size`` and parsed by pyarrow; types other than
      booleans, integers, floats and text are read as text and converted by psycopg's own loader,
      then by the generic path's ``_to_array``. ``cursor.copy(query, params)`` binds the
      parameters client-side too.

    Either way the query is first declared as a cursor and described (nothing runs), with
    server-side binding as on the generic path: its errors and column names (duplicates allowed)
    come from there. A float parameter would become a numeric literal (float8 when bound): such
    queries, other drivers than psycopg and non-UTF-8 connections take the generic path.

    Rows are read on a thread of their own, one chunk ahead of the consumer (cleaning and writing
    mostly run in Arrow and numpy without the GIL), so at most three chunks are held; back-pressure
    is TCP's: the server waits meanwhile. Early stop: the reader stops at its next chunk and the
    query is cancelled; closing the connection then rolls back.
    """
    raw: Any = connection.connection.driver_connection
    if connection.dialect.driver != "psycopg" or not _copy_suits(raw, values):
        yield from _sqlalchemy_batches(connection, statement, values, chunk_size, columns)
        return
    import psycopg

    compiled = statement.compile(dialect=connection.dialect)
    params = dict(compiled.construct_params(values))
    query = compiled.string
    reader: _ReadAhead | None = None
    try:
        described = _pg_describe(raw, query, params)
        reader = _adbc_reader(raw, query, params, described, chunk_size) or _csv_copy_reader(
            raw, query, params, described, chunk_size
        )
        for batch in reader:
            yield _selected(batch, columns)
    except psycopg.Error as exc:
        if reader is not None:
            reader.stop()  # it has ended: this is its error; the connection's state is final
        error: Any = exc  # the dialect's DBAPI error type, which mypy knows under another name
        if connection.dialect.is_disconnect(error, raw, None):
            # as SQLAlchemy handles a lost connection on the generic path: never back to the
            # pool, and reported as such (the caller names it)
            connection.invalidate(exc)
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


def _csv_copy_reader(
    raw: Any, query: str, params: dict[str, Any], columns: list[tuple[str, int]], chunk_size: int
) -> _ReadAhead:
    from psycopg import sql as pgsql

    # pyformat escapes a literal % as %%; psycopg undoes it only when it merges parameters
    body = _without_trailing_semicolons(query if params else query.replace("%%", "%"))
    copy_sql = pgsql.SQL("COPY (\n{}\n) TO STDOUT (FORMAT csv)").format(pgsql.SQL(body))
    parse = _pg_csv_parser(raw, columns)
    cancel = getattr(raw, "cancel_safe", None) or raw.cancel
    return _ReadAhead(lambda: _csv_copy_batches(raw, copy_sql, params, chunk_size, parse), cancel)


def _csv_copy_batches(
    raw: Any, copy_sql: Any, params: dict[str, Any], chunk_size: int, parse: Callable[[bytearray], pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """COPY CSV rows, gathered ``chunk_size`` at a time (fewer when they reach ``CHUNK_BYTES``) and
    parsed; leaving the ``copy`` block early
    (the generator closed) makes psycopg cancel the query and read what was already sent."""
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
    """Runs ``produce`` (a generator of batches) on its own thread and hands them over, one ahead.

    Iterating yields the batches in order, then raises what ended the reader if it failed. What
    ``produce`` reads from belongs to the reader thread until :meth:`stop` returns.
    """

    #: seconds the reader may take to notice a stop before ``cancel`` is called
    STOP_GRACE = 1.0
    #: rows the psycopg COPY reader reads between two offers of the GIL to the consumer: reading is
    #: Python code that holds the GIL, and each Arrow or numpy call of the consumer needs it back
    #: when it returns, which otherwise waits for the interpreter's switch interval (5 ms); 10M
    #: customers: 9.6 s -> 8.8 s
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
        statement.set_sql_query(_without_trailing_semicolons(bound))
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
    """The rows in batches of exactly ``chunk_size`` (the last smaller), as the CSV COPY gives them.

    An early stop cancels the query and reads on until the server has given up (what it had sent
    already, at most socket buffers), so the query has stopped once the reader has.
    """
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
    """A function turning a block of COPY CSV rows into a batch with the generic path's values."""
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
            arrays = [pa.array([], kind) if kind is not None else _to_array([]) for kind in arrow_types]
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
                array = _to_array([None if value is None else loader.load(value) for value in array.to_pylist()])
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    return parse


def _without_trailing_semicolons(sql: str) -> str:
    """The query without what ends it: semicolons, white space and comments, which ``COPY (...)`` refuses.

    Comments are found by ``_QUOTED_OR_COMMENT``, so a ``;`` or ``--`` inside quoted text stays.
    """
    comment_starts = {match.end(): match.start() for match in _QUOTED_OR_COMMENT.finditer(sql)
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


def _abandon_pymysql(connection: sa.Connection, dbapi_connection: Any) -> None:
    """Drop an unbuffered PyMySQL result without reading it to the end.

    Closing it normally reads and discards every remaining row (measured: 1.8 s for 2M rows left);
    closing the socket instead makes the server stop, and the connection is invalidated, never
    reused. PyMySQL's flag is cleared first, also after a lost connection: otherwise its cursor
    later tries to drain the closed socket and prints errors from a destructor.
    """
    pending = getattr(dbapi_connection, "_result", None)
    if pending is None or not getattr(pending, "unbuffered_active", False):
        return
    pending.unbuffered_active = False
    if not connection.invalidated:
        connection.invalidate()


#: per-dialect fast paths, by SQLAlchemy dialect name; the rest use ``_sqlalchemy_batches``
_FAST_PATHS: dict[str, FastPath] = {"duckdb": _duckdb_batches, "postgresql": _postgres_batches}
#: per-driver handling of a result left unread (consumer stopped early, or an error): by driver name
_ABANDON: dict[str, Callable[[sa.Connection, Any], None]] = {"pymysql": _abandon_pymysql}


# --------------------------------------------------------------------------- errors


def _database_errors(engine: sa.Engine) -> tuple[type[BaseException], ...]:
    """What a database call may raise: SQLAlchemy's errors, the driver's own (fast paths call it directly)."""
    errors: list[type[BaseException]] = [sa.exc.SQLAlchemyError, pa.ArrowException]
    driver_error = getattr(engine.dialect.loaded_dbapi, "Error", None)
    if isinstance(driver_error, type) and issubclass(driver_error, BaseException):
        errors.append(driver_error)
    return tuple(errors)


def _query_error(exc: BaseException, url: URL, where: str, sql: str) -> ExtractError:
    message = _database_message(exc, url)
    if isinstance(exc, sa.exc.ResourceClosedError):
        return ExtractError(
            "the query returns no rows (is it a SELECT?)", where=where, hint="an audience query must be a SELECT"
        )
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return ExtractError(
            f"the connection to the warehouse broke off: {message}",
            where=where,
            hint="the query itself may be fine; run again once the warehouse is reachable",
        )
    if any(refusal in message.lower() for refusal in _READ_ONLY_REFUSALS):
        return ExtractError(
            f"the query tried to write to the warehouse, which audience SQL may not: {message}",
            where=where,
            hint="audience SQL runs in a read-only transaction: keep it to one SELECT (or WITH … SELECT); "
                 "build tables with your warehouse's own tools (dbt, scheduled SQL)",
        )
    casts = _CAST_AFTER_PARAMETER.findall(sql)
    if casts:
        name, type_ = casts[0]
        hint = (
            f"text() does not take :{name} before '::' as a parameter: write CAST(:{name} AS {type_}), "
            "then try it with `audience-sync preview NAME`"
        )
        return ExtractError(message, where=where, hint=hint)
    return ExtractError(message, where=where, hint=_QUERY_HINT)


def _database_message(exc: BaseException, url: URL) -> str:
    """The database's own words: the driver's first line, without SQLAlchemy's SQL echo or a password."""
    original = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    args: tuple[Any, ...] = getattr(original, "args", ())
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} (error {args[0]})"  # PyMySQL: (code, message)
    else:
        text = str(original)
    return _first_line(text, url)


def _first_line(text: str, url: URL) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else "(no message)"
    password = url.password
    if password:
        line = line.replace(str(password), "***")
    return line


__all__ = ["bind_parameter_names", "create_warehouse_engine", "stream_batches"]


# --------------------------------------------------------------------------- activations


def local_time(activation: ActivationBase, when: datetime) -> datetime:
    """The run's wall-clock time where the audience lives: drives :run_date and file-name dates."""
    zone = ZoneInfo(activation.schedule.timezone) if activation.schedule else UTC
    return when.astimezone(zone)


def query_params(activation: ActivationBase, when: datetime) -> dict[str, Any]:
    """The bound parameters of a run: the built-in :run_date and :run_at, then the declared ones."""
    local = local_time(activation, when)
    return {"run_date": local.date(), "run_at": when.astimezone(UTC).replace(tzinfo=None), **activation.params}


def activation_batches(
    config: Config, name: str, when: datetime, *, columns: ColumnChoice | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream an activation's query from its warehouse (only ``columns``, if given); the connection is
    released as soon as the consumer stops, even when a later step fails."""
    activation = config.activations[name]
    engine = _activation_engine(config, name)
    batches = stream_batches(
        engine,
        config.sql_text(name),
        query_params(activation, when),
        chunk_size=config.chunk_size_for(name),
        where=str(config.path(activation.sql)),
        columns=columns,
        connect_where=f"[warehouses.{config.warehouse_for(name)[0]}] url",
    )
    try:
        with closing(batches):
            yield from batches
    finally:
        engine.dispose()


def query_columns(config: Config, name: str) -> list[str]:
    """The column names of an activation's query, without reading its rows (the query is wrapped in
    a subquery that selects nothing, which every tested dialect plans without executing the scan)."""
    activation = config.activations[name]
    engine = _activation_engine(config, name)
    sql = config.sql_text(name).strip().rstrip(";")
    probe = f"SELECT * FROM (\n{sql}\n) audience_sync_probe WHERE 1 = 0"
    try:
        batches = stream_batches(engine, probe, query_params(activation, datetime.now(UTC)), chunk_size=1,
                                 where=str(config.path(activation.sql)))
        with closing(batches):
            first = next(batches, None)
        return first.schema.names if first is not None else []
    finally:
        engine.dispose()


def check_queries(config: Config, choose: Callable[[str, list[str]], None]) -> list[tuple[str, str]]:
    """`validate --connect`: connect to each warehouse once and plan each activation's query without
    reading a row; ``choose(name, columns)`` raises if the job cannot use those columns. Returns every
    problem, located at the warehouse's URL (a connection refused: said once, not per query) or at
    the activation's SQL file."""
    problems: list[tuple[str, str]] = []
    unreachable: set[str] = set()
    for name in config.activations:
        warehouse_name, _ = config.warehouse_for(name)
        if warehouse_name in unreachable:
            continue
        where = f"[warehouses.{warehouse_name}] url"
        try:
            engine = _activation_engine(config, name)
        except ExtractError as exc:
            problems.append((where, exc.what))
            unreachable.add(warehouse_name)
            continue
        try:
            with engine.connect():
                pass
        except sa.exc.SQLAlchemyError as exc:
            problems.append((where, f"cannot connect to {_safe(engine.url)}: {_database_message(exc, engine.url)}"))
            unreachable.add(warehouse_name)
            continue
        finally:
            engine.dispose()
        try:
            choose(name, query_columns(config, name))
        except AudienceSyncError as exc:
            problems.append((f"[activations.{name}] sql ({config.activations[name].sql})",
                             f"{exc.what}{f' — {exc.hint}' if exc.hint else ''}"))
    return problems


def _activation_engine(config: Config, name: str) -> sa.Engine:
    warehouse_name, warehouse = config.warehouse_for(name)
    url = _anchored(config, warehouse.url.get_secret_value())
    if warehouse.demo:
        # imported here, not at the top: the runtime never loads a test double unless the configuration asks for one
        from etl.testing import ensure_demo_warehouse

        ensure_demo_warehouse(url)
    return create_warehouse_engine(url, where=f"[warehouses.{warehouse_name}] url")


def _anchored(config: Config, url: str) -> str:
    """A relative SQLite/DuckDB file in a URL is relative to the configuration file, like every other path."""
    for prefix in ("sqlite:///", "duckdb:///"):
        if url.startswith(prefix) and not url[len(prefix) :].startswith(("/", ":memory:")) and url != prefix:
            return prefix + str(config.path(Path(url[len(prefix) :])))
    return url
