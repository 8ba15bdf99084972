"""How SQL parameters are found: the one reading of ``:name`` shared by the configuration's check of
each SQL file and by the extraction that binds them."""

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
    """The parameters a query binds, computed exactly as the run will bind them.

    sqlalchemy.text() decides (``x::int`` is a cast, ``\\:x`` an escaped colon, ``:x::int`` is *not*
    a parameter: write ``CAST(:x AS int)``), after ``_shield`` has hidden comments and quoted text.
    """
    return set(text_statement(sql).compile().params)


def text_statement(sql: str) -> sa.TextClause:
    """The query as the run sends it: text(), with comments and quoted text shielded."""
    return sa.text(_shield(sql))


def _shield(sql: str) -> str:
    """Escape the colons of comments and quoted text, so that text() takes none of them for a parameter.

    text() alone binds ``:name`` wherever it appears: a ``-- uses :min_days`` comment would become a
    ``?`` the database does not count, and a parameter named only in a comment would pass the
    configuration check as used. Escaping rather than removing keeps the SQL the database sees, and
    its line numbers, unchanged. Dollar-quoted bodies count as quoted text too: the PostgreSQL fast
    paths bind values client-side as '…' literals, and a value holding ``$$`` inside a ``$$…$$`` body
    would close it.
    """
    return QUOTED_OR_COMMENT.sub(lambda match: re.sub(r"(?<!\\):", r"\\:", match.group()), sql)
