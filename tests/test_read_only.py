"""Audience SQL can read the warehouse and nothing else, on every dialect, whatever the SQL says.

Tried as an attacker or a careless analyst would: a ``DROP TABLE`` or a ``CREATE TABLE … AS SELECT``
pasted into an audience file, run by ``preview`` (which promises to write nothing) or by a run; and a
parameter value built to close a PostgreSQL dollar-quoted body on the fast paths, which bind values
client-side.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import dbservers
from conftest import Shown
from etl.errors import ExtractError
from etl.extract import bind_parameter_names, create_warehouse_engine, stream_batches


@pytest.fixture(params=["sqlite", "duckdb", "postgres", "mariadb"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, str]]:
    """An engine on a warehouse holding one table of two customers, and that table's name."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'wh.db'}"
        sqlite3.connect(tmp_path / "wh.db").close()
    elif request.param == "duckdb":
        url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
        sa.create_engine(url).dispose()
        import duckdb

        duckdb.connect(str(tmp_path / "wh.duckdb")).close()
    else:
        url = dbservers.postgres_url() if request.param == "postgres" else dbservers.mariadb_url()
    table = dbservers.unique_name("customers")
    engine = create_warehouse_engine(url, where="wh")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (email varchar(100), segment varchar(100), note varchar(100))")
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES ('a@example.com', 's1', 'n'), ('b@example.com', 's2', 'n')")
    try:
        yield engine, table
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}_copy")
        engine.dispose()


def _count(engine: sa.Engine, sql: str, params: dict[str, object] | None = None) -> int:
    return sum(batch.num_rows for batch in stream_batches(engine, sql, params or {}, chunk_size=10, where="a.sql"))


@pytest.mark.parametrize("statement", ["DROP TABLE {t}", "CREATE TABLE {t}_copy AS SELECT * FROM {t}",
                                       "DELETE FROM {t}", "SELECT email FROM {t}; DROP TABLE {t}"])
def test_audience_sql_that_writes_is_refused_and_changes_nothing(
    warehouse: tuple[sa.Engine, str], statement: str
) -> None:
    engine, table = warehouse
    with pytest.raises(ExtractError) as refused:
        _count(engine, statement.format(t=table))
    assert "a.sql" in refused.value.message()
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 2
        assert not sa.inspect(conn).has_table(f"{table}_copy")
    assert _count(engine, f"SELECT email FROM {table}") == 2  # reading still works
    with engine.begin() as conn:  # and the pooled connection came back writable for other code
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES ('c@example.com', 's3', 'n')")


def test_a_refused_write_says_why(warehouse: tuple[sa.Engine, str]) -> None:
    engine, table = warehouse
    with pytest.raises(ExtractError) as refused:
        _count(engine, f"DELETE FROM {table}")
    if engine.dialect.name == "postgresql":  # its fast path declares the query as a cursor first
        assert "syntax error" in refused.value.what
    else:
        assert "the query tried to write to the warehouse" in refused.value.what
        assert "read-only transaction" in refused.value.hint


def test_preview_of_a_drop_table_drops_nothing(project: Callable[[str], Path], cli: Callable[..., Shown],
                                               tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "wh.db") as conn:
        conn.execute("CREATE TABLE c (email TEXT)")
        conn.execute("INSERT INTO c VALUES ('a@example.com')")
    (tmp_path / "sql" / "drop.sql").write_text("DROP TABLE c")
    config = project("""
        [warehouses.wh]
        url = "sqlite:///wh.db"

        [destinations.d]
        entity = "demo"
        environment = "sandbox"
        files = { type = "local", path = "outbox" }

        [activations.a]
        sql = "sql/drop.sql"
        destination = "d"
        identifier = "email"
    """)
    shown = cli(config, "preview", "a")
    assert shown.code == 1, shown.said
    assert "tried to write to the warehouse" in shown.said and "Traceback" not in shown.said
    with sqlite3.connect(tmp_path / "wh.db") as conn:
        assert conn.execute("SELECT count(*) FROM c").fetchone() == (1,)


@pytest.mark.parametrize("body", ["$$:seg$$", "$q$:seg$q$"])
def test_a_parameter_cannot_close_a_dollar_quoted_body_on_postgresql(body: str) -> None:
    engine = create_warehouse_engine(dbservers.postgres_url(), where="wh")
    table = dbservers.unique_name("notes")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (email text, segment text, note text)")
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES ('a@example.com', 's1', ':seg'), ('b@example.com', 's2', 'n')")
    try:
        sql = f"SELECT email FROM {table} WHERE segment = :seg AND note = {body}"
        attack = {"seg": "zz$$ OR true OR note = $$"} if body == "$$:seg$$" else {"seg": "zz$q$ OR true OR note = $q$"}
        assert _count(engine, sql, attack) == 0  # not every row
        assert _count(engine, sql, {"seg": "s1"}) == 1  # the body is the text ':seg', not a parameter
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {table}")
        engine.dispose()


def test_a_name_inside_a_dollar_quoted_body_is_not_a_parameter() -> None:
    assert bind_parameter_names("SELECT 1 WHERE a = :a AND b = $$:b$$ AND c = $t$:c$t$ AND d = E'\\':d'") == {"a"}


# --------------------------------------------------------------------------- wide results


def test_a_wide_result_is_read_in_chunks_bounded_by_bytes_and_only_the_used_column_is_carried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SELECT *`` of many columns when the audience needs one: 50k-row chunks of 500 columns once
    took 5 GB. Chunks are cut by their size, and the unused columns are never converted."""
    import etl.extract.generic

    monkeypatch.setattr(etl.extract.generic, "CHUNK_BYTES", 1 << 20)
    columns = 50
    with sqlite3.connect(tmp_path / "wide.db") as db:
        db.execute("CREATE TABLE w (email TEXT, " + ", ".join(f"c{i} TEXT" for i in range(columns - 1)) + ")")
        db.executemany(f"INSERT INTO w VALUES ({','.join('?' * columns)})",
                       ([f"p{r}@example.com", *(["x" * 100] * (columns - 1))] for r in range(3000)))
    engine = create_warehouse_engine(f"sqlite:///{tmp_path / 'wide.db'}", where="wh")
    try:
        batches = list(stream_batches(engine, "SELECT * FROM w", {}, chunk_size=2000, where="a.sql",
                                      columns=lambda names: [names.index("email")]))
    finally:
        engine.dispose()
    assert all(batch.schema.names == ["email"] for batch in batches)
    assert sum(batch.num_rows for batch in batches) == 3000
    assert max(batch.num_rows for batch in batches) <= 500  # far fewer than the 2,000 asked for
    assert batches[-1].column(0)[-1].as_py() == "p2999@example.com"
