"""A static HTML report of the activations and their recent runs, from the ledger: one self-contained
file (no asset, no JavaScript) so it can be mailed or served as it is. Every value is HTML-escaped."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from etl.config import Config, Schedule
from etl.files import replace_text
from etl.logs import redact
from etl.ops.history import size_after
from etl.runtime.ledger import RunRecord, StateStore
from etl.runtime.results import RunStatus
from etl.version import __version__

#: characters of an error shown in a table cell; the rest (up to MAX_ERROR_CHARS) behind "more"
ERROR_PREVIEW_CHARS = 140
MAX_ERROR_CHARS = 2000

# chart geometry (SVG user units; the SVG scales to the width of the page)
_W, _H = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 16, 36


def write_report(
    config: Config,
    store: StateStore,
    path: Path,
    *,
    runs_per_activation: int = 20,
    chart_runs: int = 90,
    now: datetime | None = None,
) -> Path:
    """Raises StateError if the ledger cannot be read, OSError if the file cannot be written."""
    generated = (now or datetime.now(UTC)).astimezone(UTC)
    sections: list[str] = []
    overview: list[str] = []
    for index, name in enumerate(config.activations):
        anchor = f"a{index}-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)[:60]
        recent = store.runs(name, limit=runs_per_activation)
        successes = store.runs(name, status=RunStatus.SUCCEEDED, limit=chart_runs, include_dry_runs=False)
        overview.append(_overview_row(config, name, anchor, recent, successes))
        sections.append(_section(config, name, anchor, recent, successes))
    _write_atomically(path, _document(config, generated, overview, sections))
    return path


def _document(config: Config, generated: datetime, overview: list[str], sections: list[str]) -> str:
    body = [
        "<header>",
        "<h1>audience-sync</h1>",
        f"<p class=\"meta\">Activations of <code>{escape(config.source)}</code> · generated "
        f"{generated:%Y-%m-%d %H:%M} UTC · times in UTC</p>",
        "</header>",
        "<main>",
    ]
    if overview:
        body += [
            "<section class=\"overview\"><h2>Overview</h2>",
            "<table class=\"runs\"><thead><tr><th>Activation</th><th>Kind</th><th>Last run</th>"
            "<th>Last success</th><th class=\"num\">Size</th></tr></thead><tbody>",
            *overview,
            "</tbody></table></section>",
            *sections,
        ]
    else:
        body.append("<p class=\"empty\">No activation is configured.</p>")
    body += ["</main>", f"<footer>audience-sync {escape(__version__)}</footer>"]
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang=\"en\">",
        "<head>",
        "<meta charset=\"utf-8\" />",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\" />",
        "<meta name=\"generator\" content=\"audience-sync\" />",
        "<title>audience-sync report</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
        "",
    ])


def _overview_row(config: Config, name: str, anchor: str, recent: list[RunRecord],
                  successes: list[RunRecord]) -> str:
    activation = config.activations[name]
    last = recent[0] if recent else None
    success = successes[0] if successes else None
    size = size_after(success) if success is not None else None
    disabled = "" if activation.enabled else ' <span class="tag">disabled</span>'
    last_run = status_badge(last) if last else '<span class="muted">never run</span>'
    last_success = escape(at_minute(success.started_at)) if success else "—"
    return (
        "<tr>"
        f"<td data-label=\"Activation\"><a href=\"#{escape(anchor)}\">{escape(name)}</a>{disabled}</td>"
        f"<td data-label=\"Kind\">{escape(activation.kind)}</td>"
        f"<td data-label=\"Last run\">{last_run}</td>"
        f"<td data-label=\"Last success\">{last_success}</td>"
        f"<td data-label=\"Size\" class=\"num\">{count_cell(size)}</td>"
        "</tr>"
    )


def _section(config: Config, name: str, anchor: str, recent: list[RunRecord], successes: list[RunRecord]) -> str:
    activation = config.activations[name]
    facts = [
        ("Kind", escape(activation.kind)),
        ("Destination", escape(", ".join(config.destinations_of(name)))),
        ("Schedule", escape(describe_schedule(activation.schedule))),
    ]
    if not activation.enabled:
        facts.append(("State", "disabled"))
    parts = [
        f"<section class=\"activation\" id=\"{escape(anchor)}\">",
        f"<h2>{escape(name)}</h2>",
        f"<p class=\"description\">{escape(activation.description)}</p>" if activation.description else "",
        "<dl>" + "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts) + "</dl>",
        f"<h3>{'Audience size' if activation.kind == 'audience' else 'Rows in the table (sent + unchanged)'}</h3>",
        size_chart(name, list(reversed(successes)), "Audience size" if activation.kind == "audience"
               else "Rows in the table"),
        "<h3>Last runs</h3>",
    ]
    if recent:
        parts += [
            "<table class=\"runs\"><thead><tr><th>Status</th><th>Started</th><th class=\"num\">Duration</th>"
            "<th class=\"num\">Read</th><th class=\"num\">Rejected</th><th class=\"num\">Values dropped</th>"
            "<th class=\"num\">Delivered</th><th class=\"num\">Retry queue</th>"
            "<th>Error</th></tr></thead><tbody>",
            *(_run_row(record) for record in recent),
            "</tbody></table>",
        ]
    else:
        parts.append("<p class=\"empty\">No runs recorded yet.</p>")
    parts.append("</section>")
    return "\n".join(part for part in parts if part)


def _run_row(record: RunRecord) -> str:
    duration = f"{record.duration_s:.1f}s" if record.duration_s is not None else "—"
    return (
        "<tr>"
        f"<td data-label=\"Status\">{status_badge(record)}</td>"
        f"<td data-label=\"Started\">{escape(at_minute(record.started_at))}<br /><code class=\"run-id\">"
        f"{escape(record.run_id)}</code></td>"
        f"<td data-label=\"Duration\" class=\"num\">{duration}</td>"
        f"<td data-label=\"Read\" class=\"num\">{count_cell(record.rows_extracted)}</td>"
        f"<td data-label=\"Rejected\" class=\"num\">{count_cell(record.rows_rejected)}</td>"
        f"<td data-label=\"Values dropped\" class=\"num\">{count_cell(record.details.get('values_dropped'))}</td>"
        f"<td data-label=\"Delivered\" class=\"num\">{count_cell(record.rows_delivered)}{_churn(record)}</td>"
        f"<td data-label=\"Retry queue\" class=\"num\">{count_cell(record.details.get('retry_queue'))}</td>"
        f"<td data-label=\"Error\" class=\"error\">{_error(record.error)}</td>"
        "</tr>"
    )


def _churn(record: RunRecord) -> str:
    """Who entered and left, under the size: a steady size can hide a large turnover."""
    entered, left = record.details.get("entered"), record.details.get("left")
    if not isinstance(entered, int) or not isinstance(left, int):
        return ""
    return (f"<br /><span class=\"churn\" title=\"entered / left since the last delivery\">"
            f"+{entered:,} / −{left:,}</span>")


def status_badge(record: RunRecord) -> str:
    """The status and what kind of run it was: a dry run, a backfill, a replay, a full run."""
    details = record.details
    tags = [text for text, shown in (
        ("dry run", record.dry_run),
        (f"as of {details.get('as_of')}", bool(details.get("as_of"))),
        (f"replay of {details.get('replay_of')}", bool(details.get("replay_of"))),
        ("full", bool(details.get("full"))),
    ) if shown]
    return (f"<span class=\"status s-{record.status}\">{escape(record.status)}</span>"
            + "".join(f" <span class=\"tag\">{escape(tag)}</span>" for tag in tags))


def _error(error: str | None) -> str:
    if not error:
        return ""
    text = redact(error)
    if len(text) <= ERROR_PREVIEW_CHARS:
        return escape(text)
    full = text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"
    return f"<details><summary>{escape(text[:ERROR_PREVIEW_CHARS])}…</summary>{escape(full)}</details>"


def describe_schedule(schedule: Schedule | None) -> str:
    if schedule is None:
        return "not scheduled (run on demand)"
    rule = f"cron {schedule.cron}" if schedule.cron else f"every {schedule.every}"
    return f"{rule} ({schedule.timezone})"


def size_chart(name: str, points: Sequence[RunRecord], measure: str) -> str:
    data = [(record.started_at, size) for record in points if (size := size_after(record)) is not None]
    if not data:
        return "<p class=\"empty\">No successful run yet: nothing to chart.</p>"
    times = [moment.replace(tzinfo=UTC).timestamp() for moment, _ in data]
    top = _nice_ceiling(max(count for _, count in data))
    first, last = min(times), max(times)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(i: int) -> float:
        if last > first:
            return _LEFT + (times[i] - first) / (last - first) * plot_w
        return _LEFT + (plot_w / 2 if len(data) == 1 else i / (len(data) - 1) * plot_w)

    def y(count: int) -> float:
        return _TOP + plot_h - (count / top) * plot_h if top else _TOP + plot_h

    coordinates = [(round(x(i), 1), round(y(count), 1)) for i, (_, count) in enumerate(data)]
    label = (f"{measure} of {name} over its last {len(data)} successful runs: "
             f"from {data[0][1]:,} on {at_minute(data[0][0])} to {data[-1][1]:,} on {at_minute(data[-1][0])}")
    parts = [
        f"<svg class=\"chart\" viewBox=\"0 0 {_W} {_H}\" role=\"img\" aria-label=\"{escape(label)}\" "
        "xmlns=\"http://www.w3.org/2000/svg\" preserveAspectRatio=\"xMidYMid meet\">",
        f"<title>{escape(label)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        level = _TOP + plot_h - fraction * plot_h
        parts.append(f"<line class=\"grid\" x1=\"{_LEFT}\" y1=\"{level:.1f}\" x2=\"{_W - _RIGHT}\" y2=\"{level:.1f}\" />")
        parts.append(f"<text class=\"axis\" x=\"{_LEFT - 6}\" y=\"{level + 4:.1f}\" text-anchor=\"end\">"
                     f"{escape(_short(round(top * fraction)))}</text>")
    # runs of one day are told apart by their time
    when = "%Y-%m-%d" if data[0][0].date() != data[-1][0].date() else "%Y-%m-%d %H:%M"
    parts.append(f"<text class=\"axis\" x=\"{_LEFT}\" y=\"{_H - 10}\" text-anchor=\"start\">"
                 f"{escape(data[0][0].strftime(when))}</text>")
    if len(data) > 1:
        parts.append(f"<text class=\"axis\" x=\"{_W - _RIGHT}\" y=\"{_H - 10}\" text-anchor=\"end\">"
                     f"{escape(data[-1][0].strftime(when))}</text>")
        path = " ".join(f"{cx},{cy}" for cx, cy in coordinates)
        parts.append(f"<polyline class=\"line\" points=\"{path}\" />")
    for (cx, cy), (moment, count) in zip(coordinates, data):
        parts.append(f"<circle class=\"point\" cx=\"{cx}\" cy=\"{cy}\" r=\"3\">"
                     f"<title>{escape(at_minute(moment))}: {count:,}</title></circle>")
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at least ``value`` (0 stays 0)."""
    if value <= 0:
        return 0
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return 10 * magnitude


