"""``clean_in = "warehouse"``: the audience query wrapped so the warehouse normalises and groups the
e-mail addresses, and returns each distinct one once with the number of source rows it stood for.

The client then holds no dedupe memory: its memory is a chunk's, however large the audience. The key
the SQL computes must be `etl.values.email.normalise_emails` exactly for every value that can become a
valid address (pure ASCII, see ``EMAIL_SHAPE``): trim Arrow's whitespace set, strip leading
``mailto:`` (any case, repeated, trimming between), fold the two non-ASCII characters whose lowercase
is ASCII, lowercase. Where a dialect lowercases other non-ASCII characters differently, only values
that are invalid anyway are grouped differently, and invalid rows are counted one by one whatever
their group. The client validates every key again and re-normalises it: a key its normalisation
changes is a disagreement (`AudienceCleaner.clean_counted`), handled and logged, never trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from etl.config import Config
from etl.config.checks import PUSHDOWN_DIALECTS
from etl.config.sql import text_statement
from etl.errors import ExtractError
from etl.extract.checks import query_schema
from etl.extract.postgres import without_trailing_semicolons
from etl.extract.stream import activation_batches

#: the column of the wrapped query's result that holds the number of source rows of each key
COUNT_COLUMN = "audience_sync_rows"

#: what ``pyarrow.compute.utf8_trim_whitespace`` trims (Unicode White_Space, and U+001C-U+001F that
#: Arrow counts too); tests/test_pushdown.py checks it against Arrow over every code point
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
              + "\u2028\u2029\u202f\u205f\u3000")
#: the non-ASCII characters whose (simple) lowercase is ASCII: Kelvin sign, capital I with dot above
ASCII_FOLDS = {"\u212a": "k", "\u0130": "i"}

_SPACE = f"[{WHITESPACE}]"
#: leading whitespace and ``mailto:`` prefixes, any case, repeated; groups that capture, as Snowflake's
#: POSIX regular expressions have no ``(?:``; the letters are classes, so no collation or locale folds them
_LEADING = f"^({_SPACE}*[Mm][Aa][Ii][Ll][Tt][Oo]:)*{_SPACE}*"
_TRAILING = f"{_SPACE}+$"
#: SQLite has no regular expressions: a ``mailto:`` is stripped per nested level, up to this many
SQLITE_MAILTO_LEVELS = 8


def warehouse_batches(
    config: Config, name: str, when: datetime, choose: Callable[[pa.Schema], str]
) -> Iterator[pa.RecordBatch]:
    """The activation's audience as (key, COUNT_COLUMN) batches, the key labelled as the identifier
    column ``choose`` picks from the query's columns. The columns are read first by a query that selects
    nothing: the wrapper must name the column before the query runs."""
    column = choose(query_schema(config, name, when))

    def wrap(sql: str, dialect: sa.Dialect) -> sa.Select[Any]:
        return audience_statement(sql, column, dialect.name, where=config.query_where(name))

    yield from activation_batches(config, name, when, wrap=wrap)


def audience_statement(sql: str, column: str, dialect: str, *, where: str = "") -> sa.Select[Any]:
    """``SELECT key AS column, COUNT(*) FROM (SELECT key FROM (query)) GROUP BY key``: the key is computed
    in a subquery of its own, so the GROUP BY names a column, not an expression holding bound values that
    a server binding them itself could not prove equal to the selected one. The query's parameters stay
    its own; its trailing semicolons go, and a line break ends it, or a last ``--`` comment would hide
    the closing parenthesis."""
    if dialect not in PUSHDOWN_DIALECTS:  # refused by the configuration's check already
        raise ExtractError(f'clean_in = "warehouse" is not available for {dialect} yet', where=where,
                           hint='use clean_in = "client"')
    text = text_statement(without_trailing_semicolons(sql) + "\n")
    query = text.columns(sa.column(column)).subquery("audience_sync_query")
    keys = _sqlite_keys(query.c[column]) if dialect == "sqlite" else sa.select(
        _regex_key(query.c[column], dialect).label("k")).order_by("k").subquery("audience_sync_keys")
    # in order of the key: grouped by hash, the addresses come in random order, and the gzip file of a
    # large audience is twice the size (Actito refuses one over 100 MB); sorted, the same audience is
    # also the same file, byte for byte, whatever the plan. The keys are sorted before they are grouped
    # too: PostgreSQL then groups the sorted stream (one sort, no hash table spilling to disk), 8.6 s
    # instead of 11.0 s over 10M customers; MariaDB ignores a derived table's order, the outer one stays
    return sa.select(keys.c.k.label(column), sa.func.count().label(COUNT_COLUMN)).group_by(keys.c.k).order_by(keys.c.k)


def _regex_key(value: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """One pass of regular expressions (PostgreSQL, MariaDB's PCRE, DuckDB's RE2, Snowflake's POSIX)."""
    text: sa.ColumnElement[Any]
    if dialect in ("mysql", "mariadb"):
        # a binary collation: a case- or accent-insensitive one would group é with e, and drop a valid
        # address in an invalid group; LOWER still lowercases a nonbinary string of a _bin collation
        text = sa.collate(sa.cast(value, mysql.CHAR(charset="utf8mb4")), "utf8mb4_bin")
    elif dialect == "postgresql":
        # bytes compared, not the database's locale: grouping and sorting on strcoll took twice as long
        text = sa.collate(sa.cast(value, sa.String), "C")
    else:
        text = sa.cast(value, sa.String)
    stripped = sa.func.regexp_replace(sa.func.regexp_replace(text, _LEADING, ""), _TRAILING, "")
    return sa.func.lower(_fold(stripped))


def _sqlite_keys(value: sa.ColumnElement[Any]) -> sa.Subquery:
    """SQLite: ``trim(X, Y)`` trims a set of characters; a ``mailto:`` is stripped per nested subquery (an
    expression repeating its argument would grow threefold per level); ``lower`` is ASCII-only, which
    changes nothing for a value that can become valid."""
    level = sa.select(sa.func.trim(sa.cast(value, sa.String), WHITESPACE).label("k")).subquery("audience_sync_k0")
    for depth in range(1, SQLITE_MAILTO_LEVELS + 1):
        current = level.c.k
        prefixed = sa.func.lower(sa.func.substr(current, 1, 7)) == "mailto:"
        stripped = sa.func.trim(sa.func.substr(current, 8), WHITESPACE)
        level = sa.select(sa.case((prefixed, stripped), else_=current).label("k")).subquery(f"audience_sync_k{depth}")
    return sa.select(sa.func.lower(_fold(level.c.k)).label("k")).order_by("k").subquery("audience_sync_keys")


def _fold(text: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    for character, ascii_letter in ASCII_FOLDS.items():
        text = sa.func.replace(text, character, ascii_letter)
    return text
