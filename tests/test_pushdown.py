"""``clean_in = "warehouse"``: the warehouse's normalisation and deduplication give the audience, the
counts and the rejects that cleaning on the client gives, on every dialect that has the SQL.

The heart is a property over generated dirty data (seeded, thousands of values: Unicode whitespace of
every kind Arrow trims, ``mailto:`` prefixes in mixed case repeated with spaces, upper case, the Kelvin
sign and the dotted capital I, other non-ASCII letters, NULL, empty, duplicates after normalisation,
invalid shapes, long values) loaded into each dialect's table and run through both modes. It also
proves that no key the warehouse sends is one the client normalises otherwise (``disagreements``).
"""

from __future__ import annotations

import csv
import functools
import random
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

import dbservers
from conftest import cli_process, json_run, sandbox_config
from etl.config import load_config
from etl.errors import ConfigError
from etl.extract.pushdown import ASCII_FOLDS, COUNT_COLUMN, WHITESPACE, audience_statement, warehouse_batches
from etl.transform.audience import REJECT_LINES, AudienceCleaner, CleanBatch
from etl.values.email import normalise_emails
from jobs.audience import cleaned_batches
from test_email_properties import EDGY_TEXT, few

WHEN = datetime(2026, 1, 15, 6, tzinfo=UTC)

OUTBOX = '{ type = "local", path = "outbox" }'

ACTIVATIONS = """
[activations.client]
sql = "audience.sql"
destination = "d"
identifier = "email"
params = { min_id = 0 }
max_shrink = 1

[activations.warehouse]
sql = "audience.sql"
destination = "d"
identifier = "email"
clean_in = "warehouse"
params = { min_id = 0 }
max_shrink = 1
file = { name = "warehouse.csv" }
"""

# --------------------------------------------------------------------------- the generated dirt

_NON_ASCII = "éßıΩçøÅ\u00ad\u200b\ufeffΚ"  # letters, a soft hyphen, zero-width space and BOM (not trimmed)
_ACCENTED = str.maketrans("aeou", "àéöü")
_DOMAINS = ("example.com", "Example.COM", "mail.be", "test.org", "xn--p1ai.ru", "kelvin.com", "sub.domain.fr",
            "nodot", "bad..dots.com", "-lead.com", "x.zzzzqq", "ex.c")


def _address(rng: random.Random) -> str:
    local = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzIK0123456789._+-") for _ in range(rng.randint(1, 12)))
    shape = rng.random()
    if shape < 0.05:
        return local  # no @
    if shape < 0.08:
        return f"{local}@{local}@{rng.choice(_DOMAINS)}"
    return f"{local}@{rng.choice(_DOMAINS)}"


def _dirty(rng: random.Random, address: str) -> str:
    """One way a warehouse holds ``address``: in any case, with look-alikes, prefixes and whitespace."""
    text = "".join(c.upper() if rng.random() < 0.3 else c for c in address)
    if rng.random() < 0.15:
        text = text.replace("k", "\u212a").replace("K", "\u212a")
    if rng.random() < 0.1:
        text = text.replace("i", "\u0130")
    if rng.random() < 0.08:
        spot = rng.randrange(len(text) + 1)
        text = text[:spot] + rng.choice(_NON_ASCII) + text[spot:]
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3))):
        prefix = "".join(c.upper() if rng.random() < 0.5 else c for c in "mailto:")
        text = _space(rng) + prefix + _space(rng) + text
    return _space(rng) + text + _space(rng)


@functools.cache
def arrow_whitespace() -> str:
    """Every character Arrow's trim removes, asked of Arrow (not of the module under test)."""
    code_points = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    trimmed = pc.utf8_trim_whitespace(pa.array([f"{chr(c)}x{chr(c)}" for c in code_points])).to_pylist()
    return "".join(chr(c) for c, t in zip(code_points, trimmed) if t == "x")


def _space(rng: random.Random) -> str:
    return "".join(rng.choice(arrow_whitespace()) for _ in range(rng.choice((0, 0, 1, 2, 4))))


