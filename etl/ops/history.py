"""Reading the run ledger back for people: recent runs, audience size over time, one run in full."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from etl.runtime.ledger import RunRecord
from etl.runtime.results import RETIRE_KIND, RunStatus
from etl.runtime.runs import CHECKPOINTS


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table; numeric columns right-aligned."""
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:] if row[i]) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if num and index else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()
        for index, row in enumerate(cells)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("s", "").replace("+", "").replace("-", "").isdigit()


def count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else ""


def size_after(record: RunRecord) -> int | None:
    """What the destination holds after a successful run, which ``rows_delivered`` is not: a membership run
    delivers who entered and left, a delta import the changed rows. Runs recorded before ``members`` was
    kept delivered their whole audience, so their ``rows_delivered`` is that size."""
    members = record.details.get("members")
    if isinstance(members, int):
        return members
    if record.rows_delivered is None:
        return None
    return int(record.rows_delivered) + int(record.details.get("unchanged") or 0)


def runs_table(records: Sequence[RunRecord]) -> str:
    return table(
        ["run id", "activation", "status", "started (UTC)", "read", "rejected", "values dropped", "delivered",
         "retry queue", "time", "error"],
        [
            [
                r.run_id, r.activation, ("retired" if r.kind == RETIRE_KIND and r.status == RunStatus.SUCCEEDED
                                         else r.status) + (" (dry)" if r.dry_run else "")
                + (f" as of {r.details['as_of']}" if r.details.get("as_of") else "")
                + (f" replay of {r.details['replay_of']}" if r.details.get("replay_of") else "")
                + (" (full)" if r.details.get("full") else "")
                + (f" at {r.details['checkpoint']}"
                   if r.status == RunStatus.RUNNING and r.details.get("checkpoint") else ""),
                f"{r.started_at:%Y-%m-%d %H:%M:%S}", count(r.rows_extracted), count(r.rows_rejected),
                count(r.details.get("values_dropped")), count(r.rows_delivered), count(r.details.get("retry_queue")),
                f"{r.duration_s:.1f}s" if r.duration_s is not None else "",
                (r.error or "").splitlines()[0][:80] if r.error else "",
            ]
            for r in records
        ],
    )


def sizes_table(records: Sequence[RunRecord]) -> str:
    """Oldest first: the size after each delivery, with who entered and left (a change of +0 can still be
    500 in and 500 out)."""
    delivered = [r for r in reversed(records) if r.status == RunStatus.SUCCEEDED and not r.dry_run]
    rows: list[list[object]] = []
    previous: int | None = None
    for record in delivered:
        size = size_after(record) or 0
        change = "" if previous is None else f"{size - previous:+,}"
        share = "" if not previous else f"{(size - previous) / previous:+.1%}"
        rows.append([record.activation, f"{record.started_at:%Y-%m-%d %H:%M}", count(size), change, share,
                     count(record.details.get("entered")), count(record.details.get("left"))])
        previous = size
    return (table(["activation", "run (UTC)", "size", "change", "%", "entered", "left"], rows)
            if rows else "no delivered runs yet")


def _import_notes(details: dict[str, Any]) -> list[str]:
    """What an import sent besides its rows, or chose not to send: nothing of it is in the reject file."""
    lines = []
    if details.get("data_collection"):
        mixed = details.get("data_collection_mixed") or {}
        lines.append("collected  " + "   ".join(
            f"{entry} {value}" + (f" (latest of {mixed[entry]:,})" if entry in mixed else "")
            for entry, value in details["data_collection"].items()))
    if details.get("left_out"):
        lines.append(f"left out   {count(details['left_out'])} incomplete participations (incomplete_participations = false)")
    if details.get("metadata_not_in_table"):
        lines.append(f"not sent   {', '.join(details['metadata_not_in_table'])}: no attribute of that name in the table")
    return lines


