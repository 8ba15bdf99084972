"""Extraction against real databases: SQLite and DuckDB files, and the PostgreSQL and MariaDB servers."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

import dbservers
from etl.extract import postgres, stream
from etl.errors import ExtractError
from etl.extract import bind_parameter_names, create_warehouse_engine, stream_batches

KINDS = ["sqlite", "duckdb", "postgres", "mariadb"]
SQL_FILE = "sql/high_value.sql"  # what `where` names in messages

# (id, name, score, born): non-ASCII, quotes, colons and percent signs in values; a column that is
# NULL through the whole first chunk of 7, and NULLs scattered after it
ROWS: list[tuple[int, str | None, int | None, date | None]] = [
    (1, "Émile Zoë", None, date(1980, 5, 17)),
    (2, "Łukasz Żółć", None, None),
    (3, "日本語の名前", None, date(2001, 2, 3)),
    (4, "party 🎉", None, None),
    (5, "O'Brien", None, date(1975, 12, 31)),
    (6, None, None, None),
    (7, "a:colon :id", None, date(1999, 1, 1)),
    (8, "100%", 80, None),
    (9, "Straße", 90, date(2001, 2, 3)),
    (10, "", 0, None),
    (11, "Ørsted", -5, date(1990, 7, 4)),
    (12, "tab\there", None, None),
    (13, "Αλέξανδρος", 13, date(1988, 8, 8)),
    (14, "Dvořák", 14, None),
    (15, None, 15, date(1970, 1, 1)),
    (16, "mañana", 2147483647, None),
    (17, "Çağrı", -2147483648, date(2020, 2, 29)),
    (18, "naïve café", 18, None),
    (19, "Владимир", None, date(2000, 1, 1)),
    (20, "x' OR '1'='1", 20, None),
    (21, "back\\slash", 21, None),
    (22, "עברית", 22, date(1960, 6, 6)),
    (23, "last", 23, date(2023, 12, 31)),
]


@dataclass
class Warehouse:
    kind: str
    url: str
    table: str
    engine: sa.Engine


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    if kind == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    return dbservers.postgres_url() if kind == "postgres" else dbservers.mariadb_url()


def _people(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100)),
        sa.Column("score", sa.Integer),
        sa.Column("born", sa.Date),
        mysql_charset="utf8mb4",
    )


@pytest.fixture(params=KINDS)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """A table holding ROWS in one of the four databases, created by the test and dropped after it."""
    kind: str = request.param
    url = _url(kind, tmp_path)
    table = _people(dbservers.unique_name("people"))
    loader = sa.create_engine(url)
    try:
        with loader.begin() as connection:
            table.create(connection)
            connection.execute(
                table.insert(), [dict(zip(("id", "name", "score", "born"), row)) for row in ROWS]
            )
    finally:
        loader.dispose()
    engine = create_warehouse_engine(url, where="[warehouses.wh] url")
    try:
        yield Warehouse(kind, url, table.name, engine)
    finally:
        engine.dispose()
        loader = sa.create_engine(url)
        try:
            with loader.begin() as connection:
                table.drop(connection, checkfirst=True)
        finally:
            loader.dispose()


def _read(
    engine: sa.Engine, sql: str, params: dict[str, Any] | None = None, chunk_size: int = 7
) -> list[pa.RecordBatch]:
    return list(stream_batches(engine, sql, params or {}, chunk_size=chunk_size, where=SQL_FILE))


def _spy_fast_path(monkeypatch: pytest.MonkeyPatch, dialect: str) -> list[str]:
    """A list that gets "fast" each time the dialect's fast path is taken."""
    taken: list[str] = []
    fast = stream._FAST_PATHS[dialect]

    def spied(*args: Any) -> Iterator[pa.RecordBatch]:
        taken.append("fast")
        yield from fast(*args)

    monkeypatch.setitem(stream._FAST_PATHS, dialect, spied)
    return taken


