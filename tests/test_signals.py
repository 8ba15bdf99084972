"""A one-shot run stopped by SIGTERM (a pod being stopped) ends cleanly: recorded, nothing delivered."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from etl.runtime.ledger import StateStore

CONFIG = """
[settings]
state_dir = "state"
chunk_size = 100

[warehouses.wh]
url = "sqlite:///{db}"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {{ type = "local", path = "outbox" }}

[activations.slow]
sql = "slow.sql"
destination = "d"
identifier = "email"
"""

# two million generated addresses, read 100 rows at a time: long enough to be stopped midway
SLOW_SQL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000)
SELECT 'person' || i || '@example.com' AS email FROM n
"""


def test_sigterm_stops_a_one_shot_run_between_chunks(tmp_path: Path) -> None:
    (tmp_path / "wh.db").touch()
    (tmp_path / "slow.sql").write_text(SLOW_SQL)
    (tmp_path / "schedules.toml").write_text(CONFIG.format(db=tmp_path / "wh.db"))
    process = subprocess.Popen(
        [sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"), "run", "slow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not list((tmp_path / "state" / "runs").glob("slow/*/slow.rejects.csv")) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the run has started writing
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert "Traceback" not in err
    assert not (tmp_path / "outbox").exists()
    store = StateStore.in_directory(tmp_path / "state")
    (record,) = store.runs("slow")
    store.close()
    assert record.status == "interrupted" and "nothing was delivered" in (record.error or "")
