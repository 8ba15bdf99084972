"""What a destination already holds, per activation, so a run sends only what changed: Actito imports count
against a daily quota and OpenField counts every request. The snapshot of row hashes is replaced only with
what the destination took, so a failed run is sent again; a mapping change invalidates it. A hash
collision skips one changed row until it changes again.

A row the destination refused is remembered as refused: unchanged, it is not sent again (it would be
refused again) but still counted as rejected. A row refused because something it depends on is missing (a
participation whose profile does not exist yet) is different: it waits in the retry queue and is sent
again, unchanged, on every run until it is taken or has waited ``retry_refused_for``. The queue lives in
the snapshot, so it is replaced atomically with it and survives a crash as the rest of the state does."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.config import ImportActivationBase
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


@dataclass(frozen=True)
class RefusalRetries:
    """How long refused rows that wait for a dependency are sent again, and how many may wait."""

    #: 0: a refused row waits for a change, as any other
    seconds: int = 0
    #: more waiting rows than this: the longest-waiting ones are given up (the queue stays bounded)
    limit: int = 100_000
    #: this run's start, the clock every wait is measured by
    now: datetime = datetime.fromtimestamp(0).astimezone()

    @property
    def epoch(self) -> int:
        return int(self.now.timestamp())


def refusal_retries(context: RunContext) -> RefusalRetries:
    """The activation's retry settings, measured from the run's start."""
    activation = context.config.activation_of(context.activation, ImportActivationBase)
    return RefusalRetries(activation.retry_seconds(), activation.retry_queue_max, context.started_at)


#: ``waiting`` of a row given up for a full queue: waiting since the epoch is past any window
_GIVEN_UP = 1


@dataclass(frozen=True)
class Compared:
    """What a snapshot says of one chunk's rows (masks over the chunk)."""

    #: keys not seen before, or whose row hash differs: to send
    changed: np.ndarray
    #: unchanged rows refused for a missing dependency, still within their window: to send again
    retry: np.ndarray
    #: unchanged rows refused before and not retried: counted as rejected again, not sent
    refused: np.ndarray
    #: of ``refused``, those that waited for a dependency past the window (or the queue's bound)
    expired: np.ndarray

    @classmethod
    def unseen(cls, count: int) -> Compared:
        """``count`` rows no snapshot knows (there is none, or it is empty): every one changed."""
        nothing = np.zeros(count, dtype=bool)
        return cls(np.ones(count, dtype=bool), nothing, nothing, nothing)


