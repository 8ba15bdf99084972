"""The generic streaming path: any SQLAlchemy dialect, a server-side cursor read a chunk at a time,
rows converted to Arrow."""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

Batches = Generator[pa.RecordBatch, None, None]
#: which of the result's columns the consumer uses, from their names (positions); None: all of them
ColumnChoice = Callable[[list[str]], list[int]]
#: what a path runs: the query's text, or a SELECT built around it (`etl.extract.pushdown`)
Query = sa.TextClause | sa.Select[Any]
#: a dialect's own way to stream: (connection, statement, bound values, chunk size, columns) -> batches
FastPath = Callable[[sa.Connection, Query, dict[str, Any], int, ColumnChoice | None], Batches]
#: turns the query's SQL into the statement run, once the dialect is known
Wrap = Callable[[str, sa.Dialect], Query]
#: about the most memory the rows of one chunk may take while being read on the generic path: a chunk
#: of a wide result (``SELECT *`` of hundreds of columns) holds fewer rows than ``chunk_size``
CHUNK_BYTES = 64 << 20
#: rows read first on the generic path, to measure how wide a row is
_PROBE_ROWS = 500


def sqlalchemy_batches(
    connection: sa.Connection, statement: Query, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """A server-side cursor (``stream_results``) read a chunk at a time, only the used columns converted.
    Each read asks for an explicit number of rows (``yield_per`` does not apply to text(); without a size
    the whole result came back at once): ``chunk_size``, or fewer if a chunk would exceed ``CHUNK_BYTES``."""
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
    arrays = [to_array([row[index] for row in rows]) for index in keep]
    return pa.RecordBatch.from_arrays(arrays, names=[names[index] for index in keep])


def selected(batch: pa.RecordBatch, columns: ColumnChoice | None) -> pa.RecordBatch:
    """The columns the consumer uses, for the paths that read Arrow batches whole."""
    return batch if columns is None else batch.select(columns(batch.schema.names))


def with_columns(source: Iterable[pa.RecordBatch], columns: ColumnChoice | None, *, empty: pa.Schema) -> Batches:
    """The batches of a path that reads Arrow whole, only the used columns. An empty result may come as
    no batch at all, or as empty ones: it gives one empty batch of schema ``empty``, so the consumer
    still sees the column names."""
    rows = False
    for batch in source:
        if batch.num_rows:
            rows = True
            yield selected(batch, columns)
    if not rows:
        yield selected(pa.RecordBatch.from_pylist([], schema=empty), columns)


def null_schema(names: list[str]) -> pa.Schema:
    """The columns of a result known only by name, null-typed as the generic path gives an empty result."""
    return pa.schema([(name, pa.null()) for name in names])


def to_array(values: Sequence[Any]) -> pa.Array:
    """Arrow's inference, with text as the fallback (SQLite's mixed-type columns, integers beyond 64 bits,
    decimal NaN, UUIDs); an all-NULL chunk gives a null-typed column, which the consumer casts."""
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
