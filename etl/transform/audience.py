"""Clean audience identifiers chunk by chunk: pick the column, normalise, validate, deduplicate.
Deduplication spans the whole stream: a later occurrence is rejected as ``duplicate``, so the reject
file accounts for every dropped row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import TransformError
from etl.transform.dedupe import SeenHashes, StreamDedupe, hash_identifiers
from etl.values.email import email_rejection_reasons, normalise_emails
from etl.values.ids import profile_ids
from etl.values.text import as_text, decoded, listing

IdentifierKind = Literal["email", "profileId"]

#: the column header Actito matches on, per identifier kind
HEADER: dict[IdentifierKind, str] = {"email": "emailAddress", "profileId": "profileId"}

#: column names recognised without configuration, in order of preference (case-insensitive)
ALIASES: dict[IdentifierKind, tuple[str, ...]] = {
    "email": ("emailAddress", "email", "email_address", "mail"),
    "profileId": ("profileId", "profile_id", "actito_profile_id"),
}

DUPLICATE = "duplicate"
#: reject lines of grouped keys (`AudienceCleaner.clean_counted`) made at a time
REJECT_LINES = 65_536

REJECTS_SCHEMA = pa.schema([("row", pa.int64()), ("value", pa.string()), ("reason", pa.string())])
#: a row the dedupe defers: its identifier, and what the reject file says if it turns out a duplicate
_DEFERRED_SCHEMA = pa.schema([("identifier", pa.string()), ("value", pa.string()), ("row", pa.int64())])


@dataclass
class AudienceCounts:
    """Rows seen so far: extracted = kept + rejected + duplicates."""

    extracted: int = 0
    rejected: int = 0
    duplicates: int = 0
    kept: int = 0


@dataclass(frozen=True)
class CleanBatch:
    #: string identifiers, normalised, valid, not seen earlier in the stream
    identifiers: pa.Array
    #: every dropped row: row (1-based over the stream), value (original, as text), reason
    rejects: pa.Table = field(default_factory=REJECTS_SCHEMA.empty_table)
    #: `hash_identifiers` of ``identifiers``, computed for the dedupe: the members snapshot reuses them
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))


class AudienceCleaner:
    """Turn the chunks of one audience query into clean, unique identifiers (stateful)."""

    def __init__(self, kind: IdentifierKind, *, column: str | None = None, where: str = "",
                 spill_dir: Path | None = None, memory_hashes: int | None = None) -> None:
        """``spill_dir``: where the dedupe spills past ``memory_hashes`` distinct identifiers (the run's
        directory, so a big audience never fills a small /tmp); the system's temporary directory if None."""
        if kind not in HEADER:
            raise ValueError(f"unknown identifier kind {kind!r}: use one of {', '.join(HEADER)}")
        self.kind: IdentifierKind = kind
        self.column = column
        self.where = where
        self.counts = AudienceCounts()
        self.column_used: str | None = None
        self._dedupe = StreamDedupe(spill_dir=spill_dir, memory_hashes=memory_hashes)
        self._next_row = 1
        #: clean_counted: keys the warehouse sent that normalise to another valid address (its SQL and
        #: `normalise_emails` disagree), deduplicated apart in ``_seen``
        self.disagreements = 0
        self._seen = SeenHashes()

    def clean(self, batch: pa.RecordBatch | pa.Table, source_rows: np.ndarray | None = None) -> CleanBatch:
        """``source_rows``: each row's source row number, when a transform step stands between the query and this
        batch; else rows are numbered in the order they come."""
        name = self.identifier_column(batch.schema.names)
        raw = decoded(batch.column(batch.schema.names.index(name)))
        _check_column_type(self.kind, name, raw.type, self.where)
        rows = len(raw)
        first_row = self._next_row
        self._next_row += rows
        text = as_text(raw, "the identifier column")

        if self.kind == "email":
            identifiers = normalise_emails(text)
            reasons = email_rejection_reasons(identifiers)
        else:
            identifiers, reasons = profile_ids(raw, text)

        valid = pc.is_null(reasons)
        valid_positions = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
        candidates = identifiers.take(pa.array(valid_positions, pa.int64()))
        candidate_hashes = hash_identifiers(candidates)

        def numbered(positions: np.ndarray) -> pa.Array:
            return pa.array(source_rows[positions] if source_rows is not None else positions + first_row, pa.int64())

        def spilled() -> pa.Table:
            return pa.table([candidates, text.take(pa.array(valid_positions, pa.int64())), numbered(valid_positions)],
                            schema=_DEFERRED_SCHEMA)

        keep, deferred = self._dedupe.add(candidate_hashes, spilled)
        kept = candidates.filter(pa.array(keep))
        duplicate_positions = valid_positions[~keep & ~deferred]

        invalid = pc.invert(valid)
        invalid_positions = np.flatnonzero(invalid.to_numpy(zero_copy_only=False))
        positions = np.concatenate([invalid_positions, duplicate_positions])
        duplicates = pa.array(np.full(len(duplicate_positions), DUPLICATE, dtype=object), pa.string())
        reasons_out = pa.concat_arrays([reasons.filter(invalid), duplicates])
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        rejects = pa.table([numbered(positions), text.take(pa.array(positions, pa.int64())),
                            reasons_out.take(pa.array(order, pa.int64()))], schema=REJECTS_SCHEMA)

        self.counts.extracted += rows
        self.counts.rejected += len(invalid_positions)
        self.counts.duplicates += len(duplicate_positions)
        self.counts.kept += len(kept)
        return CleanBatch(identifiers=kept, rejects=rejects, hashes=candidate_hashes[keep])

    def close(self) -> None:
        self._dedupe.close()

    def finish(self) -> Iterator[CleanBatch]:
        """After the last chunk: the rows the dedupe deferred (a very large audience), now decided."""
        for deferred, hashes, first in self._dedupe.resolved():
            later = pa.array(~first)
            duplicates = len(deferred) - int(first.sum())
            rejects = pa.table([deferred.column("row").filter(later), deferred.column("value").filter(later),
                                pa.array([DUPLICATE] * duplicates, pa.string())], schema=REJECTS_SCHEMA)
            self.counts.duplicates += duplicates
            self.counts.kept += len(deferred) - duplicates
            identifiers = deferred.column("identifier").filter(pa.array(first)).combine_chunks()
            yield CleanBatch(identifiers=identifiers, rejects=rejects, hashes=hashes[first])

    def clean_counted(self, batch: pa.RecordBatch | pa.Table, count_column: str) -> Iterator[CleanBatch]:
        """A batch of keys the warehouse normalised and grouped (``clean_in = "warehouse"``), each with the
        number of source rows it stands for: every key is validated again, a valid one counts as kept once
        and its other rows as duplicates, an invalid one rejects all its rows. Rejects carry no row number
        (the warehouse numbered none) and the key as value, one line per source row as in client mode:
        the first part holds the kept keys, the reject lines follow REJECT_LINES at a time, so a
        placeholder address on millions of rows never sits in memory as millions of lines."""
        name = self.identifier_column([n for n in batch.schema.names if n != count_column])
        keys = as_text(decoded(batch.column(batch.schema.names.index(name))), "the identifier column")
        rows = pc.cast(batch.column(batch.schema.names.index(count_column)), pa.int64()).to_numpy(
            zero_copy_only=False).astype(np.int64)
        identifiers = normalise_emails(keys)
        reasons = email_rejection_reasons(identifiers)
        valid = pc.is_null(reasons).to_numpy(zero_copy_only=False)
        changed = pc.fill_null(pc.not_equal(identifiers, keys), False).to_numpy(zero_copy_only=False) & valid
        hashes = hash_identifiers(identifiers)
        keep = valid & ~changed
        if changed.any() or len(self._seen):
            keep = self._keep_agreeing(hashes, keep, changed)
        rejected_rows = np.where(~valid, rows, 0)
        duplicate_rows = np.where(valid, rows - keep, 0)
        kept = identifiers.filter(pa.array(keep))
        self.counts.extracted += int(rows.sum())
        self.counts.rejected += int(rejected_rows.sum())
        self.counts.duplicates += int(duplicate_rows.sum())
        self.counts.kept += len(kept)
        why = pc.if_else(pa.array(valid), DUPLICATE, reasons)
        parts = _repeated(rejected_rows + duplicate_rows, REJECT_LINES)
        yield CleanBatch(identifiers=kept, rejects=_counted_rejects(keys, why, next(parts, None)),
                         hashes=hashes[keep])
        for positions in parts:
            yield CleanBatch(identifiers=kept.slice(0, 0), rejects=_counted_rejects(keys, why, positions))

    def _keep_agreeing(self, hashes: np.ndarray, keep: np.ndarray, changed: np.ndarray) -> np.ndarray:
        """Which keys to keep once some key disagreed: a changed key is kept if no key of this batch, and
        no changed key before, normalised to it; an agreeing key if no earlier changed key did. An agreeing
        key of an earlier batch is not remembered: its twin among later changed keys slips through (the
        known limit of a disagreement, which is a bug of the dialect's SQL, and logged)."""
        self.disagreements += int(changed.sum())
        agreeing = hashes[keep]
        keep = keep.copy()
        if len(self._seen):
            keep[np.flatnonzero(keep)[self._seen.contains(agreeing)]] = False
        candidates = np.flatnonzero(changed)
        # each remembered, the twin of an agreeing key of this batch too: a later changed one may come
        new = self._seen.add_new(hashes[candidates])
        keep[candidates[new & ~np.isin(hashes[candidates], agreeing)]] = True
        return keep

    def check_type(self, schema: pa.Schema) -> str:
        """The identifier column of a query's columns, refused as in `clean` when its type cannot hold
        identifiers (a null type, where a dialect cannot tell without a row, passes)."""
        name = self.identifier_column(schema.names)
        _check_column_type(self.kind, name, schema.field(name).type, self.where)
        return name

    def identifier_column(self, names: list[str]) -> str:
        """The column holding the identifiers, chosen once by name (the first chunk's)."""
        if self.column_used is not None:
            if self.column_used not in names:
                raise TransformError(
                    f"a later chunk of the result has no column {self.column_used!r} (columns: {listing(names)})",
                    where=self.where,
                )
            return self.column_used
        chosen = self._choose_column(names)
        if names.count(chosen) > 1:
            raise TransformError(
                f"the query returns two columns named {chosen!r}",
                where=self.where,
                hint="give each column a distinct name in the SQL",
            )
        self.column_used = chosen
        return chosen

    def _choose_column(self, names: list[str]) -> str:
        if not names:
            raise TransformError("the query returns no columns", where=self.where)
        by_lower: dict[str, list[str]] = {}
        for name in names:
            by_lower.setdefault(name.lower(), []).append(name)
        hint = (
            f"alias the column in the SQL (e.g. SELECT {_example(self.kind)} AS \"{HEADER[self.kind]}\") "
            "or set identifier_column in the activation"
        )
        if self.column is not None:
            if self.column in names:
                return self.column
            found = _one_of_columns(by_lower.get(self.column.lower(), []), f"identifier_column {self.column!r} matches", self.where)
            if found:
                return found
            raise TransformError(
                f"identifier_column {self.column!r} is not a column of the query (columns: {listing(names)})",
                where=self.where,
                hint=hint,
            )
        for alias in ALIASES[self.kind]:
            found = _one_of_columns(by_lower.get(alias.lower(), []), f"the {_what(self.kind)} could be in", self.where)
            if found:
                return found
        if len(names) == 1:
            return names[0]
        raise TransformError(
            f"cannot tell which column holds the {_what(self.kind)}: the query returns {listing(names)}",
            where=self.where,
            hint=hint,
        )


