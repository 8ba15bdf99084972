"""What a destination already holds, per activation, so a run sends only what changed: Actito imports count
against a daily quota and OpenField counts every request. The snapshot of row hashes is replaced only with
what the destination took, so a failed run is sent again; a mapping change invalidates it. A hash
collision skips one changed row until it changes again. A row the destination refused is remembered as
refused: unchanged, it is not sent again (it would be refused again) but still counted as rejected."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.files import RejectWriter, create_private, private_directory
from etl.runtime.runs import RunContext
from etl.transform.dedupe import SeenHashes
from etl.transform.mapping import reject_counts

_FINGERPRINT_KEY = b"audience_sync_fingerprint"


def key_hashes(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pd.util.hash_array(keys.to_numpy(zero_copy_only=False).astype(object), categorize=False)


def row_hashes(rows: pa.Table) -> np.ndarray:
    return pd.util.hash_pandas_object(rows.to_pandas(), index=False, categorize=False).to_numpy(dtype=np.uint64)


def fingerprint(parts: Sequence[object]) -> str:
    return hashlib.sha256(repr(list(parts)).encode()).hexdigest()[:32]


class RowSnapshot:
    def __init__(self, path: Path, mapping_fingerprint: str) -> None:
        self.path = path
        self.fingerprint = mapping_fingerprint
        self._keys = np.empty(0, np.uint64)
        self._values = np.empty(0, np.uint64)
        self._refused = np.empty(0, bool)
        self._staged_keys: list[np.ndarray] = []
        self._staged_values: list[np.ndarray] = []
        self._staged_refused: list[np.ndarray] = []
        self._load()

    def __len__(self) -> int:
        return len(self._keys)

    def _load(self) -> None:
        if not self.path.exists():
            return
        table = pq.read_table(self.path)
        metadata = table.schema.metadata or {}
        if metadata.get(_FINGERPRINT_KEY, b"").decode() != self.fingerprint:
            return  # the mapping changed: everything is new again
        self._keys = table.column("key").to_numpy().astype(np.uint64)
        self._values = table.column("row").to_numpy().astype(np.uint64)
        self._refused = (table.column("refused").to_numpy(zero_copy_only=False).astype(bool)
                         if "refused" in table.column_names else np.zeros(len(self._keys), bool))

    def compare(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two masks: the rows to send (keys not seen before, or whose row hash differs), and the
        unchanged rows the destination refused when they were last sent."""
        if not len(self._keys):
            return np.ones(len(keys), dtype=bool), np.zeros(len(keys), dtype=bool)
        position = np.searchsorted(self._keys, keys)
        position[position == len(self._keys)] = 0
        known = self._keys[position] == keys
        changed = ~known | (self._values[position] != values)
        return changed, ~changed & self._refused[position]

    def stage(self, keys: np.ndarray, values: np.ndarray, refused: np.ndarray | None = None) -> None:
        """Remember rows sent in this run, and which of them the destination refused; they count only
        once `commit` runs."""
        self._staged_keys.append(keys)
        self._staged_values.append(values)
        self._staged_refused.append(np.zeros(len(keys), bool) if refused is None else refused.astype(bool))

    def commit(self) -> None:
        """Merge the staged rows (newest wins) and replace the file atomically."""
        keys = np.concatenate([self._keys, *self._staged_keys])
        values = np.concatenate([self._values, *self._staged_values])
        refused = np.concatenate([self._refused, *self._staged_refused])
        # keep the last occurrence of each key: reverse, unique (first), map back
        reverse_keys = keys[::-1]
        unique, first = np.unique(reverse_keys, return_index=True)
        self._keys, self._values, self._refused = unique, values[::-1][first], refused[::-1][first]
        self._staged_keys.clear()
        self._staged_values.clear()
        self._staged_refused.clear()
        table = pa.table({"key": self._keys, "row": self._values, "refused": self._refused}).replace_schema_metadata(
            {_FINGERPRINT_KEY: self.fingerprint.encode()}
        )
        replace_parquet(self.path, table)


def replace_parquet(path: Path, table: pa.Table) -> None:
    """Replace a snapshot atomically (a crash leaves the old one), private from its first byte: it
    holds identifiers of people."""
    private_directory(path.parent, root=path.parent.parent)  # state_dir/snapshots: never a link
    partial = path.with_name(path.name + ".partial")
    with create_private(partial) as out:
        pq.write_table(table, out, compression="zstd")
    partial.replace(path)


@dataclass(frozen=True)
class MappedRows:
    """One chunk as a destination would send it."""

    #: what is staged for sending, one row per source row kept
    rows: pa.Table
    #: the key each row is matched on in the destination
    keys: pa.ChunkedArray
    #: the warehouse row (1-based) each row comes from, to name it in the reject file
    source_rows: pa.Array | pa.ChunkedArray
    #: etl.transform.mapping.REJECTS_SCHEMA: invalid values, each dropped or rejecting its row
    rejects: pa.Table
    #: the columns whose hash says whether a row changed
    hashed: pa.Table


