"""Audience diffs: who entered and who left between two large audiences, several ways.

Generates two synthetic audiences of e-mail addresses (default: 10M each, 9.5M in common, so
0.5M entered and 0.5M left, about 27 bytes an address): the *previous* one as a members snapshot
(Parquet, zstd: sorted strings for the baselines, audience-sync's own format for audience-sync),
the *current* one as a run delivered it (a CSV file, in delivery order). Each case runs in a fresh
process and does the whole job of a run: read the current members from the file, read the
previous snapshot, find who entered and who left, and write the current members as the next
snapshot. Wall time is the whole process (interpreter start and imports included); peak RSS is
its ``ru_maxrss``.

Cases:
- **audience-sync**: ``etl.transform.members.MemberSnapshot`` with the identifiers of who entered and who left
  (what a membership delivery needs): 64-bit hashes in sorted numpy arrays, the file and the
  snapshot read a batch (a row group) at a time;
- **audience-sync-counts**: the same, counts only (what a file audience needs);
- **read-only**: only reading the CSV file chunk by chunk, the share of the audience-sync figures a
  run does not pay (its chunks come from the extraction; the baselines read the file in one go);
- **arrow-join** (baseline, the engineering notes' way): ``Table.join(..., "left anti")`` both ways
  on the strings, snapshot sorted with ``sort_indices``;
- **duckdb** (baseline): DuckDB anti-joins against the Parquet file with a ``memory_limit``, the
  snapshot written by ``COPY ... ORDER BY``;
- **numpy-setdiff1d**: the same 64-bit hashes as audience-sync, whole arrays, ``np.setdiff1d`` both
  ways (counts only: it loses the positions, so the identifiers would need another pass).

Usage: ``python bench/diff_bench.py [--members 10000000] [--common N] [--cases ...] [--repeat 1]
[--data DIR]`` with this project installed (DuckDB for its case: the ``test`` extra), or
``bench/run.sh diff [...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
#: members per chunk, as a run's extraction hands them over (settings.chunk_size)
CHUNK = 50_000
CASES = ("read-only", "audience-sync", "audience-sync-counts", "arrow-join", "duckdb", "numpy-setdiff1d")

_FIRST = ("anna bob chloe david emma felix gaia hugo ines jules karim lea marc nina oscar paula quentin rosa "
          "sami tess ugo vera willem xavier yasmine zoe alice bruno carla dimitri").split()
_LAST = ("martin dubois lambert peeters janssens maes jacobs mertens willems claes goossens wouters de-smet "
         "dumont leroy simon laurent michel lefebvre garcia muller schmidt fischer weber wagner becker").split()
_DOMAINS = ("gmail.com", "hotmail.com", "outlook.be", "skynet.be", "telenet.be", "yahoo.fr", "orange.fr",
            "proximus.be", "icloud.com", "live.be", "example.org", "free.fr", "gmx.de", "web.de")
_DIGITS = 100_000


def emails(ids: np.ndarray) -> pa.Array:
    """One distinct address per id (first.last + digits @ domain), about 27 bytes each."""
    ids = np.asarray(ids, dtype=np.int64)
    first = pa.array(_FIRST).take(pa.array(ids % len(_FIRST)))
    last = pa.array(_LAST).take(pa.array(ids // len(_FIRST) % len(_LAST)))
    digits = pc.cast(pa.array(ids // (len(_FIRST) * len(_LAST))), pa.string())
    domain = pa.array(_DOMAINS).take(pa.array(ids * 7 % len(_DOMAINS)))
    return pc.binary_join_element_wise(first, ".", last, digits, "@", domain, "")


def generate(directory: Path, members: int, common: int, seed: int = 5) -> None:
    """previous.parquet: a sorted zstd snapshot (audience-sync's own in previous-audience-sync.parquet);
    current.csv: the new audience as a run delivers it, shuffled."""
    from etl.transform.members import MemberSnapshot, StagedMembers

    rng = np.random.default_rng(seed)
    total = 2 * members - common
    ids = rng.choice(len(_FIRST) * len(_LAST) * _DIGITS * 10, size=total, replace=False)
    previous = emails(ids[:members])
    current = emails(rng.permutation(ids[members - common:]))
    pq.write_table(pa.table({"member": previous.take(pc.sort_indices(previous))}), directory / "previous.parquet",
                   compression="zstd")
    pacsv.write_csv(pa.table({"emailAddress": current}), directory / "current.csv",
                    pacsv.WriteOptions(quoting_style="none"))
    ours = MemberSnapshot(directory / "previous-audience-sync.parquet")
    with StagedMembers(directory / "staged.parquet") as staged:
        for start in range(0, len(previous), CHUNK):
            staged.add(previous.slice(start, CHUNK))
    ours.replace(ours.diff(staged))


def _previous(directory: Path, case: str) -> Path:
    """The previous snapshot as each case keeps it: audience-sync's own, the others' sorted strings."""
    return directory / ("previous-audience-sync.parquet" if case.startswith("audience-sync")
                        else "previous.parquet")


# --------------------------------------------------------------------------- the cases (child processes)


def _current(directory: Path) -> pa.Array:
    convert = pacsv.ConvertOptions(column_types={"emailAddress": pa.string()})
    return pacsv.read_csv(directory / "current.csv", convert_options=convert).column(0).combine_chunks()


def _case_audience_sync(directory: Path, previous: Path, target: Path, *, identifiers: bool = True) -> dict[str, int]:
    """As a run: the members staged chunk by chunk (of about CHUNK members) as they stream, then compared."""
    from etl.transform.members import MemberSnapshot, StagedMembers

    with StagedMembers(target) as staged:
        for batch in _chunks(directory):
            staged.add(batch)
    return MemberSnapshot(previous).diff(staged, identifiers=identifiers).counts()


def _chunks(directory: Path) -> Iterator[pa.Array]:
    convert = pacsv.ConvertOptions(column_types={"emailAddress": pa.string()})
    for batch in pacsv.open_csv(directory / "current.csv", pacsv.ReadOptions(block_size=CHUNK * 28),
                                convert_options=convert):
        yield batch.column(0)


def _case_read_only(directory: Path, previous: Path, target: Path) -> dict[str, int]:
    """Only reading current.csv chunk by chunk: the part of audience-sync's figure that a run does not
    pay here (its chunks come from the extraction)."""
    target.write_bytes(b"")
    return {"entered": 0, "left": 0, "members": sum(len(batch) for batch in _chunks(directory))}


def _case_audience_sync_counts(directory: Path, previous: Path, target: Path) -> dict[str, int]:
    return _case_audience_sync(directory, previous, target, identifiers=False)


def _case_arrow_join(directory: Path, previous: Path, target: Path) -> dict[str, int]:
    now = pa.table({"member": _current(directory)})
    before = pq.read_table(previous)
    entered = now.join(before, "member", join_type="left anti").column("member")
    left = before.join(now, "member", join_type="left anti").column("member")
    pq.write_table(now.take(pc.sort_indices(now.column("member"))), target, compression="zstd")
    return {"entered": len(entered), "left": len(left)}


def _case_duckdb(directory: Path, previous: Path, target: Path) -> dict[str, int]:
    import duckdb

    connection = duckdb.connect(config={"memory_limit": "1GB", "threads": 2})
    connection.sql(f"CREATE TEMP TABLE now AS SELECT emailAddress AS member FROM read_csv('{directory}/current.csv', "
                   "header = true, columns = {'emailAddress': 'VARCHAR'})")
    before = f"read_parquet('{previous}')"
    entered = connection.sql(f"SELECT member FROM now ANTI JOIN {before} b USING (member)").to_arrow_table()
    left = connection.sql(f"SELECT member FROM {before} ANTI JOIN now USING (member)").to_arrow_table()
    connection.sql(f"COPY (SELECT member FROM now ORDER BY member) TO '{target}' "
                   "(FORMAT parquet, COMPRESSION zstd)")
    return {"entered": entered.num_rows, "left": left.num_rows}


def _case_numpy_setdiff1d(directory: Path, previous: Path, target: Path) -> dict[str, int]:
    from etl.transform.dedupe import hash_identifiers

    current = _current(directory)
    now = hash_identifiers(current)
    before = hash_identifiers(pq.read_table(previous).column("member").combine_chunks())
    entered = np.setdiff1d(now, before, assume_unique=True)
    left = np.setdiff1d(before, now, assume_unique=True)
    pq.write_table(pa.table({"member": current}), target, compression="zstd")  # in delivery order
    return {"entered": len(entered), "left": len(left)}


_RUNNERS = {"read-only": _case_read_only, "audience-sync": _case_audience_sync, "audience-sync-counts": _case_audience_sync_counts,
            "arrow-join": _case_arrow_join, "duckdb": _case_duckdb, "numpy-setdiff1d": _case_numpy_setdiff1d}


def child(case: str, directory: Path) -> None:
    target = directory / f"next-{case}.parquet"
    began = time.perf_counter()
    counts = _RUNNERS[case](directory, _previous(directory, case), target)
    elapsed = time.perf_counter() - began
    size = target.stat().st_size
    target.unlink()
    print(json.dumps({**counts, "work_s": elapsed, "snapshot_mb": size / 1e6}))


# --------------------------------------------------------------------------- the parent


def run_case(case: str, directory: Path) -> dict[str, float]:
    """One fresh process; its rusage from wait4 is its own peak RSS."""
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", case, "--data", str(directory)],
                               stdout=subprocess.PIPE, env=environ, text=True)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"case {case} failed (exit {process.returncode})")
    result: dict[str, float] = json.loads(out)
    result.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024)
    return result


def report(members: int, common: int, results: dict[str, list[dict[str, float]]]) -> str:
    lines = [f"{members:,} vs {members:,} members, {common:,} in common "
             f"({members - common:,} entered, {members - common:,} left); median of "
             f"{len(next(iter(results.values())))} run(s)", "",
             "| case | entered | left | read + diff + write (s) | wall (s) | CPU (s) | peak RSS (MB) | snapshot (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case, runs in results.items():
        def median(key: str) -> float:
            return statistics.median(run[key] for run in runs)
        lines.append(f"| {case} | {int(runs[0]['entered']):,} | {int(runs[0]['left']):,} | {median('work_s'):.2f} | "
                     f"{median('wall_s'):.2f} | {median('cpu_s'):.2f} | {median('peak_rss_mb'):.0f} | {median('snapshot_mb'):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000_000, help="members of each audience")
    parser.add_argument("--common", type=int, help="members in both (default: 95%% of --members)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help="keep the generated audiences under this directory and reuse them")
    args = parser.parse_args(argv)
    common = args.common if args.common is not None else args.members * 95 // 100
    if args.child:
        child(args.child, args.data)
        return 0
    if args.generate:
        generate(args.data, args.members, common)
        return 0
    with tempfile.TemporaryDirectory(prefix="diff-bench-") as scratch:
        directory = args.data / f"{args.members}-{common}" if args.data else Path(scratch)
        if not (directory / "previous-audience-sync.parquet").exists():
            directory.mkdir(parents=True, exist_ok=True)
            # in a process of its own: a child forked from a parent holding the audiences would
            # start its ru_maxrss at the parent's size
            subprocess.run([sys.executable, __file__, "--generate", "--data", str(directory), "--members",
                            str(args.members), "--common", str(common)], check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        results = {case: [run_case(case, directory) for _ in range(args.repeat)] for case in args.cases}
    text = report(args.members, common, results)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
