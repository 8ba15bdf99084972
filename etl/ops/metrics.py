"""Prometheus metrics of the runs (see ``FAMILIES``): a node_exporter textfile and/or a Pushgateway push.

Rows change only on success, so an outage never drops the audience graph to zero. The textfile keeps
every activation ever reported; one invocation updates its own under ``flock``, so concurrent writers
do not lose each other's updates. Dry runs and lock-skipped runs are not reported.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import sqlalchemy as sa

from etl.config import Metrics
from etl.destinations.retry import RetryPolicy
from etl.files import replace_text
from etl.errors import MetricsError
from etl.logs import redact
from etl.runtime.runs import RunOutcome
from etl.runtime.ledger import RunRecord, StateStore, runs
from etl.ops.webhook import WEBHOOK_RETRY, http_post

log = logging.getLogger("audience_sync.metrics")

ROWS = "audience_sync_rows"
DURATION = "audience_sync_run_duration_seconds"
LAST_RUN = "audience_sync_last_run_timestamp_seconds"
LAST_SUCCESS = "audience_sync_last_success_timestamp_seconds"
STATUS = "audience_sync_last_run_status"
FAILURES = "audience_sync_failures_total"

#: name -> (type, help), in the order they are written
FAMILIES: dict[str, tuple[str, str]] = {
    ROWS: ("gauge", "Rows of the activation's last successful run, by stage (delivered: the audience size)."),
    DURATION: ("gauge", "Duration of the activation's last run, in seconds, whatever its status."),
    LAST_RUN: ("gauge", "When the activation's last run ended, as a Unix timestamp, whatever its status."),
    LAST_SUCCESS: ("gauge", "When the activation last succeeded, as a Unix timestamp."),
    STATUS: ("gauge", "1 for the status of the activation's last run, 0 for the other statuses."),
    FAILURES: ("counter", "Failed runs of the activation."),
}

STATUSES = ("succeeded", "failed", "interrupted")
#: RunOutcome.results key -> stage label
STAGES = {"rows_extracted": "extracted", "rows_rejected": "rejected", "rows_duplicate": "duplicate",
          "rows_delivered": "delivered"}
PUSH_TIMEOUT = 10.0

_T = TypeVar("_T")

Labels = tuple[tuple[str, str], ...]
#: family -> labels (sorted) -> value
Samples = dict[str, dict[Labels, float]]


def write_textfile(
    metrics: Metrics, outcomes: Sequence[RunOutcome], store: StateStore | None = None, *, now: float | None = None
) -> Path | None:
    """A relative path is relative to the working directory: resolve it with ``config.path`` first."""
    if metrics.textfile is None:
        return None
    path = Path(metrics.textfile)
    stamp = time.time() if now is None else now
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            samples = parse(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else {}
            for outcome in _reported(outcomes):
                _update(samples, outcome, stamp, store)
            # via a hidden temporary name: node_exporter never reads a half-written file
            replace_text(path, render(samples), mode=0o644)
    except OSError as exc:
        raise MetricsError(
            f"cannot write the metrics textfile: {exc.strerror or type(exc).__name__}",
            where=str(path), hint="check metrics.textfile and the permissions of its directory",
        ) from None
    return path


def _reported(outcomes: Iterable[RunOutcome]) -> Iterator[RunOutcome]:
    return (o for o in outcomes if not o.dry_run and o.status in STATUSES)


def _update(samples: Samples, outcome: RunOutcome, now: float, store: StateStore | None) -> None:
    name = outcome.activation
    for family in (DURATION, LAST_RUN, STATUS):
        _drop(samples, family, name)
    _set(samples, DURATION, {"activation": name}, outcome.duration_s)
    _set(samples, LAST_RUN, {"activation": name}, now)
    for status in STATUSES:
        _set(samples, STATUS, {"activation": name, "status": status}, 1 if status == outcome.status else 0)
    previous_failures = _get(samples, FAILURES, {"activation": name})
    if outcome.status == "succeeded":
        _set(samples, LAST_SUCCESS, {"activation": name}, now)
        _drop(samples, ROWS, name)
        _set_rows(samples, outcome.results, activation=name)
    elif store is not None:  # a new file: fill in from the ledger
        needs_success = _get(samples, LAST_SUCCESS, {"activation": name}) is None
        needs_rows = not _has(samples, ROWS, name)
        if needs_success or needs_rows:
            success = _ledger(store, name, StateStore.last_success)
            if success is not None and needs_success:
                _set(samples, LAST_SUCCESS, {"activation": name}, _timestamp(success))
            if success is not None and needs_rows:
                _drop(samples, ROWS, name)
                _set_rows(samples, vars(success), activation=name)
    counted = _ledger(store, name, _failures) if store is not None else None
    if counted is None:
        counted = int(previous_failures or 0) + (1 if outcome.status == "failed" else 0)
    _set(samples, FAILURES, {"activation": name}, counted)


def ledger_samples(store: StateStore, activations: Iterable[str]) -> Samples:
    """The series the textfile holds for these activations, read from the ledger alone: what the scheduler's
    ``/metrics`` serves, so one dashboard reads either. Raises StateError when the ledger cannot be read."""
    samples: Samples = {}
    for name in activations:
        recent = [r for r in store.runs(name, limit=20, include_dry_runs=False) if r.status in STATUSES]
        if recent:
            last = recent[0]
            if last.duration_s is not None:
                _set(samples, DURATION, {"activation": name}, last.duration_s)
            _set(samples, LAST_RUN, {"activation": name}, _timestamp(last))
            for status in STATUSES:
                _set(samples, STATUS, {"activation": name, "status": status}, 1 if status == last.status else 0)
        success = store.last_success(name)
        if success is not None:
            _set(samples, LAST_SUCCESS, {"activation": name}, _timestamp(success))
            _set_rows(samples, vars(success), activation=name)
        _set(samples, FAILURES, {"activation": name}, _failures(store, name))
    return samples


def _set_rows(samples: Samples, results: Mapping[str, object], **labels: str) -> None:
    for key, stage in STAGES.items():
        value = results.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _set(samples, ROWS, {**labels, "stage": stage}, value)


def _ledger(store: StateStore, activation: str, read: Callable[[StateStore, str], _T]) -> _T | None:
    try:
        return read(store, activation)
    except Exception as exc:
        log.warning("metrics: cannot read the ledger: %s", redact(str(exc).splitlines()[0] if str(exc) else
                                                                    type(exc).__name__),
                    extra={"fields": {"activation": activation}})
        return None


def _failures(store: StateStore, activation: str) -> int:
    query = sa.select(sa.func.count()).select_from(runs).where(
        runs.c.activation == activation, runs.c.status == "failed", runs.c.dry_run.is_(False)
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _timestamp(record: RunRecord) -> float:
    moment: datetime = record.finished_at or record.started_at  # naive UTC in the ledger
    return moment.replace(tzinfo=UTC).timestamp()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def push(
    metrics: Metrics, outcomes: Sequence[RunOutcome], store: StateStore | None = None, *, now: float | None = None,
    retry: RetryPolicy = WEBHOOK_RETRY,
) -> list[str]:
    """Push-add, so series not sent (rows, last success after a failure) keep their value. Never raises:
    returns the problems, each also logged."""
    if not metrics.pushgateway_url:
        return []
    stamp = time.time() if now is None else now
    base = metrics.pushgateway_url.rstrip("/")
    problems: list[str] = []
    for outcome in _reported(outcomes):
        try:
            body = render(_push_samples(outcome, stamp, store))
            url = f"{base}/metrics/{_group('job', metrics.job)}/{_group('activation', outcome.activation)}"
            problem = http_post(url, body.encode("utf-8"), content_type="text/plain; version=0.0.4; charset=utf-8",
                                timeout=PUSH_TIMEOUT, what=f"metrics of {outcome.activation}", retry=retry)
        except Exception as exc:  # never fail a run over its metrics
            problem = f"metrics of {outcome.activation} not pushed: unexpected {type(exc).__name__}"
        if problem is not None:
            problem = redact(problem.replace("not sent", "not pushed", 1))
            log.warning(problem, extra={"fields": {"activation": outcome.activation, "run_id": outcome.run_id}})
            problems.append(problem)
    return problems


def _push_samples(outcome: RunOutcome, now: float, store: StateStore | None) -> Samples:
    """Without the activation label: the Pushgateway refuses a label also in the grouping key."""
    samples: Samples = {}
    _set(samples, DURATION, {}, outcome.duration_s)
    _set(samples, LAST_RUN, {}, now)
    for status in STATUSES:
        _set(samples, STATUS, {"status": status}, 1 if status == outcome.status else 0)
    if outcome.status == "succeeded":
        _set(samples, LAST_SUCCESS, {}, now)
        _set_rows(samples, outcome.results)
    if store is not None:
        failures = _ledger(store, outcome.activation, _failures)
        if failures is not None:
            _set(samples, FAILURES, {}, failures)
    return samples


def _group(name: str, value: str) -> str:
    """A value holding '/' (or empty) takes the Pushgateway's ``name@base64/value`` form."""
    if "/" in value or not value:
        return f"{name}@base64/{base64.urlsafe_b64encode(value.encode()).decode() or '='}"
    return f"{name}/{quote(value, safe='')}"


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse(text: str) -> Samples:
    """Lines that are not ours, or not understood, are dropped."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in FAMILIES:
            continue
        labels: dict[str, str] = {}
        body = match.group(2) or ""
        position = 0
        while position < len(body):
            label = _LABEL.match(body, position)
            if not label:
                break
            labels[label.group(1)] = _unescape(label.group(2))
            position = label.end()
        else:
            try:
                value = float(match.group(3))
            except ValueError:
                continue
            _set(samples, match.group(1), labels, value)
    return samples


def render(samples: Samples) -> str:
    lines: list[str] = []
    for family, (kind, help_text) in FAMILIES.items():
        series = samples.get(family)
        if not series:
            continue
        lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}"]
        for labels in sorted(series):
            shown = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
            lines.append(f"{family}{{{shown}}} {_number(series[labels])}" if shown
                         else f"{family} {_number(series[labels])}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _set(samples: Samples, family: str, labels: Mapping[str, str], value: float) -> None:
    samples.setdefault(family, {})[_key(labels)] = float(value)


def _get(samples: Samples, family: str, labels: Mapping[str, str]) -> float | None:
    return samples.get(family, {}).get(_key(labels))


def _has(samples: Samples, family: str, activation: str) -> bool:
    return any(dict(labels).get("activation") == activation for labels in samples.get(family, {}))


def _drop(samples: Samples, family: str, activation: str) -> None:
    series = samples.get(family, {})
    for labels in [labels for labels in series if dict(labels).get("activation") == activation]:
        del series[labels]
