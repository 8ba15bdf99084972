"""BigQuery's fast path, a contract test at the REST boundary: no BigQuery and no emulator is run.

The real google-cloud-bigquery client (AnonymousCredentials, so google.auth.default() is never asked)
and the real sqlalchemy-bigquery dialect and DB-API connection talk HTTP to ``bigquery_rest.FakeBigQuery``
on 127.0.0.1, which answers jobs.insert and getQueryResults as BigQuery documents them. What runs for
real: the compilation and parameter binding, the client's job and paging calls, its REST-to-Arrow
conversion, stream_batches around it. What does not: BigQuery's SQL, its own wording of errors, the
Storage Read API's server (its client is shown only with the fake service of the last tests).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bigquery_rest import PROJECT, Answer, FakeBigQuery
from etl.errors import ExtractError
from etl.extract import stream_batches
from test_extract import SQL_FILE, _assert_query_error, _read, _rows, _spy_fast_path

PEOPLE = Answer(fields=[("id", "INTEGER"), ("email", "STRING")],
                rows=[[str(i), f"person{i}@example.com"] for i in range(1, 26)])


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may leave the machine: a connection anywhere but 127.0.0.1 fails the test."""
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a connection to {address} was attempted")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def fake() -> Iterator[FakeBigQuery]:
    service = FakeBigQuery()
    try:
        yield service
    finally:
        service.close()


def _engine(fake: FakeBigQuery, credentials: Any = None, **connect_args: Any) -> sa.Engine:
    """As the dialect makes it for a ``bigquery://project/dataset`` URL, but with a client of ours: the
    dialect's own would ask google.auth.default() for credentials. REST only unless a test says otherwise."""
    client = bigquery.Client(project=PROJECT, credentials=credentials or AnonymousCredentials(),
                             client_options={"api_endpoint": fake.endpoint})
    return sa.create_engine(f"bigquery://{PROJECT}/audiences?user_supplied_client=true",
                            connect_args={"client": client, "prefer_bqstorage_client": False, **connect_args})


@pytest.fixture
def engine(fake: FakeBigQuery) -> Iterator[sa.Engine]:
    made = _engine(fake)
    try:
        yield made
    finally:
        made.dispose()


