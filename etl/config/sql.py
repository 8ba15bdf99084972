"""SQL parameters: the one reading of ``:name`` shared by the configuration's check and the extraction."""

from __future__ import annotations

import re

import sqlalchemy as sa

#: parameters every audience query may use without declaring them
BUILTIN_PARAMS = frozenset({"run_date", "run_at"})

QUOTED_OR_COMMENT = re.compile(
    r"""
      \$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$   # PostgreSQL dollar quotes: $$…$$, $tag$…$tag$
    | (?<![A-Za-z0-9_])[Ee]'(?:[^'\\]|\\.|'')*'       # PostgreSQL escape string: E'it\'s'
    | '(?:[^']|'')*'      # string literal ('' is a quote)
    | "(?:[^"]|"")*"      # quoted identifier (a string in MySQL)
    | `[^`]*`             # MySQL quoted identifier
    | --[^\n]*            # line comment
    | /\*.*?\*/           # block comment
    """,
    re.VERBOSE | re.DOTALL,
)


def bind_parameter_names(sql: str) -> set[str]:
    """The parameters a query binds, exactly as the run will; trap: ``:x::int`` is *not* one (``CAST(:x AS int)``)."""
    return set(text_statement(sql).compile().params)


def text_statement(sql: str) -> sa.TextClause:
    """The query as the run sends it: text(), with comments and quoted text shielded."""
    return sa.text(_shield(sql))


def _shield(sql: str) -> str:
    """Escape the colons of comments and quoted text (``$$`` bodies too), so text() binds none of them.

    Otherwise a ``-- uses :min_days`` comment becomes a ``?`` the database does not count. Escaping,
    not removing, keeps the SQL and its line numbers unchanged.
    """
    return QUOTED_OR_COMMENT.sub(lambda match: re.sub(r"(?<!\\):", r"\\:", match.group()), sql)
