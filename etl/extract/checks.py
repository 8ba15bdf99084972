"""Queries checked without reading their rows: the columns an activation's query returns, and
`validate --connect`'s pass over every warehouse and query."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa

from etl.config import Config
from etl.errors import AudienceSyncError, ExtractError
from etl.extract.engine import activation_engine, database_message, safe_url
from etl.extract.params import query_params
from etl.extract.stream import stream_batches


def query_columns(config: Config, name: str) -> list[str]:
    """The column names of an activation's query, without reading its rows (the query is wrapped in
    a subquery that selects nothing, which every tested dialect plans without executing the scan)."""
    return query_schema(config, name).names


def query_schema(config: Config, name: str, when: datetime | None = None) -> pa.Schema:
    """The columns of an activation's query as its first (empty) batch has them, bound as at ``when``: a
    column's type is null where the dialect's path cannot tell it without a row."""
    activation = config.activations[name]
    query = config.query(name)
    engine = activation_engine(config, name)
    sql = query.text.strip().rstrip(";")
    probe = f"SELECT * FROM (\n{sql}\n) audience_sync_probe WHERE 1 = 0"
    try:
        batches = stream_batches(engine, probe, query_params(activation, when or datetime.now(UTC)), chunk_size=1,
                                 where=query.where)
        with closing(batches):
            first = next(batches, None)
        return first.schema if first is not None else pa.schema([])
    finally:
        engine.dispose()


def check_queries(config: Config, choose: Callable[[str, list[str]], None]) -> list[tuple[str, str]]:
    """`validate --connect`: each warehouse connected once, each query planned without reading a row;
    ``choose`` raises if the job cannot use the columns. Problems are located at the warehouse's URL (a
    refused connection, said once) or at the activation's SQL file."""
    problems: list[tuple[str, str]] = []
    unreachable: set[str] = set()
    for name in config.activations:
        warehouse_name, _ = config.warehouse_for(name)
        if warehouse_name in unreachable:
            continue
        where = f"[warehouses.{warehouse_name}] url"
        try:
            engine = activation_engine(config, name)
        except ExtractError as exc:
            problems.append((where, exc.what))
            unreachable.add(warehouse_name)
            continue
        try:
            with engine.connect():
                pass
        except sa.exc.SQLAlchemyError as exc:
            problems.append((where, f"cannot connect to {safe_url(engine.url)}: {database_message(exc, engine.url)}"))
            unreachable.add(warehouse_name)
            continue
        finally:
            engine.dispose()
        try:
            choose(name, query_columns(config, name))
        except AudienceSyncError as exc:
            problems.append((f"[activations.{name}] {_query_key(config, name)}",
                             f"{exc.what}{f' — {exc.hint}' if exc.hint else ''}"))
    return problems


def _query_key(config: Config, name: str) -> str:
    """The activation's key that holds its query, as written: ``sql (sql/x.sql)`` or ``dbt (model x)``."""
    activation = config.activations[name]
    return f"dbt (model {activation.dbt.model})" if activation.dbt is not None else f"sql ({activation.sql})"
