"""Flat memory for very large audiences: past `AUDIENCE_SYNC_IDS_IN_MEMORY` identifiers, the dedupe
defers rows to a spill on disk and the members diff works a range of hashes at a time. Whatever the
budget, a run delivers the same people, rejects the same rows for the same reasons and counts who
entered and left the same: compared here with a budget the audience exceeds many times over."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from conftest import cli_process, emails_sql, json_run, sandbox_config, sandbox_state
from etl.errors import FileWriteError
from etl.transform.audience import AudienceCleaner
from etl.transform.members import MemberSnapshot, StagedMembers

SMALLEST_BUDGET = "1024"


def dirty_emails(count: int, seed: int) -> list[str | None]:
    """People, some many times over (case, spaces, mailto:), some missing or invalid."""
    generator = random.Random(seed)
    values: list[str | None] = []
    for row in range(count):
        pick = generator.random()
        if pick < 0.25:
            values.append(f"  Shared{generator.randrange(count // 8)}@Example.COM ")
        elif pick < 0.3:
            values.append(None)
        elif pick < 0.35:
            values.append(f"not-an-address-{row % 50}")
        elif pick < 0.4:
            values.append(f"mailto:person{generator.randrange(count)}@example.be")
        else:
            values.append(f"person{generator.randrange(count)}@example.be")
    return values


def clean_all(values: list[str | None], memory_hashes: int | None, spill_dir: Path) -> dict[str, Any]:
    cleaner = AudienceCleaner("email", memory_hashes=memory_hashes, spill_dir=spill_dir)
    kept: list[str] = []
    rejects: list[tuple[int, str, str]] = []
    batches = [cleaner.clean(pa.record_batch([pa.array(values[start:start + 997], pa.string())], names=["email"]))
               for start in range(0, len(values), 997)]
    for cleaned in [*batches, *cleaner.finish()]:
        kept += cleaned.identifiers.to_pylist()
        rejects += [tuple(row.values()) for row in cleaned.rejects.to_pylist()]
    return {"kept": kept, "rejects": sorted(rejects, key=lambda reject: reject[0]), "counts": vars(cleaner.counts)}


@pytest.mark.parametrize("memory_hashes", [3000, 700, 64])
def test_a_spilled_dedupe_keeps_and_rejects_exactly_what_memory_does(tmp_path: Path, memory_hashes: int) -> None:
    values = dirty_emails(40_000, seed=memory_hashes)
    in_memory = clean_all(values, None, tmp_path)
    spilled = clean_all(values, memory_hashes, tmp_path)

    assert len(set(spilled["kept"])) == len(spilled["kept"])  # nobody twice
    assert sorted(spilled["kept"]) == sorted(in_memory["kept"])
    # the same rows are rejected, for the same reasons: the first occurrence of a person is kept
    assert spilled["rejects"] == in_memory["rejects"]
    assert spilled["counts"] == in_memory["counts"]
    assert spilled["counts"]["duplicates"] > 5_000
    assert list(tmp_path.iterdir()) == []  # the spill is gone


def test_a_small_spill_whose_hash_ranges_are_partly_empty_is_resolved(tmp_path: Path) -> None:
    """A budget of two identifiers splits a handful of deferred rows into ranges some of which hold none."""
    for people in range(3, 40):
        values: list[str | None] = [f"person{i}@example.be" for i in range(people)]
        values += [value.upper() for value in values[::3] if value]  # some twice
        spilled = clean_all(values, 2, tmp_path)
        assert sorted(spilled["kept"]) == sorted(f"person{i}@example.be" for i in range(people))
        assert spilled["counts"] == clean_all(values, None, tmp_path)["counts"]


def test_a_run_that_stops_mid_stream_leaves_no_spill(tmp_path: Path) -> None:
    cleaner = AudienceCleaner("email", memory_hashes=10, spill_dir=tmp_path)
    cleaner.clean(pa.record_batch([pa.array([f"p{i}@example.be" for i in range(100)])], names=["email"]))
    assert len(list(tmp_path.iterdir())) == 1
    cleaner.close()
    assert list(tmp_path.iterdir()) == []


def test_a_spill_that_cannot_be_written_is_said_with_where_and_what_to_do(tmp_path: Path) -> None:
    """A full disk or a run directory gone: the same kind of error as any file the run writes."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    cleaner = AudienceCleaner("email", memory_hashes=10, spill_dir=not_a_directory)
    with pytest.raises(FileWriteError) as raised:
        cleaner.clean(pa.record_batch([pa.array([f"p{i}@example.be" for i in range(100)])], names=["email"]))
    assert raised.value.where == str(not_a_directory) and "free space" in (raised.value.hint or "")


def staged(path: Path, members: list[str]) -> Path:
    with StagedMembers(path) as stage:
        for start in range(0, len(members), 1000):
            stage.add(pa.array(members[start:start + 1000], pa.string()))
    return path


