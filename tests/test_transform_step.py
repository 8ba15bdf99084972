"""The pandas transform step (`transform = "file.py:function"`) through the real CLI, on a SQLite warehouse,
with a transform module written by the test as an analyst would."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

ROWS = [  # customer_id, mail, country, orders
    (1, "Ann@Example.com", "BE", 5), (2, "bob@example.com", "FR", 1), (3, "not-an-email", "BE", 2),
    (4, "ann@example.com", "BE", 3), (5, "cid@example.com", "NL", 9), (6, "dee@example.com", "BE", 0),
] + [(n, f"fr{n}@example.com", "FR", 1) for n in range(7, 251)]  # 250 rows: three chunks of at most 100

SHAPE = '''
import pandas as pd

def shape(chunk, context):
    chunk = chunk[chunk["country"] == context.params["country"]]
    chunk = chunk.assign(score=chunk["orders"] * 10)
    chunk = chunk[chunk["score"] > 0]
    return chunk.rename(columns={"mail": "emailAddress"})
'''


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300)


def project(root: Path, transform: str, source: str = SHAPE, *, kind: str = "") -> Path:
    with sqlite3.connect(root / "dwh.db") as db:
        db.execute("CREATE TABLE customers (customer_id INTEGER, mail TEXT, country TEXT, orders INTEGER)")
        db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", ROWS)
    (root / "audience.sql").write_text("SELECT customer_id, mail, country, orders FROM customers ORDER BY customer_id")
    (root / "transforms").mkdir()
    (root / "transforms" / "vip.py").write_text(source)
    config = root / "schedules.toml"
    config.write_text(textwrap.dedent(f'''\
        [settings]
        state_dir = "state"
        chunk_size = 100

        [warehouses.w]
        url = "sqlite:///{root / 'dwh.db'}"

        [destinations.d]
        environment = "sandbox"
        entity = "demo"
        files = {{ type = "local", path = "outbox" }}

        [activations.vip]
        {kind}sql = "audience.sql"
        destination = "d"
        identifier = "email"
        params = {{ country = "BE" }}
        transform = "{transform}"
        '''))
    return config


def test_a_transform_scores_filters_and_renames_and_cleaning_still_applies(tmp_path: Path) -> None:
    config = project(tmp_path, "transforms/vip.py:shape")
    assert cli(config, "validate").returncode == 0
    done = cli(config, "run", "vip")
    assert done.returncode == 0, done.stderr
    delivered = (tmp_path / "outbox" / "vip.csv").read_text().splitlines()
    # BE only, score > 0 (row 6 out), normalised, row 3 rejected, row 4 a duplicate of row 1
    assert delivered == ["emailAddress", "ann@example.com"]
    (rejects,) = (tmp_path / "state" / "runs" / "vip").glob("*/vip.rejects.csv")
    lines = rejects.read_text().splitlines()
    # the rows are the query's: the function kept the index, so a filtered chunk still names its source rows
    assert any(line.startswith("3,") and "not-an-email" in line for line in lines), lines
    assert any(line.startswith("4,") and "duplicate" in line for line in lines), lines


def test_preview_and_dry_run_run_the_transform(tmp_path: Path) -> None:
    config = project(tmp_path, "transforms/vip.py:shape")
    shown = cli(config, "preview", "vip")
    assert shown.returncode == 0, shown.stderr
    assert "ann@example.com" in shown.stdout and "bob@example.com" not in shown.stdout
    dry = cli(config, "run", "--dry-run", "vip")
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "outbox" / "vip.csv").exists()
    (written,) = (tmp_path / "state" / "runs" / "vip").glob("*/vip.csv")
    assert written.read_text().splitlines() == ["emailAddress", "ann@example.com"]


def _failing(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    config = project(tmp_path, "transforms/vip.py:shape", body)
    return cli(config, "run", "vip")


def test_an_exception_in_the_function_is_said_at_its_line_with_the_chunks_first_row(tmp_path: Path) -> None:
    body = "def shape(chunk, context):\n    if 150 in chunk.index:\n        return chunk['orders'] / 0 + chunk['nope']\n    return chunk\n"
    done = _failing(tmp_path, body)
    assert done.returncode == 1, done.stderr
    said = done.stdout + done.stderr
    assert f"{tmp_path / 'transforms' / 'vip.py'}:3: shape() raised KeyError" in said, said
    assert "in the chunk starting at source row 101" in said  # chunk_size 100: rows 101-200
    assert "Traceback" not in said
    assert not (tmp_path / "outbox" / "vip.csv").exists()


def test_a_result_that_is_no_dataframe_or_lost_the_identifier_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    done = _failing(tmp_path / "a", "def shape(chunk, context):\n    return chunk.to_dict()\n")
    assert done.returncode == 1
    assert "shape() returned dict, not a pandas DataFrame" in done.stdout + done.stderr
    (tmp_path / "b").mkdir()
    done = _failing(tmp_path / "b", "def shape(chunk, context):\n    return chunk.drop(columns=['mail'])\n")
    assert done.returncode == 1
    said = done.stdout + done.stderr
    assert "in the DataFrame shape() returned, cannot tell which column holds the e-mail address" in said, said
    assert "keep the identifier column" in said and "Traceback" not in said


def test_validate_finds_a_missing_function_a_syntax_error_and_a_missing_file(tmp_path: Path) -> None:
    for sub, transform, body, expected in (
        ("a", "transforms/vip.py:score", SHAPE, "no function 'score' at the top level of the module (it defines shape)"),
        ("b", "transforms/vip.py:shape", "def shape(chunk, context)\n    return chunk\n", "vip.py:1: syntax error"),
        ("c", "transforms/other.py:shape", SHAPE, "other.py: no such file"),
    ):
        (tmp_path / sub).mkdir()
        shown = cli(project(tmp_path / sub, transform, body), "validate")
        assert shown.returncode == 2, shown.stdout
        said = shown.stdout + shown.stderr
        assert "[activations.vip] transform:" in said and expected in said, said
        assert "Traceback" not in said


def test_a_transform_is_refused_on_anything_but_an_audience(tmp_path: Path) -> None:
    shown = cli(project(tmp_path, "transforms/vip.py:shape", kind='kind = "profiles"\ntable = "t"\n'), "validate")
    assert shown.returncode == 2
    assert "transform: unknown key here: 'transform' is a key of kind = \"audience\" activations only" in (
        shown.stdout + shown.stderr)