def dirty_values(count: int, seed: int = 20260115) -> list[str | None]:
    """``count`` values: about a third are new addresses, the rest other spellings of earlier ones, NULL,
    empty, whitespace, bare prefixes, long and random edgy text."""
    rng = random.Random(seed)
    addresses: list[str] = []
    values: list[str | None] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.03:
            values.append(None)
        elif roll < 0.05:
            values.append(rng.choice(("", " ", "mailto:", " MailTo: \u3000", "\u00a0\t")))
        elif roll < 0.07:
            values.append(_dirty(rng, "a" * rng.randint(240, 300) + "@example.com"))
        elif roll < 0.12 and addresses:  # an accented twin: a collation that ignores accents groups them
            twin = rng.choice(addresses)
            values.append(_dirty(rng, twin.translate(_ACCENTED) if rng.random() < 0.5 else twin))
        elif roll < 0.35 or not addresses:
            addresses.append(_address(rng))
            values.append(_dirty(rng, addresses[-1]))
        else:
            values.append(_dirty(rng, rng.choice(addresses)))
    return values


# --------------------------------------------------------------------------- running both modes


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'wh.db'}"
    if kind == "duckdb":
        return f"duckdb:///{tmp_path / 'wh.duckdb'}"
    if kind == "snowflake":
        url: str = request.getfixturevalue("snowflake_url")
        return url
    return dbservers.postgres_url() if kind == "postgres" else dbservers.mariadb_url()


def _load(url: str, table: str, values: list[str | None]) -> sa.Table:
    people = sa.Table(table, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("email_address", sa.String(1000)), sa.Column("other", sa.Integer),
                      mysql_charset="utf8mb4")
    engine = sa.create_engine(url)
    try:
        people.create(engine)
        with engine.begin() as connection:
            connection.execute(people.insert(), [{"id": i, "email_address": v, "other": i % 7}
                                                 for i, v in enumerate(values)])
    finally:
        engine.dispose()
    return people


def _drop(url: str, table: sa.Table) -> None:
    engine = sa.create_engine(url)
    try:
        table.drop(engine)
    finally:
        engine.dispose()


@pytest.fixture
def warehouse(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
              ) -> Callable[[str, list[str | None]], Iterator[Path]]:
    """``warehouse(kind, values)``: a project whose two activations read ``values`` from a table of that
    warehouse, ``client`` cleaning on the client and ``warehouse`` in the warehouse."""
    tables: list[tuple[str, sa.Table]] = []

    def make(kind: str, values: list[str | None], chunk_size: int = 700) -> Path:
        url = _url(kind, tmp_path, request)
        monkeypatch.setenv("WAREHOUSE_URL", url)  # fakesnow's URL holds a password
        table = dbservers.unique_name("aud")
        tables.append((url, _load(url, table, values)))
        # other columns around the identifier, a parameter, an ORDER BY: the query is wrapped as written
        (tmp_path / "audience.sql").write_text(
            f"SELECT other, email_address AS email, id FROM {table} WHERE id >= :min_id ORDER BY id;\n")
        config = sandbox_config(OUTBOX, f"chunk_size = {chunk_size}", activations=ACTIVATIONS, url="${WAREHOUSE_URL}")
        (tmp_path / "schedules.toml").write_text(config)
        return tmp_path / "schedules.toml"

    yield make  # type: ignore[misc]
    for url, table in tables:
        _drop(url, table)


def _run(config_path: Path, name: str) -> tuple[AudienceCleaner, list[str], Counter[tuple[Any, Any]]]:
    """The activation cleaned as a run cleans it: (cleaner, kept identifiers in order, rejects as a
    multiset of (value normalised by the client, reason))."""
    config = load_config(config_path)
    kept: list[str] = []
    rejects: Counter[tuple[Any, Any]] = Counter()
    cleaner: AudienceCleaner | None = None
    for cleaner, batch in cleaned_batches(config, name, WHEN):
        kept += batch.identifiers.to_pylist()
        values = normalise_emails(batch.rejects.column("value").combine_chunks()).to_pylist()
        rejects.update(zip(values, batch.rejects.column("reason").to_pylist()))
    assert cleaner is not None
    return cleaner, kept, rejects


def _assert_same_audience(config_path: Path, values: list[str | None]) -> None:
    client, client_kept, client_rejects = _run(config_path, "client")
    cleaner, kept, rejects = _run(config_path, "warehouse")
    assert cleaner.disagreements == 0  # the warehouse's keys are the client's normalisation
    assert len(cleaner._seen) == 0  # no dedupe memory: it grows only for keys the SQL got wrong
    assert len(kept) == len(set(kept))
    assert set(kept) == set(client_kept)
    assert vars(cleaner.counts) == vars(client.counts)
    assert cleaner.counts.extracted == len(values) == (
        cleaner.counts.kept + cleaner.counts.rejected + cleaner.counts.duplicates)
    assert rejects == client_rejects