class RowFormat(Protocol):
    """How a destination maps the query's chunks, checked against it before a row is read."""

    #: the key's name, as the reject file names it
    key_name: str
    #: what the rows as sent depend on: a snapshot taken under another fingerprint starts over
    fingerprint: str

    def map(self, batch: pa.RecordBatch) -> MappedRows: ...


@dataclass
class Staged:
    """What a run staged for sending, in staging order: kept to map a destination's refusals back to
    warehouse rows, and to update the snapshot with what landed."""

    source_rows: list[np.ndarray] = field(default_factory=list)
    keys: list[pa.Array] = field(default_factory=list)
    key_hashes: list[np.ndarray] = field(default_factory=list)
    row_hashes: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, rows: np.ndarray, keys: pa.Array, key_hash: np.ndarray, row_hash: np.ndarray) -> None:
        self.source_rows.append(rows)
        self.keys.append(keys)
        self.key_hashes.append(key_hash)
        self.row_hashes.append(row_hash)
        self.count += len(rows)

    def all_source_rows(self) -> np.ndarray:
        return np.concatenate(self.source_rows) if self.source_rows else np.empty(0, np.int64)

    def all_keys(self) -> pa.Array:
        return pa.concat_arrays(self.keys) if self.keys else pa.array([], pa.string())

    def hashes(self) -> pa.Table:
        """Key and row hash of every staged row: what a snapshot keeps of it."""
        empty = np.empty(0, np.uint64)
        return pa.table({"key": np.concatenate([empty, *self.key_hashes]),
                         "row": np.concatenate([empty, *self.row_hashes])})


def stage_changes(
    context: RunContext,
    batches: Iterable[pa.RecordBatch],
    row_format: RowFormat,
    snapshot: RowSnapshot | None,
    rejects: RejectWriter,
    write: Callable[[pa.Table], None],
) -> Staged:
    """Map every chunk, reject what the destination would refuse, keep the first row of each key
    (as audiences keep the first) and, of those, the rows that changed since the snapshot; ``write``
    stages them. A row sent without an invalid value counts in ``values_dropped``, not as rejected.
    ``rows_rejected`` is the same on every run over the same data: an unchanged row the
    destination refused before is counted again (and listed), not taken for an unchanged one."""
    counts = {"extracted": 0, "rejected": 0, "unchanged": 0, "sent": 0, "duplicates": 0, "still_refused": 0,
              "dropped": 0}
    staged = Staged()
    seen_keys = SeenHashes()
    for batch in batches:
        mapped = row_format.map(batch)
        counts["extracted"] += batch.num_rows
        rejected, dropped = reject_counts(mapped.rejects)
        counts["rejected"] += rejected
        counts["dropped"] += dropped
        rejects.write(mapped.rejects)
        key_hash, row_hash = key_hashes(mapped.keys), row_hashes(mapped.hashed)
        first = seen_keys.add_new(key_hash)
        duplicates = _reject(rejects, mapped, ~first, f"duplicate {row_format.key_name}: an earlier row has it")
        changed, refused = (snapshot.compare(key_hash, row_hash) if snapshot is not None
                            else (np.ones(len(key_hash), bool), np.zeros(len(key_hash), bool)))
        changed, refused = first & changed, first & refused
        still_refused = _reject(rejects, mapped, refused, "refused by the destination when last sent, unchanged "
                                                          "since: not sent again until it changes")
        mask = pa.array(changed)
        write(mapped.rows.filter(mask))
        staged.add(np.asarray(mapped.source_rows.filter(mask)), mapped.keys.filter(mask).combine_chunks(),
                   key_hash[changed], row_hash[changed])
        counts["rejected"] += duplicates + still_refused
        counts["duplicates"] += duplicates
        counts["still_refused"] += still_refused
        counts["unchanged"] += int((first & ~changed & ~refused).sum())
        counts["sent"] = staged.count
        context.tick({**counts, "kept": staged.count})
    context.results.update(rows_extracted=counts["extracted"], rows_rejected=counts["rejected"])
    context.details.update(unchanged=counts["unchanged"], to_send=staged.count, still_refused=counts["still_refused"],
                           values_dropped=counts["dropped"])
    return staged


def _reject(rejects: RejectWriter, mapped: MappedRows, mask: np.ndarray, reason: str) -> int:
    """Lists the rows of ``mask`` in the reject file with one reason; returns how many."""
    count = int(mask.sum())
    if count:
        chosen = pa.array(mask)
        rejects.write(pa.table({
            "row": mapped.source_rows.filter(chosen),
            "value": pc.cast(mapped.keys.filter(chosen), pa.string()),
            "reason": pa.array([reason] * count, pa.string()),
        }))
    return count
