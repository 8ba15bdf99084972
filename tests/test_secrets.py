"""A failing run never shows a secret: not on the terminal, in JSON logs, the ledger, the report or files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WAREHOUSE_PASSWORD = "wh-pass-4f9c2e"
API_KEY = "actito-key-7d1b3a"
SFTP_PASSWORD = "sftp-pass-a83c55"

CONFIG = """
[settings]
state_dir = "state"

[warehouses.dwh]
url = "postgresql+psycopg://etl:${DWH_PASSWORD}@127.0.0.1:1/nowhere"

[destinations.d]
environment = "ENV-0"
entity = "acme"
api_key = "${ACTITO_API_KEY}"
files = { type = "sftp", host = "127.0.0.1", port = 1, username = "u", password = "${SFTP_PASSWORD}" }

[activations.audience]
sql = "audience.sql"
destination = "d"
identifier = "email"
"""


def test_no_output_of_a_failing_run_holds_a_secret(tmp_path: Path) -> None:
    (tmp_path / "audience.sql").write_text("SELECT email FROM customers")
    (tmp_path / "schedules.toml").write_text(CONFIG)
    env = {**os.environ, "DWH_PASSWORD": WAREHOUSE_PASSWORD, "ACTITO_API_KEY": API_KEY,
           "SFTP_PASSWORD": SFTP_PASSWORD}
    outputs = []
    for args in (["run", "audience"], ["--log-format", "json", "-v", "run", "audience"], ["history"],
                 ["--log-format", "json", "history"], ["report", "-o", str(tmp_path / "report.html")]):
        done = subprocess.run([sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"), *args],
                              capture_output=True, text=True, env=env, timeout=120)
        outputs += [done.stdout, done.stderr]
    assert "failed" in outputs[0]  # the run did fail, and said why
    assert "127.0.0.1" in outputs[0] + outputs[1]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".sql", ".toml")]
    assert any(p.name == "state.db" for p in files) and any(p.name == "report.html" for p in files)
    texts = outputs + [p.read_bytes().decode("utf-8", "replace") for p in files]
    for secret in (WAREHOUSE_PASSWORD, API_KEY, SFTP_PASSWORD):
        assert not [t for t in texts if secret in t], f"{secret} leaked"
