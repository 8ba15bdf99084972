"""Alerts and metrics after every recorded run, as a finisher (the runtime sits below etl.ops).
Neither may fail the run: problems are logged as warnings."""

from __future__ import annotations

import logging

from etl.config import Config
from etl.ops.alerts import alert_for, previous_status, send_alert
from etl.errors import MetricsError
from etl.ops.metrics import push, write_textfile
from etl.runtime.ledger import StateStore
from etl.runtime.runs import RunOutcome

log = logging.getLogger("audience_sync.run")


def announce(config: Config, store: StateStore, outcome: RunOutcome) -> None:
    if outcome.run_id is None or outcome.dry_run:
        return
    alert = alert_for(outcome, previous_status(store, outcome.activation, outcome.run_id))
    if alert is not None:
        send_alert(config.alerts, alert, recipients=config.alert_recipients(outcome.activation))
    metrics = config.metrics
    if metrics.textfile is not None:
        try:
            write_textfile(metrics.model_copy(update={"textfile": config.path(metrics.textfile)}), [outcome], store)
        except MetricsError as exc:
            log.warning("metrics textfile not written: %s", exc.message())
    if metrics.pushgateway_url:
        push(metrics, [outcome], store)
