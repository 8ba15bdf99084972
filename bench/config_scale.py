"""Configuration at scale: 1,000 activations load, validate and plan their next runs.

Generates a project directory (schedules.toml plus SQL files) with N activations of every kind,
cron and interval schedules in several time zones, several destinations and warehouses, then
times in a fresh process, for each repetition:

- **load**: ``load_config`` (TOML, interpolation, pydantic models) — the first half of `validate`;
- **validate**: the same call's cross-checks are part of it, so this is `audience-sync validate`
  end to end (``load_config`` then the summary line), SQL parameter checks included;
- **plan**: ``format_preview`` of etl/runtime/triggers.py, i.e. `audience-sync schedule --preview`
  (triggers built and walked for the next 5 runs of each activation).

Usage: ``bench/.venv/bin/python bench/config_scale.py [--activations 1000] [--repeat 3]``
(any interpreter with this project installed works; nothing else is needed). The figures printed
are each phase's median over the repetitions, plus the first process's import time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

#: the project's root, so that the child process imports this checkout's etl
REPO = Path(__file__).resolve().parent.parent

ZONES = ("Europe/Brussels", "Europe/Paris", "UTC", "America/New_York", "Asia/Tokyo")
CRONS = ("30 6 * * *", "0 7 * * 1", "*/15 * * * *", "0 */2 * * *", "45 23 * * 1-5", "0 3 1 * *")
EVERY = ("15m", "1h", "6h", "1d", "90m", "2d")
DESTINATIONS = 8
WAREHOUSES = 3
SQL_FILES = 40


def generate(directory: Path, activations: int) -> Path:
    """Write schedules.toml and its SQL files under ``directory``; return the TOML's path."""
    (directory / "sql").mkdir(parents=True, exist_ok=True)
    for index in range(SQL_FILES):
        (directory / "sql" / f"audience_{index:02d}.sql").write_text(textwrap.dedent(f"""\
            -- audience {index}: customers above a threshold, bought recently
            SELECT email, customer_id AS profile_id
            FROM customers
            WHERE lifetime_value >= :min_value
              AND last_order_at >= date(:run_date, '-' || :days || ' days')  -- ':not_a_param'
              AND segment <> 'x:y'
            ORDER BY customer_id
            """), encoding="utf-8")
    (directory / "sql" / "imports.sql").write_text(
        "SELECT email, firstname, lastname FROM participants WHERE updated_at >= date(:run_date, '-1 day')\n",
        encoding="utf-8")
    lines = ['[settings]', 'state_dir = "var/state"', '']
    for index in range(WAREHOUSES):
        lines += [f"[warehouses.dwh{index}]", f'url = "sqlite:///var/dwh{index}.db"', ""]
    for index in range(DESTINATIONS):
        lines += [f"[destinations.actito{index}]", 'environment = "ENV-0"', f'entity = "brand{index}"',
                  'api_key = "${ACTITO_API_KEY}"',
                  f'files = {{ type = "sftp", host = "sftp{index}.example.com", username = "actito", '
                  f'password = "${{SFTP_PASSWORD}}", remote_dir = "/audiences" }}', ""]
    for index in range(activations):
        lines += _activation(index)
    path = directory / "schedules.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _activation(index: int) -> list[str]:
    zone = ZONES[index % len(ZONES)]
    rule = (f'cron = "{CRONS[index % len(CRONS)]}"' if index % 2 else f'every = "{EVERY[index % len(EVERY)]}"')
    common = [
        f"[activations.act_{index:04d}]",
        f'description = "Generated activation {index}"',
        f'warehouse = "dwh{index % WAREHOUSES}"',
        f'destination = "actito{index % DESTINATIONS}"',
        f"schedule = {{ {rule}, timezone = \"{zone}\" }}",
    ]
    kind = ("audience", "audience", "audience", "membership", "profiles", "subscriptions", "interactions")[index % 7]
    if kind in ("audience", "membership"):
        return common + [
            f'sql = "sql/audience_{index % SQL_FILES:02d}.sql"',
            f'identifier = "{"email" if index % 2 else "profileId"}"',
            f"params = {{ min_value = {100 + index}, days = {30 + index % 300} }}",
            *(['delivery = "membership"'] if kind == "membership" else
              [f'file = {{ name = "act_{index:04d}_$yyyyMMdd.csv", compression = "gzip" }}']),
            "",
        ]
    extra = {
        "profiles": ['table = "customers"', 'preset = "qualifio"'],
        "subscriptions": ['table = "customers"', 'subscriptions = { consent_newsletter = "Newsletter" }'],
        "interactions": ['table = "participations"', 'preset = "qualifio"'],
    }[kind]
    return common + [f'kind = "{kind}"', 'sql = "sql/imports.sql"', *extra, ""]


_CHILD = """
import json, sys, time
began = time.perf_counter()
from datetime import UTC, datetime
from etl.config import load_config
from etl.runtime.triggers import format_preview
imported = time.perf_counter()
path = sys.argv[1]
load_s = []
plan_s = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    config = load_config(path)
    line = (f"{config.source}: ok — {len(config.activations)} activations, "
            f"{len(config.destinations)} destinations, {len(config.warehouses)} warehouses")
    t1 = time.perf_counter()
    preview = format_preview(config, 5, datetime(2026, 3, 27, 12, 0, tzinfo=UTC))
    t2 = time.perf_counter()
    load_s.append(t1 - t0)
    plan_s.append(t2 - t1)
print(json.dumps({"imports_s": imported - began, "load_validate_s": load_s, "plan_s": plan_s,
                  "activations": len(config.activations), "preview_lines": preview.count(chr(10)) + 1}))
"""


def measure(path: Path, repeat: int, source: Path) -> dict[str, object]:
    """One fresh process: its first load is the cold one (what `audience-sync validate` costs)."""
    environ = {**os.environ, "ACTITO_API_KEY": "k", "SFTP_PASSWORD": "p", "PYTHONPATH": str(source)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(repeat)], stdout=subprocess.PIPE,
                             env=environ, text=True, cwd=path.parent)  # not the checkout: `-c` imports from cwd
    assert child.stdout is not None
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"the measuring process failed (exit {os.waitstatus_to_exitcode(status)})")
    result: dict[str, object] = json.loads(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeat", type=int, default=3, help="loads and plans per process (first is cold)")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the etl package to time (e.g. an older version from `git archive`)")
    args = parser.parse_args(argv)
    rows = ["| activations | imports (s) | load + validate, first (s) | load + validate, median (s) "
            "| plan next 5 runs (s) | first total (s) | peak RSS (MB) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for count in args.activations:
        with tempfile.TemporaryDirectory() as scratch:
            path = generate(Path(scratch), count)
            result = measure(path, args.repeat, args.source)
        loads, plans = result["load_validate_s"], result["plan_s"]
        assert isinstance(loads, list) and isinstance(plans, list)
        rows.append(f"| {result['activations']:,} | {result['imports_s']:.2f} | {loads[0]:.3f} | "
                    f"{statistics.median(loads):.3f} | {statistics.median(plans):.3f} | "
                    f"{loads[0] + plans[0]:.3f} | {result['peak_rss_mb']:.0f} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
