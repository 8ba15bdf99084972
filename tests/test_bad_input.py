"""The bad-input matrix: every kind of bad input a user can give ends, through the real command, in one
clear message (where, what, what to do; exit 2 for the configuration, 1 for a failed run; never a
traceback) or in a clean reject (the row in the reject file with its reason)."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

import dbservers
from etl.values.rules import FieldRule, apply_rule
from etl.errors import FileWriteError
from etl.transform.delta import replace_parquet
from conftest import Shown
from test_transform import INVALID

BASE = """
[settings]
state_dir = "state"

[warehouses.w]
url = "sqlite:///wh.db"

[destinations.d]
environment = "ENV-0"
entity = "acme"
files = { type = "local", path = "outbox" }

[activations.a]
sql = "a.sql"
destination = "d"
identifier = "email"
"""


@pytest.fixture
def project(tmp_path: Path, cli: Callable[..., Shown]) -> Callable[..., Shown]:
    """``project(*args, toml=BASE, sql=..., env={})``: run the CLI in a project directory with a SQLite
    warehouse holding table ``c`` (empty unless a test fills it)."""
    with sqlite3.connect(tmp_path / "wh.db") as db:
        db.execute("CREATE TABLE c (id INTEGER, email TEXT, pid, raw BLOB)")

    def run(*args: str, toml: str | bytes = BASE, sql: str | bytes = "SELECT email FROM c",
            env: dict[str, str] | None = None) -> Shown:
        config = tmp_path / "schedules.toml"
        config.write_bytes(toml if isinstance(toml, bytes) else textwrap.dedent(toml).encode())
        sql_file = tmp_path / "a.sql"
        sql_file.write_bytes(sql if isinstance(sql, bytes) else sql.encode())
        saved = {name: os.environ.get(name) for name in (env or {})}
        os.environ.update(env or {})
        try:
            return cli(config, *args)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    return run


def fill(tmp_path: Path, rows: list[tuple[object, ...]], columns: str = "id, email") -> None:
    with sqlite3.connect(tmp_path / "wh.db") as db:
        db.executemany(f"INSERT INTO c ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})", rows)


def shown(value: object) -> str:
    """A value as the reject file shows it: text, with a quote before what a spreadsheet would compute."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def rejects_of(tmp_path: Path) -> list[dict[str, str]]:
    """The reject file of the last run, parsed as RFC 4180 CSV."""
    path = max((tmp_path / "state" / "runs" / "a").glob("*/a.rejects.csv"), key=lambda p: p.stat().st_mtime_ns)
    raw = path.read_bytes()
    assert raw.startswith(b"row,value,reason\n")
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))


def assert_clear(result: Shown, code: int, *fragments: str) -> None:
    assert result.code == code, result.said
    assert "Traceback" not in result.said and "internal error" not in result.said, result.said
    for fragment in fragments:
        assert fragment in result.said, (fragment, result.said)


# --------------------------------------------------------------------------- the configuration: exit 2

