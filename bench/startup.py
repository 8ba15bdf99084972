"""Start-up: how long a user waits for `--help`, `validate` and the run of an empty audience.

Each command runs as a user runs it, in a fresh process: the ``audience-sync`` script next to the
interpreter (``python -m etl`` if there is none), the whole process timed, interpreter start and
imports included. The timed tree's bytecode is compiled first, as an installed package has it
(pip compiles at install time; this sandbox sets ``PYTHONDONTWRITEBYTECODE``, which would
otherwise compile our modules at every start). The commands:

- **--help**: ``audience-sync --help``;
- **validate**: ``audience-sync validate`` of the shipped ``schedules.toml`` and ``sql/``, copied;
- **empty run**: ``audience-sync run empty --force`` of a one-activation project: an audience whose
  query (``select email from customers where 1 = 0``) returns no row from the demo warehouse,
  delivered to a local directory. ``--force`` because a first audience that is empty is refused
  by a guard (exit 1, nothing delivered): forced, the run does all its steps (query, files,
  manifest, members snapshot, delivery, ledger).

One untimed run of each comes first (it creates the demo warehouse and the ledger, and warms the
file cache), then ``--repeat`` timed runs; the table gives the best and the median wall time, the
median CPU time (user + system of the child) and whether the best meets the issue's target.

Usage: ``python bench/startup.py [--repeat 5] [--source TREE] [--output FILE]`` with any
interpreter that has this project installed (``bench/run.sh startup`` does it in bench/.venv).
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: the project's root: the shipped configuration, and the tree timed unless --source says otherwise
REPO = Path(__file__).resolve().parent.parent

#: one audience whose query returns no row, from the demo warehouse to a local directory
EMPTY_CONFIG = """\
settings = { state_dir = "var/state" }
warehouses.demo = { url = "sqlite:///var/demo/warehouse.db", demo = true }
destinations.local = { environment = "sandbox", entity = "demo", files = { type = "local", path = "var/outbox" } }
activations.empty = { sql = "sql/empty.sql", destination = "local", identifier = "email" }
"""


@dataclass(frozen=True)
class Case:
    """One command, its project directory and the issue's target (seconds, best of the runs)."""

    name: str
    args: tuple[str, ...]
    project: Path
    target: float


@dataclass(frozen=True)
class Timing:
    """Each run's wall and CPU seconds: CPU moves less with other processes' load, so both are shown."""

    wall: list[float]
    cpu: list[float]


def build_projects(directory: Path) -> list[Case]:
    """The shipped project (for validate) and the empty audience's project, under ``directory``."""
    shipped = directory / "shipped"
    shipped.mkdir()
    shutil.copy2(REPO / "schedules.toml", shipped / "schedules.toml")
    shutil.copytree(REPO / "sql", shipped / "sql")
    empty = directory / "empty"
    (empty / "sql").mkdir(parents=True)
    (empty / "schedules.toml").write_text(EMPTY_CONFIG, encoding="utf-8")
    (empty / "sql" / "empty.sql").write_text("select email from customers where 1 = 0\n", encoding="utf-8")
    return [
        Case("--help", ("--help",), shipped, 0.3),
        Case("validate", ("validate",), shipped, 0.8),
        Case("empty run", ("run", "empty", "--force"), empty, 1.2),
    ]


def command_line(python: Path) -> list[str]:
    """The installed script of the interpreter's environment, as a user types it."""
    script = python.parent / "audience-sync"
    return [str(script)] if script.exists() else [str(python), "-m", "etl"]


def time_once(command: list[str], case: Case, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run; a failed run stops the benchmark (its figure would mean nothing)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([*command, "--config", str(case.project / "schedules.toml"), *case.args],
                          cwd=case.project, env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"bench: {case.name} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(cases: list[Case], command: list[str], env: dict[str, str], repeat: int) -> dict[str, Timing]:
    """A warm-up run of each case, then the cases in turn ``repeat`` times (noise spreads over all)."""
    for case in cases:
        time_once(command, case, env)
    timings = {case.name: Timing([], []) for case in cases}
    for _ in range(repeat):
        for case in cases:
            wall, cpu = time_once(command, case, env)
            timings[case.name].wall.append(wall)
            timings[case.name].cpu.append(cpu)
    return timings


def report(cases: list[Case], timings: dict[str, Timing], loads: tuple[str, str], repeat: int) -> str:
    """The Markdown table of docs/benchmarks.md, with the load averages that say how far to trust it."""
    lines = [
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"load average before / after: {loads[0]} / {loads[1]}; best and median of {repeat} runs",
        "",
        "| command | target (s) | best (s) | median (s) | CPU, median (s) | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        timing = timings[case.name]
        best = min(timing.wall)
        lines.append(f"| `audience-sync {' '.join(case.args)}` | {case.target:.1f} | {best:.2f} | "
                     f"{statistics.median(timing.wall):.2f} | {statistics.median(timing.cpu):.2f} | "
                     f"{'yes' if best <= case.target else 'no'} |")
    return "\n".join(lines) + "\n"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command (default 5)")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="source tree of the audience-sync to time (e.g. a git archive of another commit)")
    parser.add_argument("--python", type=Path, default=Path(sys.executable),
                        help="interpreter whose environment runs the commands (default: this one)")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) to this file")
    args = parser.parse_args()

    source = args.source.resolve()
    for package in ("etl", "jobs"):
        compileall.compile_dir(source / package, quiet=1)
    # the timed tree comes first on the path, before an installed (or editable) copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as directory:
        cases = build_projects(Path(directory))
        load_before = _load()
        timings = measure(cases, command_line(args.python), env, args.repeat)
        text = report(cases, timings, (load_before, _load()), args.repeat)
    print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