def _repeated(counts: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """``np.repeat(np.arange(len(counts)), counts)``, ``size`` values at a time."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    for start in range(0, total, size):
        stop = min(start + size, total)
        first, last = np.searchsorted(ends, [start, stop - 1], side="right")
        spanned = np.arange(first, last + 1)
        lines = np.minimum(ends[spanned], stop) - np.maximum(ends[spanned] - counts[spanned], start)
        yield np.repeat(spanned, np.maximum(lines, 0))


def _counted_rejects(keys: pa.Array, why: pa.Array, positions: np.ndarray | None) -> pa.Table:
    if positions is None:
        return REJECTS_SCHEMA.empty_table()
    taken = pa.array(positions, pa.int64())
    return pa.table([pa.nulls(len(positions), pa.int64()), keys.take(taken), why.take(taken)], schema=REJECTS_SCHEMA)


def _holds_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
            or pa.types.is_null(kind))


def _column_type_fits(kind: IdentifierKind, column_type: pa.DataType) -> bool:
    """Whether a column of this type can hold identifiers of this kind at all (bytes count as text:
    MySQL VARBINARY, bytea); its values are then checked one by one."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    if _holds_text(column_type):
        return True
    if kind == "email":
        return pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type) or pa.types.is_binary_view(
            column_type)
    return pa.types.is_integer(column_type) or pa.types.is_floating(column_type) or pa.types.is_decimal(column_type)


def _check_column_type(kind: IdentifierKind, name: str, column_type: pa.DataType, where: str) -> None:
    """A date, a number or a flag in the e-mail column is the wrong column, not a million dirty rows:
    say so once instead of rejecting every row (and delivering an empty audience)."""
    if _column_type_fits(kind, column_type):
        return
    plural = "e-mail addresses" if kind == "email" else "Actito profile ids"
    wanted = "text" if kind == "email" else "integers, or text of digits"
    raise TransformError(
        f"the identifier column {name!r} has type {column_type}, which cannot hold {plural}",
        where=where,
        hint=f"select the column that holds the {plural} ({wanted}), or set identifier_column",
    )


def _one_of_columns(matches: list[str], what: str, where: str) -> str | None:
    """The one column matching a name case-insensitively; None if none; an error if several do."""
    if len(matches) > 1:
        raise TransformError(
            f"{what} several columns: {listing(matches)}",
            where=where,
            hint="give the columns names that differ by more than case, or set identifier_column",
        )
    return matches[0] if matches else None




def _what(kind: IdentifierKind) -> str:
    return "e-mail address" if kind == "email" else "Actito profile id"


def _example(kind: IdentifierKind) -> str:
    return "email" if kind == "email" else "customer_profile_id"
