"""Who entered and who left an audience since its last delivered run.

The snapshot (Parquet, mode 0600) is replaced atomically only after a successful delivery, so a failed
or dry run never moves it. The comparison works on sorted 64-bit hashes, the identifiers streamed a row
group at a time: memory stays bounded (figures: docs/benchmarks.md, "Diffs"). A hash collision would
hide one entry or departure for one run."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.config.load import ids_in_memory
from etl.errors import StateError
from etl.files import create_private, writing
from etl.runtime.activation_state import MEMBERS, state_file
from etl.transform.dedupe import hash_identifiers, hash_ranges, range_of

MEMBER, HASH = "member", "hash"
_SCHEMA = pa.schema([(MEMBER, pa.string()), (HASH, pa.uint64())])
#: the stored hashes are reused only if this version's hash function gives these same values
_PROBES = pa.array(["", "a", "someone@example.org", "1234567890123", "é" * 21])
_HASH_CHECK = b"audience_sync_hash_check"
#: members gathered into one row group (about 2 MB of e-mails): few row groups, little memory
ROW_GROUP_ROWS = 65_536


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


def everyone_entered(diff: MemberDiff) -> MemberDiff:
    """`run --full`: every current member is sent again (the destination lost them), and those who left
    since the last delivery still leave. Holds the whole audience's identifiers, as a first run does."""
    members = pq.read_table(diff.staged, columns=[MEMBER]).column(MEMBER).combine_chunks()
    return replace(diff, entered=len(members), entered_members=members)