def test_a_diff_by_ranges_finds_who_entered_and_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_SYNC_IDS_IN_MEMORY", SMALLEST_BUDGET)
    before = [f"person{i}@example.be" for i in range(0, 9000)]
    after = [f"person{i}@example.be" for i in range(3000, 14000)]
    snapshot = MemberSnapshot(tmp_path / "state" / "members.parquet")
    first = snapshot.diff(staged(tmp_path / "one.parquet", before))
    assert first.counts() == {"entered": 9000, "left": 0}
    snapshot.replace(first)

    diff = snapshot.diff(staged(tmp_path / "two.parquet", after), identifiers=True)
    assert diff.counts() == {"entered": 5000, "left": 3000}
    assert diff.entered_members is not None and diff.left_members is not None
    assert set(diff.entered_members.to_pylist()) == set(after) - set(before)
    assert set(diff.left_members.to_pylist()) == set(before) - set(after)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state", "two.parquet"]  # no split files left


ACTIVATION = """
[activations.big]
sql = "big.sql"
destination = "d"
identifier = "email"
max_shrink = 1
"""


def project(root: Path, values: list[str | None]) -> Path:
    root.mkdir()
    with sqlite3.connect(root / "wh.db") as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT)")
        db.executemany("INSERT INTO people (email) VALUES (?)", [(value,) for value in values])
    (root / "big.sql").write_text("SELECT email FROM people ORDER BY id")
    config = root / "schedules.toml"
    config.write_text(sandbox_config('{ type = "local", path = "outbox" }', activations=ACTIVATION))
    return config


COUNTS = ("rows_extracted", "rows_rejected", "rows_duplicate", "rows_delivered", "members", "entered", "left")


def counts(run: dict[str, Any]) -> dict[str, int]:
    return {key: run[key] for key in COUNTS}


def delivered(root: Path) -> list[str]:
    return sorted((root / "outbox" / "big.csv").read_text().splitlines())


def rejected(run: dict[str, Any]) -> list[str]:
    return sorted(Path(run["rejects_file"]).read_text().splitlines())


def test_a_run_over_its_memory_budget_delivers_the_same_audience(tmp_path: Path) -> None:
    """Two projects over the same dirty warehouse, one with the smallest budget: the same file (as a set
    of lines), the same reject file, the same counts, then the same entries and departures."""
    values = dirty_emails(30_000, seed=11)
    roomy, tight = project(tmp_path / "roomy", values), project(tmp_path / "tight", values)
    first = json_run(roomy, "run", "big"), spilled_run(tight)
    assert counts(first[0]) == counts(first[1])
    assert first[1]["rows_duplicate"] > 5000
    assert delivered(roomy.parent) == delivered(tight.parent)
    assert rejected(first[0]) == rejected(first[1])

    for config in (roomy, tight):
        with sqlite3.connect(config.parent / "wh.db") as db:
            db.execute("DELETE FROM people WHERE id % 3 = 0")
            db.execute("INSERT INTO people (email) SELECT 'newcomer' || id || '@example.be' FROM people LIMIT 4000")
    second = json_run(roomy, "run", "big"), spilled_run(tight)
    assert counts(second[0]) == counts(second[1])
    assert second[1]["entered"] >= 4000 and second[1]["left"] > 0
    assert delivered(roomy.parent) == delivered(tight.parent)
    assert not list((tight.parent / "state").rglob(".dedupe-*")) and not list(tight.parent.rglob(".diff-*"))


def spilled_run(config: Path, name: str = "big") -> dict[str, Any]:
    return json_run(config, "run", name, env={"AUDIENCE_SYNC_IDS_IN_MEMORY": SMALLEST_BUDGET})


def test_a_budget_that_is_not_a_number_is_said_before_anything_runs(tmp_path: Path) -> None:
    config = project(tmp_path / "p", ["a@example.be"])
    done = cli_process(config, "run", "big", env={"AUDIENCE_SYNC_IDS_IN_MEMORY": "lots"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "AUDIENCE_SYNC_IDS_IN_MEMORY" in done.stderr and "Traceback" not in done.stderr
    assert not (config.parent / "outbox").exists() or not list((config.parent / "outbox").iterdir())


MEMBERSHIP = """
[activations.tracked]
sql = "tracked.sql"
destination = "d"
identifier = "email"
delivery = "membership"
max_shrink = 1
"""


def test_a_membership_delivery_over_its_budget_imports_exactly_who_entered_and_left(tmp_path: Path) -> None:
    """The identifiers of who entered and who left come from the diff's ranges: Actito's membership table
    ends up holding exactly the audience, run after run, with the smallest budget."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "wh.db").touch()
    config = root / "schedules.toml"
    config.write_text(sandbox_config('{ type = "local", path = "outbox" }', activations=MEMBERSHIP))

    def members() -> list[str]:
        return sorted(record["memberKey"] for record in sandbox_state(root).records("demo", "audience_members"))

    (root / "tracked.sql").write_text(emails_sql(1, 6000))
    first = spilled_run(config, "tracked")
    assert (first["entered"], first["left"]) == (6000, 0)
    (root / "tracked.sql").write_text(emails_sql(2001, 9000))
    second = spilled_run(config, "tracked")
    assert (second["entered"], second["left"]) == (3000, 2000)
    assert members() == sorted(f"tracked:person{i}@example.com" for i in range(2001, 9001))
