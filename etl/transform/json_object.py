"""A column holding a JSON object per row (Didomi's user ``metadata``) read as one column per property,
so each property goes through the same value rules as any column. Which properties a row holds is the
row's business: the mapping says which it reads, the others are counted by name, never sent."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from etl.values.text import STRING, as_text, nulls


def _as_cell(value: Any) -> str | None:
    """A property as the text rules read it: JSON's true/false as such, a nested value as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def json_properties(
    values: pa.Array, column: str, read: Sequence[str]
) -> tuple[dict[str, pa.Array], Counter[str], pa.Array]:
    """(``<column>.<property>`` → its values for each property in ``read``, rows holding each other
    property, why a row's value is not a JSON object or None). An empty cell holds no property."""
    cells: dict[str, list[str | None]] = {name: [] for name in read}
    unread: Counter[str] = Counter()
    reasons: list[str | None] = []
    for text in as_text(values, f"column {column!r}").to_pylist():
        found: Any = {}
        reason = None
        if text is not None and text.strip():
            try:
                found = json.loads(text)
            except ValueError:
                found = None
            if not isinstance(found, dict):
                found, reason = {}, f"'{text[:40]}' is not a JSON object: none of its properties is sent"
        reasons.append(reason)
        for name in read:
            cells[name].append(_as_cell(found.get(name)))
        unread.update(name for name in found if name not in cells)
    columns = {f"{column}.{name}": pa.array(cells[name], STRING) for name in read}
    return columns, unread, pa.array(reasons, STRING) if any(reasons) else nulls(len(values))
