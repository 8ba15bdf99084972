"""Deduplication over a whole stream: 64-bit hashes of the identifiers (from the Arrow buffers, no
Python object per value) and the set of those kept, 8 bytes each whatever their width."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.config.load import ids_in_memory
from etl.files import writing


def _splitmix64(seed: int, count: int) -> list[int]:
    """``count`` well-mixed 64-bit constants from ``seed`` (SplitMix64): the same on every platform and version."""
    mask = (1 << 64) - 1
    out = []
    for _ in range(count):
        seed = (seed + 0x9E3779B97F4A7C15) & mask
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


#: odd multipliers of the identifier hash: the length's, then one per 8-byte word position (cycling after 32)
_HASH_MULTIPLIERS = np.array([value | 1 for value in _splitmix64(0x5EED, 33)], dtype=np.uint64)


def hash_identifiers(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string's UTF-8 bytes (nulls as empty strings), from the Arrow buffers. Each
    8-byte word is folded in through an odd multiplier and the MurmurHash3 finaliser, all bijections: two
    identifiers of the same length that differ in one word never collide."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    count = len(values)
    if count == 0:
        return np.empty(0, np.uint64)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], offset_type)[values.offset : values.offset + count + 1]
    offsets = offsets.astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.zeros(last - first + 8, np.uint8)  # 8 bytes of padding: a word may start at the last byte
    if last > first:
        data[: last - first] = np.frombuffer(values.buffers()[2], np.uint8)[first:last]
    words = np.ndarray(buffer=data, dtype="<u8", shape=(last - first + 1,), strides=(1,))  # a word at every byte
    starts = offsets[:-1] - first
    lengths = np.diff(offsets)
    if values.null_count:
        lengths[pc.is_null(values).to_numpy(zero_copy_only=False)] = 0
    with np.errstate(over="ignore"):
        hashes = _fmix64(lengths.astype(np.uint64) * _HASH_MULTIPLIERS[0] + np.uint64(0x5EED))
        rows = np.flatnonzero(lengths > 0)
        position = 0
        while len(rows):
            word = words[starts[rows] + position]
            left = lengths[rows] - position
            partial = left < 8
            if partial.any():  # keep only the string's own bytes of its last word
                shift = (8 - left[partial]).astype(np.uint64) * np.uint64(8)
                word[partial] = (word[partial] << shift) >> shift
            multiplier = _HASH_MULTIPLIERS[1 + (position // 8) % 32]
            if len(rows) == count:
                hashes = _fmix64(hashes + word * multiplier)
            else:
                hashes[rows] = _fmix64(hashes[rows] + word * multiplier)
            position += 8
            rows = rows[lengths[rows] > position]
    return hashes


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection with full avalanche), in place."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


class SeenHashes:
    """The set of 64-bit hashes of every identifier kept so far, with vectorised membership: sorted runs of
    halving sizes (a log-structured merge; a run of ``MERGE_LIMIT`` or more is merged no further, as a merge
    holds both runs and their copy), behind a bitmap that lets most new hashes skip the search. A collision
    drops the later identifier as a "duplicate" (visible in the reject file), never adds a wrong one."""

    #: runs of this many hashes (8 MB) or more are left as they are
    MERGE_LIMIT = 1 << 20
    #: bits of the bitmap in front of the runs (a power of two)
    FILTER_BITS = 1 << 26

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._filter: np.ndarray | None = None  # made at the first hash kept
        self._filter_shift = np.uint64(64 - (self.FILTER_BITS.bit_length() - 1))

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if self._filter is None:
            return found
        places, masks = self._filter_bits(hashes)
        maybe = np.flatnonzero(self._filter[places] & masks)
        if len(maybe) == 0:
            return found
        candidates = hashes[maybe]
        seen = np.zeros(len(candidates), dtype=bool)
        for run in self._runs:
            positions = np.searchsorted(run, candidates)
            np.minimum(positions, len(run) - 1, out=positions)  # past the end: compared with the last, unequal
            seen |= run[positions] == candidates
        found[maybe] = seen
        return found

    def add_new(self, hashes: np.ndarray) -> np.ndarray:
        """Mark which hashes are new (first occurrence in ``hashes``, never seen before) and remember them."""
        keep = np.zeros(len(hashes), dtype=bool)
        if len(hashes) == 0:
            return keep
        unique, first = _unique_first(hashes)
        new = ~self.contains(unique)
        keep[first[new]] = True
        self._add_sorted(unique[new])
        return keep

    def _filter_bits(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The byte of the bitmap for each hash, and the mask of its bit in that byte."""
        bits = (hashes >> self._filter_shift).astype(np.int64)
        return bits >> 3, np.left_shift(np.uint8(1), (bits & 7).astype(np.uint8))

    def _add_sorted(self, run: np.ndarray) -> None:
        if len(run) == 0:
            return
        if self._filter is None:
            self._filter = np.zeros(self.FILTER_BITS // 8, dtype=np.uint8)
        places, masks = self._filter_bits(run)  # sorted, as the run is
        starts = np.flatnonzero(np.concatenate(([True], places[1:] != places[:-1])))
        self._filter[places[starts]] |= np.bitwise_or.reduceat(masks, starts)
        self._runs.append(run)
        while (
            len(self._runs) > 1
            and 2 * len(self._runs[-1]) >= len(self._runs[-2])
            and len(self._runs[-2]) < self.MERGE_LIMIT
        ):
            newer = self._runs.pop()
            older = self._runs.pop()
            merged = np.concatenate([older, newer])
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self._runs.append(merged)


def _unique_first(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(hashes, return_index=True)`` from a cheaper unstable sort: a value's first position is
    the least of its positions."""
    order = np.argsort(hashes)
    ordered = hashes[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.minimum.reduceat(order, starts)


class StreamDedupe:
    """First occurrences over a whole stream in bounded memory. Up to ``memory_hashes`` distinct hashes are
    kept in memory and decided at once (as `SeenHashes`). Past that, a row not already known is *deferred*:
    spilled with its payload to a private directory, and decided after the stream, a range of hashes at a
    time, so peak memory stays flat however many people the audience holds. Deferred rows come out after
    the others, in their own order, which only moves them down the file."""

    def __init__(self, *, memory_hashes: int | None = None, spill_dir: Path | None = None) -> None:
        """``memory_hashes``: distinct hashes decided in memory (`ids_in_memory` if None); the deferred are
        resolved half as many at a time (16 bytes each with their position)."""
        self._seen = SeenHashes()
        self._memory_hashes = ids_in_memory() if memory_hashes is None else memory_hashes
        self._spill_parent = spill_dir
        self._spill: _Spill | None = None

    def add(self, hashes: np.ndarray, payload: Callable[[], pa.Table]) -> tuple[np.ndarray, np.ndarray]:
        """Masks over ``hashes``: the first occurrences decided now, and those deferred (spilled with their
        row of ``payload()``, made only when needed); every other row is a duplicate."""
        if self._spill is None and len(self._seen) + len(hashes) <= self._memory_hashes:
            return self._seen.add_new(hashes), np.zeros(len(hashes), dtype=bool)
        if self._spill is None:
            with writing(self._spill_parent or Path(tempfile.gettempdir())):
                self._spill = _Spill(Path(tempfile.mkdtemp(prefix=".dedupe-", dir=self._spill_parent)))
        deferred = np.zeros(len(hashes), dtype=bool)
        if len(hashes):
            unique, first = _unique_first(hashes)
            deferred[first[~self._seen.contains(unique)]] = True
            with writing(self._spill.directory):
                self._spill.write(hashes[deferred], payload().filter(pa.array(deferred)))
        return np.zeros(len(hashes), dtype=bool), deferred

    def close(self) -> None:
        """Remove the spill of a stream that stopped early (a failed run): nothing of it outlives the run."""
        if self._spill is not None:
            self._spill.remove()
            self._spill = None

    def resolved(self) -> Iterator[tuple[pa.Table, np.ndarray, np.ndarray]]:
        """After the stream: the deferred rows spill batch by spill batch, with their hashes and whether each
        is the first of its hash among them. The spill is removed once read (or when the reader stops)."""
        if self._spill is None:
            return
        self._seen = SeenHashes()  # decided rows are all out: their memory goes before the passes
        spill, self._spill = self._spill, None
        try:
            with writing(spill.directory):
                later = spill.later_occurrences(max(1, self._memory_hashes // 2))
            yield from spill.read(later)
        finally:
            spill.remove()


def hash_ranges(count: int, per_pass: int) -> int:
    """How many ranges of the hash space (a power of two, split by the top bits) to work through so that
    each holds about ``per_pass`` of ``count`` uniformly spread hashes at most."""
    return 1 << max(0, (count - 1) // per_pass).bit_length()


def range_of(hashes: np.ndarray, ranges: int) -> np.ndarray:
    """The range (of `hash_ranges`) each hash falls in: its top bits."""
    if ranges == 1:
        return np.zeros(len(hashes), np.uint64)
    return hashes >> np.uint64(64 - (ranges.bit_length() - 1))


class _Spill:
    """Deferred rows on disk: their payload (Arrow IPC, batch by batch) and their hashes (raw, in order)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.rows = 0
        self._hashes = open(directory / "hashes.u64", "wb")  # noqa: SIM115 - held until the stream ends
        self._payload: pa.ipc.RecordBatchFileWriter | None = None

    def write(self, hashes: np.ndarray, payload: pa.Table) -> None:
        if self._payload is None:
            self._payload = pa.ipc.new_file(str(self.directory / "payload.arrow"), payload.schema)
        hashes.astype("<u8").tofile(self._hashes)
        self._payload.write_table(payload)
        self.rows += len(hashes)

    def later_occurrences(self, pass_hashes: int) -> np.ndarray:
        """Sorted positions of the deferred rows whose hash an earlier deferred row has: one scan of the
        hashes per range of the hash space, each range small enough to sort in ``pass_hashes``."""
        self._hashes.close()
        if self._payload is not None:
            self._payload.close()
        passes = hash_ranges(self.rows, pass_hashes)
        later = [np.empty(0, np.int64)]
        for part in range(passes):
            hashes, positions = self._range(part, passes)
            order = np.argsort(hashes, kind="stable")  # positions rise: the first of each hash leads
            ordered = hashes[order]
            later.append(positions[order[1:][ordered[1:] == ordered[:-1]]])  # an empty range too
        return np.sort(np.concatenate(later))

    def _range(self, part: int, passes: int) -> tuple[np.ndarray, np.ndarray]:
        """The hashes in range ``part`` of ``passes``, and their positions, read a block at a time."""
        hashes, positions = [], []
        block = 1 << 20
        for start in range(0, self.rows, block):
            chunk = np.fromfile(self.directory / "hashes.u64", dtype="<u8", count=block, offset=start * 8)
            inside = range_of(chunk, passes) == part
            hashes.append(chunk[inside])
            positions.append(np.flatnonzero(inside) + start)
        return np.concatenate(hashes or [np.empty(0, np.uint64)]), np.concatenate(positions or [np.empty(0, np.int64)])

    def read(self, later: np.ndarray) -> Iterator[tuple[pa.Table, np.ndarray, np.ndarray]]:
        if self._payload is None:
            return
        with pa.OSFile(str(self.directory / "payload.arrow")) as source:
            reader = pa.ipc.open_file(source)
            start = 0
            for index in range(reader.num_record_batches):
                batch = pa.Table.from_batches([reader.get_batch(index)])
                hashes = np.fromfile(self.directory / "hashes.u64", dtype="<u8", count=len(batch), offset=start * 8)
                low, high = np.searchsorted(later, [start, start + len(batch)])
                first = np.ones(len(batch), dtype=bool)
                first[later[low:high] - start] = False
                yield batch, hashes, first
                start += len(batch)

    def remove(self) -> None:
        self._hashes.close()
        if self._payload is not None:
            self._payload.close()
        shutil.rmtree(self.directory, ignore_errors=True)
