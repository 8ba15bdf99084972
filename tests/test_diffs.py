"""Who entered and who left an audience: real runs of the demo warehouse through the CLI, and the
members snapshot they keep."""

from __future__ import annotations

import random
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from etl.transform.members import MemberSnapshot, StagedMembers
from etl.transform.audience import AudienceCleaner
from etl.transform.dedupe import hash_identifiers
from etl.runtime.ledger import RunRecord, StateStore


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def warehouse(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(config.parent / "var" / "demo" / "warehouse.db")


def churn(config: Path, leaving: int, entering: int) -> tuple[set[str], set[str]]:
    """Move ``leaving`` VIPs out of the audience and ``entering`` customers into it; their profileIds."""
    with warehouse(config) as db:
        out = [r[0] for r in db.execute(
            "SELECT actito_profile_id FROM customers WHERE lifetime_value >= 500 AND actito_profile_id IS NOT NULL "
            "ORDER BY customer_id LIMIT ?", (leaving,))]
        into = [r[0] for r in db.execute(
            "SELECT actito_profile_id FROM customers WHERE lifetime_value < 500 AND actito_profile_id IS NOT NULL "
            "ORDER BY customer_id LIMIT ?", (entering,))]
        db.executemany("UPDATE customers SET lifetime_value = 0 WHERE actito_profile_id = ?", [(p,) for p in out])
        db.executemany("UPDATE customers SET lifetime_value = 999 WHERE actito_profile_id = ?", [(p,) for p in into])
    return {str(p) for p in out}, {str(p) for p in into}


def last_run(config: Path) -> RunRecord:
    store = StateStore.in_directory(config.parent / "var" / "state")
    try:
        return store.runs("vip_customers", limit=1)[0]
    finally:
        store.close()


def snapshot_of(config: Path) -> Path:
    return config.parent / "var" / "state" / "activations" / "vip_customers" / "members.parquet"


def delivered(config: Path) -> set[str]:
    lines = (config.parent / "var" / "outbox" / "vip_customers.csv").read_text().splitlines()
    return set(lines[1:])


def test_each_run_records_who_entered_and_left_and_history_shows_it(demo_project: Path) -> None:
    first = cli(demo_project, "run", "vip_customers")
    assert first.returncode == 0, first.stdout + first.stderr
    everyone = delivered(demo_project)
    assert last_run(demo_project).details["entered"] == len(everyone) > 100

    leaving, entering = churn(demo_project, leaving=30, entering=7)
    second = cli(demo_project, "run", "vip_customers")
    assert second.returncode == 0, second.stdout + second.stderr
    assert delivered(demo_project) == (everyone - leaving) | entering
    record = last_run(demo_project)
    assert (record.details["entered"], record.details["left"]) == (7, 30)

    sizes = cli(demo_project, "history", "vip_customers", "--sizes").stdout
    header, _, first_row, second_row = sizes.splitlines()[:4]
    assert header.split()[-2:] == ["entered", "left"]
    assert second_row.split()[-4:-2] == ["-23", f"{-23 / len(everyone):+.1%}"], sizes
    assert second_row.split()[-2:] == ["7", "30"], sizes
    assert first_row.split()[-2:] == [f"{len(everyone):,}", "0"]
    shown = cli(demo_project, "show", record.run_id).stdout
    assert "members    7 entered, 30 left since the last delivery" in shown, shown

    report = demo_project.parent / "report.html"
    assert cli(demo_project, "report", "--output", str(report)).returncode == 0
    assert "+7 / −30" in report.read_text(encoding="utf-8")


def test_the_snapshot_moves_only_after_a_delivery(demo_project: Path) -> None:
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    snapshot = snapshot_of(demo_project)
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    kept = snapshot.read_bytes()
    first_members = delivered(demo_project)
    churn(demo_project, leaving=5, entering=3)

    dry = cli(demo_project, "run", "vip_customers", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    record = last_run(demo_project)
    assert record.dry_run and (record.details["entered"], record.details["left"]) == (3, 5)
    assert snapshot.read_bytes() == kept

    outbox = demo_project.parent / "var" / "outbox"
    parked = outbox.with_name("outbox.parked")
    outbox.rename(parked)
    outbox.write_text("not a directory")  # the local delivery fails
    failed = cli(demo_project, "run", "vip_customers")
    assert failed.returncode == 1
    assert last_run(demo_project).status == "failed"
    assert snapshot.read_bytes() == kept
    outbox.unlink()
    parked.rename(outbox)

    churn(demo_project, leaving=20, entering=0)
    again = cli(demo_project, "run", "vip_customers")
    assert again.returncode == 0, again.stdout + again.stderr
    record = last_run(demo_project)
    # compared with the last delivered members, not with what the dry or the failed run saw
    now = delivered(demo_project)
    assert (record.details["entered"], record.details["left"]) == (len(now - first_members), len(first_members - now))
    assert len(first_members - now) > 5
    assert snapshot.read_bytes() != kept
    members = set(pq.read_table(snapshot).column("member").to_pylist())
    assert members == delivered(demo_project)


def test_the_shrink_guard_says_how_many_left_and_entered(demo_project: Path) -> None:
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    with warehouse(demo_project) as db:
        total = db.execute("SELECT count(*) FROM customers WHERE lifetime_value >= 500").fetchone()[0]
    leaving, _ = churn(demo_project, leaving=int(total * 0.7), entering=4)
    refused = cli(demo_project, "run", "vip_customers")
    assert refused.returncode == 1
    assert f"{len(leaving):,} left and 4 entered since the last delivery" in refused.stdout, refused.stdout
    assert "4 entered" in last_run(demo_project).details["guard"]["reason"]


def test_a_diff_matches_set_arithmetic_across_row_groups(tmp_path: Path) -> None:
    generator = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789.-_éü"
    pool = list({"".join(generator.choices(alphabet, k=generator.randint(1, 40))) + "@example.org"
                 for _ in range(6000)})
    before, after = pool[:4000], pool[1500:]
    snapshot = MemberSnapshot(tmp_path / "state" / "members.parquet")
    first = snapshot.diff(staged(tmp_path / "run1", before, 700))
    assert (first.size, first.counts(), first.compared) == (4000, {"entered": 4000, "left": 0}, False)
    snapshot.replace(first)

    diff = snapshot.diff(staged(tmp_path / "run2", after, 900), identifiers=True)
    assert diff.entered_members is not None and diff.left_members is not None
    assert set(diff.entered_members.to_pylist()) == set(after) - set(before)
    assert set(diff.left_members.to_pylist()) == set(before) - set(after)
    assert diff.counts() == {"entered": len(set(after) - set(before)), "left": len(set(before) - set(after))}
    snapshot.replace(diff)
    assert stat.S_IMODE(snapshot.path.stat().st_mode) == 0o600
    assert sorted(pq.read_table(snapshot.path).column("member").to_pylist()) == sorted(after)
    unchanged = snapshot.diff(staged(tmp_path / "run3", after[::-1], 5000))
    assert unchanged.counts() == {"entered": 0, "left": 0}


def test_a_snapshot_of_identifiers_only_still_compares(tmp_path: Path) -> None:
    """Snapshots written before the hashes were kept (membership deliveries) hold one sorted column."""
    path = tmp_path / "members.parquet"
    pq.write_table(pa.table({"member": ["a@example.org", "b@example.org", "c@example.org"]}), path)
    diff = MemberSnapshot(path).diff(staged(tmp_path / "run", ["b@example.org", "d@example.org"], 10), identifiers=True)
    assert diff.entered_members is not None and diff.left_members is not None
    assert (diff.entered_members.to_pylist(), sorted(diff.left_members.to_pylist())) == (
        ["d@example.org"], ["a@example.org", "c@example.org"])


def test_a_batch_larger_than_a_default_row_group(tmp_path: Path) -> None:
    """pyarrow splits a table of more than 1,048,576 rows into several row groups unless told not to."""
    members = pc.binary_join_element_wise(pc.cast(pa.array(np.arange(1_100_000)), pa.string()), "@example.org", "")
    snapshot = MemberSnapshot(tmp_path / "members.parquet")
    with StagedMembers(tmp_path / "run1.parquet") as first:
        first.add(members)
    snapshot.replace(snapshot.diff(first))
    with StagedMembers(tmp_path / "run2.parquet") as second:
        second.add(members.slice(10))
    diff = snapshot.diff(second, identifiers=True)
    assert diff.left_members is not None and sorted(diff.left_members.to_pylist()) == sorted(
        f"{n}@example.org" for n in range(10))


def test_what_a_dead_run_landed_is_diffed_against(tmp_path: Path) -> None:
    """A membership run died after Actito applied its 'entered' import: the table holds the old
    members plus those, so the next run must not import them again, and must delete the ones that
    have left since — the old snapshot alone would miss both."""
    snapshot = MemberSnapshot(tmp_path / "state" / "members.parquet")
    snapshot.replace(snapshot.diff(staged(tmp_path / "run1", ["a@x.org", "b@x.org"], 10)))
    current = snapshot.diff(staged(tmp_path / "run3", ["a@x.org", "c@x.org", "e@x.org"], 2), identifiers=True)
    assert current.counts() == {"entered": 2, "left": 1}  # c and e entered, b left: against the old snapshot

    snapshot.apply_landed(pa.array(["c@x.org", "d@x.org"]), pa.array([], pa.string()))  # the dead run's import
    again = snapshot.rediff(current)
    assert again.entered_members is not None and again.left_members is not None
    assert again.entered_members.to_pylist() == ["e@x.org"]
    assert sorted(again.left_members.to_pylist()) == ["b@x.org", "d@x.org"]

    snapshot.apply_landed(pa.array([], pa.string()), pa.array(["b@x.org"]))  # a landed 'left' import
    assert sorted(snapshot.rediff(current).left_members.to_pylist()) == ["d@x.org"]  # type: ignore[union-attr]
    assert stat.S_IMODE(snapshot.path.stat().st_mode) == 0o600


def staged(directory: Path, values: list[str], size: int) -> StagedMembers:
    with StagedMembers(directory / "members.parquet") as members:
        for start in range(0, len(values), size):
            members.add(pa.array(values[start:start + size], pa.string()))
    return members


@pytest.mark.parametrize(("kind", "values"), [
    ("email", pa.array(["A@x.org", "a@x.org", "b@x.org", None, "c@x.org"])),
    ("profileId", pa.array([3, 3, 12, -1, 7], pa.int64())),
    ("profileId", pa.array(["3", "12", "12", "x"])),
])
def test_the_cleaners_hashes_are_the_snapshots(tmp_path: Path, kind: str, values: pa.Array) -> None:
    """Runs stage their members with the hashes the dedupe computed: they must be the very hashes a
    snapshot computes of the members as stored (text), or entered/left would count everyone."""
    cleaned = AudienceCleaner(kind).clean(pa.record_batch({"emailAddress" if kind == "email" else "profileId": values}))
    stored = pc.cast(cleaned.identifiers, pa.string())
    assert list(cleaned.hashes) == list(hash_identifiers(stored))
    snapshot = MemberSnapshot(tmp_path / "members.parquet")
    with StagedMembers(tmp_path / "given.parquet") as given:
        given.add(cleaned.identifiers, cleaned.hashes)
    snapshot.replace(snapshot.diff(given))
    assert snapshot.diff(staged(tmp_path / "again", stored.to_pylist(), 2)).counts() == {"entered": 0, "left": 0}
