"""BigQuery's fast path: the query job's result as Arrow, through the Storage Read API when it can.

The generic path goes through the DB-API cursor, which turns every value into a Python object; the
client library can hand the result over as Arrow record batches instead, a page (REST) or a stream
message (Storage Read API) at a time, so memory is bounded by a page (or one message per read stream,
the Storage Read API downloading its streams in parallel), not by the result.

BigQuery has no read-only transaction and no rollback: a DML or DDL statement in audience SQL would
run. The service account of the URL should hold only BigQuery Data Viewer (on the datasets read) and
BigQuery Job User (on the project the jobs run in), which lets it read and run queries, nothing more;
and BigQuery Read Session User for the Storage Read API, which only reads.

google-cloud-bigquery is imported here only when a BigQuery engine uses this path: it is an extra.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from etl.extract.generic import Batches, ColumnChoice, Query, null_schema, with_columns

#: the REST call an HTTP error names before the service's own words ("POST https://…/jobs: Access Denied")
_CALL_PREFIX = re.compile(r"^[A-Z]+ https?://\S+: ")


def bigquery_batches(
    connection: sa.Connection, statement: Query, values: dict[str, Any], chunk_size: int,
    columns: ColumnChoice | None,
) -> Batches:
    """Run on the client the pooled DB-API connection wraps (its project, location, default dataset and
    credentials), with real query parameters, never values rendered into the SQL. ``chunk_size`` is the
    REST page size; Storage Read API messages are the server's size, which the caller cuts. Google's
    errors are raised as the DB-API's, which the caller reports as the other drivers' errors."""
    raw: Any = connection.connection.driver_connection
    sql, config = _query(connection.dialect, statement, values)
    with _as_dbapi_errors():
        job = raw._client.query(sql, job_config=config)
        rows = _finished(job, chunk_size)
    names = [field.name for field in rows.schema or ()]
    if not names:  # DDL or DML: BigQuery has run it (no transaction), but it is no audience query
        raise sa.exc.ResourceClosedError("the statement returns no rows")
    # the Storage Read API when the connection has a client for it and the result is more than its first page
    arrow = rows.to_arrow_iterable(bqstorage_client=getattr(raw, "_bqstorage_client", None))
    try:
        yield from with_columns(_translated(arrow), columns, empty=null_schema(names))
    finally:
        # an early stop: no further page is asked for, and the Storage Read API's download threads stop
        close = getattr(arrow, "close", None)
        if close is not None:
            close()


def _finished(job: Any, chunk_size: int) -> Any:
    """The job's result, once it is done. A wait interrupted from our side (Ctrl-C, a stop) cancels the job:
    BigQuery would otherwise run, and bill, a query nobody reads. A job that failed needs no cancel."""
    from google.api_core.exceptions import GoogleAPIError

    try:
        return job.result(page_size=chunk_size)
    except GoogleAPIError:
        raise
    except BaseException:
        try:
            job.cancel()
        except GoogleAPIError:
            pass  # best effort: the interruption is what the caller must see
        raise


def _query(dialect: sa.Dialect, statement: Query, values: dict[str, Any]) -> tuple[str, Any]:
    """The statement in the dialect's pyformat, turned into BigQuery's ``@name`` parameters by the DB-API's
    own helpers, so a value is typed exactly as on the generic path (a date a DATE, text a STRING) and a
    quote or a % in it stays part of the one value. They are private names of google-cloud-bigquery: a
    version that moves them fails tests/test_bigquery.py, not silently."""
    from google.cloud.bigquery import QueryJobConfig
    from google.cloud.bigquery.dbapi._helpers import to_query_parameters
    from google.cloud.bigquery.dbapi.cursor import _format_operation

    compiled = statement.compile(dialect=dialect)
    params = dict(compiled.construct_params(values))
    sql, types = _format_operation(compiled.string, params)  # a mistake here is the DB-API's ProgrammingError
    config = QueryJobConfig()
    config.query_parameters = to_query_parameters(params, types) if params else []
    return sql, config


def _translated(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Only the download sits inside the error handling: an exception thrown in at ``yield`` is the consumer's."""
    while True:
        with _as_dbapi_errors():
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


@contextmanager
def _as_dbapi_errors() -> Iterator[None]:
    """Google's API errors (BadRequest for SQL, NotFound, Forbidden, a refused credential) as the DB-API's
    DatabaseError, with the service's words and status but neither the REST URL nor the job's SQL
    (``debug_message`` has it; ``message`` does not)."""
    from google.api_core.exceptions import GoogleAPICallError, GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.bigquery.dbapi import DatabaseError

    try:
        yield
    except GoogleAPICallError as exc:
        raise DatabaseError(f"{_said(exc)} (BigQuery {exc.code} {type(exc).__name__})") from exc
    except (GoogleAPIError, GoogleAuthError) as exc:
        raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc


def _said(exc: Any) -> str:
    """What the service said, on one line: a failed job's first error (the exception's message repeats it
    with its reason, location and job id, over several lines), else the message without the REST call."""
    errors = [error for error in exc.errors or () if isinstance(error, dict) and error.get("message")]
    text = str(errors[0]["message"]) if errors else _CALL_PREFIX.sub("", exc.message or "")
    return " ".join(text.split()) or type(exc).__name__
