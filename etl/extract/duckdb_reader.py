"""DuckDB's fast path: its own Arrow reader, since duckdb-engine does not stream through SQLAlchemy."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from etl.extract.generic import Batches, ColumnChoice, Query, with_columns


def duckdb_batches(
    connection: sa.Connection, statement: Query, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """Compiled for the dialect (text()'s parameter rules hold) and run as a relation: ``execute()``'s
    Arrow reader copies the whole result before the first batch, ``sql()``'s streams."""
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
            yield from with_columns(reader, columns, empty=reader.schema)
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
