"""The scheduler's status page (``GET /`` of ``--listen``): what runs now, each activation's last and next
run, its audience size and trend. Rendered on each request, without JavaScript, from report.py's pieces.

No personal data: counts, statuses and times only. Unlike the report, no run error is shown (an error may
quote a row and this page may be reachable by more people than the ledger); a failed run names its run id
for ``audience-sync show``. Activation names are the configuration's, never a fan-out's ``NAME@destination``.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from etl.logs import redact
from etl.ops.history import size_after
from etl.ops.report import CSS, at_minute, count_cell, describe_schedule, escape, size_chart, status_badge
from etl.runtime.ledger import RunRecord, StateStore
from etl.runtime.results import RunStatus
from etl.runtime.scheduler import Scheduler
from etl.version import __version__

#: successful runs read for the size chart and its trend
CHART_RUNS = 30

_PAGE_CSS = """
.banner { border: 1px solid var(--ko); color: var(--ko); border-radius: 8px; padding: .5rem 1rem; }
.trend-up { color: var(--ok); } .trend-down { color: var(--ko); }
"""


def render_page(scheduler: Scheduler, ledger_problem: str | None, *, now: datetime | None = None) -> str:
    generated = (now or datetime.now(UTC)).astimezone(UTC)
    config = scheduler.config
    next_runs = {job.id: job.next_run_time for job in scheduler.jobs}
    running = scheduler.running
    store = scheduler.store
    rows: list[str] = []
    charts: list[str] = []
    problem = ledger_problem
    for name in config.activations:
        try:
            recent, successes = _read(store, name)
        except Exception as exc:  # the page still says what the scheduler knows
            problem = problem or f"the ledger cannot be read: {redact(str(exc).splitlines()[0] if str(exc) else '')}"
            recent, successes = [], []
        rows.append(_row(scheduler, name, recent, successes, next_runs.get(name), running.get(name)))
        if successes:
            charts.append(f"<section class=\"activation\"><h2>{escape(name)}</h2>"
                          f"{size_chart(name, list(reversed(successes)), 'Audience size')}</section>")
    body = [
        "<header><h1>audience-sync scheduler</h1>",
        f"<p class=\"meta\">Configuration <code>{escape(config.source)}</code> loaded "
        f"{escape(_moment(scheduler.loaded_at))} · replica <code>{escape(socket.gethostname())}</code> · "
        f"page generated {generated:%Y-%m-%d %H:%M:%S} UTC · times in UTC</p></header>",
        "<main>",
        f"<p class=\"banner\">{escape(problem)}</p>" if problem else "",
        *(["<p class=\"banner\">Stopping: no new run starts.</p>"] if scheduler.stopping else []),
        _running_now(running),
        "<section><h2>Activations</h2>",
        "<table class=\"runs\"><thead><tr><th>Activation</th><th>Schedule</th><th>Last run</th>"
        "<th class=\"num\">Rows read</th><th class=\"num\">Delivered</th><th>Next run</th>"
        "<th class=\"num\">Audience size</th><th>Trend</th></tr></thead><tbody>",
        *rows,
        "</tbody></table></section>" if rows else "</tbody></table><p class=\"empty\">No activation.</p></section>",
        *charts,
        "</main>",
        f"<footer>audience-sync {escape(__version__)} · /healthz · /readyz · /metrics</footer>",
    ]
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\" />",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\" />",
        "<title>audience-sync scheduler</title>", f"<style>{CSS}{_PAGE_CSS}</style>", "</head>", "<body>",
        *(part for part in body if part), "</body>", "</html>", "",
    ])


def _read(store: StateStore | None, name: str) -> tuple[list[RunRecord], list[RunRecord]]:
    if store is None:
        return [], []
    recent = store.runs(name, limit=1)
    successes = store.runs(name, status=RunStatus.SUCCEEDED, limit=CHART_RUNS, include_dry_runs=False)
    return recent, successes


def _row(scheduler: Scheduler, name: str, recent: list[RunRecord], successes: list[RunRecord],
         next_run: datetime | None, running_slot: str | None) -> str:
    activation = scheduler.config.activations[name]
    last = recent[0] if recent else None
    if last is None:
        last_run = "<span class=\"muted\">never run</span>"
    else:
        shown_id = f" <code class=\"run-id\">{escape(last.run_id)}</code>" if last.status == RunStatus.FAILED else ""
        last_run = f"{status_badge(last)} {escape(at_minute(last.started_at))}{shown_id}"
    if running_slot is not None and (last is None or last.status != RunStatus.RUNNING):  # claiming, not started
        last_run += "<br /><span class=\"status s-running\">starting</span>"
    if running_slot is not None:
        last_run += f" (slot {escape(running_slot)})"
    disabled = " <span class=\"tag\">disabled</span>" if not activation.enabled else ""
    when_next = escape(_moment(next_run)) if next_run is not None else "<span class=\"muted\">not scheduled</span>"
    size = size_after(successes[0]) if successes else None
    return (
        "<tr>"
        f"<td data-label=\"Activation\">{escape(name)}{disabled}</td>"
        f"<td data-label=\"Schedule\">{escape(describe_schedule(activation.schedule))}</td>"
        f"<td data-label=\"Last run\">{last_run}</td>"
        f"<td data-label=\"Rows read\" class=\"num\">{count_cell(last.rows_extracted if last else None)}</td>"
        f"<td data-label=\"Delivered\" class=\"num\">{count_cell(last.rows_delivered if last else None)}</td>"
        f"<td data-label=\"Next run\">{when_next}</td>"
        f"<td data-label=\"Audience size\" class=\"num\">{count_cell(size)}</td>"
        f"<td data-label=\"Trend\">{_trend(successes)}</td>"
        "</tr>"
    )


def _trend(successes: list[RunRecord]) -> str:
    """The latest successful size against the one before: a steady schedule makes a sudden change the news."""
    sizes = [size for record in successes[:2] if (size := size_after(record)) is not None]
    if len(sizes) < 2:
        return "<span class=\"muted\">—</span>"
    change = sizes[0] - sizes[1]
    if change == 0:
        return "steady"
    percent = f" ({change / sizes[1]:+.1%})" if sizes[1] else ""
    direction = "up" if change > 0 else "down"
    arrow = "▲" if change > 0 else "▼"
    return f"<span class=\"trend-{direction}\">{arrow} {change:+,}{escape(percent)}</span>"


def _running_now(running: dict[str, str]) -> str:
    if not running:
        return "<section><h2>Running now</h2><p class=\"empty\">Nothing is running.</p></section>"
    items = "".join(f"<li><strong>{escape(name)}</strong> (slot {escape(slot)})</li>"
                    for name, slot in sorted(running.items()))
    return f"<section><h2>Running now</h2><ul>{items}</ul></section>"


def _moment(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
