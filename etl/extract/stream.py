"""Streaming a query's rows as Arrow batches, each dialect through the generic path or its fast path."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from datetime import datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from etl.config import Config
from etl.config.sql import text_statement
from etl.errors import ExtractError
from etl.extract.bigquery import bigquery_batches
from etl.extract.budget import connection_budget
from etl.extract.duckdb_reader import duckdb_batches
from etl.extract.engine import (activation_engine, database_errors, database_message, end_read_only, query_error,
                                read_only, safe_url)
from etl.extract.generic import Batches, ColumnChoice, FastPath, Query, Wrap, sqlalchemy_batches
from etl.extract.params import bound_values, query_params
from etl.extract.postgres import postgres_batches
from etl.extract.snowflake import snowflake_batches


def stream_batches(
    engine: sa.Engine,
    sql: str,
    params: Mapping[str, object],
    *,
    chunk_size: int,
    where: str,
    columns: ColumnChoice | None = None,
    connect_where: str | None = None,
    wrap: Wrap | None = None,
) -> Batches:
    """Yield the rows of ``sql`` in Arrow batches of at most ``chunk_size`` rows, only ``columns`` (an
    audience needs one column of what may be a ``SELECT *``). An empty result yields one empty batch, so the
    consumer still sees the column names. A consumer that may stop early should close the generator
    (``contextlib.closing``) to give the connection back at once, not at garbage collection. ``wrap``
    builds the statement run around the query's text (its parameters stay the query's)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    values = bound_values(sql, params, where)
    statement = text_statement(sql) if wrap is None else wrap(sql, engine.dialect)
    return _guarded_batches(engine, statement, values, chunk_size, where, sql, columns, connect_where or where)


def _guarded_batches(
    engine: sa.Engine,
    statement: Query,
    values: dict[str, Any],
    chunk_size: int,
    where: str,
    sql: str,
    columns: ColumnChoice | None,
    connect_where: str,
) -> Batches:
    """Translate the database's errors and hand the connection back however iteration ends. Only database
    calls sit inside ``try``: an exception thrown in at a ``yield`` is the consumer's."""
    dialect = engine.dialect
    errors = database_errors(engine)
    path = _FAST_PATHS.get(dialect.name, sqlalchemy_batches)
    try:
        connection = engine.connect()
    except errors as exc:
        raise ExtractError(
            f"cannot connect to {safe_url(engine.url)}: {database_message(exc, engine.url)}",
            where=connect_where,
            hint="check the warehouse URL and that the server accepts connections from here",
        ) from None
    # kept for the early-stop handling: after an invalidation the Connection no longer reaches it
    dbapi_connection = connection.connection.dbapi_connection
    source: Batches | None = None
    finished = False
    try:
        try:
            read_only(connection)
        except errors as exc:
            raise query_error(exc, engine.url, where, sql) from exc
        source = path(connection, statement, values, chunk_size, columns)
        while True:
            try:
                batch = next(source)
            except StopIteration:
                finished = True
                break
            except errors as exc:
                raise query_error(exc, engine.url, where, sql) from exc
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
        end_read_only(connection)
        connection.close()


def _abandon_pymysql(connection: sa.Connection, dbapi_connection: Any) -> None:
    """Closing an unbuffered PyMySQL result reads every remaining row; closing the socket makes the server
    stop (the connection is invalidated). PyMySQL's flag is cleared first, or its cursor later drains the
    closed socket and prints errors from a destructor."""
    pending = getattr(dbapi_connection, "_result", None)
    if pending is None or not getattr(pending, "unbuffered_active", False):
        return
    pending.unbuffered_active = False
    if not connection.invalidated:
        connection.invalidate()


#: per-dialect fast paths, by SQLAlchemy dialect name; the rest use ``sqlalchemy_batches``
_FAST_PATHS: dict[str, FastPath] = {
    "duckdb": duckdb_batches, "postgresql": postgres_batches, "snowflake": snowflake_batches,
    "bigquery": bigquery_batches,
}
#: per-driver handling of a result left unread (consumer stopped early, or an error): by driver name
_ABANDON: dict[str, Callable[[sa.Connection, Any], None]] = {"pymysql": _abandon_pymysql}


def activation_batches(
    config: Config, name: str, when: datetime, *, columns: ColumnChoice | None = None, wrap: Wrap | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream an activation's query from its warehouse (only ``columns``, if given); the connection is
    released as soon as the consumer stops, even when a later step fails. The warehouse's connection budget
    is held for the whole stream, the time its connection is open."""
    activation = config.activations[name]
    query = config.query(name)
    warehouse_name, warehouse = config.warehouse_for(name)
    with connection_budget(warehouse_name, warehouse.max_connections).held(name):
        engine = activation_engine(config, name)
        batches = stream_batches(
            engine,
            query.text,
            query_params(activation, when),
            chunk_size=config.chunk_size_for(name),
            where=query.where,
            columns=columns,
            connect_where=f"[warehouses.{warehouse_name}] url",
            wrap=wrap,
        )
        try:
            with closing(batches):
                yield from batches
        finally:
            engine.dispose()