def _rows(batches: list[pa.RecordBatch]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for batch in batches:
        columns = [column.to_pylist() for column in batch.columns]
        rows += list(zip(*columns))
    return rows


# --------------------------------------------------------------------------- values and batches


def test_same_values_from_every_database_in_bounded_batches(warehouse: Warehouse) -> None:
    batches = _read(warehouse.engine, f"SELECT id, name, score FROM {warehouse.table} ORDER BY id", chunk_size=7)

    assert all(batch.num_rows <= 7 for batch in batches)
    assert sum(batch.num_rows for batch in batches) == len(ROWS)
    assert all(batch.schema.names == ["id", "name", "score"] for batch in batches)
    assert _rows(batches) == [(i, name, score) for i, name, score, _ in ROWS]
    for batch in batches:  # a column NULL through a whole chunk may be null-typed; otherwise integers
        assert pa.types.is_integer(batch.schema.field("score").type) or pa.types.is_null(
            batch.schema.field("score").type
        )


def test_column_names_as_the_query_returns_them(warehouse: Warehouse) -> None:
    sql = f"SELECT name AS full_name, id AS customer_id FROM {warehouse.table} WHERE id = 1"
    batches = _read(warehouse.engine, sql)
    assert batches[0].schema.names == ["full_name", "customer_id"]
    assert _rows(batches) == [("Émile Zoë", 1)]


def test_empty_result_gives_one_empty_batch_with_the_columns(warehouse: Warehouse) -> None:
    batches = _read(warehouse.engine, f"SELECT id, name FROM {warehouse.table} WHERE id < 0")
    assert [(batch.num_rows, batch.schema.names) for batch in batches] == [(0, ["id", "name"])]


@pytest.mark.parametrize("kind", KINDS)
def test_decimals_and_dates_survive(kind: str, tmp_path: Path) -> None:
    url = _url(kind, tmp_path)
    name = dbservers.unique_name("typed")
    loader = sa.create_engine(url)
    with loader.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {name} (id INTEGER, amount DECIMAL(12, 2), born DATE)"))
        connection.execute(
            sa.text(
                f"INSERT INTO {name} VALUES (1, 12.34, '2001-02-03'), (2, NULL, NULL), (3, 9999999999.99, '1999-12-31')"
            )
        )
    engine = create_warehouse_engine(url, where="wh")
    try:
        batches = _read(engine, f"SELECT id, amount, born FROM {name} ORDER BY id", chunk_size=2)
        rows = _rows(batches)
        if kind == "sqlite":  # no decimal or date type: SQLite hands back what it stored
            assert rows == [(1, 12.34, "2001-02-03"), (2, None, None), (3, 9999999999.99, "1999-12-31")]
        else:
            assert rows == [
                (1, Decimal("12.34"), date(2001, 2, 3)),
                (2, None, None),
                (3, Decimal("9999999999.99"), date(1999, 12, 31)),
            ]
            assert pa.types.is_decimal(batches[0].schema.field("amount").type)
            assert pa.types.is_date(batches[0].schema.field("born").type)
    finally:
        engine.dispose()
        with loader.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {name}"))
        loader.dispose()


def test_sqlite_mixed_type_column_comes_out_as_text(tmp_path: Path) -> None:
    path = tmp_path / "mixed.db"
    loader = sa.create_engine(f"sqlite:///{path}")
    with loader.begin() as connection:
        connection.execute(sa.text("CREATE TABLE t (id INTEGER, ref)"))
        connection.execute(sa.text("INSERT INTO t VALUES (1, 42), (2, 'A-7'), (3, NULL)"))
    loader.dispose()
    engine = create_warehouse_engine(f"sqlite:///{path}", where="wh")
    batches = _read(engine, "SELECT ref FROM t ORDER BY id")
    assert batches[0].column(0).type == pa.string()
    assert batches[0].column(0).to_pylist() == ["42", "A-7", None]


# --------------------------------------------------------------------------- parameters


def test_bound_parameters_and_harmless_injection(warehouse: Warehouse) -> None:
    sql = f"SELECT id FROM {warehouse.table} WHERE name = :name OR id = :id OR born = :born ORDER BY id"
    params = {"name": "O'Brien", "id": 8, "born": date(2001, 2, 3), "run_date": date(2026, 1, 15)}  # run_date unused
    assert _rows(_read(warehouse.engine, sql, params)) == [(3,), (5,), (8,), (9,)]

    # the value is compared, never run: it matches the one row holding that very text
    injected = {"name": "x' OR '1'='1", "id": -1, "born": date(1900, 1, 1)}
    assert _rows(_read(warehouse.engine, sql, injected)) == [(20,)]
    dropping = {"name": f"'; DROP TABLE {warehouse.table}; --", "id": -1, "born": date(1900, 1, 1)}
    assert _rows(_read(warehouse.engine, sql, dropping)) == []
    # values with what looks like parameter markers and format codes are taken literally too
    literal = {"name": "a:colon :id", "id": -1, "born": date(1900, 1, 1)}
    assert _rows(_read(warehouse.engine, sql, literal)) == [(7,)]
    assert _rows(_read(warehouse.engine, sql, {**literal, "name": "100%"})) == [(8,)]

    assert _rows(_read(warehouse.engine, f"SELECT count(*) AS n FROM {warehouse.table}")) == [(len(ROWS),)]


def test_bind_parameter_names_follow_sqlalchemy_text() -> None:
    sql = """
        SELECT id::text, created_at::date, '10:30' AS t, a\\:b
        FROM customers
        WHERE country = :country AND created_at >= :run_date AND tier IN (:tier, :tier)
          AND amount > CAST(:min_amount AS numeric)
    """
    assert bind_parameter_names(sql) == {"country", "run_date", "tier", "min_amount"}
    assert bind_parameter_names("SELECT 1") == set()
    # text() does not see :x before a '::' cast; the query then fails in the database (tested below)
    assert bind_parameter_names("SELECT :x::date") == set()


def test_comments_and_quoted_text_hold_no_parameters() -> None:
    sql = """-- customers above :min_value, as of :run_date
        SELECT id, 'at :noon' AS "label:x" /* not :this
        one :either */ FROM customers WHERE value >= :min_value -- nor :that
    """
    assert bind_parameter_names(sql) == {"min_value"}


def test_parameters_named_in_comments_and_literals_run_everywhere(warehouse: Warehouse) -> None:
    """text() alone would bind the comment's :id too: SQLite then counted fewer markers than values."""
    sql = f"""-- the row whose id is :id (and :nothing else)
        SELECT id, 'tag :id' AS tag /* :id again */
        FROM {warehouse.table}
        WHERE id = :id -- :id
    """
    assert _rows(_read(warehouse.engine, sql, {"id": 9})) == [(9, "tag :id")]


# --------------------------------------------------------------------------- errors

SYNTAX = {
    "sqlite": 'near "SELEC": syntax error',
    "duckdb": 'syntax error at or near "SELEC"',
    "postgres": 'syntax error at or near "SELEC"',
    "mariadb": "You have an error in your SQL syntax",
}
UNKNOWN_TABLE = {
    "sqlite": "no such table: nope_{suffix}",
    "duckdb": "Table with name nope_{suffix} does not exist",
    "postgres": 'relation "nope_{suffix}" does not exist',
    "mariadb": "nope_{suffix}' doesn't exist",
}
UNKNOWN_COLUMN = {
    "sqlite": "no such column: nope",
    "duckdb": 'column "nope" not found',
    "postgres": 'column "nope" does not exist',
    "mariadb": "Unknown column 'nope'",
}


def _assert_query_error(error: ExtractError, fragment: str) -> None:
    assert error.where == SQL_FILE
    assert fragment in error.what
    assert "\n" not in error.what and "[SQL:" not in error.what and "LINE 1" not in error.what
    assert "audience-sync preview" in error.hint


@pytest.mark.parametrize("mistake", ["syntax", "unknown table", "unknown column"])
def test_query_errors_carry_the_database_message_and_the_file(warehouse: Warehouse, mistake: str) -> None:
    suffix = warehouse.table.rsplit("_", 1)[1]
    sql, fragment = {
        "syntax": (f"SELEC id FROM {warehouse.table}", SYNTAX[warehouse.kind]),
        "unknown table": (f"SELECT id FROM nope_{suffix}", UNKNOWN_TABLE[warehouse.kind].format(suffix=suffix)),
        "unknown column": (f"SELECT nope FROM {warehouse.table}", UNKNOWN_COLUMN[warehouse.kind]),
    }[mistake]
    with pytest.raises(ExtractError) as caught:
        _read(warehouse.engine, sql)
    _assert_query_error(caught.value, fragment)
    assert warehouse.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_unknown_parameter_names_the_parameter_and_the_file(warehouse: Warehouse) -> None:
    sql = f"SELECT id FROM {warehouse.table} WHERE score > :min_score AND name <> :nmae"
    with pytest.raises(ExtractError) as caught:
        _read(warehouse.engine, sql, {"min_score": 1, "name": "x"})
    assert caught.value.where == SQL_FILE
    assert ":nmae" in caught.value.what and ":min_score" not in caught.value.what


def test_cast_after_parameter_gets_a_hint(warehouse: Warehouse) -> None:
    with pytest.raises(ExtractError) as caught:
        _read(warehouse.engine, f"SELECT id FROM {warehouse.table} WHERE born = :day::date", {"day": date(2001, 2, 3)})
    assert caught.value.where == SQL_FILE
    assert "CAST(:day AS date)" in caught.value.hint


def test_a_statement_without_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    sa.create_engine(f"sqlite:///{path}").dispose()
    path.touch()
    engine = create_warehouse_engine(f"sqlite:///{path}", where="wh")
    with pytest.raises(ExtractError, match="returns no rows") as caught:
        _read(engine, "PRAGMA foreign_keys = ON")  # no rows, and writes nothing (a write is refused first)
    assert caught.value.where == SQL_FILE
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_duckdb_leaves_the_warehouse_as_it_was(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    loader = sa.create_engine(url)
    with loader.begin() as connection:
        connection.execute(sa.text("CREATE TABLE t AS SELECT 1 AS id"))
    loader.dispose()
    engine = create_warehouse_engine(url, where="wh")
    with pytest.raises(ExtractError, match="tried to write to the warehouse"):
        _read(engine, "DELETE FROM t")
    assert _rows(_read(engine, "SELECT id FROM t")) == [(1,)]
    engine.dispose()


# --------------------------------------------------------------------------- connections


def test_early_close_and_consumer_errors_release_the_connection(warehouse: Warehouse) -> None:
    sql = f"SELECT id, name FROM {warehouse.table} ORDER BY id"
    batches = stream_batches(warehouse.engine, sql, {}, chunk_size=5, where=SQL_FILE)
    assert next(batches).num_rows == 5
    assert warehouse.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    batches.close()
    assert warehouse.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def consume() -> None:
        for batch in stream_batches(warehouse.engine, sql, {}, chunk_size=5, where=SQL_FILE):
            raise ValueError(f"the consumer failed on {batch.num_rows} rows")

    with pytest.raises(ValueError):
        consume()
    assert warehouse.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    # the engine is still good for the next query
    assert len(_rows(_read(warehouse.engine, sql))) == len(ROWS)
    assert warehouse.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_postgres_streams_through_a_server_side_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generic path, which PostgreSQL takes when the COPY fast path cannot be used (see below)."""
    monkeypatch.delitem(stream._FAST_PATHS, "postgresql")
    engine = create_warehouse_engine(dbservers.postgres_url(), where="wh")
    sessions: list[Any] = []
    sa.event.listen(engine, "checkout", lambda dbapi_connection, record, proxy: sessions.append(dbapi_connection))
    try:
        batches = stream_batches(
            engine, "SELECT i FROM generate_series(1, 100000) AS s(i)", {}, chunk_size=1000, where=SQL_FILE
        )
        assert next(batches).num_rows == 1000
        # the same session holds an open cursor over the query: the rest is still on the server
        with sessions[-1].cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_cursors")
            statements = [row[0] for row in cursor.fetchall()]
        assert any("generate_series(1, 100000)" in statement for statement in statements), statements
        batches.close()
    finally:
        engine.dispose()


def test_postgres_first_batch_arrives_before_the_rest_is_computed() -> None:
    """Row 2000 divides by zero: a buffered read would fail before the first batch, a streamed one after."""
    engine = create_warehouse_engine(dbservers.postgres_url(), where="wh")
    try:
        batches = stream_batches(
            engine, "SELECT i, 10 / (2000 - i) AS q FROM generate_series(1, 5000) AS s(i)", {}, chunk_size=100,
            where=SQL_FILE,
        )
        assert next(batches).column("i").to_pylist() == list(range(1, 101))
        with pytest.raises(ExtractError) as caught:
            list(batches)
        _assert_query_error(caught.value, "division by zero")
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_postgres_connection_lost_mid_stream() -> None:
    url = dbservers.postgres_url()
    engine = create_warehouse_engine(url, where="wh")
    killer = sa.create_engine(url)
    try:
        # more rows than socket buffers hold: the COPY fast path has the server push rows ahead of
        # the consumer, and a short result would already be complete on this side
        batches = stream_batches(
            engine, "SELECT i FROM generate_series(1, 3000000) AS s(i)", {}, chunk_size=1000, where=SQL_FILE
        )
        next(batches)
        # the session that sends the rows (the fast path reads them on a session of its own)
        pid = _copying_backend(killer, "generate_series(1, 3000000)")
        with killer.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(ExtractError) as caught:
            list(batches)
        assert caught.value.where == SQL_FILE
        assert "broke off" in caught.value.what and "terminating connection" in caught.value.what
        assert "\n" not in caught.value.what
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        killer.dispose()
        engine.dispose()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_mariadb_streams_unbuffered_and_stops_without_draining() -> None:
    import pymysql.cursors

    url = dbservers.mariadb_url()
    engine = create_warehouse_engine(url, where="wh")
    cursors: list[Any] = []
    sessions: list[Any] = []
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cursor, *args: cursors.append(cursor))
    sa.event.listen(engine, "checkout", lambda dbapi_connection, record, proxy: sessions.append(dbapi_connection))
    try:
        # seq_1_to_N: MariaDB's sequence engine; far more rows than one chunk
        batches = stream_batches(engine, "SELECT seq FROM seq_1_to_200000", {}, chunk_size=1000, where=SQL_FILE)
        assert next(batches).num_rows == 1000
        assert isinstance(cursors[-1], pymysql.cursors.SSCursor)
        batches.close()
        # the rest was not read: the socket was closed mid-result and the connection not reused
        assert not sessions[-1].open
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert _rows(_read(engine, "SELECT 1 AS one")) == [(1,)]
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_mariadb_connection_lost_mid_stream() -> None:
    url = dbservers.mariadb_url()
    engine = create_warehouse_engine(url, where="wh")
    sessions: list[Any] = []
    sa.event.listen(engine, "checkout", lambda dbapi_connection, record, proxy: sessions.append(dbapi_connection))
    killer = sa.create_engine(url)
    try:
        batches = stream_batches(engine, "SELECT seq FROM seq_1_to_2000000", {}, chunk_size=1000, where=SQL_FILE)
        next(batches)
        with killer.connect() as connection:
            connection.execute(sa.text("KILL :id"), {"id": sessions[-1].thread_id()})
        with pytest.raises(ExtractError) as caught:
            list(batches)
        assert caught.value.where == SQL_FILE
        assert "broke off" in caught.value.what and "Lost connection" in caught.value.what
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        killer.dispose()
        engine.dispose()


# --------------------------------------------------------------------------- engines and URLs

PASSWORD = "Sup3r-S3cret"


@pytest.mark.parametrize(
    ("url", "hidden", "hint"),
    [
        (f"postgresql+psycopg://u:{PASSWORD}@db.example/test", "psycopg", "pip install 'audience-sync[postgres]'"),
        (f"mysql+pymysql://u:{PASSWORD}@db.example/test", "pymysql", "pip install 'audience-sync[mysql]'"),
        (f"postgresql+psycopg2://u:{PASSWORD}@db.example/test", None, "postgresql+psycopg://"),
        (f"mysql://u:{PASSWORD}@db.example/test", None, "audience-sync[mysql]"),
        (f"mssql+pyodbc://u:{PASSWORD}@db.example/test", None, "'pyodbc'"),
        (f"snowflake://u:{PASSWORD}@account/db", "snowflake.sqlalchemy", "pip install 'audience-sync[snowflake]'"),
        (f"bigquery://u:{PASSWORD}@project/dataset", "sqlalchemy_bigquery", "'audience-sync[bigquery]'"),
        (f"trino://u:{PASSWORD}@db.example/hive", "trino", "pip install trino"),
    ],
)
def test_missing_driver_names_what_to_install(
    url: str, hidden: str | None, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hidden is not None:
        monkeypatch.setitem(sys.modules, hidden, None)  # as if the extra were not installed
    with pytest.raises(ExtractError) as caught:
        create_warehouse_engine(url, where="[warehouses.wh] url")
    assert caught.value.where == "[warehouses.wh] url"
    assert hint in caught.value.hint
    assert PASSWORD not in str(caught.value)


def test_missing_duckdb_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.duckdb").touch()
    monkeypatch.setitem(sys.modules, "duckdb_engine", None)
    with pytest.raises(ExtractError) as caught:
        create_warehouse_engine(f"duckdb:///{tmp_path / 'w.duckdb'}", where="wh")
    assert "pip install 'audience-sync[duckdb]'" in caught.value.hint


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        f"postgresql+psycopg://u:{PASSWORD}@db.example:port/test",
        f"postgresql+psycopg://u:{PASSWORD}@x@db.example/test",
    ],
)
def test_bad_urls_are_reported_without_the_password(url: str) -> None:
    with pytest.raises(ExtractError) as caught:
        create_warehouse_engine(url, where="[warehouses.wh] url")
    assert caught.value.where == "[warehouses.wh] url"
    for part in (PASSWORD, "x@db"):
        assert part not in str(caught.value)


def test_a_dialect_failing_as_it_sets_up_is_an_extract_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """BigQuery's dialect asks Google for credentials when the engine is made; without them it raised
    its own error, a traceback to the user."""

    class DefaultCredentialsError(Exception):
        pass

    def refused(url: sa.URL, **kwargs: Any) -> sa.Engine:
        raise DefaultCredentialsError(f"Your default credentials were not found ({url.password})\nsee the docs")

    monkeypatch.setattr(sa, "create_engine", refused)
    with pytest.raises(ExtractError) as caught:
        create_warehouse_engine(f"bigquery://u:{PASSWORD}@project/dataset", where="[warehouses.bq] url")
    assert caught.value.where == "[warehouses.bq] url"
    assert caught.value.what == ("the bigquery dialect cannot use URL bigquery://u:***@project/dataset: "
                                 "DefaultCredentialsError: Your default credentials were not found (***)")
    assert "credentials" in caught.value.hint


def test_missing_database_file_is_not_created(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'typo.db'}", f"duckdb:///{tmp_path / 'typo.duckdb'}"):
        with pytest.raises(ExtractError, match="no database file"):
            create_warehouse_engine(url, where="wh")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_message_hides_the_password() -> None:
    # port 1 on loopback: nothing listens there
    engine = create_warehouse_engine(f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/test", where="wh")
    with pytest.raises(ExtractError) as caught:
        _read(engine, "SELECT 1")
    assert "cannot connect to postgresql+psycopg://u:***@127.0.0.1:1/test" in caught.value.what
    assert caught.value.where == SQL_FILE
    assert PASSWORD not in str(caught.value)


def test_database_message_quoting_the_password_is_masked() -> None:
    # trust authentication ignores the password, so the URL can carry one; the message quotes the value
    url = sa.make_url(dbservers.postgres_url()).set(password=PASSWORD)
    engine = create_warehouse_engine(url.render_as_string(hide_password=False), where="wh")
    try:
        with pytest.raises(ExtractError) as caught:
            _read(engine, "SELECT CAST(:value AS integer) AS n", {"value": PASSWORD})
        assert "invalid input syntax for type integer" in caught.value.what
        assert PASSWORD not in str(caught.value)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- PostgreSQL fast path (COPY)


@pytest.fixture
def pg_engine() -> Iterator[sa.Engine]:
    engine = create_warehouse_engine(dbservers.postgres_url(), where="wh")
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(how, query) of each query the fast path read by COPY, ``how`` being "adbc" or "csv" and
    ``query`` the SQL we built, before psycopg binds the values: empty when the generic path ran."""
    started: list[tuple[str, str]] = []
    for how, name in (("adbc", "_adbc_reader"), ("csv", "_csv_copy_reader")):
        original = getattr(postgres, name)

        def recording(raw: Any, query: str, *args: Any, _how: str = how, _original: Any = original) -> Any:
            reader = _original(raw, query, *args)
            if reader is not None:
                started.append((_how, query))
            return reader

        monkeypatch.setattr(postgres, name, recording)
    return started


def _copying_backend(observer: sa.Engine, marker: str) -> int:
    """The server process running the COPY of the query that contains ``marker`` (whichever session it is)."""
    with observer.connect() as connection:
        return int(connection.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY (%' AND position(:m IN query) > 0"),
            {"m": marker},
        ).scalar_one())  # fmt: skip


def _generic_read(
    monkeypatch: pytest.MonkeyPatch, engine: sa.Engine, sql: str, params: dict[str, Any] | None = None,
    chunk_size: int = 7,
) -> list[pa.RecordBatch]:  # fmt: skip
    """What the generic SQLAlchemy path gives for the same query (the reference of the fast path)."""
    with monkeypatch.context() as patch:
        patch.delitem(stream._FAST_PATHS, "postgresql")
        return _read(engine, sql, params, chunk_size)


def _comparable(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows]


TYPED = """
CREATE TABLE {name} (
    id integer, small smallint, big bigint, flag boolean, single real, double double precision,
    amount numeric(12, 2), free numeric, born date, at timestamp, at_tz timestamptz, label text,
    code char(3), short varchar(10), tags text[], doc jsonb, uid uuid, span interval, raw bytea
);
INSERT INTO {name} VALUES
    (1, 1, 9223372036854775807, true, 1.1, 0.1, 12.34, 1.5, '2001-02-03', '2026-01-15 10:30:00',
     '2026-01-15 10:30:00+01', 'Émile "Zoë"', 'ab', 'x,y;z', '{{a,"b c"}}', '{{"k": [1, 2]}}',
     'd2f014b5-128b-48d5-adba-274a52390bd8', '1 day 02:03:04', '\\x00ff'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, -32768, -1, false, 'NaN', 'Infinity', -0.01, 'NaN', '1970-01-01', '1999-12-31 23:59:59.999999',
     '2000-01-01 00:00:00+00', '', '', '', '{{}}', 'null', NULL, '-1 mons', ''),
    (4, 0, 0, true, '-Infinity', -1e300, 9999999999.99, 123456789012345678901234567890.123, '2400-02-29',
     NULL, NULL, E'line\\nbreak\\ttab\\\\back', 'a"b', '"', '{{NULL}}', '"text"', NULL, NULL, E'\\\\x0a'),
    (5, 5, 5, false, 5.5, 5.5, 5, 5, NULL, NULL, NULL, 'naïve café 🎉', 'c,d', 'NULL', NULL, '[]', NULL, NULL, NULL),
    (6, 6, 6, true, 6, 6, 6, 6, NULL, NULL, NULL, '\\N', 'e', '-', NULL, '{{}}', NULL, NULL, NULL)
"""


def _assert_as_generic(monkeypatch: pytest.MonkeyPatch, engine: sa.Engine, sql: str) -> None:
    """The fast path gives the generic path's batches, names, values and types, whatever the chunk size."""
    for chunk_size in (2, 4, 100):
        fast = _read(engine, sql, chunk_size=chunk_size)
        generic = _generic_read(monkeypatch, engine, sql, chunk_size=chunk_size)
        assert [b.num_rows for b in fast] == [b.num_rows for b in generic]
        assert all(b.schema.names == generic[0].schema.names for b in fast)
        assert _comparable(_rows(fast)) == _comparable(_rows(generic))
        for fast_batch, generic_batch in zip(fast, generic):  # same types, but for all-NULL chunks
            for fast_field, generic_field in zip(fast_batch.schema, generic_batch.schema):
                if not pa.types.is_null(generic_field.type):
                    assert fast_field.type == generic_field.type, fast_field.name


SIMPLE = """
CREATE TABLE {name} (id integer, small smallint, big bigint, flag boolean, double double precision,
                     label text, code char(3), short varchar(10), ident name);
INSERT INTO {name} VALUES
    (1, 32767, 9223372036854775807, true, 0.1, 'Émile "Zoë"', 'ab', 'x,y;z', 'n'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, -32768, -9223372036854775808, false, 'NaN', '', '', '', ''),
    (4, 0, 0, true, '-Infinity', E'line\\nbreak\\ttab\\\\back', 'a"b', '"', 'x'),
    (5, 5, 5, false, 1e-300, 'naïve café 🎉', 'c,d', 'NULL', 'y'),
    (6, 6, 6, true, 'Infinity', '\\N', 'e', '-', 'z')
"""


@pytest.mark.parametrize(
    ("table", "query", "how"),
    [
        (TYPED, "SELECT * FROM {name} ORDER BY id", "csv"),  # numeric, dates, arrays...: CSV, psycopg's loaders
        (SIMPLE, "SELECT * FROM {name} ORDER BY id", "adbc"),  # booleans, integers, float8, text: ADBC
        (SIMPLE, "SELECT label, label FROM {name} WHERE id > 100", "adbc"),  # no row, a repeated name
    ],
)
def test_postgres_fast_path_gives_the_generic_paths_values_and_batches(
    pg_engine: sa.Engine, copies: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch, table: str, query: str,
    how: str,
) -> None:  # fmt: skip
    name = dbservers.unique_name("typed")
    with pg_engine.begin() as connection:
        for statement in table.format(name=name).strip().split(";\n"):
            connection.exec_driver_sql(statement)
    try:
        _assert_as_generic(monkeypatch, pg_engine, query.format(name=name))
        assert [way for way, _ in copies] == [how] * 3  # the fast path ran each time
        assert _rows(_read(pg_engine, f"SELECT label FROM {name} WHERE id IN (2, 3) ORDER BY id")) == [(None,), ("",)]
    finally:
        with pg_engine.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE {name}")


def test_postgres_fast_path_falls_back_to_csv_when_adbc_cannot_open_its_session(
    pg_engine: sa.Engine, copies: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server out of connections refuses the second session: the rows come by CSV COPY instead."""
    import adbc_driver_manager
    import adbc_driver_postgresql

    def refused(uri: str) -> Any:
        raise adbc_driver_manager.OperationalError("IO: FATAL:  sorry, too many clients already", status_code=10)

    monkeypatch.setattr(adbc_driver_postgresql, "connect", refused)
    assert _rows(_read(pg_engine, "SELECT i, 'x' || i AS s FROM generate_series(1, 3) AS g(i)")) == [
        (1, "x1"), (2, "x2"), (3, "x3")
    ]  # fmt: skip
    assert [how for how, _ in copies] == ["csv"]


def test_postgres_fast_path_reads_where_the_pooled_session_looks(copies: list[tuple[str, str]]) -> None:
    """A search_path set when the pool connects holds for the session ADBC reads on too."""
    schema, table = dbservers.unique_name("schema"), dbservers.unique_name("t")
    engine = create_warehouse_engine(dbservers.postgres_url(), where="wh")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        connection.exec_driver_sql(f"CREATE TABLE {schema}.{table} AS SELECT 'in the schema' AS where_")
    try:
        with_path = create_warehouse_engine(dbservers.postgres_url(), where="wh")

        @sa.event.listens_for(with_path, "connect")
        def set_path(dbapi_connection: Any, record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET search_path TO {schema}, public")
            dbapi_connection.commit()

        try:
            assert _rows(_read(with_path, f"SELECT where_ FROM {table}")) == [("in the schema",)]
            assert [how for how, _ in copies] == ["adbc"]
        finally:
            with_path.dispose()
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def test_postgres_fast_path_keeps_repeated_column_names_and_odd_sql_endings(
    pg_engine: sa.Engine, copies: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = [
        ("SELECT 1 AS a, 'x' AS a", {}),
        ("SELECT '100%' AS p, 'a:b' AS c;", {}),
        ("SELECT '100%' AS p, :v AS v;  -- the end; really\n/* and a ; comment */\n", {"v": "50%"}),
        ("SELECT ';--' AS s -- 'quoted' in a comment", {}),
    ]
    for sql, params in queries:
        fast = _read(pg_engine, sql, params)
        generic = _generic_read(monkeypatch, pg_engine, sql, params)
        assert fast[0].schema.names == generic[0].schema.names
        assert _rows(fast) == _rows(generic)
    assert len(copies) == len(queries)
    assert _rows(_read(pg_engine, queries[2][0], queries[2][1])) == [("100%", "50%")]


@pytest.mark.parametrize("warehouse", ["postgres"], indirect=True)
def test_postgres_fast_path_binds_parameters_and_injection_is_harmless(
    warehouse: Warehouse, copies: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sql = f"SELECT id, name FROM {warehouse.table} WHERE name = :name OR id = :id OR born = :born ORDER BY id"
    cases = [
        {"name": "O'Brien", "id": 8, "born": date(2001, 2, 3)},
        {"name": "x' OR '1'='1", "id": -1, "born": None},
        {"name": f"'); DROP TABLE {warehouse.table}; --", "id": -1, "born": date(1900, 1, 1)},
        {"name": "a:colon :id", "id": -1, "born": date(1900, 1, 1)},
        {"name": "100%", "id": -1, "born": date(1900, 1, 1)},
        {"name": "%(id)s {} $1 \\x", "id": -1, "born": date(1900, 1, 1)},
        {"name": "back\\slash", "id": -1, "born": date(1900, 1, 1)},
    ]
    expected = [[3, 5, 8, 9], [20], [], [7], [8], [], [21]]
    for params, ids in zip(cases, expected):
        fast = _rows(_read(warehouse.engine, sql, params))
        assert [row[0] for row in fast] == ids, params
        assert fast == _rows(_generic_read(monkeypatch, warehouse.engine, sql, params))
    assert len(copies) == len(cases)
    # the values are not in the statement we built: psycopg binds them (quoted as literals)
    assert all("%(name)s" in statement and "DROP" not in statement and "O'Brien" not in statement
               for _, statement in copies)  # fmt: skip
    assert _rows(_read(warehouse.engine, f"SELECT count(*) AS n FROM {warehouse.table}")) == [(len(ROWS),)]


def test_postgres_fast_path_not_taken_where_copy_would_change_values(
    pg_engine: sa.Engine, copies: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a float would be bound as a numeric literal: 0.1 * 3 is 0.3 in numeric, 0.30000000000000004 in float8
    assert _rows(_read(pg_engine, "SELECT :f * 3 AS x", {"f": 0.1})) == [(0.1 * 3,)]
    assert copies == []
    # another driver than psycopg 3
    with monkeypatch.context() as patch:
        patch.setattr(pg_engine.dialect, "driver", "psycopg2")
        assert _rows(_read(pg_engine, "SELECT 1 AS one")) == [(1,)]
    assert copies == []
    # a connection whose text is not UTF-8
    latin = create_warehouse_engine(dbservers.postgres_url() + "?client_encoding=latin1", where="wh")
    try:
        assert _rows(_read(latin, "SELECT 'Émile' AS name")) == [("Émile",)]
    finally:
        latin.dispose()
    assert copies == []
    assert _rows(_read(pg_engine, "SELECT 1 AS one")) == [(1,)] and len(copies) == 1


def _backend(engine: sa.Engine, pid: int) -> tuple[str, str]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT state, query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).one()
    return row[0], row[1]


def test_postgres_fast_path_streams_and_an_early_close_stops_the_query(pg_engine: sa.Engine) -> None:
    sessions: list[Any] = []
    sa.event.listen(pg_engine, "checkout", lambda dbapi_connection, record, proxy: sessions.append(dbapi_connection))
    observer = sa.create_engine(dbservers.postgres_url())
    try:
        batches = stream_batches(
            pg_engine, "SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 3000000) AS s(i)", {},
            chunk_size=1000, where=SQL_FILE,
        )  # fmt: skip
        assert next(batches).column("i").to_pylist() == list(range(1, 1001))
        copying = _copying_backend(observer, "generate_series(1, 3000000)")
        assert _backend(observer, copying)[0] == "active"  # the rest is still being produced
        began = time.monotonic()
        batches.close()
        assert time.monotonic() - began < 5  # cancelled, not read to the end
        assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert _backend(observer, sessions[-1].info.backend_pid)[0] == "idle"  # back in the pool, rolled back
        with observer.connect() as connection:  # nothing of the query runs any more, on any session
            assert not connection.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY (%generate_series(1, 3000000)%'"
            )).all()  # fmt: skip
        assert not [t for t in threading.enumerate() if t.name == "audience-sync-copy"]
        assert _rows(_read(pg_engine, "SELECT 1 AS one")) == [(1,)]
    finally:
        observer.dispose()


def test_postgres_fast_path_early_close_while_the_server_is_still_computing(pg_engine: sa.Engine) -> None:
    """The reader waits for a row that takes 60 s: closing cancels the query rather than waiting."""
    sql = "SELECT i, CASE WHEN i = 50000 THEN pg_sleep(60) END AS s FROM generate_series(1, 50001) AS g(i)"
    batches = stream_batches(pg_engine, sql, {}, chunk_size=100, where=SQL_FILE)
    assert next(batches).num_rows == 100
    time.sleep(0.2)  # the reader is now waiting for the server
    began = time.monotonic()
    batches.close()
    assert time.monotonic() - began < 10
    assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate() if t.name == "audience-sync-copy"]
    assert _rows(_read(pg_engine, "SELECT 2 AS two")) == [(2,)]


def test_postgres_fast_path_consumer_error_releases_the_connection(pg_engine: sa.Engine, copies: list[tuple[str, str]]) -> None:
    def consume() -> None:
        for batch in stream_batches(pg_engine, "SELECT i FROM generate_series(1, 1000000) AS s(i)", {},
                                    chunk_size=500, where=SQL_FILE):  # fmt: skip
            raise ValueError(f"the consumer failed on {batch.num_rows} rows")

    with pytest.raises(ValueError, match="500 rows"):
        consume()
    assert copies and pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate() if t.name == "audience-sync-copy"]


def test_postgres_fast_path_errors_carry_the_database_message(pg_engine: sa.Engine, copies: list[tuple[str, str]]) -> None:
    # found while describing the query
    with pytest.raises(ExtractError) as caught:
        _read(pg_engine, "SELECT nope FROM generate_series(1, 3) AS s(i)")
    _assert_query_error(caught.value, 'column "nope" does not exist')
    # found while the rows are copied, after the first batch
    batches = stream_batches(
        pg_engine, "SELECT i, 1 / (3000 - i) AS q FROM generate_series(1, 5000) AS s(i)", {}, chunk_size=100,
        where=SQL_FILE,
    )  # fmt: skip
    assert next(batches).num_rows == 100
    with pytest.raises(ExtractError) as caught:
        list(batches)
    _assert_query_error(caught.value, "division by zero")
    # a value the client-side conversion refuses is reported too (psycopg: dates beyond year 9999)
    with pytest.raises(ExtractError) as caught:
        _read(pg_engine, "SELECT 'infinity'::date AS d")
    assert caught.value.where == SQL_FILE and "date" in caught.value.what
    assert copies and pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