def _short(value: int) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if value >= size:
            shown = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return f"{shown}{suffix}"
    return str(value)


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def at_minute(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


def count_cell(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, text, mode=0o600)  # run errors may quote rows: its owner publishes it, if anyone


CSS = """
:root { color-scheme: light dark; --fg: #1d2330; --muted: #667085; --line: #d0d5dd; --bg: #ffffff;
  --card: #f8f9fb; --ok: #1a7f37; --ko: #c62828; --warn: #b26a00; --accent: #2457c5; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8ec; --muted: #98a2b3; --line: #344054; --bg: #101318;
  --card: #181c23; --ok: #4cc27a; --ko: #ff6b6b; --warn: #f0b44c; --accent: #7aa7ff; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 0 0 .5rem; overflow-wrap: anywhere; }
h3 { font-size: 1rem; margin: 1rem 0 .5rem; }
.meta, .muted, footer, .empty { color: var(--muted); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85em; overflow-wrap: anywhere; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 1rem;
  margin: 1rem 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .5rem 0; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
a { color: var(--accent); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.error { max-width: 28rem; overflow-wrap: anywhere; }
.run-id, .churn { color: var(--muted); }
.churn { font-size: .85em; }
.status { font-weight: 600; }
.s-succeeded { color: var(--ok); }
.s-failed { color: var(--ko); }
.s-interrupted, .s-running, .s-other { color: var(--warn); }
.tag { font-size: .75rem; border: 1px solid var(--line); border-radius: 4px; padding: 0 .3rem;
  color: var(--muted); }
details summary { cursor: pointer; }
.chart { width: 100%; height: auto; max-height: 16rem; display: block; }
.chart .grid { stroke: var(--line); stroke-width: 1; }
.chart .axis { fill: var(--muted); font-size: 12px; }
.chart .line { fill: none; stroke: var(--accent); stroke-width: 2; }
.chart .point { fill: var(--accent); }
footer { margin: 2rem 0 1rem; font-size: .85rem; }
@media (max-width: 640px) {
  body { padding: .5rem; font-size: 14px; }
  section { padding: .75rem; }
  table.runs thead { display: none; }
  table.runs, table.runs tbody, table.runs tr, table.runs td { display: block; width: 100%; }
  table.runs tr { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 .5rem; padding: .25rem .5rem; }
  table.runs td { border: 0; padding: .15rem 0; text-align: right; max-width: none; }
  table.runs td::before { content: attr(data-label); float: left; color: var(--muted); margin-right: 1rem; }
  table.runs td.error { text-align: left; }
  table.runs td.error:empty { display: none; }
  table.runs td.error::before { float: none; display: block; }
}
"""