DIALECTS = ["sqlite", "duckdb", "postgres", "mariadb", "snowflake"]


@pytest.mark.parametrize("kind", DIALECTS)
def test_the_warehouse_cleans_generated_dirt_as_the_client_does(kind: str, warehouse: Any) -> None:
    values = dirty_values(4000)
    config_path = warehouse(kind, values)
    _assert_same_audience(config_path, values)
    # the warehouse did group: each key once, with the rows it stands for
    cleaner = AudienceCleaner("email")
    batches = list(warehouse_batches(load_config(config_path), "warehouse", WHEN, cleaner.check_type))
    keys = [key for batch in batches for key in batch.column("email").to_pylist()]
    assert len(keys) == len(set(keys)) < len(values) // 2
    assert sum(pc.sum(batch.column(COUNT_COLUMN)).as_py() or 0 for batch in batches) == len(values)


def test_the_generated_dirt_holds_what_it_must() -> None:
    values = dirty_values(4000)
    text = [v for v in values if v]
    normalised = normalise_emails(pa.array(values)).to_pylist()
    assert None in values and "" in values
    assert sum(1 for v in text if v != v.strip()) > 1000
    kept = set(AudienceCleaner("email").clean(pa.table({"email": values})).identifiers.to_pylist())
    for space in arrow_whitespace():  # each kind, around values that are valid once trimmed
        assert sum(1 for v in text if space in v and normalise_emails(pa.array([v]))[0].as_py() in kept) > 5
    assert sum(1 for v in text if "mailto:" in v.lower().replace(" ", "")) > 500
    assert sum(1 for v in text if "\u212a" in v) > 100 and sum(1 for v in text if "\u0130" in v) > 50
    assert any(len(v) > 255 for v in text)
    assert 400 < len(kept) < len({n for n in normalised if n})  # valid ones, and duplicates after normalising
    assert any(v and "\u212a" in v and normalise_emails(pa.array([v]))[0].as_py() in kept for v in values)
    accented = {n for n in normalised if n and any(c in n for c in "àéöü")}
    assert sum(1 for n in accented if n.translate(str.maketrans("àéöü", "aeou")) in kept) > 30


# --------------------------------------------------------------------------- the SQL's pieces


def test_whitespace_is_what_arrow_trims() -> None:
    assert set(arrow_whitespace()) == set(WHITESPACE)


def test_the_folds_are_every_non_ascii_character_whose_lowercase_is_ascii() -> None:
    code_points = [c for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000]
    lowered = pc.utf8_lower(pa.array([chr(c) for c in code_points])).to_pylist()
    assert {chr(c): low for c, low in zip(code_points, lowered) if low.isascii()} == ASCII_FOLDS


@pytest.mark.parametrize("kind", ["sqlite", "duckdb"])
@given(st.lists(EDGY_TEXT | st.sampled_from([" mAiLtO:\u2003MAILTO:  A@B.com\u3000", "\u212aim@x.com"]),
                min_size=1, max_size=30))
@few(60)
def test_any_text_gives_the_clients_audience(kind: str, values: list[str]) -> None:
    """Hypothesis' edgy text, on the file-backed dialects (a table per example)."""
    values = [v.replace("\x00", "") for v in values]  # no warehouse stores NUL in text
    keys = _keys(kind, values)
    normalised = normalise_emails(pa.array(values)).to_pylist()
    for value, key in zip(normalised, keys):
        assert normalise_emails(pa.array([key])).to_pylist() == [value]


def _keys(kind: str, values: list[str]) -> list[str | None]:
    """The warehouse's key of each value, in order (one group per row: the row's id is grouped too)."""
    url = "sqlite://" if kind == "sqlite" else "duckdb:///:memory:"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE v (id INTEGER, email TEXT)")
            connection.execute(sa.text("INSERT INTO v VALUES (:id, :email)"),
                               [{"id": i, "email": v} for i, v in enumerate(values)])
            keys = []
            # one statement, bound per row: compiled once (SQLite's nested levels are slow to compile)
            statement = audience_statement("SELECT email FROM v WHERE id = :id", "email", kind)
            for i in range(len(values)):
                (row,) = connection.execute(statement, {"id": i}).all()
                keys.append(row[0])
                assert row[1] == 1
            return keys
    finally:
        engine.dispose()


