"""Extraction: run an audience query on the warehouse and hand its rows on as Arrow record batches.

Audiences run to millions of rows, so rows are streamed: memory is bounded by ``chunk_size``,
never by the size of the result. Every dialect goes through one generic SQLAlchemy streaming path
(`etl.extract.generic`) unless it has a fast path in ``etl.extract.stream._FAST_PATHS`` (a dialect
whose SQLAlchemy driver cannot stream, or one with a faster native Arrow export); adding a dialect
is adding one function to that table.

Database failures become :class:`~etl.errors.ExtractError` carrying the database's own message,
never a password and never the SQL echo that drivers append.
"""

from etl.config.sql import bind_parameter_names
from etl.extract.checks import check_queries, query_columns
from etl.extract.engine import create_warehouse_engine
from etl.extract.params import local_time, query_params
from etl.extract.stream import activation_batches, stream_batches

__all__ = [
    "activation_batches", "bind_parameter_names", "check_queries", "create_warehouse_engine", "local_time",
    "query_columns", "query_params", "stream_batches",
]
