#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: build bench/.venv (this project with its postgres extra, pandas, dlt)
# if needed, then run bench/pg_audience.py against the local PostgreSQL.
#
#   bench/run.sh                                   # 1M and 10M customers, 3 runs per case
#   bench/run.sh --customers 5000000 --repeat 1    # any pg_audience.py arguments replace the defaults
#   bench/run.sh diff [diff_bench.py arguments]    # audience diffs, 10M vs 10M (no PostgreSQL needed)
#   bench/run.sh config [config_scale.py args]     # 1,000 activations: load, validate, plan
#   bench/run.sh startup [startup.py args]         # --help, validate, an empty audience's run (no PostgreSQL needed)
#   bench/run.sh rows [row_snapshot.py args]       # an import's delta with its retry queue, 5M rows (no PostgreSQL)
#
# Environment: PYTHON (the interpreter for the venv, default python3, 3.11 or later),
# BENCH_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test); psql and gzip on PATH.
# The report is printed and written to bench/results/latest.md (ignored by git).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"

case "${1:-}" in
  diff) script="diff_bench.py"; shift ;;
  config) script="config_scale.py"; shift ;;
  startup) script="startup.py"; shift ;;
  rows) script="row_snapshot.py"; shift ;;
  *) script="pg_audience.py" ;;
esac

if [ "$script" = "pg_audience.py" ]; then
  for tool in psql gzip; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not on PATH" >&2; exit 1; }
  done
fi

if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# editable: the benchmark times this working tree (reruns only check what is installed)
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[postgres]" pandas dlt duckdb

if [ "$script" = "diff_bench.py" ]; then
  exec "$venv/bin/python" "$here/diff_bench.py" --output "$here/results/diff.md" "$@"
fi
if [ "$script" = "config_scale.py" ]; then
  exec "$venv/bin/python" "$here/config_scale.py" "$@"
fi
if [ "$script" = "startup.py" ]; then
  exec "$venv/bin/python" "$here/startup.py" --output "$here/results/startup.md" "$@"
fi
if [ "$#" -eq 0 ]; then
  set -- --customers 1000000 10000000 --repeat 3
fi
exec "$venv/bin/python" "$here/pg_audience.py" --output "$here/results/latest.md" "$@"
