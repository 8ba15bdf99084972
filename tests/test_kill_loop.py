"""SIGKILL at random moments, again and again: every rerun converges.

tests/test_kill_recovery.py kills a run at each named checkpoint; this loop kills real runs at
random moments instead (during start-up, the extract, the upload, between two renames, the clean-up
of the previous delivery's files, the final ledger write...), with an audience whose size and
delivered name (compression) change every time. After each kill the next run
must succeed, and the location must then hold exactly the files its manifest lists, with their
sha256, and no temporary name; the ledger must mark the killed run. The seed is printed, so a failure
can be replayed with AUDIENCE_SYNC_KILL_SEED.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

from conftest import emails_sql
from test_kill_recovery import Project, sha256

KILLS = 30


def assert_location_matches_its_manifest(location: Path, rows: int) -> None:
    manifests = sorted(location.glob("*.manifest.json"))
    assert [m.name for m in manifests] == ["members.manifest.json"], sorted(p.name for p in location.iterdir())
    manifest = json.loads(manifests[0].read_text())
    assert manifest["rows"] == rows
    listed = {f["name"]: f["sha256"] for f in manifest["files"]}
    present = {p.name for p in location.iterdir()} - {manifests[0].name}
    assert present == set(listed), (present, listed)
    assert all(sha256(location / name) == digest for name, digest in listed.items())


def test_thirty_random_kills_each_end_in_a_consistent_location_after_the_rerun(tmp_path: Path) -> None:
    seed = int(os.environ.get("AUDIENCE_SYNC_KILL_SEED", time.time_ns() % 1_000_000))
    print(f"AUDIENCE_SYNC_KILL_SEED={seed}")
    chance = random.Random(seed)
    project = Project(tmp_path, chunk=500)
    outbox = tmp_path / "outbox"
    project.sql("members", emails_sql(1, 2000))
    code, output = project.run("members")
    assert code == 0, output
    # how long a whole run takes here: kills are spread over it (and a little past it)
    began = time.monotonic()
    project.sql("members", emails_sql(1, 2100))
    assert project.run("members")[0] == 0
    span = (time.monotonic() - began) * 1.1

    killed = 0
    plain = project.config.read_text()
    for attempt in range(KILLS):
        rows = chance.randint(1900, 4000)
        project.sql("members", emails_sql(1, rows))
        # the delivered name changes too (members.csv, .csv.gz, .zip): the clean-up of the previous
        # delivery's files is killed as well
        compression = chance.choice(["none", "gzip", "zip"])
        project.config.write_text(plain.replace('[activations.members]\n', '[activations.members]\n'
                                                f'file = {{ compression = "{compression}" }}\n', 1))
        process = project.start("members")
        time.sleep(chance.uniform(0, span))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        killed += process.returncode == -signal.SIGKILL

        code, output = project.run("members")
        assert code == 0, f"seed {seed}, kill {attempt}: {output}"
        assert_location_matches_its_manifest(outbox, rows)
        assert project.leftovers(outbox) == [], f"seed {seed}, kill {attempt}"
        assert project.runs("members")[0].status == "succeeded"
    assert killed >= KILLS * 2 // 3, f"only {killed} of {KILLS} runs were still alive when killed"
    statuses = [r.status for r in project.runs("members")]
    assert "running" not in statuses  # every killed run was found and closed by its successor