def show_run(record: RunRecord, *, rejects_shown: int = 10) -> str:
    details = record.details
    lines = [
        f"run {record.run_id} — {record.activation} ({record.kind}){' — dry run' if record.dry_run else ''}",
        f"status     {record.status}"
        + (f"   as of {details['as_of']} (a backfill: :run_date and the file's date are that day's)"
           if details.get("as_of") else "")
        + (f"   replay of run {details['replay_of']} (its files, delivered again)" if details.get("replay_of") else ""),
        f"started    {record.started_at:%Y-%m-%d %H:%M:%S} UTC"
        + (f"   finished {record.finished_at:%H:%M:%S}" if record.finished_at else "")
        + (f"   ({record.duration_s:.2f}s)" if record.duration_s is not None else ""),
        f"rows       read {count(record.rows_extracted)}   rejected {count(record.rows_rejected)}   "
        + (f"values dropped {count(details['values_dropped'])}   " if "values_dropped" in details else "")
        + f"duplicates {count(record.rows_duplicate)}   delivered {count(record.rows_delivered)}",
    ]
    if details.get("steps"):
        lines.append("steps      " + "   ".join(f"{step} {seconds:.2f}s" for step, seconds in details["steps"].items()))
    if details.get("checkpoint"):
        lines.append(f"checkpoint {_progress(details['checkpoint'])}")
    if record.error:
        lines.append(f"error      {record.error}")
    if details.get("recovered_by"):
        lines.append(f"recovered  by run {details['recovered_by']}")
    if details.get("recovered"):
        lines.append(f"recovered  the dead run(s) {', '.join(details['recovered'])}")
    for resolved in details.get("recovered_imports", []):
        lines.append(f"recovered  import {resolved['reference']}: {resolved['status']}")
    for file in details.get("files", []):
        lines.append(f"file       {file['name']}  {count(file.get('rows'))} rows  sha256 {file.get('sha256', '')[:16]}…")
    lines += _import_notes(details)
    for delivered in details.get("delivered", []):
        lines.append(f"delivered  {delivered['location']}")
    if details.get("leftovers_removed"):
        lines.append(f"cleaned    temporary files of a dead run: {', '.join(details['leftovers_removed'])}")
    for execution in details.get("executions", []):
        lines.append(f"import     {execution['id']} {execution['status']}  {count(execution.get('rows'))} rows, "
                     f"{count(execution.get('refused'))} refused by Actito")
    if "retry_queue" in details:
        lines.append(f"retries    {count(details.get('retried', 0))} sent again (refused before for a missing "
                     f"dependency); {count(details['retry_queue'])} waiting for the next run"
                     + (f"; {count(details['retries_expired'])} given up" if details.get("retries_expired") else ""))
    if "entered" in details:
        into = f" (table {details['membership_table']})" if "membership_table" in details else ""
        now = f"; {count(details['members'])} members now" if "members" in details else ""
        lines.append(f"members    {count(details['entered'])} entered, {count(details['left'])} left "
                     f"since the last delivery{into}{now}")
    if details.get("note"):
        lines.append(f"note       {details['note']}")
    lines.extend(_rejects(details.get("rejects_file"), rejects_shown))
    return "\n".join(lines)


def _progress(reached: str) -> str:
    """The run's checkpoints with the last one reached marked: where a dead run stopped."""
    if reached not in CHECKPOINTS:
        return reached
    done = CHECKPOINTS.index(reached)
    return " → ".join(f"[{name}]" if index == done else name for index, name in enumerate(CHECKPOINTS))


def _rejects(path: str | None, shown: int) -> list[str]:
    if not path or not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(islice(csv.DictReader(handle), shown + 1))
    if not rows:
        return ["rejects    none"]
    more = " (first ones)" if len(rows) > shown else ""
    return [f"rejects    {path}{more}", table(["row", "value", "reason", "action"],
                                              [[r["row"], r["value"][:60], r["reason"], r.get("action") or ""]
                                               for r in rows[:shown]])]
