"""What Actito already holds, per activation, so a run sends only what changed.

Imports count against a daily quota per table and every line costs Actito work, so a sync that
re-sends an unchanged table each run is both slow and wasteful. A snapshot keeps, for each key
sent, a 64-bit hash of the row as sent; the next run sends a row only if its key is new or its
hash differs. It is replaced only after Actito has finished the imports of a run, so a failed run
is simply sent again next time. A change of mapping (columns, names, mode) invalidates it.

64-bit hashes: the chance that two different rows collide among 10 million is about 3e-6; such a
collision would skip one changed row until it changes again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl.files import create_private, private_directory

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
        self._staged_keys: list[np.ndarray] = []
        self._staged_values: list[np.ndarray] = []
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

    def changed(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A mask of the rows to send: keys not seen before, or whose row hash differs."""
        if not len(self._keys):
            return np.ones(len(keys), dtype=bool)
        position = np.searchsorted(self._keys, keys)
        position[position == len(self._keys)] = 0
        known = self._keys[position] == keys
        return ~known | (self._values[position] != values)

    def stage(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Remember rows sent in this run; they count only once `commit` runs."""
        self._staged_keys.append(keys)
        self._staged_values.append(values)

    def commit(self) -> None:
        """Merge the staged rows (newest wins) and replace the file atomically."""
        keys = np.concatenate([self._keys, *self._staged_keys])
        values = np.concatenate([self._values, *self._staged_values])
        # keep the last occurrence of each key: reverse, unique (first), map back
        reverse_keys = keys[::-1]
        unique, first = np.unique(reverse_keys, return_index=True)
        self._keys, self._values = unique, values[::-1][first]
        self._staged_keys.clear()
        self._staged_values.clear()
        table = pa.table({"key": self._keys, "row": self._values}).replace_schema_metadata(
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
