"""The same activation over the same rows gives byte-identical files on every tested warehouse."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl.config import load_config
from etl.runtime.runs import execute
from etl.runtime.ledger import open_store
from etl.testing.demo import demo_customers
from jobs import audience

ROWS = demo_customers(date(2026, 1, 15), count=3000)


def _table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("actito_profile_id", sa.BigInteger),
        sa.Column("email", sa.String(200)),
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100)),
        sa.Column("country", sa.String(2)),
        sa.Column("newsletter_optin", sa.Integer),
        sa.Column("created_at", sa.String(10)),
        sa.Column("last_order_at", sa.String(10)),
        sa.Column("orders_count", sa.Integer),
        sa.Column("lifetime_value", sa.Numeric(12, 2)),
        sa.Column("loyalty_tier", sa.String(10)),
        mysql_charset="utf8mb4",
    )


def _warehouse_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'wh.db'}"
    if kind == "duckdb":
        return f"duckdb:///{tmp_path / 'wh.duckdb'}"
    import dbservers

    return dbservers.postgres_url() if kind == "postgres" else dbservers.mariadb_url()


CONFIG = """
[settings]
state_dir = "state"
chunk_size = 700

[warehouses.wh]
url = "{url}"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {{ type = "local", path = "outbox" }}

[activations.emails]
sql = "emails.sql"
destination = "d"
identifier = "email"
params = {{ min_orders = 1 }}
file = {{ compression = "gzip" }}

[activations.profiles]
sql = "profiles.sql"
destination = "d"
identifier = "profileId"
params = {{ min_value = 100 }}
file = {{ separator = ";" }}
"""


@pytest.mark.parametrize("kind", ["sqlite", "duckdb", "postgres", "mariadb", "snowflake"])
def test_files_are_byte_identical_across_warehouses(
    kind: str, tmp_path: Path, reference_files, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Snowflake: fakesnow's server, one per session (tests/conftest.py)
    url = request.getfixturevalue("snowflake_url") if kind == "snowflake" else _warehouse_url(kind, tmp_path)
    monkeypatch.setenv("WAREHOUSE_URL", url)  # a URL with a password is never written in a configuration
    table_name = f"xcust_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    table = _table(table_name)
    table.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), [dataclasses.asdict(row) for row in ROWS])
        files = _run_both(tmp_path, "${WAREHOUSE_URL}", table_name)
    finally:
        table.drop(engine)
        engine.dispose()
    assert files == reference_files


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory) -> dict[str, bytes]:
    """The files from a SQLite warehouse, which every other dialect must reproduce."""
    tmp_path = tmp_path_factory.mktemp("reference")
    url = f"sqlite:///{tmp_path / 'ref.db'}"
    engine = sa.create_engine(url)
    _table("xcust_ref").create(engine)
    with engine.begin() as conn:
        conn.execute(_table("xcust_ref").insert(), [dataclasses.asdict(row) for row in ROWS])
    engine.dispose()
    files = _run_both(tmp_path, url, "xcust_ref")
    assert len(files["emails.csv.gz"]) > 1000 and len(files["profiles.csv"]) > 1000
    return files


def _run_both(root: Path, url: str, table_name: str) -> dict[str, bytes]:
    (root / "emails.sql").write_text(
        f"SELECT email FROM {table_name} WHERE orders_count >= :min_orders ORDER BY customer_id"
    )
    (root / "profiles.sql").write_text(
        f"SELECT actito_profile_id AS profile_id FROM {table_name} "
        "WHERE lifetime_value >= :min_value ORDER BY customer_id"
    )
    (root / "schedules.toml").write_text(CONFIG.format(url=url))
    config = load_config(root / "schedules.toml")
    store = open_store(config)
    try:
        for name in ("emails", "profiles"):
            outcome = execute(config, store, name, audience.KIND, audience.run)
            assert outcome.ok, outcome.error
    finally:
        store.close()
    return {p.name: p.read_bytes() for p in (root / "outbox").iterdir() if not p.name.endswith(".json")}


def test_demo_rows_hold_the_dirt_the_rules_must_handle() -> None:
    emails = [row.email for row in ROWS]
    assert None in emails and "" in emails
    assert any(e and e != e.strip() for e in emails)
    assert any(e and e.startswith("mailto:") for e in emails)
    assert any(e and e != e.lower() for e in emails)
    assert len({e for e in emails if e}) < len([e for e in emails if e])  # duplicates
