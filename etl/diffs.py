"""Who entered and who left an audience since its last delivered run.

Every audience activation keeps a snapshot of the identifiers it last delivered (Parquet, zstd,
mode 0600). Each run compares its audience with it: a membership delivery imports who entered and
deletes who left, the ledger and the history show both counts, and the shrink guard tells whether
a fall is real churn (many left, some entered) or a broken query (many left, none entered). The
new snapshot is staged in the run's directory and moved into place only after a successful
delivery, atomically, so a failed or dry run never moves it.

Bounded memory: the comparison works on 64-bit hashes of the identifiers in sorted numpy arrays
(8 bytes per member and side), and the identifiers themselves are only ever read one batch at a
time: from the delivered files, and from the snapshot one row group at a time. Each row group of
the snapshot is sorted by hash and carries the hashes next to the identifiers, so the previous
side costs one read of a numeric column. 10M against 10M: docs/benchmarks.md, "Diffs", measured
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
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from etl.files import WrittenFile
from etl.transform import hash_identifiers

MEMBER, HASH = "member", "hash"
_SCHEMA = pa.schema([(MEMBER, pa.string()), (HASH, pa.uint64())])
#: the stored hashes are reused only if this version's hash function gives these same values
_PROBES = pa.array(["", "a", "someone@example.org", "1234567890123", "é" * 21])
_HASH_CHECK = b"audience_sync_hash_check"
#: bytes of CSV read at once: about a million e-mails, so a batch (and a row group) stays small
_READ_BLOCK = 32 << 20


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

    def diff(self, current: Iterable[pa.Array], staging: Path, *, identifiers: bool = False) -> MemberDiff:
        """Compare the current members (distinct identifiers, in batches, any order) with the snapshot,
        writing them to ``staging`` as the next snapshot. ``identifiers``: also return who entered
        and who left, not only how many."""
        runs = _stage(current, staging)
        current_sorted = np.sort(np.concatenate(runs)) if runs else np.empty(0, np.uint64)
        previous = list(_row_groups(self.path))
        previous_sorted = np.sort(np.concatenate([hashes for _, hashes in previous])) if previous \
            else np.empty(0, np.uint64)
        left = [~_present(hashes, current_sorted) for _, hashes in previous]
        del current_sorted
        entered = [~_present(hashes, previous_sorted) for hashes in runs]
        diff = MemberDiff(sum(len(run) for run in runs), _total(entered), _total(left), staging,
                          compared=self.path.exists())
        if not identifiers:
            return diff
        return replace(diff, entered_members=_members_where(staging, entered),
                       left_members=_members_where(self.path, left))

    def replace(self, diff: MemberDiff) -> None:
        """Move the staged snapshot into place (a rename: a crash leaves the old one or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        diff.staged.replace(self.path)


def _stage(current: Iterable[pa.Array], staging: Path) -> list[np.ndarray]:
    """Write each batch as a row group sorted by hash, with its hashes; return those sorted runs."""
    runs: list[np.ndarray] = []
    staging.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an older staged file may have had other bits
        check = {_HASH_CHECK: hash_identifiers(_PROBES).tobytes()}
        # every value is distinct and the hashes are random: a dictionary or compressing them is wasted work
        with pq.ParquetWriter(handle, _SCHEMA.with_metadata(check), use_dictionary=False,
                              compression={MEMBER: "zstd", HASH: "none"}) as writer:
            for batch in current:
                if not len(batch):
                    continue
                hashes = hash_identifiers(batch)
                order = np.argsort(hashes)
                runs.append(hashes[order])
                # one row group per batch, whatever its size: the row groups and the runs stay aligned
                writer.write_table(pa.table([batch.take(pa.array(order)), runs[-1]], schema=_SCHEMA),
                                   row_group_size=len(batch))
    return runs


def _row_groups(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """Each row group's index and hashes; recomputed from the identifiers if the hash function changed."""
    if not path.exists():
        return
    file = pq.ParquetFile(path)
    stored = (file.schema_arrow.metadata or {}).get(_HASH_CHECK) == hash_identifiers(_PROBES).tobytes()
    for index in range(file.num_row_groups):
        if stored:
            yield index, file.read_row_group(index, columns=[HASH]).column(HASH).to_numpy()
        else:
            yield index, hash_identifiers(file.read_row_group(index, columns=[MEMBER]).column(MEMBER))


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


def delivered_members(written: Sequence[WrittenFile], identifier: str, separator: str = ",") -> Iterator[pa.Array]:
    """A run's members, read back from the files it just wrote (they are the audience as delivered),
    a batch at a time: reading them back keeps the extraction's memory flat."""
    options = {
        "read_options": pacsv.ReadOptions(block_size=_READ_BLOCK),
        "parse_options": pacsv.ParseOptions(delimiter=separator),
        "convert_options": pacsv.ConvertOptions(column_types={identifier: pa.string()}),
    }
    for file in written:
        with _readable(file.path) as stream:
            for batch in pacsv.open_csv(stream, **options):
                yield batch.column(identifier)


@contextmanager
def _readable(path: Path) -> Iterator[pa.NativeFile]:
    if not path.name.endswith(".zip"):
        with pa.input_stream(str(path), compression="detect") as stream:
            yield stream
        return
    with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as member:
        yield pa.PythonFile(member, mode="r")
