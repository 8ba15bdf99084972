"""A short soak (bench/soak.py): scheduled runs with random faults leave nothing behind.

The full 200-run soak and its figures are in docs/benchmarks.md ("Soak"); this one is short enough
for every CI run. The first runs load pandas, pyarrow and the drivers and warm the caches, so growth
is measured from run 10 on; a leak of one descriptor, socket, thread or connection per run would
show as twenty.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak  # noqa: E402

from etl.destinations.filedrop.base import Deliverer  # noqa: E402

RUNS = 30
WARM = 10
SEED = 3
#: RSS may still move a little after the warm-up (allocator arenas, the ledger's page cache)
RSS_SLACK_MB = 25.0


def test_thirty_scheduled_runs_with_faults_leak_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Deliverer, "retry", replace(Deliverer.retry, sleep=lambda seconds: None))

    report = soak.soak(RUNS, seed=SEED, checkpoints=[WARM, RUNS], root=tmp_path)

    statuses = {status for _, status in report.outcomes}
    faults = {label for label, _ in report.outcomes} - {"no fault"}
    assert statuses == {"succeeded", "failed"} and len(faults) >= 4, report.table()  # the faults did happen
    start, warm, end = report.samples
    assert warm.runs == WARM and end.runs == RUNS
    assert start.checked_out == warm.checked_out == end.checked_out == 0, report.table()
    assert end.fds <= warm.fds + 1 and end.sockets <= warm.sockets + 1, report.table()
    assert end.threads <= warm.threads + 1, report.table()
    assert end.rss_mb - warm.rss_mb < RSS_SLACK_MB, report.table()