def test_the_statement_wraps_the_query_and_keeps_its_parameters() -> None:
    statement = audience_statement("SELECT mail FROM t WHERE d >= :since -- a comment", "mail", "postgresql")
    from sqlalchemy.dialects import postgresql

    compiled = statement.compile(dialect=postgresql.dialect())
    assert "since" in compiled.params
    assert f"count(*) AS {COUNT_COLUMN}" in str(compiled)
    assert "GROUP BY audience_sync_keys.k" in str(compiled)


# --------------------------------------------------------------------------- configuration


def _project(tmp_path: Path, activation: str, url: str = "sqlite:///wh.db") -> Path:
    (tmp_path / "audience.sql").write_text("SELECT email FROM people")
    (tmp_path / "shape.py").write_text("def shape(frame, context):\n    return frame\n")
    (tmp_path / "wh.db").touch()
    path = tmp_path / "schedules.toml"
    path.write_text(sandbox_config(OUTBOX, activations=f"""
[activations.a]
sql = "audience.sql"
destination = "d"
clean_in = "warehouse"
{activation}
""", url=url))
    return path


@pytest.mark.parametrize(("activation", "url", "said"), [
    ('identifier = "email"\ntransform = "shape.py:shape"', "sqlite:///wh.db",
     'clean_in = "warehouse" cannot go with a transform step'),
    ('identifier = "profileId"', "sqlite:///wh.db", 'clean_in = "warehouse" cleans e-mail addresses only'),
    ('identifier = "email"', "bigquery://project/dataset",
     'clean_in = "warehouse" is not available for bigquery yet; use client'),
    ('identifier = "email"', "trino://host:8080/hive", 'clean_in = "warehouse" is not available for trino yet'),
])
def test_what_the_warehouse_cannot_clean_is_a_config_error(tmp_path: Path, activation: str, url: str,
                                                            said: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_project(tmp_path, activation, url))
    ((where, what),) = raised.value.problems
    assert where == "[activations.a] clean_in" and said in what


def test_clean_in_is_client_or_warehouse(tmp_path: Path) -> None:
    path = _project(tmp_path, 'identifier = "email"')
    path.write_text(path.read_text().replace('clean_in = "warehouse"', 'clean_in = "server"'))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "clean_in" in str(raised.value)


# --------------------------------------------------------------------------- through the CLI


def test_a_run_through_the_cli_delivers_the_clients_file(warehouse: Any) -> None:
    """PostgreSQL, each activation run by the real CLI in a child process: the files hold the same lines,
    the runs the same counts, the reject files as many lines."""
    values = dirty_values(3000, seed=7)
    config_path = warehouse("postgres", values)
    runs = {name: json_run(config_path, "run", name) for name in ("client", "warehouse")}
    for field in ("rows_extracted", "rows_rejected", "rows_duplicate", "rows_delivered"):
        assert runs["warehouse"][field] == runs["client"][field], field
    outbox = config_path.parent / "outbox"
    client = (outbox / "client.csv").read_text(encoding="utf-8").splitlines()
    pushed = (outbox / "warehouse.csv").read_text(encoding="utf-8").splitlines()
    assert client[0] == pushed[0]
    assert set(pushed) == set(client) and len(pushed) == len(client) > 300
    # in the key's order: a hash aggregate's random order would double a large gzip file's size
    assert pushed[1:] == sorted(pushed[1:])
    rejects = {name: (config_path.parent / "state").rglob(f"{name}.rejects.csv") for name in runs}
    lines = {name: len(list(csv.reader(next(found).open(encoding="utf-8", newline="")))) for name, found in
             rejects.items()}
    assert lines["warehouse"] == lines["client"]
    shown = cli_process(config_path, "preview", "warehouse")
    assert shown.returncode == 0, shown.stderr


# --------------------------------------------------------------------------- when SQL and client disagree


def _counted(*rows: tuple[str | None, int]) -> pa.Table:
    return pa.table({"email": pa.array([r[0] for r in rows], pa.string()),
                     COUNT_COLUMN: pa.array([r[1] for r in rows], pa.int64())})


def _cleaned(cleaner: AudienceCleaner, table: pa.Table) -> CleanBatch:
    """Every part `clean_counted` gives for one batch, as one."""
    parts = list(cleaner.clean_counted(table, COUNT_COLUMN))
    return CleanBatch(identifiers=parts[0].identifiers, hashes=parts[0].hashes,
                      rejects=pa.concat_tables([part.rejects for part in parts]))


