"""Who entered and who left an audience since its last delivered run.

Every audience activation keeps a snapshot of the identifiers it last delivered (Parquet, zstd,
mode 0600). Each run compares its audience with it: a membership delivery imports who entered and
deletes who left, the ledger and the history show both counts, and the shrink guard tells whether
a fall is real churn (many left, some entered) or a broken query (many left, none entered). The
new snapshot is staged in the run's directory and moved into place only after a successful
delivery, atomically, so a failed or dry run never moves it.

Bounded memory: the comparison works on 64-bit hashes of the identifiers in sorted numpy arrays
(at most 16 bytes a member), and the identifiers themselves are never all in memory: the next
snapshot is written batch by batch while the run writes its file, and the previous one is read a
row group at a time. Each row group is sorted by hash and carries the hashes next to the
identifiers, so each side costs one read of a numeric column. 10M against 10M: docs/benchmarks.md, "Diffs", measured
against pyarrow's left-anti join on the strings and DuckDB's anti-join.

Why not sorted alphabetically: sorting 10M strings takes pyarrow about 13 s and needs them all in
memory at once; hash order comes with the comparison. The file is then about three times larger
(e-mails in random order compress less).

Collisions: two different identifiers sharing a 64-bit hash are taken for one member. With n on
each side the chance that such a pair exists is about n² / 2⁶⁴, 5e-6 for 10M against 10M; it
would hide one entry (or one departure) for one run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.transform import hash_identifiers

MEMBER, HASH = "member", "hash"
_SCHEMA = pa.schema([(MEMBER, pa.string()), (HASH, pa.uint64())])
#: the stored hashes are reused only if this version's hash function gives these same values
_PROBES = pa.array(["", "a", "someone@example.org", "1234567890123", "é" * 21])
_HASH_CHECK = b"audience_sync_hash_check"


@dataclass(frozen=True)
class MemberDiff:
    """How many entered and left since the last delivery; the identifiers too when asked for."""

    size: int
    entered: int
    left: int
    #: the next snapshot, staged until the delivery succeeded
    staged: Path
    #: False when there was no snapshot to compare with (a first run, or a lost state directory):
    #: everyone counts as entered then
    compared: bool = True
    entered_members: pa.Array | None = None
    left_members: pa.Array | None = None

    def counts(self) -> dict[str, int]:
        return {"entered": self.entered, "left": self.left}


class MemberSnapshot:
    """The identifiers an activation last delivered, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, state_dir: Path, activation: str) -> MemberSnapshot:
        return cls(state_dir / "snapshots" / f"{activation}.members.parquet")

    def diff(self, current: StagedMembers, *, identifiers: bool = False) -> MemberDiff:
        """Compare the members staged by this run with the snapshot. ``identifiers``: also return who
        entered and who left, not only how many. At most two hash arrays are held at once (16 bytes a
        member), plus one bit-mask a side."""
        current_sorted, _ = _hashes(current.path)
        current_sorted.sort()
        previous, bounds = _hashes(self.path)
        left = [~_present(previous[start:end], current_sorted) for start, end in bounds]
        size = len(current_sorted)
        del current_sorted
        previous.sort()
        entered = [~_present(hashes, previous) for hashes in _row_groups(current.path)]
        del previous
        diff = MemberDiff(size, _total(entered), _total(left), current.path, compared=self.path.exists())
        if not identifiers:
            return diff
        return replace(diff, entered_members=_members_where(current.path, entered),
                       left_members=_members_where(self.path, left))

    def replace(self, diff: MemberDiff) -> None:
        """Move the staged snapshot into place (a rename: a crash leaves the old one or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        diff.staged.replace(self.path)


class StagedMembers:
    """The next snapshot, written batch by batch as the run writes its file: each batch becomes a row
    group sorted by hash, with its hashes, so nothing accumulates in memory while the audience streams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._handle = open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        os.fchmod(self._handle.fileno(), 0o600)  # an older staged file may have had other bits
        check = {_HASH_CHECK: hash_identifiers(_PROBES).tobytes()}
        # every value is distinct and the hashes are random: a dictionary or compressing them is wasted work
        self._writer = pq.ParquetWriter(self._handle, _SCHEMA.with_metadata(check), use_dictionary=False,
                                        compression={MEMBER: "zstd", HASH: "none"})

    def add(self, members: pa.Array) -> None:
        if not len(members):
            return
        if not pa.types.is_string(members.type):
            members = pc.cast(members, pa.string())  # profileIds: the text the file holds
        hashes = hash_identifiers(members)
        order = np.argsort(hashes)
        # one row group per batch, whatever its size: row groups and masks stay aligned
        self._writer.write_table(pa.table([members.take(pa.array(order)), hashes[order]], schema=_SCHEMA),
                                 row_group_size=len(members))

    def close(self) -> None:
        if not self._handle.closed:
            self._writer.close()
            self._handle.close()

    def __enter__(self) -> StagedMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hashes(path: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All the hashes of a snapshot file in one array (allocated once), and each row group's slice of it."""
    if not path.exists():
        return np.empty(0, np.uint64), []
    hashes = np.empty(pq.ParquetFile(path).metadata.num_rows, np.uint64)
    bounds: list[tuple[int, int]] = []
    for group in _row_groups(path):
        start = bounds[-1][1] if bounds else 0
        hashes[start:start + len(group)] = group
        bounds.append((start, start + len(group)))
    return hashes, bounds


def _row_groups(path: Path) -> Iterator[np.ndarray]:
    """Each row group's hashes; recomputed from the identifiers if the hash function changed."""
    file = pq.ParquetFile(path)
    stored = (file.schema_arrow.metadata or {}).get(_HASH_CHECK) == hash_identifiers(_PROBES).tobytes()
    for index in range(file.num_row_groups):
        if stored:
            yield file.read_row_group(index, columns=[HASH]).column(HASH).to_numpy()
        else:
            yield hash_identifiers(file.read_row_group(index, columns=[MEMBER]).column(MEMBER))


def _present(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """For each value, whether it is in ``sorted_set`` (sorted ascending; fastest when ``values`` is too)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    positions = np.searchsorted(sorted_set, values)
    positions[positions == len(sorted_set)] = 0
    return sorted_set[positions] == values  # type: ignore[no-any-return]


def _total(masks: list[np.ndarray]) -> int:
    return sum(int(mask.sum()) for mask in masks)


def _members_where(path: Path, masks: list[np.ndarray]) -> pa.Array:
    """The identifiers of a snapshot file whose row groups' masks are set."""
    if not path.exists() or not masks:
        return pa.array([], pa.string())
    file = pq.ParquetFile(path)
    return pa.concat_arrays([file.read_row_group(index, columns=[MEMBER]).column(MEMBER).combine_chunks()
                             .filter(pa.array(mask)) for index, mask in enumerate(masks)])
