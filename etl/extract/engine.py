"""Warehouse engines: an engine for a URL (or an error saying what to fix), the read-only session an
audience query runs in, and database failures as ExtractErrors without a password or the SQL echo."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL

from etl.config import Config
from etl.errors import ExtractError
from etl.logs import redact
from etl.runtime.doubles import ensure_demo_warehouse

#: what to install for a missing driver module: the project's extra when we ship one
_EXTRA_FOR_MODULE = {
    "psycopg": "postgres", "pymysql": "mysql", "duckdb": "duckdb", "duckdb_engine": "duckdb", "snowflake": "snowflake",
}
#: the URL form our extras support, for a dialect asked for with another driver (``postgresql+psycopg2``)
_SUPPORTED_URL = {
    "postgresql": ("postgresql+psycopg://", "postgres"),
    "mysql": ("mysql+pymysql://", "mysql"),
    "mariadb": ("mariadb+pymysql://", "mysql"),
    "duckdb": ("duckdb:///", "duckdb"),
    "snowflake": ("snowflake://", "snowflake"),
    "bigquery": ("bigquery://", "bigquery"),
}
#: packages providing third-party dialects the README documents
_DIALECT_PACKAGES = {"trino": "trino"}
#: what to do about a URL a dialect refuses, where the dialect's own words point at code, not at the URL
_URL_HINTS = {
    "snowflake": "snowflake-sqlalchemy takes no host or protocol in the URL: name the account in the URL's "
                 "host part, or a server with ?server_url=https://HOST:PORT",
}
#: file-backed dialects: a missing file means a wrong path, not a new empty warehouse
_FILE_DIALECTS = ("sqlite", "duckdb")


def create_warehouse_engine(url: str, *, where: str) -> sa.Engine:
    """An engine for the warehouse URL, or an ExtractError a user can act on: the driver is imported here,
    so a missing one is reported before any work starts. The URL is shown with its password masked."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        # the raw string is never echoed: it may hold a password
        detail = "a part is invalid, e.g. a non-numeric port" if isinstance(exc, ValueError) else "cannot be parsed"
        raise ExtractError(
            f"not a SQLAlchemy URL ({detail})",
            where=where,
            hint="write it as dialect+driver://user:password@host:port/database, e.g. postgresql+psycopg://host/db",
        ) from None
    if parsed.host and "@" in parsed.host:
        # "user:p@ss@host" parses with password "p" and host "ss@host": showing the URL would leak the rest
        raise ExtractError(
            "the URL has more than one '@': a user name or password contains a reserved character",
            where=where,
            hint="percent-encode it in the URL (@ as %40, / as %2F, : as %3A, # as %23)",
        )
    safe = safe_url(parsed)
    _check_database_file(parsed, safe, where)
    try:
        engine = sa.create_engine(parsed)
    except sa.exc.NoSuchModuleError:
        raise ExtractError(
            f"no SQLAlchemy dialect '{parsed.get_backend_name()}' is installed (URL {safe})",
            where=where,
            hint=_dialect_hint(parsed),
        ) from None
    except ImportError as exc:
        module = (exc.name or "").split(".")[0]
        raise ExtractError(
            f"the database driver for {parsed.drivername} is not installed (no module '{module or exc}')",
            where=where,
            hint=_driver_hint(parsed, module),
        ) from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:
        raise ExtractError(
            f"unusable warehouse URL {safe}: {_first_line(str(exc), parsed)}", where=where,
            hint=_URL_HINTS.get(parsed.get_backend_name(), ""),
        ) from None
    except Exception as exc:  # a third-party dialect failing as it sets up: BigQuery without credentials
        raise ExtractError(
            f"the {parsed.get_backend_name()} dialect cannot use URL {safe}: "
            f"{type(exc).__name__}: {_first_line(str(exc), parsed)}",
            where=where,
            hint="check the URL's options and the credentials its dialect reads (its documentation says where)",
        ) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _lenient_sqlite_text)
    return engine


def _lenient_sqlite_text(dbapi_connection: Any, connection_record: Any) -> None:
    """sqlite3 aborts the whole query on the first TEXT value that is not UTF-8: decoded with U+FFFD, it
    is one rejected row ("not UTF-8 text") instead of a failed run."""
    dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "replace")


def safe_url(url: URL) -> str:
    return redact(url.render_as_string(hide_password=True))


