"""What ``run`` shows of its outcomes: the live progress line on a terminal, a JSON line per run, and the
summary table; and what it asks: the confirmation of a ``--full`` run. Apart from the CLI so that the command module stays about wiring; the table's helpers are
the history's."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from etl.errors import UsageError
from etl.ops.history import count, table
from etl.runtime.results import RunStatus
from etl.runtime.runs import RunOutcome


class Progress:
    """One line rewritten in place with ``\\r``: two activations writing it at once would garble it, so
    ``run --jobs N`` (N > 1) shows none."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = 0

    def update(self, activation: str, counts: dict[str, int]) -> None:
        line = (f"{activation}: {counts['extracted']:,} rows read · {counts['kept']:,} kept · "
                f"{counts['rejected']:,} rejected · {counts['duplicates']:,} duplicates")
        self.width = max(self.width, len(line))
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()

    def clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


#: what a run's JSON line adds to the ledger's columns: after it, the audience's size (``members``) and
#: its changes, so rows_delivered (what this run delivered) is never read as the size
_JSON_DETAILS = ("members", "entered", "left", "unchanged", "refused_by_actito", "still_refused", "values_dropped",
                 "retried", "retry_queue", "retries_expired", "left_out", "as_of")


def outcome_json(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "event": "run_finished", "activation": outcome.activation, "run_id": outcome.run_id,
        "status": outcome.status, "dry_run": outcome.dry_run, "duration_s": outcome.duration_s,
        **outcome.results, "error": outcome.error,
        **{key: outcome.details[key] for key in _JSON_DETAILS if key in outcome.details},
        "files": outcome.details.get("files", []), "rejects_file": outcome.details.get("rejects_file"),
    }


def summary(outcomes: Sequence[RunOutcome]) -> str:
    outcomes = [each for outcome in outcomes for each in (outcome, *outcome.parts)]
    rows = []
    for o in outcomes:
        r = o.results
        rows.append([
            o.activation, o.status + (" (dry run)" if o.dry_run else ""),
            count(r.rows_extracted), count(r.rows_rejected), count(o.details.get("values_dropped")),
            count(r.rows_duplicate), count(r.rows_delivered), r.file_name, f"{o.duration_s:.1f}s",
        ])
    text = table(["activation", "status", "read", "rejected", "values dropped", "duplicates", "delivered", "file",
                  "time"], rows)
    notes = []
    for o in outcomes:
        if o.status == RunStatus.SKIPPED:
            notes.append(f"– {o.activation}: skipped: {o.error}")
        elif o.error:
            notes.append(f"✗ {o.activation}: {o.error}")  # said here only: the run's log line leaves it out
        elif o.ok:
            notes.append(f"✓ {o.activation}: {o.delivery or 'delivered'}  (rejects: {o.details.get('rejects_file')})")
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def full_run_confirmation(*, full: bool, yes: bool) -> Callable[[str, str], bool] | None:
    """``--full`` asks on the terminal before each activation sends everything; without a terminal it needs
    ``--yes``, said before anything runs."""
    if not full:
        return None
    if yes:
        return lambda name, plan: True
    if not sys.stdin.isatty():
        raise UsageError("--full sends every row again and there is no terminal to confirm it on", where="run",
                         hint="add --yes to send without asking")

    def ask(name: str, plan: str) -> bool:
        try:
            answer = input(f"{name}: --full will send {plan}. Send? [y/N] ")
        except EOFError:  # Ctrl-D: no answer is no
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask


def print_reasons(title: str, by_reason: dict[str, int], examples: dict[str, str] | None = None) -> None:
    """Most frequent first; a reason whose value was generalised to '…' shows the first value refused for it."""
    if not by_reason:
        return
    print(title)
    width = max(len(f"{count:,}") for count in by_reason.values())
    for reason, count in by_reason.items():
        example = (examples or {}).get(reason)
        print(f"  {count:>{width},}  {reason}" + (f"  [first: {example!r}]" if example and "'…'" in reason else ""))
