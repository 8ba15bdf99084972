"""The shipped demo delivers exactly what it delivered before the test doubles moved to etl.testing.

The README's `audience-sync run --all` is run in a fresh copy of the project with the clock pinned
(``faketime``) to the day the golden digests were recorded, so the demo warehouse (dates relative to
the day it is created) and every query over it give the same rows. What the demo leaves is then
reduced to what must not change — the delivered files (decompressed), manifests, reject files, each
run's local files, the members/rows snapshots, the demo warehouse and both sandboxes' saved state —
with only run ids and the timestamps of the pinned day blanked out, the bytes and sha256 of
compressed files (whose headers carry a modification time) left out, and the OpenField sandbox's
profiles compared as a set (its ids follow the order in which concurrent creates arrive). Each digest is compared with
``demo_golden.json``, recorded from the code before the move.

Recording again (only after a deliberate change of what the demo delivers):
``python tests/test_demo_identical.py --record``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dbservers import faketime

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).with_name("demo_golden.json")
#: the pinned clock: the demo warehouse and every relative date in the queries hang on it
FAKE_START = "2026-11-23 10:00:00"
_DAY = FAKE_START[:10]
_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
_TIMESTAMP = re.compile(re.escape(_DAY) + r"[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?")
_COMPRESSED = (".gz", ".zip")


def _text(raw: str) -> str:
    return _TIMESTAMP.sub("<timestamp>", _RUN_ID.sub("<run>", raw))


def _json(value: Any) -> Any:
    """A manifest or state without what a compressed file's header timestamp changes."""
    if isinstance(value, dict):
        if str(value.get("name", "")).endswith(_COMPRESSED):
            value = {k: v for k, v in value.items() if k not in ("bytes", "sha256")}
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _content(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip: a .gz delivery or import file
        return _text(gzip.decompress(raw).decode("utf-8"))
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            return "".join(f"{info.filename}\n{_text(archive.read(info).decode('utf-8'))}"
                           for info in archive.infolist())
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
        for row in rows:  # when a row began to wait for a dependency: the run's second, not the data
            if row.get("waiting"):
                row["waiting"] = "<since>"
        return _text(json.dumps(rows, sort_keys=True, default=str))
    if path.suffix == ".db":  # the demo warehouse (the ledger, state.db, holds timings and is left out)
        with sqlite3.connect(path) as db:
            return "\n".join(db.iterdump())
    if path.parent.name == "openfield-sandbox":  # ids follow the order of concurrent creates: the set counts
        profiles = json.loads(raw)["profiles"]
        return _text(json.dumps(sorted(json.dumps(p, sort_keys=True) for p in profiles.values())) + str(len(profiles)))
    if path.suffix == ".json":
        return _text(json.dumps(_json(json.loads(path.read_text("utf-8"))), sort_keys=True))
    return _text(raw.decode("utf-8"))


def digests(project: Path) -> dict[str, str]:
    """``{normalised relative path: sha256 of the normalised content}`` of what the demo left under var/."""
    found: dict[str, str] = {}
    for path in sorted((project / "var").rglob("*")):
        if not path.is_file() or path.name == "state.db" or path.name.endswith((".lock", "-journal", "-wal", "-shm")):
            continue
        name = _text(path.relative_to(project).as_posix())
        found[name] = hashlib.sha256(_content(path).encode("utf-8")).hexdigest()
    return found


def run_demo(project: Path, faketime: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(REPO / "schedules.toml", project / "schedules.toml")
    shutil.copytree(REPO / "sql", project / "sql")
    return subprocess.run(
        [faketime, "-f", f"@{FAKE_START}", sys.executable, "-m", "etl", "--config", "schedules.toml", "run", "--all"],
        capture_output=True, text=True, timeout=600, cwd=project, env={**os.environ, "TZ": "UTC"},
    )


def test_the_demo_delivers_byte_identical_files_rejects_and_sandbox_state(tmp_path: Path) -> None:
    done = run_demo(tmp_path, faketime("the demo's clock cannot be pinned"))
    assert done.returncode == 0, done.stdout + done.stderr
    golden: dict[str, str] = json.loads(GOLDEN.read_text("utf-8"))
    found = digests(tmp_path)
    assert sorted(found) == sorted(golden)
    assert {name for name in golden if found[name] != golden[name]} == set()


if __name__ == "__main__":  # record the golden digests from this checkout
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_demo_identical.py --record")
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        completed = run_demo(Path(scratch), shutil.which("faketime") or sys.exit("faketime is not installed"))
        if completed.returncode != 0:
            sys.exit(completed.stdout + completed.stderr)
        GOLDEN.write_text(json.dumps(digests(Path(scratch)), indent=1, sort_keys=True) + "\n", "utf-8")
    print(f"recorded {GOLDEN}")
