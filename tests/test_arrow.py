"""Process-wide pyarrow settings of the command line (etl/runtime/arrow.py)."""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import sys
from etl.runtime.arrow import configure_arrow

configure_arrow()
import pyarrow as pa

table = pa.table({"email": ["a@example.com", None]})
pa.array(["x"]), pa.RecordBatch.from_pylist([{"a": 1}])
assert "pandas" not in sys.modules, "pyarrow imported pandas"
assert pa.default_memory_pool().backend_name in ("jemalloc", "system"), pa.default_memory_pool().backend_name
# code that does use pandas still gets it from pyarrow
frame = table.to_pandas()
assert list(frame["email"].isna()) == [False, True]
assert pa.Table.from_pandas(frame).column("email").to_pylist() == ["a@example.com", None]
"""


def test_a_run_pays_neither_for_pandas_nor_for_mimallocs_kept_pages() -> None:
    """pandas cost every run 0.3 s and 40 MB before its first row: pyarrow imported it unasked."""
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_allocator_chosen_by_the_user_is_kept() -> None:
    check = (
        "from etl.runtime.arrow import configure_arrow; configure_arrow(); import pyarrow as pa; "
        "assert pa.default_memory_pool().backend_name == 'mimalloc'"
    )
    environment = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 0, done.stderr