class RowSnapshot:
    def __init__(self, path: Path, mapping_fingerprint: str, retries: RefusalRetries = RefusalRetries(), *,
                 fresh: bool = False) -> None:
        """``fresh`` (`run --full`): the file is not read, so every row is sent, and is replaced by what
        this run sends."""
        self.path = path
        self.fingerprint = mapping_fingerprint
        self.retries = retries
        self._keys = np.empty(0, np.uint64)
        self._values = np.empty(0, np.uint64)
        self._refused = np.empty(0, bool)
        #: when each row refused for a missing dependency was first refused (epoch seconds), else 0
        self._waiting = np.empty(0, np.int64)
        self._staged: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        if not fresh:
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
        names = table.column_names
        self._refused = (table.column("refused").to_numpy(zero_copy_only=False).astype(bool)
                         if "refused" in names else np.zeros(len(self._keys), bool))
        self._waiting = (table.column("waiting").to_numpy().astype(np.int64)
                         if "waiting" in names else np.zeros(len(self._keys), np.int64))

    def _in_window(self, waiting: np.ndarray) -> np.ndarray:
        return (waiting > 0) & (self.retries.epoch - waiting < self.retries.seconds)

    def compare(self, keys: np.ndarray, values: np.ndarray) -> Compared:
        if not len(self._keys):
            return Compared.unseen(len(keys))
        position = np.searchsorted(self._keys, keys)
        position[position == len(self._keys)] = 0
        known = self._keys[position] == keys
        changed = ~known | (self._values[position] != values)
        refused = ~changed & self._refused[position]
        waiting = self._waiting[position]
        retry = refused & self._in_window(waiting)
        expired = refused & ~retry & (waiting > 0) & (self.retries.seconds > 0)
        return Compared(changed, retry, refused & ~retry, expired)

    def stage(self, keys: np.ndarray, values: np.ndarray, refused: np.ndarray | None = None,
              waiting: np.ndarray | None = None) -> None:
        """Remember rows sent in this run, which of them the destination refused, and which of those it
        refused for a missing dependency (``waiting``); they count only once ``commit`` runs. A row
        refused again unchanged keeps the time it was first refused: its window does not restart."""
        refused = np.zeros(len(keys), bool) if refused is None else refused.astype(bool)
        waits = refused & (np.zeros(len(keys), bool) if waiting is None else waiting.astype(bool))
        since = np.where(waits, self.retries.epoch, 0).astype(np.int64)
        if len(self._keys) and waits.any():
            position = np.searchsorted(self._keys, keys)
            position[position == len(self._keys)] = 0
            same = (self._keys[position] == keys) & (self._values[position] == values) & (self._waiting[position] > 0)
            since = np.where(waits & same, self._waiting[position], since)
        self._staged.append((keys, values, refused, since))

    def forget(self, keys: np.ndarray) -> None:
        """A replay sends these keys' rows as a past run had them: what the destination holds of them is
        no longer what this snapshot says, so until ``commit`` the next run sees them as never sent."""
        kept = ~np.isin(self._keys, keys)
        self._keys, self._values = self._keys[kept], self._values[kept]
        self._refused, self._waiting = self._refused[kept], self._waiting[kept]

    def commit(self) -> None:
        """Merge the staged rows (newest wins), bound the retry queue, and replace the file atomically."""
        keys = np.concatenate([self._keys, *(s[0] for s in self._staged)])
        values = np.concatenate([self._values, *(s[1] for s in self._staged)])
        refused = np.concatenate([self._refused, *(s[2] for s in self._staged)])
        waiting = np.concatenate([self._waiting, *(s[3] for s in self._staged)])
        # keep the last occurrence of each key: reverse, unique (first), map back
        unique, first = np.unique(keys[::-1], return_index=True)
        self._keys, self._values = unique, values[::-1][first]
        self._refused, self._waiting = refused[::-1][first], waiting[::-1][first]
        self._staged.clear()
        self._bound_queue()
        table = pa.table({"key": self._keys, "row": self._values, "refused": self._refused,
                          "waiting": self._waiting}).replace_schema_metadata(
            {_FINGERPRINT_KEY: self.fingerprint.encode()}
        )
        replace_parquet(self.path, table)

    def _bound_queue(self) -> None:
        queued = np.flatnonzero(self._in_window(self._waiting))
        excess = len(queued) - self.retries.limit
        if excess > 0:
            longest_waiting = queued[np.argsort(self._waiting[queued], kind="stable")[:excess]]
            self._waiting[longest_waiting] = _GIVEN_UP

    def queued(self) -> int:
        """Rows waiting for a dependency that the next run sends again."""
        return int(self._in_window(self._waiting).sum())


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
              "dropped": 0, "retried": 0, "retries_expired": 0}
    staged = Staged()
    seen_keys = SeenHashes()
    expired_reason = _expired_reason(snapshot)
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
        compared = snapshot.compare(key_hash, row_hash) if snapshot is not None else Compared.unseen(len(key_hash))
        send = first & (compared.changed | compared.retry)
        expired = _reject(rejects, mapped, first & compared.expired, expired_reason)
        still_refused = expired + _reject(rejects, mapped, first & compared.refused & ~compared.expired,
                                          "refused by the destination when last sent, unchanged since: not sent "
                                          "again until it changes")
        mask = pa.array(send)
        write(mapped.rows.filter(mask))
        staged.add(np.asarray(mapped.source_rows.filter(mask)), mapped.keys.filter(mask).combine_chunks(),
                   key_hash[send], row_hash[send])
        counts["rejected"] += duplicates + still_refused
        counts["duplicates"] += duplicates
        counts["still_refused"] += still_refused
        counts["retries_expired"] += expired
        counts["retried"] += int((first & compared.retry).sum())
        counts["unchanged"] += int((first & ~send & ~compared.refused).sum())
        counts["sent"] = staged.count
        context.tick({**counts, "kept": staged.count})
    context.results.update(rows_extracted=counts["extracted"], rows_rejected=counts["rejected"])
    context.details.update(unchanged=counts["unchanged"], to_send=staged.count, still_refused=counts["still_refused"],
                           values_dropped=counts["dropped"])
    if snapshot is not None and snapshot.retries.seconds:
        context.details.update(retried=counts["retried"], retries_expired=counts["retries_expired"],
                               retry_queue=snapshot.queued())
    return staged


def _expired_reason(snapshot: RowSnapshot | None) -> str:
    window = snapshot.retries.seconds if snapshot is not None else 0
    return (f"refused by the destination for a missing dependency and sent again for {_duration(window)} (or the "
            "retry queue was full): given up until the row changes; create what it depends on, then change the row "
            "or raise retry_refused_for")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
