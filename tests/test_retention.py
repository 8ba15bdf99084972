"""Old runs' local files (audience file, rejects, member lists: personal data) are removed at the end of
every run once older than ``settings.run_retention_days``, except the last ``settings.keep_runs`` runs;
their ledger rows, which hold counts and no people, stay for ``history``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from etl.runtime.ledger import runs, utcnow
from conftest import emails_sql
from test_kill_recovery import Project


def _age(project: Project, run_id: str, days: int) -> None:
    store = project.store()
    try:
        with store.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(started_at=utcnow() - timedelta(days=days)))
    finally:
        store.close()


def test_run_files_older_than_the_retention_are_removed_and_the_history_stays(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.sql("members", emails_sql(1, 50) + " UNION ALL SELECT 'not an address'")  # a reject each run
    for _ in range(3):
        assert project.run("members")[0] == 0
    first, second, third = reversed([r.run_id for r in project.runs("members")])
    _age(project, first, 20)
    _age(project, second, 20)
    runs_dir = tmp_path / "state" / "runs" / "members"
    assert (runs_dir / first / "members.rejects.csv").exists()

    code, output = project.run("members")
    assert code == 0, output
    latest = project.runs("members")[0]
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted([third, latest.run_id])
    assert latest.details["pruned_runs"] == sorted([first, second])
    assert {r.run_id for r in project.runs("members")} == {first, second, third, latest.run_id}
    assert first in project.cli("history", "members")


def test_keep_runs_keeps_the_last_runs_whatever_their_age(tmp_path: Path) -> None:
    project = Project(tmp_path)
    text = project.config.read_text()
    project.config.write_text(text.replace("[settings]\n", "[settings]\nrun_retention_days = 0\nkeep_runs = 1\n", 1))
    for _ in range(3):
        assert project.run("members")[0] == 0
    runs_dir = tmp_path / "state" / "runs" / "members"
    assert [p.name for p in runs_dir.iterdir()] == [project.runs("members")[0].run_id]