def _first_line(text: str, url: URL) -> str:
    """The message's first line; one that announces the next ends with a colon, and takes it along
    (Snowflake's "SQL compilation error:" says what is wrong on its second line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else "(no message)"
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1]}"
    password = url.password
    if password:
        line = line.replace(str(password), "***")
    return line


def _check_database_file(url: URL, safe: str, where: str) -> None:
    """SQLite and DuckDB create a missing file silently: a mistyped path would read an empty warehouse."""
    database = url.database or ""
    if url.get_backend_name() not in _FILE_DIALECTS or not database or database == ":memory:":
        return
    if database.startswith(("file:", "md:", "motherduck:")) or "://" in database:
        return  # URI filenames and remote databases: not a local path to check
    if not Path(database).exists():
        raise ExtractError(
            f"no database file at {database} (URL {safe})",
            where=where,
            hint="check the path; a relative path is relative to the configuration file",
        )


def _driver_hint(url: URL, module: str) -> str:
    extra = _EXTRA_FOR_MODULE.get(module)
    if extra is not None:
        return f"pip install 'audience-sync[{extra}]'"
    supported = _SUPPORTED_URL.get(url.get_backend_name())
    if supported is not None:
        form, extra = supported
        return f"use a {form} URL with pip install 'audience-sync[{extra}]', or install the package for '{module}'"
    return f"install the Python package that provides the '{module}' module (the {url.drivername} driver)"


def _dialect_hint(url: URL) -> str:
    name = url.get_backend_name()
    if name in _SUPPORTED_URL:
        return f"pip install 'audience-sync[{_SUPPORTED_URL[name][1]}]'"
    if name in _DIALECT_PACKAGES:
        return f"pip install {_DIALECT_PACKAGES[name]}"
    return f"install the package that provides SQLAlchemy's '{name}' dialect, or check the URL's spelling"


#: how each dialect makes the audience query read-only, before it runs; MySQL and MariaDB need the
#: session's setting, since DDL commits the current transaction and would run outside it
_READ_ONLY = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}  # DuckDB: etl.extract.duckdb_reader refuses writes
#: the session settings above, undone before the connection goes back to the pool
_READ_WRITE = {
    "mysql": "SET SESSION TRANSACTION READ WRITE",
    "mariadb": "SET SESSION TRANSACTION READ WRITE",
    "sqlite": "PRAGMA query_only = OFF",
}


def read_only(connection: sa.Connection) -> None:
    """Enforced by the database, not by a parse of the SQL: ``preview`` promises to write nothing and a run
    must never change the warehouse. DuckDB has no read-only transaction (see `etl.extract.duckdb_reader`)."""
    statement = _READ_ONLY.get(connection.dialect.name)
    if statement is not None:
        connection.exec_driver_sql(statement)


def end_read_only(connection: sa.Connection) -> None:
    """A session setting goes back to the pool with the connection: undone, or the connection dropped."""
    statement = _READ_WRITE.get(connection.dialect.name)
    if statement is None or connection.invalidated:
        return
    try:
        connection.rollback()
        connection.exec_driver_sql(statement)
    except sa.exc.SQLAlchemyError:
        connection.invalidate()


def activation_engine(config: Config, name: str) -> sa.Engine:
    """The engine of the activation's warehouse; the demo warehouse is built on first use."""
    warehouse_name, warehouse = config.warehouse_for(name)
    url = _anchored(config, warehouse.url.get_secret_value())
    if warehouse.demo:
        ensure_demo_warehouse(url)
    return create_warehouse_engine(url, where=f"[warehouses.{warehouse_name}] url")


def _anchored(config: Config, url: str) -> str:
    """A relative SQLite/DuckDB file in a URL is relative to the configuration file, like every other path."""
    for prefix in ("sqlite:///", "duckdb:///"):
        if url.startswith(prefix) and not url[len(prefix) :].startswith(("/", ":memory:")) and url != prefix:
            return prefix + str(config.path(Path(url[len(prefix) :])))
    return url


_QUERY_HINT = "fix the query, then try it with `audience-sync preview NAME`"

# ``:name::type`` — sqlalchemy.text() does not take ``:name`` before ``::`` as a parameter (see below)
_CAST_AFTER_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)::(\w+)")

#: what a read-only refusal says, per dialect, to explain it instead of showing the bare error
_READ_ONLY_REFUSALS = ("read-only transaction", "read only transaction", "readonly database",
                       "attempt to write a readonly", "query_only")

#: what a missing permission says (BigQuery's 403, PostgreSQL's "permission denied for table"): not the SQL's fault
_PERMISSION_REFUSALS = ("access denied", "permission denied")
_PERMISSION_HINT = ("the warehouse user lacks a permission: grant it what the query reads (BigQuery: the roles "
                    "the README names), then try it with `audience-sync preview NAME`")


def database_errors(engine: sa.Engine) -> tuple[type[BaseException], ...]:
    """What a database call may raise: SQLAlchemy's errors, the driver's own (fast paths call it directly)."""
    errors: list[type[BaseException]] = [sa.exc.SQLAlchemyError, pa.ArrowException]
    driver_error = getattr(engine.dialect.loaded_dbapi, "Error", None)
    if isinstance(driver_error, type) and issubclass(driver_error, BaseException):
        errors.append(driver_error)
    return tuple(errors)


def query_error(exc: BaseException, url: URL, where: str, sql: str) -> ExtractError:
    message = database_message(exc, url)
    if isinstance(exc, sa.exc.ResourceClosedError):
        return ExtractError(
            "the query returns no rows (is it a SELECT?)", where=where, hint="an audience query must be a SELECT"
        )
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return ExtractError(
            f"the connection to the warehouse broke off: {message}",
            where=where,
            hint="the query itself may be fine; run again once the warehouse is reachable",
        )
    if any(refusal in message.lower() for refusal in _READ_ONLY_REFUSALS):
        return ExtractError(
            f"the query tried to write to the warehouse, which audience SQL may not: {message}",
            where=where,
            hint="audience SQL runs in a read-only transaction: keep it to one SELECT (or WITH … SELECT); "
                 "build tables with your warehouse's own tools (dbt, scheduled SQL)",
        )
    if any(refusal in message.lower() for refusal in _PERMISSION_REFUSALS):
        return ExtractError(message, where=where, hint=_PERMISSION_HINT)
    casts = _CAST_AFTER_PARAMETER.findall(sql)
    if casts:
        name, type_ = casts[0]
        hint = (
            f"text() does not take :{name} before '::' as a parameter: write CAST(:{name} AS {type_}), "
            "then try it with `audience-sync preview NAME`"
        )
        return ExtractError(message, where=where, hint=hint)
    return ExtractError(message, where=where, hint=_QUERY_HINT)


def database_message(exc: BaseException, url: URL) -> str:
    """The database's own words: the driver's first line, without SQLAlchemy's SQL echo or a password."""
    original = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    args: tuple[Any, ...] = getattr(original, "args", ())
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} (error {args[0]})"  # PyMySQL: (code, message)
    else:
        text = str(original)
    return _first_line(text, url)
