"""Extraction: an audience query's rows as Arrow record batches, streamed so memory is bounded by
``chunk_size``, never by the result. Every dialect takes the generic SQLAlchemy path unless
``etl.extract.stream._FAST_PATHS`` gives it one: adding a dialect is adding one function there."""

from etl.config.sql import bind_parameter_names
from etl.extract.checks import check_queries, query_columns
from etl.extract.engine import create_warehouse_engine
from etl.extract.params import local_time, query_params
from etl.extract.stream import activation_batches, stream_batches

__all__ = [
    "activation_batches", "bind_parameter_names", "check_queries", "create_warehouse_engine", "local_time",
    "query_columns", "query_params", "stream_batches",
]