class MemberSnapshot:
    """The identifiers an activation last delivered, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, state_dir: Path, activation: str) -> MemberSnapshot:
        return cls(state_file(state_dir, activation, MEMBERS))

    def size(self) -> int:
        """Members the snapshot holds (0 without one), read from its metadata alone."""
        if not self.path.exists() and not self.path.is_symlink():
            return 0
        with self._reading():
            return int(pq.ParquetFile(self.path).metadata.num_rows)

    def diff(self, current: StagedMembers | Path, *, identifiers: bool = False) -> MemberDiff:
        """Compare the members staged by this run (written, or shared from a fan-out's) with the snapshot;
        ``identifiers``: also who entered and who left. Both sides are compared as whole sorted arrays
        (16 bytes a member), then the identifiers are found row group by row group."""
        return self._diff(current if isinstance(current, Path) else current.path, identifiers)

    def rediff(self, diff: MemberDiff) -> MemberDiff:
        """The same staged members compared again, after `apply_landed` changed the snapshot."""
        return self._diff(diff.staged, diff.entered_members is not None)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A snapshot that is a link, or that cannot be read, is said as such: never read through a link
        planted in the state directory, never an internal error."""
        if self.path.is_symlink():
            raise StateError("the members snapshot is a symbolic link: runs never read or write through one",
                             where=str(self.path), hint="remove it; the next run then compares with no snapshot "
                                                        "(every member counts as entered)")
        try:
            yield
        except (pa.ArrowException, OSError) as exc:
            raise StateError(f"the members snapshot cannot be read ({exc})", where=str(self.path),
                             hint="it is damaged: remove it; the next run then compares with no snapshot "
                                  "(every member counts as entered)") from None

    def _diff(self, staged: Path, identifiers: bool) -> MemberDiff:
        with self._reading():
            return self._compare(staged, identifiers)

    def _compare(self, staged: Path, identifiers: bool) -> MemberDiff:
        """A range of the hash space at a time (`_hash_ranges`): memory stays flat whatever the sizes."""
        size, entered_count, left_count = _rows(staged), 0, 0
        entered_parts, left_parts = [np.empty(0, np.uint64)], [np.empty(0, np.uint64)]
        for current_sorted, previous_sorted in _hash_ranges(staged, self.path, size + _rows(self.path)):
            entered = current_sorted[~_sorted_present(current_sorted, previous_sorted)]
            left = previous_sorted[~_sorted_present(previous_sorted, current_sorted)]
            entered_count, left_count = entered_count + len(entered), left_count + len(left)
            if identifiers:  # ranges come in order, each sorted: their concatenation is sorted
                entered_parts.append(entered)
                left_parts.append(left)
        diff = MemberDiff(size, entered_count, left_count, staged, compared=self.path.exists())
        if not identifiers:
            return diff
        return replace(diff, entered_members=_members_among(staged, np.concatenate(entered_parts)),
                       left_members=_members_among(self.path, np.concatenate(left_parts)))

    def apply_landed(self, added: pa.Array, removed: pa.Array) -> None:
        """Members a run that died got into (or out of) Actito: applied to the snapshot, so the next diff is
        against what Actito holds. Rare, so the snapshot is simply rewritten."""
        with self._reading():
            self._rewrite(added, removed)

    def _rewrite(self, added: pa.Array, removed: pa.Array) -> None:
        known = _sorted_hashes(self.path)
        removed_hashes = np.sort(hash_identifiers(removed)) if len(removed) else np.empty(0, np.uint64)
        rewritten = self.path.with_name(f".{self.path.name}.recovering")
        with StagedMembers(rewritten) as members:
            if self.path.exists():
                file = pq.ParquetFile(self.path)
                for index in range(file.num_row_groups):
                    group = file.read_row_group(index, columns=[MEMBER]).column(MEMBER).combine_chunks()
                    members.add(group.filter(pa.array(~_present(hash_identifiers(group), removed_hashes))))
            if len(added):
                members.add(added.filter(pa.array(~_present(hash_identifiers(added), known))))
        rewritten.replace(self.path)

    def replace(self, diff: MemberDiff) -> None:
        """Move the staged snapshot into place (a rename: a crash leaves the old one or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        diff.staged.replace(self.path)


class StagedMembers:
    """The next snapshot, written as the run writes its file, in row groups of about ROW_GROUP_ROWS
    members, each sorted by hash and holding its hashes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[pa.Array] = []
        self._pending_hashes: list[np.ndarray] = []
        self._pending_rows = 0
        with writing(self.path):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._handle = create_private(path)
            check = {_HASH_CHECK: hash_identifiers(_PROBES).tobytes()}
            # every value is distinct and the hashes are random: a dictionary, compressing the hashes or
            # min/max statistics nobody filters on are wasted work
            self._writer = pq.ParquetWriter(self._handle, _SCHEMA.with_metadata(check), use_dictionary=False,
                                            compression={MEMBER: "zstd", HASH: "none"}, write_statistics=False)

    def add(self, members: pa.Array | pa.ChunkedArray, hashes: np.ndarray | None = None) -> None:
        """``hashes``: `hash_identifiers` of ``members`` if the caller has them (the cleaner does)."""
        if not len(members):
            return
        if isinstance(members, pa.ChunkedArray):
            members = members.combine_chunks()
        if not pa.types.is_string(members.type):
            members = pc.cast(members, pa.string())  # profileIds: the text the file holds
        self._pending.append(members)
        self._pending_hashes.append(hash_identifiers(members) if hashes is None else hashes)
        self._pending_rows += len(members)
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """One row group of the batches gathered so far: a row group per small chunk multiplies the metadata
        to write and read back, and slows the diff."""
        if not self._pending:
            return
        members, hashes = pa.concat_arrays(self._pending), np.concatenate(self._pending_hashes)
        self._pending, self._pending_hashes, self._pending_rows = [], [], 0
        order = np.argsort(hashes)
        # one row group, whatever its size (pyarrow would split one of over 1,048,576 rows, and the
        # halves would no longer be sorted on their own)
        with writing(self.path):
            self._writer.write_table(pa.table([members.take(pa.array(order)), hashes[order]], schema=_SCHEMA),
                                     row_group_size=len(members))

    def close(self) -> None:
        if not self._handle.closed:
            with writing(self.path):
                try:
                    self._flush()
                    self._writer.close()
                finally:
                    self._handle.close()

    def __enter__(self) -> StagedMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sorted_hashes(path: Path) -> np.ndarray:
    """All the hashes of a snapshot file, sorted, in one array allocated once."""
    if not path.exists():
        return np.empty(0, np.uint64)
    hashes = np.empty(pq.ParquetFile(path).metadata.num_rows, np.uint64)
    start = 0
    for group in _row_groups(path):
        hashes[start:start + len(group)] = group
        start += len(group)
    hashes.sort()
    return hashes


def _rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows) if path.exists() else 0