def test_the_fast_path_sends_the_sql_with_query_parameters(
    fake: FakeBigQuery, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _spy_fast_path(monkeypatch, "bigquery")
    fake.answer = PEOPLE
    sql = "SELECT id, email FROM people -- no :comment\nWHERE born <= :run_date AND note = :note OR id = :id"
    params = {"run_date": date(2026, 1, 15), "note": "O'Brien's 100% \"x\" :id %(id)s", "id": 7, "unused": 1}
    batches = _read(engine, sql, params, chunk_size=10)

    assert taken == ["fast"]
    [query] = fake.queries
    assert query["query"] == (
        "SELECT id, email FROM people -- no :comment\nWHERE born <= @`run_date` AND note = @`note` OR id = @`id`")
    assert query["parameterMode"] == "NAMED" and query["useLegacySql"] is False
    assert sorted((p["name"], p["parameterType"]["type"], p["parameterValue"]["value"])
                  for p in query["queryParameters"]) == [
        ("id", "INT64", "7"), ("note", "STRING", "O'Brien's 100% \"x\" :id %(id)s"), ("run_date", "DATE", "2026-01-15"),
    ]
    assert _rows(batches) == [(i, f"person{i}@example.com") for i in range(1, 26)]


def test_a_percent_without_parameters_is_sent_as_written(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = PEOPLE
    _read(engine, "SELECT id, email FROM people WHERE email LIKE '%@example.com'")
    assert fake.queries[0]["query"] == "SELECT id, email FROM people WHERE email LIKE '%@example.com'"
    assert fake.queries[0].get("queryParameters", []) == []


def test_pages_are_asked_for_at_chunk_size_and_recut_when_larger(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = PEOPLE
    assert [batch.num_rows for batch in _read(engine, "SELECT id, email FROM people", chunk_size=10)] == [10, 10, 5]
    assert [page["maxResults"] for page in fake.pages] == ["10", "10", "10"]
    # a page larger than asked for (the Storage Read API's messages are the server's size): cut, in order
    fake.answer = Answer(fields=PEOPLE.fields, rows=PEOPLE.rows, page_rows=10)
    batches = _read(engine, "SELECT id, email FROM people", chunk_size=4)
    assert [batch.num_rows for batch in batches] == [4, 4, 2, 4, 4, 2, 4, 1]
    assert [row[0] for row in _rows(batches)] == list(range(1, 26))


def test_types_and_nulls(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = Answer(
        fields=[("id", "INTEGER"), ("amount", "NUMERIC"), ("ratio", "FLOAT"), ("label", "STRING"), ("born", "DATE"),
                ("stamp", "TIMESTAMP"), ("flag", "BOOLEAN")],
        rows=[["1", "12.34", "0.5", "Émile", "2001-02-03", "1768473000000000", "true"],
              ["2", None, None, None, None, None, None],
              ["3", "9999999999.99", "-1e+300", "", "1999-12-31", "946684799000000", "false"]])
    batches = _read(engine, "SELECT * FROM typed", chunk_size=2)
    assert _rows(batches) == [
        (1, Decimal("12.34"), 0.5, "Émile", date(2001, 2, 3), datetime(2026, 1, 15, 10, 30, tzinfo=UTC), True),
        (2, None, None, None, None, None, None),
        (3, Decimal("9999999999.99"), -1e300, "", date(1999, 12, 31), datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
         False),
    ]
    schema = batches[0].schema
    assert [schema.field(name).type for name in ("id", "ratio", "label", "born", "flag")] == [
        pa.int64(), pa.float64(), pa.string(), pa.date32(), pa.bool_()]
    assert pa.types.is_decimal(schema.field("amount").type)
    assert schema.field("stamp").type == pa.timestamp("us", tz="UTC")


def test_only_the_used_columns(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = PEOPLE
    batches = list(stream_batches(engine, "SELECT * FROM people", {}, chunk_size=100, where=SQL_FILE,
                                  columns=lambda names: [names.index("email")]))
    assert [batch.schema.names for batch in batches] == [["email"]]
    assert batches[0].column(0).to_pylist() == [f"person{i}@example.com" for i in range(1, 26)]


def test_an_empty_result_gives_one_empty_batch_with_the_columns(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = Answer(fields=[("id", "INTEGER"), ("full_name", "STRING")])
    batches = _read(engine, "SELECT id, name AS full_name FROM people WHERE id < 0")
    assert [(batch.num_rows, batch.schema.names) for batch in batches] == [(0, ["id", "full_name"])]


def test_a_statement_without_rows_is_no_audience_query(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = Answer()  # what BigQuery answers a DDL or DML job: no schema
    with pytest.raises(ExtractError) as caught:
        _read(engine, "DELETE FROM people WHERE TRUE")
    assert caught.value.what == "the query returns no rows (is it a SELECT?)"
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_an_early_stop_reads_no_further_page(fake: FakeBigQuery, engine: sa.Engine) -> None:
    fake.answer = PEOPLE
    batches = stream_batches(engine, "SELECT id, email FROM people", {}, chunk_size=5, where=SQL_FILE)
    assert next(batches).num_rows == 5
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    batches.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert len(fake.pages) == 1  # the first page only, of five

    def consume() -> None:
        for batch in stream_batches(engine, "SELECT id FROM people", {}, chunk_size=5, where=SQL_FILE):
            raise ValueError(f"the consumer failed on {batch.num_rows} rows")

    with pytest.raises(ValueError):
        consume()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert len(fake.pages) == 2


def test_an_interrupted_wait_cancels_the_job(
    fake: FakeBigQuery, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C while BigQuery still runs the query

    monkeypatch.setattr(bigquery.QueryJob, "result", interrupted)
    fake.answer = PEOPLE
    with pytest.raises(KeyboardInterrupt):
        _read(engine, "SELECT id FROM people")
    assert fake.cancelled == list(fake.jobs)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("answer", "fragment"), [
    # a query BigQuery rejects: the finished job's errorResult, which the client raises as BadRequest / NotFound
    (Answer(error=(400, "invalidQuery", 'Syntax error: Unexpected identifier "SELEC" at [1:1]')),
     'Syntax error: Unexpected identifier "SELEC" at [1:1] (BigQuery 400 BadRequest)'),
    (Answer(error=(404, "notFound", "Not found: Table audience-project:audiences.nope was not found in location US")),
     "Not found: Table audience-project:audiences.nope was not found in location US (BigQuery 404 NotFound)"),
    # a call BigQuery refuses: an HTTP error whose message starts with the REST call, which is left out
    (Answer(error=(403, "accessDenied", "Access Denied: Project audience-project: User does not have "
                   "bigquery.jobs.create permission in project audience-project."), at_insert=True),
     "Access Denied: Project audience-project: User does not have bigquery.jobs.create permission in project "
     "audience-project. (BigQuery 403 Forbidden)"),
])
def test_errors_carry_bigquerys_message_without_the_sql(
    fake: FakeBigQuery, engine: sa.Engine, answer: Answer, fragment: str
) -> None:
    fake.answer = answer
    sql = "SELEC id FROM nope WHERE secret_marker = :run_date"
    with pytest.raises(ExtractError) as caught:
        _read(engine, sql, {"run_date": date(2026, 1, 15)})
    _assert_query_error(caught.value, fragment)
    assert caught.value.what == fragment
    assert ("lacks a permission" in caught.value.hint) == ("Forbidden" in fragment)
    for echo in ("secret_marker", "SELEC id", "127.0.0.1", "2026-01-15", "Job ID"):
        assert echo not in str(caught.value)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    fake.answer = PEOPLE
    assert len(_rows(_read(engine, "SELECT id FROM people"))) == 25  # the engine is still good



def test_refused_credentials_are_an_extract_error(fake: FakeBigQuery) -> None:
    """Expired or revoked credentials fail as the client refreshes them, before any call is sent."""
    from google.auth import credentials
    from google.auth.exceptions import RefreshError

    class Refused(credentials.Credentials):
        def refresh(self, request: Any) -> None:
            raise RefreshError("invalid_grant: Token has been expired or revoked.")

    engine = _engine(fake, Refused())
    try:
        with pytest.raises(ExtractError) as caught:
            _read(engine, "SELECT id FROM people")
    finally:
        engine.dispose()
    assert caught.value.what == "RefreshError: invalid_grant: Token has been expired or revoked."
    assert fake.queries == []

def test_a_permission_refusal_hints_at_the_grants_not_the_query() -> None:
    """PostgreSQL's words too: the hint is the generic error path's, not BigQuery's."""
    from etl.extract.engine import query_error

    url = sa.make_url("postgresql+psycopg://u@db/warehouse")
    error = query_error(Exception("permission denied for table customers"), url, SQL_FILE, "SELECT 1")
    assert error.what == "permission denied for table customers" and "lacks a permission" in error.hint
    assert "fix the query" in query_error(Exception("syntax error"), url, SQL_FILE, "SELECT 1").hint

# --------------------------------------------------------------------------- the Storage Read API


def _storage_engine(fake: FakeBigQuery, storage: Any) -> sa.Engine:
    """The DB-API connection given a real BigQueryReadClient on the local gRPC double; the REST double
    still runs the job and answers its first page."""
    return _engine(fake, prefer_bqstorage_client=True, bqstorage_client=storage.client())


def test_a_result_beyond_its_first_page_is_read_through_the_storage_read_api(fake: FakeBigQuery) -> None:
    from bigquery_storage import FakeStorage

    schema = pa.schema([("id", pa.int64()), ("email", pa.string())])
    ids = list(range(1, 26))
    streams = [[pa.record_batch([pa.array(ids[i:i + 9]), pa.array([f"p{n}" for n in ids[i:i + 9]])], schema=schema)
                for i in range(start, start + 18, 9) if i < 25] for start in (0, 18)]
    storage = FakeStorage(schema, streams)
    engine = _storage_engine(fake, storage)
    fake.answer = PEOPLE
    try:
        batches = list(stream_batches(engine, "SELECT id, email FROM people", {}, chunk_size=4, where=SQL_FILE,
                                      columns=lambda names: [names.index("email")]))
    finally:
        engine.dispose()
        storage.close()
    assert len(fake.pages) == 1  # the first REST page only: the rest came from the Storage Read API
    [session] = storage.sessions
    [job_id] = fake.jobs
    assert session.read_session.table == f"projects/{PROJECT}/datasets/_anonymous/tables/anon_{job_id}"
    assert session.read_session.data_format.name == "ARROW"
    assert all(batch.num_rows <= 4 and batch.schema.names == ["email"] for batch in batches)
    assert sorted(_rows(batches)) == sorted((f"p{n}",) for n in ids)  # two streams: no order promised


def test_an_early_stop_ends_the_storage_read(fake: FakeBigQuery) -> None:
    from bigquery_storage import FakeStorage

    schema = pa.schema([("id", pa.int64())])
    stream_ = [pa.record_batch([pa.array(range(n * 20_000, (n + 1) * 20_000))], schema=schema) for n in range(40)]
    storage = FakeStorage(schema, [stream_])
    engine = _storage_engine(fake, storage)
    fake.answer = Answer(fields=[("id", "INTEGER")], rows=[[str(i)] for i in range(800_000)])
    try:
        batches = stream_batches(engine, "SELECT id FROM big", {}, chunk_size=1000, where=SQL_FILE)
        assert next(batches).column(0).to_pylist() == list(range(1000))
        batches.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert storage.ended.wait(10)  # the read stream cancelled, not read to its end
        assert storage.sent[0] < len(stream_) / 2, storage.sent
    finally:
        engine.dispose()
        storage.close()