def test_a_key_the_client_normalises_otherwise_is_deduplicated_apart() -> None:
    cleaner = AudienceCleaner("email")
    first = _cleaned(cleaner, _counted((" A@b.com", 2), ("a@b.com", 1), ("x", 3), (None, 2)))
    assert first.identifiers.to_pylist() == ["a@b.com"]
    assert first.rejects.column("reason").to_pylist().count("duplicate") == 2
    assert first.rejects.column("row").null_count == first.rejects.num_rows == 7
    later = _cleaned(cleaner, _counted(("A@B.COM", 1), ("C@d.com", 1)))
    assert later.identifiers.to_pylist() == ["c@d.com"]
    assert _cleaned(cleaner, _counted(("c@d.com", 4))).identifiers.to_pylist() == []
    assert cleaner.disagreements == 3
    assert vars(cleaner.counts) == {"extracted": 14, "rejected": 5, "duplicates": 7, "kept": 2}


def test_a_placeholder_on_many_rows_is_rejected_line_by_line_in_bounded_parts() -> None:
    """One key for 200,000 rows (a placeholder such as 'unknown'), then a valid one for 70,000: every row
    has its reject line, and no part holds more than REJECT_LINES of them."""
    cleaner = AudienceCleaner("email")
    parts = list(cleaner.clean_counted(_counted(("unknown", 200_000), ("a@b.com", 70_000), ("c@d.com", 1)),
                                       COUNT_COLUMN))
    assert parts[0].identifiers.to_pylist() == ["a@b.com", "c@d.com"]
    assert all(len(part.identifiers) == 0 for part in parts[1:])
    assert max(part.rejects.num_rows for part in parts) == REJECT_LINES
    reasons = pa.concat_tables([part.rejects for part in parts]).column("reason").to_pylist()
    assert len(reasons) == 269_999
    assert reasons[:200_000] == ["no @"] * 200_000 and set(reasons[200_000:]) == {"duplicate"}
    assert vars(cleaner.counts) == {"extracted": 270_001, "rejected": 200_000, "duplicates": 69_999, "kept": 2}


def test_the_known_limit_an_agreeing_key_before_its_changed_twin_is_kept_twice() -> None:
    """The client remembers only changed keys: an agreeing one of an earlier chunk is not found again.
    The property test above proves no dialect sends a changed key for the generated data."""
    cleaner = AudienceCleaner("email")
    assert _cleaned(cleaner, _counted(("e@f.com", 1))).identifiers.to_pylist() == ["e@f.com"]
    assert _cleaned(cleaner, _counted(("E@f.com", 1))).identifiers.to_pylist() == ["e@f.com"]


def test_a_disagreement_is_said_with_the_activation_and_dialect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jobs import audience

    path = _project(tmp_path, 'identifier = "email"')

    def sent(config: Any, name: str, when: datetime, choose: Callable[[pa.Schema], str]) -> Iterator[pa.Table]:
        choose(pa.schema([("email", pa.string())]))
        yield _counted(("a@b.com", 1), (" B@c.com", 1))
        yield _counted((" D@c.com", 1))

    monkeypatch.setattr(audience, "warehouse_batches", sent)
    with caplog.at_level("WARNING", logger="audience_sync.audience"):
        kept = [b.identifiers.to_pylist() for _, b in cleaned_batches(load_config(path), "a", WHEN)]
    assert kept == [["a@b.com", "b@c.com"], ["d@c.com"]]
    (record,) = [r for r in caplog.records if "otherwise than the client" in r.getMessage()]
    assert record.getMessage().startswith("a: the sqlite warehouse")


def test_a_column_that_cannot_hold_addresses_is_refused_before_the_wrapped_query_runs(tmp_path: Path) -> None:
    """The probe's column types, where the dialect tells them without a row (DuckDB, PostgreSQL): the
    same refusal as client mode, not an audience of rejected numbers."""
    from etl.errors import TransformError

    engine = sa.create_engine(f"duckdb:///{tmp_path / 'wh.duckdb'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE people AS SELECT 42 AS email")
    engine.dispose()
    path = _project(tmp_path, 'identifier = "email"', url=f"duckdb:///{tmp_path / 'wh.duckdb'}")
    config = load_config(path)
    with pytest.raises(TransformError, match="has type int32, which cannot hold e-mail addresses"):
        list(cleaned_batches(config, "a", WHEN))
