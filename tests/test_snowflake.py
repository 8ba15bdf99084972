"""Snowflake through the real connector and snowflake-sqlalchemy dialect, against fakesnow's HTTP server.

The server (``snowflake_url``, tests/conftest.py and dbservers.py) runs in a process of its own, with
the Python of ``.venv-fakesnow``: fakesnow needs connector 4, the dialect connector 5.

What fakesnow cannot show: Snowflake's chunked results (it answers every query in one Arrow chunk,
so chunk_size is met by cutting that chunk) and the download of later chunks an early stop avoids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

import dbservers
from etl.errors import ExtractError
from etl.extract import create_warehouse_engine, stream, stream_batches
from test_extract import ROWS, SQL_FILE, _assert_query_error, _people, _read, _rows, _spy_fast_path

PASSWORD = dbservers.FAKESNOW_PASSWORD


@pytest.fixture
def people(snowflake_url: str) -> Iterator[tuple[sa.Engine, str]]:
    """test_extract's ROWS in a Snowflake table, and an engine made as a run makes it."""
    table = _people(dbservers.unique_name("people"))
    loader = sa.create_engine(snowflake_url)
    with loader.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), [dict(zip(("id", "name", "score", "born"), row)) for row in ROWS])
    engine = create_warehouse_engine(snowflake_url, where="[warehouses.wh] url")
    try:
        yield engine, table.name
    finally:
        engine.dispose()
        with loader.begin() as connection:
            table.drop(connection)
        loader.dispose()


def _generic(monkeypatch: pytest.MonkeyPatch, engine: sa.Engine, sql: str, params: dict[str, object]) -> list[
        pa.RecordBatch]:
    with monkeypatch.context() as patch:
        patch.delitem(stream._FAST_PATHS, "snowflake")
        return _read(engine, sql, params)


