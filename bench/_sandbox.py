"""What the benches that time a real ``audience-sync run`` over a SQLite warehouse they generate share: the
configuration around their activations (the warehouse ``wh``, the sandbox destination ``d`` writing to
./outbox) and their activations, audiences by e-mail that may shrink to nothing (each run's data is new).

A bench imports it as a sibling: ``python bench/NAME.py`` puts bench/ first on sys.path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAD = """
[settings]
state_dir = "state"
{settings}
[warehouses.wh]
url = "sqlite:///{database}"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {{ type = "local", path = "outbox" }}
"""


def audience(name: str, *lines: str, sql: str | None = None) -> str:
    """The TOML of activation ``name``: an audience by e-mail of the query in ``sql`` (NAME.sql unless
    given) delivered by ``d``, with max_shrink = 1 and then ``lines``."""
    return (f'\n[activations.{name}]\nsql = "{sql or name + ".sql"}"\ndestination = "d"\nidentifier = "email"\n'
            "max_shrink = 1\n" + "".join(f"{line}\n" for line in lines))


def sqlite_config(database: str, *activations: str, chunk_size: int | None = None) -> str:
    """A configuration of ``activations`` (``audience``) over the SQLite file ``database`` in the run's
    directory; ``chunk_size``: the settings' chunk size, else the default."""
    settings = "" if chunk_size is None else f"chunk_size = {chunk_size}\n"
    return HEAD.format(database=database, settings=settings) + "".join(activations)


def measure(config: Path, *names: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `run NAME…` in a fresh process: the whole command, as a user waits."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "etl", "--config", str(config), "run", *names],
                               cwd=config.parent, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(names)} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024