_SFTP = 'files = { type = "local", path = "outbox" }'
CONFIG_CASES = {
    "malformed TOML": (BASE + "\n[activations.b\n", {}, ["not valid TOML", "(at line 18, column 15)"]),
    "unknown key": (BASE + 'colour = "red"\n', {}, ["[activations.a] colour: unknown key"]),
    "unknown table": (BASE + '[warehouse.x]\nurl = "sqlite:///x.db"\n', {}, ["warehouse: unknown table"]),
    "missing env var": (
        BASE.replace("sqlite:///wh.db", "postgresql+psycopg://etl:${DWH_PW_UNSET}@db/x"), {},
        ["[warehouses.w] url: environment variable DWH_PW_UNSET is not set (nor DWH_PW_UNSET_FILE)"],
    ),
    "*_FILE secret that does not exist": (
        BASE.replace(_SFTP, 'files = { type = "sftp", host = "h", username = "u", password = "${SFTP_PW}" }'),
        {"SFTP_PW_FILE": "/nonexistent/sftp-password"},
        ["[destinations.d] files.password: $SFTP_PW_FILE points to '/nonexistent/sftp-password': No such file"],
    ),
    "password_file that does not exist": (
        BASE.replace(_SFTP, 'files = { type = "sftp", host = "h", username = "u", password_file = "/nonexistent/p" }'),
        {}, ["files.password_file: cannot read '/nonexistent/p': No such file or directory"],
    ),
    "wrong types": (
        BASE.replace("[warehouses.w]", '[warehouses.w]\nchunk_size = "many"') + 'enabled = "maybe"\nparams = 3\n'
        + 'file = { separator = "|", max_bytes = 1.5 }\n', {},
        ["[warehouses.w] chunk_size: Input should be a valid integer, unable to parse string as an integer "
         "(you wrote 'many')", "[activations.a] enabled: Input should be a valid boolean", "(you wrote 'maybe')",
         "[activations.a] params: Input should be a valid dictionary (you wrote 3)",
         "[activations.a] file.separator: Input should be ',', ';' or '\\t' (you wrote '|')",
         "[activations.a] file.max_bytes: Input should be a valid integer, got a number with a fractional part"],
    ),
    "a table where keys were expected": ("warehouses = 3\n" + BASE.replace("[warehouses.w]", "[x]"), {},
                                         ["warehouses: expected [warehouses.NAME] tables"]),
    "a port in words": (
        BASE.replace(_SFTP, 'files = { type = "sftp", host = "h", port = "twenty-two", username = "u", '
                            'password = "${P}" }'), {"P": "x"},
        ["[destinations.d] files.port: Input should be a valid integer", "(you wrote 'twenty-two')"],
    ),
    "a secret of the wrong type is not echoed": (
        BASE.replace(_SFTP, 'files = { type = "sftp", host = "h", username = "u", password = ["s3cr3t-list"] }'),
        {}, ["[destinations.d] files.password: Input should be a valid string"],
    ),
    "activation name climbing out": (BASE.replace("[activations.a]", '[activations."../../x"]'), {},
                                     ["[activations.../../x]: names use letters, digits, '_', '.', '-' only"]),
    "file name with a path": (BASE + 'file = { name = "../../etc/cron.d/x.csv" }\n', {},
                              ["[activations.a] file.name: must be a file name, without / or \\"]),
    "absolute file name": (BASE + 'file = { name = "/etc/x.csv" }\n', {}, ["[activations.a] file.name: must be a file name"]),
    "hidden file name": (BASE + 'file = { name = ".x.csv" }\n', {}, ["file.name: must not start with a dot"]),
    "file name with a shell": (BASE + 'file = { name = "x;rm -rf ~.csv" }\n', {},
                               ["file.name: may only use letters A-Z a-z, digits, '.', '_' and '-'"]),
    "remote_dir climbing out": (
        BASE.replace(_SFTP, 'files = { type = "sftp", host = "h", username = "u", password = "${P}", '
                            'remote_dir = "upload/../../../etc" }'), {"P": "x"},
        ["[destinations.d] files.remote_dir: remote_dir must not contain '..'"],
    ),
    "remote_dir with an FTP command": (
        BASE.replace(_SFTP, 'files = { type = "ftps", host = "h", username = "u", password = "${P}", '
                            'remote_dir = "in\\r\\nDELE important.csv" }'), {"P": "x"},
        ["files.remote_dir: remote_dir must not contain control characters"],
    ),
    "missing SQL file": (BASE.replace('sql = "a.sql"', 'sql = "sql/missing.sql"'), {},
                         ["[activations.a] sql: no such file:", "missing.sql"]),
    "undeclared parameter": (BASE, {}, ["[activations.a] params: a.sql uses :min_orders which is not declared"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_configuration_mistakes_are_named_with_exit_2(project: Callable[..., Shown], case: str) -> None:
    toml, env, fragments = CONFIG_CASES[case]
    sql = "SELECT email FROM c WHERE id >= :min_orders" if case == "undeclared parameter" else "SELECT email FROM c"
    for command in (["validate"], ["run", "a"]):
        result = project(*command, toml=toml, env=env, sql=sql)
        assert_clear(result, 2, "problem", *fragments)
        assert "s3cr3t-list" not in result.said


def test_a_configuration_that_is_not_utf8_or_missing(project: Callable[..., Shown], tmp_path: Path) -> None:
    latin1 = project("validate", toml=BASE.replace("acme", "acm\xe9").encode("latin-1"))
    assert_clear(latin1, 2, "schedules.toml: not UTF-8 text (invalid continuation byte at byte")
    assert_clear(project("validate", "--config", str(tmp_path / "nowhere.toml")), 2,
                 "nowhere.toml: file not found: pass --config PATH or set AUDIENCE_SYNC_CONFIG")


def test_a_failed_run_in_its_own_process_shows_no_traceback(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "wh.db") as db:
        db.execute("CREATE TABLE c (email TEXT)")
    (tmp_path / "schedules.toml").write_text(BASE)
    (tmp_path / "a.sql").write_text("SELECT email FROM c WHERE")
    done = subprocess.run([sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"), "run", "a"],
                          capture_output=True, text=True, timeout=120)
    assert_clear(Shown(done.returncode, done.stdout, done.stderr), 1, "a.sql: incomplete input", "fix the query")


def test_an_unknown_activation_is_named_with_the_known_ones(project: Callable[..., Shown]) -> None:
    assert_clear(project("run", "nope"), 2, "activation 'nope': not in the configuration (known: a)")


def test_sql_files_outside_the_project_are_the_operators_choice(project: Callable[..., Shown], tmp_path: Path) -> None:
    shared = tmp_path.parent / f"{tmp_path.name}-shared.sql"
    shared.write_text("SELECT email FROM c")
    assert_clear(project("validate", toml=BASE.replace('sql = "a.sql"', f'sql = "{shared}"')), 0, "ok")


# --------------------------------------------------------------------------- the query: exit 1, nothing delivered

QUERY_CASES = {
    "syntax error": ("SELEC email FROM c", ['near "SELEC": syntax error', "a.sql", "fix the query"]),
    "unknown table": ("SELECT email FROM customers_typo", ["no such table: customers_typo", "a.sql"]),
    "no identifier column": ("SELECT id, pid FROM c", [
        "cannot tell which column holds the e-mail address: the query returns 'id', 'pid'",
        "alias the column in the SQL"]),
    "identifier column of the wrong type": ("SELECT id AS email FROM c", [
        "the identifier column 'email' has type int64, which cannot hold e-mail addresses", "a.sql"]),
    "empty result": ("SELECT email FROM c WHERE id < 0", [
        "not delivered: the audience is empty", "--force"]),
    "every row rejected": ("SELECT 'not an address ' || id AS email FROM c", [
        "not delivered: the audience is empty", "reject file"]),
}


@pytest.mark.parametrize("case", QUERY_CASES, ids=list(QUERY_CASES))
def test_query_problems_fail_the_run_with_the_databases_words(
    project: Callable[..., Shown], tmp_path: Path, case: str
) -> None:
    fill(tmp_path, [(1, "a@x.com"), (2, "b@x.com")])
    sql, fragments = QUERY_CASES[case]
    result = project("run", "a", sql=sql)
    assert_clear(result, 1, "failed", *fragments)
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())


def test_an_intended_empty_audience_is_delivered_with_force(project: Callable[..., Shown], tmp_path: Path) -> None:
    assert_clear(project("run", "a", "--force"), 0)
    assert (tmp_path / "outbox" / "a.csv").read_text() == "emailAddress\n"


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_query_problems_on_server_databases(project: Callable[..., Shown], tmp_path: Path, dialect: str) -> None:
    url = dbservers.postgres_url() if dialect == "postgresql" else dbservers.mariadb_url()
    table = dbservers.unique_name("bad_input")
    blob = "bytea" if dialect == "postgresql" else "varbinary(64)"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {table} (email varchar(64), raw {blob}, signed_up date)"))
        connection.execute(sa.text(f"INSERT INTO {table} VALUES ('a@x.com', :raw, '2020-01-01')"),
                           {"raw": "café@x.com".encode("latin-1")})
    toml = BASE.replace("sqlite:///wh.db", url)
    try:
        syntax = project("run", "a", toml=toml, sql=f"SELEC email FROM {table}")
        database_words = 'syntax error at or near "SELEC"' if dialect == "postgresql" else "error in your SQL syntax"
        assert_clear(syntax, 1, database_words, "a.sql")
        wrong_type = project("run", "a", toml=toml, sql=f"SELECT signed_up AS email FROM {table}")
        assert_clear(wrong_type, 1, "the identifier column 'email' has type date32[day], which cannot hold e-mail")
        as_ids = project("run", "a", toml=toml.replace('identifier = "email"', 'identifier = "profileId"'),
                         sql=f"SELECT signed_up AS profileId FROM {table}")
        assert_clear(as_ids, 1, "has type date32[day], which cannot hold Actito profile ids")
        latin1 = project("run", "a", "--force", toml=toml, sql=f"SELECT raw AS email FROM {table}")
        assert_clear(latin1, 0)
        assert rejects_of(tmp_path) == [
            {"row": "1", "value": "caf\ufffd@x.com", "reason": "not UTF-8 text (undecodable bytes shown as U+FFFD)"}]
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()


# --------------------------------------------------------------------------- dirty rows: clean rejects

DIRTY_EMAILS = [
    ("  Jane@Example.COM ", None),  # kept as jane@example.com
    ("MAILTO:jane@example.com", "duplicate"),
    *INVALID,  # one address per rule of Actito's, each with its reason
    ("nul\x00byte@example.com", "character not allowed before the @"),
    ("tab\tinside@example.com", "character not allowed before the @"),
    ("bob@example.org", None),
]


def test_ten_and_more_kinds_of_dirty_emails_are_rejected_with_their_reason(
    project: Callable[..., Shown], tmp_path: Path
) -> None:
    fill(tmp_path, [(i, value) for i, (value, _) in enumerate(DIRTY_EMAILS, start=1)])
    result = project("run", "a", sql="SELECT email FROM c ORDER BY id")
    assert_clear(result, 0, "succeeded")
    assert (tmp_path / "outbox" / "a.csv").read_text() == "emailAddress\njane@example.com\nbob@example.org\n"
    expected = [{"row": str(row), "value": shown(value), "reason": reason}
                for row, (value, reason) in enumerate(DIRTY_EMAILS, start=1) if reason]
    assert rejects_of(tmp_path) == expected
    assert len({reason for _, reason in DIRTY_EMAILS if reason}) >= 14


DIRTY_PROFILE_IDS: list[tuple[object, str | None]] = [
    (42, None),
    ("0042", "duplicate"),
    (" 7 ", None),
    (-3, "negative"),
    (0, "zero"),
    (1.5, "decimal point not allowed"),  # SQLite mixes types in the column: read as text
    ("9223372036854775808", "too large (beyond 9223372036854775807)"),  # one past the signed 64-bit range
    (str(2**70), "too large (beyond 9223372036854775807)"),
    ("+5", "sign not allowed"),
    ("5.0", "decimal point not allowed"),
    ("abc", "not a number"),
    ("1e3", "not a number"),
    (None, "missing"),
]


def test_dirty_profile_ids_are_rejected_with_their_reason(project: Callable[..., Shown], tmp_path: Path) -> None:
    fill(tmp_path, [(i, value) for i, (value, _) in enumerate(DIRTY_PROFILE_IDS, start=1)], columns="id, pid")
    toml = BASE.replace('identifier = "email"', 'identifier = "profileId"')
    assert_clear(project("run", "a", toml=toml, sql='SELECT pid AS "profileId" FROM c ORDER BY id'), 0)
    assert (tmp_path / "outbox" / "a.csv").read_text() == "profileId\n42\n7\n"
    expected = [{"row": str(row), "value": shown(value), "reason": reason}
                for row, (value, reason) in enumerate(DIRTY_PROFILE_IDS, start=1) if reason]
    assert rejects_of(tmp_path) == expected


def test_bytes_that_are_not_utf8_huge_values_and_nuls_are_rows_rejected(
    project: Callable[..., Shown], tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "wh.db") as db:
        db.execute("INSERT INTO c (id, email) VALUES (1, 'ok@example.com')")
        db.execute("INSERT INTO c (id, email) VALUES (2, CAST(X'63E940782E636F6D' AS TEXT))")  # latin-1 'cé@x.com'
        db.execute("INSERT INTO c (id, email) VALUES (3, ?)", ("y" * 1_000_000,))
        db.execute("INSERT INTO c (id, email) VALUES (4, ?)", ("a\x00@example.com",))
    assert_clear(project("run", "a", sql="SELECT email FROM c ORDER BY id"), 0)
    assert (tmp_path / "outbox" / "a.csv").read_text() == "emailAddress\nok@example.com\n"
    rejects = rejects_of(tmp_path)
    assert rejects[0] == {"row": "2", "value": "c\ufffd@x.com", "reason": "not UTF-8 text (undecodable bytes shown as U+FFFD)"}
    assert rejects[1]["reason"] == "longer than 255 characters"
    assert rejects[1]["value"] == "y" * 1000 + "… (1000000 characters)"  # the reject file stays small
    assert rejects[2] == {"row": "4", "value": "a\x00@example.com", "reason": "character not allowed before the @"}


def test_a_blob_column_is_read_as_utf8(project: Callable[..., Shown], tmp_path: Path) -> None:
    fill(tmp_path, [(1, b"Blob@Example.com"), (2, b"caf\xe9@x.com")], columns="id, raw")
    assert_clear(project("run", "a", sql="SELECT raw AS email FROM c ORDER BY id"), 0)
    assert (tmp_path / "outbox" / "a.csv").read_text() == "emailAddress\nblob@example.com\n"
    assert [r["reason"] for r in rejects_of(tmp_path)] == ["not UTF-8 text (undecodable bytes shown as U+FFFD)"]


# --------------------------------------------------------------------------- formula injection in the reject file

FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1",
            "=cmd|' /C calc'!A0", 'a,"b"\r\nc', "-1@x"]


def test_reject_values_are_defused_and_the_file_stays_rfc_4180(project: Callable[..., Shown], tmp_path: Path) -> None:
    fill(tmp_path, [(i, value) for i, value in enumerate(FORMULAS, start=1)])
    assert_clear(project("run", "a", "--force", sql="SELECT email FROM c ORDER BY id"), 0)
    rejects = rejects_of(tmp_path)
    assert [r["row"] for r in rejects] == [str(i) for i in range(1, len(FORMULAS) + 1)]
    assert [r["value"] for r in rejects] == [shown(value) for value in FORMULAS]  # one prefix, the rest unchanged
    assert sum(r["value"].startswith("'") for r in rejects) == len(FORMULAS) - 1
    assert all(len(row) == 3 for row in csv.reader(io.StringIO(
        next((tmp_path / "state" / "runs" / "a").glob("*/a.rejects.csv")).read_text(), newline="")))


# --------------------------------------------------------------------------- symbolic links


def test_a_link_at_the_final_name_is_replaced_not_followed(project: Callable[..., Shown], tmp_path: Path) -> None:
    fill(tmp_path, [(1, "a@x.com")])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "a.csv").symlink_to(victim)
    assert_clear(project("run", "a"), 0)
    assert victim.read_text() == "precious\n"
    delivered = tmp_path / "outbox" / "a.csv"
    assert not delivered.is_symlink() and delivered.read_text() == "emailAddress\na@x.com\n"


def test_an_outbox_that_is_a_link_is_refused(project: Callable[..., Shown], tmp_path: Path) -> None:
    fill(tmp_path, [(1, "a@x.com")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "outbox").symlink_to(elsewhere)
    message = f"[destinations.d] files.path: is a symbolic link: write the real directory, {elsewhere.resolve()}"
    assert_clear(project("validate"), 2, message)
    assert_clear(project("run", "a"), 2, message)
    assert list(elsewhere.iterdir()) == []  # a link swapped in after validation: tests/test_delivery_local.py


def test_a_link_in_the_state_directory_is_refused(project: Callable[..., Shown], tmp_path: Path) -> None:
    fill(tmp_path, [(1, "a@x.com")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state" / "runs").mkdir(parents=True)
    (tmp_path / "state" / "runs" / "a").symlink_to(elsewhere)
    result = project("run", "a")
    assert_clear(result, 1, "runs/a: is a symbolic link", "remove")
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "outbox").exists()


@pytest.mark.parametrize("rule", ["string", "email", "country", "date"])
def test_bytes_that_are_not_utf8_are_never_sent_to_actito_by_an_import(rule: FieldRule) -> None:
    written, reasons = apply_rule(rule, pa.array([b"caf\xe9", b"BE"]), column="c")
    assert written.to_pylist()[0] is None
    assert reasons.to_pylist()[0] == "not UTF-8 text (undecodable bytes shown as U+FFFD)"


def test_a_snapshot_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "snapshots").symlink_to(elsewhere)
    with pytest.raises(FileWriteError, match="snapshots: is a symbolic link"):
        replace_parquet(tmp_path / "state" / "snapshots" / "a.parquet", pa.table({"member": ["a@x.com"]}))
    assert list(elsewhere.iterdir()) == []