def test_the_fast_path_streams_bounded_chunks_with_bound_parameters(
    people: tuple[sa.Engine, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, table = people
    taken = _spy_fast_path(monkeypatch, "snowflake")
    sql = f"SELECT id, name, score, born, :run_date AS run_date FROM {table} WHERE id >= :min_id ORDER BY id"
    params = {"run_date": date(2026, 1, 15), "min_id": 3}
    batches = _read(engine, sql, params, chunk_size=4)

    assert taken == ["fast"]
    assert [batch.num_rows for batch in batches] == [4, 4, 4, 4, 4, 1]
    assert all(batch.schema.names == ["id", "name", "score", "born", "run_date"] for batch in batches)
    # the connector binds client-side: a date is sent as the literal '2026-01-15', so selected bare it is
    # text (compared with a DATE column, Snowflake casts it); the generic path gives the same
    assert _rows(batches) == [(*row, "2026-01-15") for row in ROWS[2:]]
    monkeypatch.undo()
    assert _rows(_generic(monkeypatch, engine, sql, params)) == _rows(batches)


def test_values_are_bound_never_run(people: tuple[sa.Engine, str]) -> None:
    engine, table = people
    sql = f"SELECT id FROM {table} WHERE name = :name OR id = :id OR born = :born ORDER BY id"
    assert _rows(_read(engine, sql, {"name": "O'Brien", "id": 8, "born": date(2001, 2, 3)})) == [(3,), (5,), (8,), (9,)]
    assert _rows(_read(engine, sql, {"name": "x' OR '1'='1", "id": -1, "born": date(1900, 1, 1)})) == [(20,)]
    for literal, expected in (("a:colon :id", 7), ("100%", 8), ("back\\slash", 21)):
        assert _rows(_read(engine, sql, {"name": literal, "id": -1, "born": date(1900, 1, 1)})) == [(expected,)]
    # a literal % without any parameter: pyformat's %% escape is undone, not sent
    assert _rows(_read(engine, f"SELECT id FROM {table} WHERE name LIKE '100%' ORDER BY id")) == [(8,)]


def test_types_and_nulls_as_the_generic_path_gives_them(snowflake_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = dbservers.unique_name("typed")
    loader = sa.create_engine(snowflake_url)
    with loader.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE {name} (id INTEGER, amount NUMBER(12, 2), ratio FLOAT, born DATE, stamp TIMESTAMP_NTZ, "
            "label VARCHAR, flag BOOLEAN)")
        connection.exec_driver_sql(
            f"INSERT INTO {name} VALUES (1, 12.34, 0.5, '2001-02-03', '2026-01-15 10:30:00', 'Émile', TRUE), "
            "(2, NULL, NULL, NULL, NULL, NULL, NULL), "
            "(3, 9999999999.99, -1e300, '1999-12-31', '1999-12-31 23:59:59', '', FALSE)")
    engine = create_warehouse_engine(snowflake_url, where="wh")
    try:
        sql = f"SELECT id, amount, ratio, born, stamp, label, flag FROM {name} ORDER BY id"
        batches = _read(engine, sql, chunk_size=2)
        assert _rows(batches) == [
            (1, Decimal("12.34"), 0.5, date(2001, 2, 3), datetime(2026, 1, 15, 10, 30), "Émile", True),
            (2, None, None, None, None, None, None),
            (3, Decimal("9999999999.99"), -1e300, date(1999, 12, 31), datetime(1999, 12, 31, 23, 59, 59), "", False),
        ]
        schema = batches[0].schema
        assert pa.types.is_integer(schema.field("id").type) and pa.types.is_decimal(schema.field("amount").type)
        assert pa.types.is_date(schema.field("born").type) and pa.types.is_string(schema.field("label").type)
        assert _rows(_generic(monkeypatch, engine, sql, {})) == _rows(batches)
    finally:
        engine.dispose()
        with loader.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE {name}")
        loader.dispose()


def test_an_empty_result_gives_one_empty_batch_with_the_columns(people: tuple[sa.Engine, str]) -> None:
    engine, table = people
    batches = _read(engine, f"SELECT id, name AS full_name FROM {table} WHERE id < 0")
    assert [(batch.num_rows, batch.schema.names) for batch in batches] == [(0, ["id", "full_name"])]


def test_only_the_used_columns(people: tuple[sa.Engine, str]) -> None:
    engine, table = people
    batches = list(stream_batches(engine, f"SELECT * FROM {table} ORDER BY id", {}, chunk_size=100, where=SQL_FILE,
                                  columns=lambda names: [names.index("name")]))
    assert [batch.schema.names for batch in batches] == [["name"]]
    assert batches[0].column(0).to_pylist() == [row[1] for row in ROWS]


def test_an_early_stop_releases_the_connection(people: tuple[sa.Engine, str], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, table = people
    closed: list[bool] = []
    probe = engine.raw_connection()
    cursor_class = type(probe.driver_connection.cursor())
    probe.close()
    close = cursor_class.close
    monkeypatch.setattr(cursor_class, "close", lambda self, *a: (closed.append(True), close(self, *a))[1])
    fetched: list[str] = []
    fetch = cursor_class.fetch_arrow_batches

    def counted(self: Any, *args: Any) -> Iterator[pa.Table]:
        for table in fetch(self, *args):
            fetched.append("chunk")
            yield table
        fetched.append("end")

    monkeypatch.setattr(cursor_class, "fetch_arrow_batches", counted)
    batches = stream_batches(engine, f"SELECT id, name FROM {table} ORDER BY id", {}, chunk_size=5, where=SQL_FILE)
    assert next(batches).num_rows == 5
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    batches.close()
    assert closed and engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert fetched == ["chunk"]  # no further chunk asked for (fakesnow sends one; Snowflake, many)

    def consume() -> None:
        for batch in stream_batches(engine, f"SELECT id FROM {table}", {}, chunk_size=5, where=SQL_FILE):
            raise ValueError(f"the consumer failed on {batch.num_rows} rows")

    with pytest.raises(ValueError):
        consume()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert len(_rows(_read(engine, f"SELECT id FROM {table}"))) == len(ROWS)  # the engine is still good


@pytest.mark.parametrize(("mistake", "fragment"), [
    # fakesnow's words (DuckDB's, under Snowflake's codes); Snowflake's own are in test_snowflake_messages
    ("SELEC id FROM {table}", "Unexpected token"),
    ("SELECT id FROM nope_{table}", "does not exist"),
    ("SELECT nope FROM {table}", '"NOPE" not found'),
])
def test_errors_carry_snowflakes_message_without_sql_or_password(
    people: tuple[sa.Engine, str], mistake: str, fragment: str
) -> None:
    engine, table = people
    with pytest.raises(ExtractError) as caught:
        _read(engine, mistake.format(table=table))
    _assert_query_error(caught.value, fragment)
    assert PASSWORD not in str(caught.value)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_data_change_is_rolled_back(people: tuple[sa.Engine, str]) -> None:
    """No read-only transaction in Snowflake: autocommit is off, so a DELETE is undone at release."""
    engine, table = people
    _read(engine, f"DELETE FROM {table}")
    assert _rows(_read(engine, f"SELECT count(*) AS n FROM {table}")) == [(len(ROWS),)]


CONFIG = """
[settings]
state_dir = "state"
chunk_size = 100

[warehouses.snow]
url = "${SNOWFLAKE_URL}"

[destinations.files]
environment = "sandbox"
entity = "demo"
files = { type = "local", path = "outbox" }

[activations.born_before]
sql = "born_before.sql"
destination = "files"
identifier = "email"
params = { before = 2000-01-01 }
"""


def test_an_audience_runs_through_the_cli(snowflake_url: str, tmp_path: Path) -> None:
    table = sa.Table(dbservers.unique_name("customers"), sa.MetaData(), sa.Column("id", sa.Integer),
                     sa.Column("email", sa.String(100)), sa.Column("born", sa.Date))
    loader = sa.create_engine(snowflake_url)
    with loader.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), [
            {"id": i, "email": f"Person{i}@Example.com ", "born": date(1750 + i, 1, 1)} for i in range(1, 261)])
    (tmp_path / "born_before.sql").write_text(
        f"SELECT email FROM {table.name} WHERE born < :before AND born <= :run_date ORDER BY id")
    (tmp_path / "schedules.toml").write_text(CONFIG)
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"), *args],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, "SNOWFLAKE_URL": snowflake_url})

    try:
        checked = cli("validate", "--connect")  # the query planned through the fast path, no row read
        done = cli("run", "born_before")
    finally:
        with loader.begin() as connection:
            table.drop(connection)
        loader.dispose()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert PASSWORD not in checked.stdout + checked.stderr + done.stdout + done.stderr
    files = [path for path in (tmp_path / "outbox").iterdir() if path.name.endswith(".csv")]
    assert len(files) == 1
    header, *emails = files[0].read_text("utf-8").splitlines()
    assert header == "emailAddress"
    assert emails == [f"person{i}@example.com" for i in range(1, 250)]  # cleaned, and born before 2000


def test_snowflakes_two_line_messages_keep_their_second_line() -> None:
    """Snowflake's own wording, which fakesnow does not reproduce: what is wrong is on the second line."""
    from snowflake.connector.errors import ProgrammingError

    from etl.extract.engine import database_message

    error = ProgrammingError(msg="SQL compilation error:\nsyntax error line 1 at position 0 unexpected 'SELEC'.",
                             errno=1003, sqlstate="42000")
    url = sa.make_url(f"snowflake://u:{PASSWORD}@account/db")
    assert database_message(error, url) == (
        "001003 (42000): SQL compilation error: syntax error line 1 at position 0 unexpected 'SELEC'.")


def test_a_url_naming_host_or_protocol_says_to_use_server_url() -> None:
    url = f"snowflake://u:{PASSWORD}@account/db/schema?host=127.0.0.1&protocol=http"
    with pytest.raises(ExtractError) as caught:
        create_warehouse_engine(url, where="[warehouses.snow] url")
    assert caught.value.where == "[warehouses.snow] url"
    assert "'host' cannot be set via the URL" in caught.value.what and "server_url=" in caught.value.hint
    assert PASSWORD not in str(caught.value)
