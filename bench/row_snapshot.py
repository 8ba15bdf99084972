"""An import activation's delta with its retry queue: what the queue costs a large snapshot.

A run of an import activation compares each chunk's key and row hashes with the row snapshot (which
rows changed, which wait for a dependency), stages what it sent with what Actito refused, and commits
the snapshot. This measures that whole cycle on synthetic hashes — the extraction, mapping and import
are outside it — in a fresh process per case: wall time (interpreter start and imports included) and
peak RSS (``ru_maxrss``).

Cases (``--rows`` rows in the snapshot and in the run, 1% changed):
- **no-queue**: retries on, nobody waiting — the cost of a run before the queue existed, plus the column;
- **queue-10pct**: 10% of the snapshot's rows wait for a dependency; the run sends them again and Actito
  refuses half of them again (their window kept);
- **retries-off**: ``retry_refused_for = "off"``, the same refusals remembered as plain refusals;
- **pandas-merge** (baseline): the same comparison as one ``DataFrame.merge`` of the run's hashes with
  the snapshot's, then ``drop_duplicates`` and ``to_parquet`` for the commit.

Usage: ``python bench/row_snapshot.py [--rows 5000000] [--repeat 3] [--cases ...]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
CHUNK = 50_000
CASES = ("no-queue", "queue-10pct", "retries-off", "pandas-merge")
FINGERPRINT = "bench"
NOW = datetime(2026, 12, 2, tzinfo=UTC)


def make_snapshot(path: Path, rows: int, waiting_share: float) -> None:
    rng = np.random.default_rng(7)
    keys = np.unique(rng.integers(1, 2**63, rows, dtype=np.uint64))
    values = rng.integers(1, 2**63, len(keys), dtype=np.uint64)
    waiting = np.where(rng.random(len(keys)) < waiting_share, int((NOW - timedelta(days=1)).timestamp()), 0)
    table = pa.table({"key": keys, "row": values, "refused": waiting > 0, "waiting": waiting.astype(np.int64)})
    pq.write_table(table.replace_schema_metadata({b"audience_sync_fingerprint": FINGERPRINT.encode()}), path,
                   compression="zstd")


def run_case(case: str, path: Path) -> None:
    """One run's delta cycle over the snapshot at ``path`` (a copy: each case starts from the same one)."""
    table = pq.read_table(path)
    keys, values = table.column("key").to_numpy(), table.column("row").to_numpy().copy()
    changed = np.random.default_rng(11).random(len(keys)) < 0.01
    values[changed] += 1
    if case == "pandas-merge":
        _pandas_merge(path, keys, values)
        return
    from etl.transform.delta import RefusalRetries, RowSnapshot

    seconds = 0 if case == "retries-off" else 7 * 86_400
    snapshot = RowSnapshot(path, FINGERPRINT, RefusalRetries(seconds, 10_000_000, NOW))
    for start in range(0, len(keys), CHUNK):
        chunk_keys, chunk_values = keys[start:start + CHUNK], values[start:start + CHUNK]
        compared = snapshot.compare(chunk_keys, chunk_values)
        send = compared.changed | compared.retry
        sent_keys, sent_values = chunk_keys[send], chunk_values[send]
        refused = compared.retry[send] & (np.arange(int(send.sum())) % 2 == 0)  # half refused again
        snapshot.stage(sent_keys, sent_values, refused, refused)
    snapshot.commit()


def _pandas_merge(path: Path, keys: np.ndarray, values: np.ndarray) -> None:
    import pandas as pd

    previous = pd.read_parquet(path)
    current = pd.DataFrame({"key": keys, "row": values})
    merged = current.merge(previous, on="key", how="left", suffixes=("", "_before"))
    send = merged["row_before"].isna() | (merged["row"] != merged["row_before"]) | (merged["waiting"] > 0)
    after = pd.concat([previous, merged.loc[send, ["key", "row"]]]).drop_duplicates("key", keep="last")
    after.to_parquet(path.with_suffix(".next.parquet"), compression="zstd")


def measure(case: str, source: Path, repeat: int) -> dict[str, float]:
    walls, peaks = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "rows.parquet"
            copy.write_bytes(source.read_bytes())
            started = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--one", case, str(copy)], capture_output=True,
                                  text=True, cwd=REPO, check=True)
            walls.append(time.perf_counter() - started)
            peaks.append(json.loads(done.stdout)["peak_mb"])
    return {"wall_s": statistics.median(walls), "peak_mb": statistics.median(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SNAPSHOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(REPO))
        run_case(args.one[0], Path(args.one[1]))
        print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    with tempfile.TemporaryDirectory() as data:
        print(f"| case | rows | wall (s) | peak RSS (MB) |\n|---|---|---|---|")
        for case in args.cases:
            source = Path(data) / f"{case}.parquet"
            make_snapshot(source, args.rows, 0.10 if case in ("queue-10pct", "pandas-merge") else 0.0)
            figures = measure(case, source, args.repeat)
            print(f"| {case} | {args.rows:,} | {figures['wall_s']:.2f} | {figures['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
