"""Database failures as ExtractErrors carrying the database's own message, never a password and never
the SQL echo that drivers append."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL

from etl.errors import ExtractError
from etl.extract.engine import first_line

_QUERY_HINT = "fix the query, then try it with `audience-sync preview NAME`"

# ``:name::type`` — sqlalchemy.text() does not take ``:name`` before ``::`` as a parameter (see below)
_CAST_AFTER_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)::(\w+)")

#: what a read-only refusal says, per dialect, to explain it instead of showing the bare error
_READ_ONLY_REFUSALS = ("read-only transaction", "read only transaction", "readonly database",
                       "attempt to write a readonly", "query_only")


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
    return first_line(text, url)
