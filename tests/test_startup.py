"""Start-up: `validate` answers without loading what only writing files needs (bench/startup.py measures
the commands; this keeps the imports that make most of the difference out)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_validate_imports_neither_pyarrow_nor_numpy(demo_project: Path) -> None:
    """Checking a configuration writes no file: pyarrow and numpy (0.3 s of a 0.5 s `validate`) stay out."""
    probe = ("import sys; from etl.cli import main\n"
             f"code = main(['--config', {str(demo_project)!r}, 'validate'])\n"
             "print(code, sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert ": ok — " in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "0 []"