def _hash_ranges(current: Path, previous: Path, total: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Both files' hashes, sorted, a range of the hash space at a time: all at once when ``total`` fits
    `ids_in_memory`; else each file is first split by the hashes' top bits into files next to ``current``
    (removed after), so no pass holds more than about that many (8 bytes each, as much again to sort)."""
    passes = hash_ranges(total, ids_in_memory())
    if passes == 1:
        yield _sorted_hashes(current), _sorted_hashes(previous)
        return
    with tempfile.TemporaryDirectory(prefix=".diff-", dir=current.parent) as spill:
        sides = [_split_by_range(path, passes, Path(spill) / side)
                 for path, side in ((current, "current"), (previous, "previous"))]
        for part in range(passes):
            yield tuple(np.sort(np.fromfile(files[part], dtype="<u8")) for files in sides)  # type: ignore[misc]


def _split_by_range(path: Path, passes: int, directory: Path) -> list[Path]:
    """One file of raw hashes per range (the top bits), written a row group at a time."""
    files = [directory / str(part) for part in range(passes)]
    with ExitStack() as stack:
        with writing(directory):
            directory.mkdir()
            handles = [stack.enter_context(open(file, "wb")) for file in files]
        for group in (_row_groups(path) if path.exists() else ()):
            ordered = np.sort(group)
            bounds = np.searchsorted(range_of(ordered, passes), np.arange(passes + 1, dtype=np.uint64))
            with writing(directory):
                for part, handle in enumerate(handles):
                    ordered[bounds[part]:bounds[part + 1]].astype("<u8").tofile(handle)
    return files


def _row_groups(path: Path) -> Iterator[np.ndarray]:
    """Each row group's hashes; recomputed from the identifiers if the hash function changed."""
    file = pq.ParquetFile(path)
    stored = _hashes_stored(file)
    for index in range(file.num_row_groups):
        if stored:
            yield file.read_row_group(index, columns=[HASH]).column(HASH).to_numpy()
        else:
            yield hash_identifiers(file.read_row_group(index, columns=[MEMBER]).column(MEMBER))


def _hashes_stored(file: pq.ParquetFile) -> bool:
    """Whether the file's hashes are this version's (an older snapshot holds the identifiers only)."""
    return (file.schema_arrow.metadata or {}).get(_HASH_CHECK) == hash_identifiers(_PROBES).tobytes()


def _present(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """For each value, whether it is in ``sorted_set`` (sorted ascending; fastest when ``values`` is too)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    positions = np.searchsorted(sorted_set, values)
    positions[positions == len(sorted_set)] = 0
    return sorted_set[positions] == values  # type: ignore[no-any-return]


def _sorted_present(values: np.ndarray, sorted_set: np.ndarray, block: int = 1 << 14) -> np.ndarray:
    """``_present`` for sorted ``values``: each block is searched only in the slice of ``sorted_set``
    its range spans, which stays in the CPU cache."""
    found = np.empty(len(values), dtype=bool)
    for start in range(0, len(values), block):
        part = values[start:start + block]
        low, high = np.searchsorted(sorted_set, part[0]), np.searchsorted(sorted_set, part[-1], side="right")
        found[start:start + block] = _present(part, sorted_set[low:high])
    return found


def _members_among(path: Path, hashes: np.ndarray) -> pa.Array:
    """The identifiers of a snapshot file whose hashes are among ``hashes`` (sorted)."""
    if not path.exists() or not len(hashes):
        return pa.array([], pa.string())
    file = pq.ParquetFile(path)
    stored = _hashes_stored(file)
    found = []
    for index in range(file.num_row_groups):
        group = file.read_row_group(index, columns=[MEMBER, HASH] if stored else [MEMBER])
        members = group.column(MEMBER).combine_chunks()
        group_hashes = group.column(HASH).to_numpy() if stored else hash_identifiers(members)
        found.append(members.filter(pa.array(_present(group_hashes, hashes))))
    return pa.concat_arrays(found)
