"""Snowflake's fast path: the connector's own Arrow result chunks, never rows through Python.

The generic path would fetch Python rows (the connector converts its Arrow chunks to tuples, then
we convert them back); ``fetch_arrow_batches`` hands the chunks over as Snowflake sent them, one
downloaded at a time, so memory stays bounded by a chunk and not by the result.

Snowflake has no read-only transaction: snowflake-sqlalchemy turns autocommit off, so a DML
statement is rolled back when the connection goes back to the pool, but DDL commits by itself.
A warehouse user for audiences should hold a role that may only SELECT.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from etl.extract.generic import Batches, ColumnChoice, Query, null_schema, with_columns


def snowflake_batches(
    connection: sa.Connection, statement: Query, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """Compiled for the dialect (its pyformat, which the connector binds client-side, escaping the
    values), run on the pooled connection's DB-API cursor. The cursor is closed however iteration
    ends: chunks not yet downloaded never are. ``chunk_size`` is applied by the caller, which cuts
    Snowflake's chunks (their size is the server's choice) without copying."""
    compiled = statement.compile(dialect=connection.dialect)
    params = dict(compiled.construct_params(values))
    # without parameters the connector does no %-formatting: pyformat's %% escape is undone here
    sql = compiled.string if params else compiled.string.replace("%%", "%")
    raw: Any = connection.connection.driver_connection
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params or None)
        names = [_result_name(connection.dialect, column[0]) for column in cursor.description or ()]
        chunks = (batch.rename_columns(names) for table in cursor.fetch_arrow_batches() for batch in _as_batches(table))
        yield from with_columns(chunks, columns, empty=null_schema(names))
    finally:
        cursor.close()


def _result_name(dialect: sa.Dialect, name: str) -> str:
    """Snowflake upper-cases unquoted names (``email`` comes back ``EMAIL``); the generic path gives
    them back as written, through the dialect's normalisation, and so does this one."""
    normalised = dialect.normalize_name(name)
    return normalised if normalised is not None else name


def _as_batches(table: pa.Table | pa.RecordBatch) -> list[pa.RecordBatch]:
    """The connector wraps each chunk in a table (typed as such); a record batch is taken as it is,
    should a version hand those over."""
    if isinstance(table, pa.RecordBatch):
        return [table]
    return table.to_batches()

