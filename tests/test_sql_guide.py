"""docs/writing-audience-sql.md runs: each of its SQL examples, previewed on the demo warehouse.

An example that stopped working (a renamed demo column, a parameter no longer bound) fails here, not
in an analyst's first hour."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "writing-audience-sql.md"
EXAMPLES = re.findall(r"```sql\n(.*?)```", GUIDE.read_text("utf-8"), re.S)


def test_the_guide_has_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_each_example_previews_on_the_demo(tmp_path: Path, number: int) -> None:
    sql = EXAMPLES[number]
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    (tmp_path / "sql" / "example.sql").write_text(sql, "utf-8")
    identifier = "profileId" if '"profileId"' in sql else "email"
    config = (REPO / "schedules.toml").read_text("utf-8") + f"""
[activations.example]
sql = "sql/example.sql"
destination = "actito_demo"
identifier = "{identifier}"
params = {{ min_days = 180, max_days = 365 }}
schedule = {{ every = "1d", timezone = "Europe/Brussels" }}
"""
    (tmp_path / "schedules.toml").write_text(config, "utf-8")
    done = subprocess.run([sys.executable, "-m", "etl", "--config", str(tmp_path / "schedules.toml"),
                           "--log-format", "json", "preview", "example"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, sql + done.stdout + done.stderr
    counts = json.loads(done.stdout)
    assert counts["kept"] > 0, (sql, counts)
