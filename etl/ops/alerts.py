"""Announcing failures, recoveries and guard stops, by webhook (Slack-compatible) and e-mail.

Every failure is announced, not only the first, so nobody mistakes silence for health. Interrupted
runs (somebody's deliberate act) and dry runs are never announced. Sending never raises: an alert
must not fail the run; the webhook URL is a token, so only its scheme and host are ever shown.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal
from urllib.parse import urlsplit

from etl.config import Alerts, EmailAlerts
from etl.destinations.retry import RetryPolicy
from etl.logs import REDACTED, redact
from etl.runtime.runs import RunOutcome
from etl.runtime.ledger import StateStore
from etl.ops.webhook import WEBHOOK_RETRY, connection_failure, http_post

log = logging.getLogger("audience_sync.alerts")

AlertEvent = Literal["failure", "recovery", "guard"]

#: seconds a webhook may take to answer
WEBHOOK_TIMEOUT = 10.0
#: characters of a run's error kept in an alert
MAX_ERROR_CHARS = 1500

SUBJECT_PREFIX = "[audience-sync]"


@dataclass(frozen=True)
class Alert:
    event: AlertEvent
    activation: str
    run_id: str | None
    title: str  # e.g. "FAILED newsletter_engaged": the e-mail subject after "[audience-sync] "
    text: str  # plain text, several lines
    status: str = ""  # the run's status, for webhook consumers
    error: str | None = None  # the run's error (or the guard's reason), for webhook consumers


def alert_for(outcome: RunOutcome, previous_status: str | None) -> Alert | None:
    if outcome.dry_run or outcome.status not in ("succeeded", "failed", "interrupted"):
        return None
    if outcome.details.get("failed_destinations"):  # each failed delivery of a fan-out alerted for itself
        return None
    name = outcome.activation
    guard = _guard(outcome.details)
    if guard is not None:
        guard_name, reason = guard
        by = f"its {guard_name} guard" if guard_name else "a safety guard"
        text = _body(outcome, f"{name} was stopped by {by}: {reason}", error=None)
        return Alert("guard", name, outcome.run_id, f"STOPPED by guard: {name}", text, outcome.status,
                     guard_reason(outcome.details))
    if outcome.status == "failed":
        error = _clip(redact(outcome.error or "no error message was recorded"))
        again = previous_status in ("failed", "guard")
        title = f"FAILED {name}" + (" (again)" if again else "")
        lead = f"{name} failed" + (" again (the previous run had failed too)" if again else "")
        return Alert("failure", name, outcome.run_id, title, _body(outcome, lead, error=error), outcome.status, error)
    if outcome.status == "succeeded" and previous_status in ("failed", "guard"):
        what = "was stopped by a guard" if previous_status == "guard" else "had failed"
        text = _body(outcome, f"{name} succeeded again (its previous run {what})", error=None)
        return Alert("recovery", name, outcome.run_id, f"RECOVERED {name}", text, outcome.status, None)
    return None


def previous_status(store: StateStore, activation: str, run_id: str | None = None) -> str | None:
    """"succeeded", "failed", "guard" or None; skips interrupted runs, so they are transparent for
    recoveries. Never raises."""
    try:
        records = store.runs(activation, limit=50, include_dry_runs=False)
    except Exception as exc:
        log.warning("cannot read the previous run for alerts: %s", redact(str(exc)),
                    extra={"fields": {"activation": activation}})
        return None
    ids = [record.run_id for record in records]
    if run_id is not None and run_id in ids:
        records = records[ids.index(run_id) + 1:]
    for record in records:
        if record.run_id == run_id or record.status not in ("succeeded", "failed"):
            continue
        return "guard" if guard_reason(record.details) is not None else record.status
    return None


def guard_reason(details: Mapping[str, Any]) -> str | None:
    guard = _guard(details)
    if guard is None:
        return None
    name, reason = guard
    return f"{name}: {reason}" if name else reason


def _guard(details: Mapping[str, Any]) -> tuple[str | None, str] | None:
    guard = details.get("guard") if isinstance(details, Mapping) else None
    if not guard:
        return None
    if isinstance(guard, Mapping):
        name = guard.get("name")
        reason = guard.get("reason") or guard.get("message") or "no reason given"
        return (redact(str(name)) if name else None), redact(str(reason))
    return None, redact(str(guard))


def _body(outcome: RunOutcome, lead: str, *, error: str | None) -> str:
    run = outcome.run_id or "(not recorded)"
    lines = [lead.rstrip(".") + ".", "", f"Run: {run} ({outcome.status}, {outcome.duration_s:.1f}s)"]
    counts = _counts(outcome.results)
    if counts:
        lines.append(f"Rows: {counts}")
    if outcome.results.get("file_name"):
        lines.append(f"File: {outcome.results['file_name']}")
    if error:
        lines += ["", "Error:", error]
    lines.append("")
    if outcome.run_id:
        lines.append(f"Details: audience-sync show {outcome.run_id}")
    lines.append(f"History: audience-sync history {outcome.activation}")
    return "\n".join(lines)


def _counts(results: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("rows_extracted", "read"), ("rows_rejected", "rejected"),
                       ("rows_duplicate", "duplicates"), ("rows_delivered", "delivered")):
        value = results.get(key)
        if isinstance(value, int):
            parts.append(f"{value:,} {label}")
    return " · ".join(parts)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def send_alert(
    alerts: Alerts, alert: Alert, *, retry: RetryPolicy = WEBHOOK_RETRY, recipients: list[str] | None = None
) -> list[str]:
    """Returns the problems met, each also logged. Never raises. ``recipients``: the e-mail's, when
    ``alerts.email`` lists none (Config.alert_recipients: the destination's technical_email)."""
    if alert.event not in alerts.events:
        return []
    problems: list[str] = []
    fields = {"activation": alert.activation, "run_id": alert.run_id, "event": alert.event}
    channels: list[tuple[str, Callable[[], str | None]]] = []
    if (webhook_url := alerts.webhook_url) is not None:
        channels.append(("webhook", lambda: _send_webhook(webhook_url.get_secret_value(), alert, retry)))
    if (email := alerts.email) is not None:
        if not email.recipients and recipients:
            email = email.model_copy(update={"recipients": recipients})
        channels.append(("e-mail", lambda: _send_email(email, alert)))
    secrets = _secrets_of(alerts)
    for channel, send in channels:
        try:
            problem = send()
        except Exception as exc:  # a bug of ours must not fail the run either
            problem = f"{channel} alert not sent: unexpected {type(exc).__name__}"
            log.debug("alert channel %s failed", channel, exc_info=True, extra={"fields": fields})
        if problem is None:
            log.info("%s alert sent by %s", alert.event, channel, extra={"fields": fields})
            continue
        problem = _scrub(problem, secrets)
        log.warning(problem, extra={"fields": fields})
        problems.append(problem)
    return problems


def _secrets_of(alerts: Alerts) -> list[str]:
    found: list[str] = []
    if alerts.webhook_url is not None:
        url = alerts.webhook_url.get_secret_value()
        parts = urlsplit(url)
        found += [url, parts.path, parts.query, parts.password or ""]
    if alerts.email is not None and alerts.email.password is not None:
        found.append(alerts.email.password.get_secret_value())
    return [secret for secret in found if secret and secret != "/"]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return redact(text)


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """Slack's ``text`` is escaped so an error cannot mention @channel or forge a link."""
    return {
        "text": f"*{_slack_escape(alert.title)}*\n{_slack_escape(alert.text)}",
        "event": alert.event,
        "activation": alert.activation,
        "run_id": alert.run_id,
        "status": alert.status,
        "title": alert.title,
        "error": alert.error,
        "body": alert.text,
        "source": "audience-sync",
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _send_webhook(url: str, alert: Alert, retry: RetryPolicy) -> str | None:
    body = json.dumps(webhook_payload(alert), ensure_ascii=False).encode("utf-8")
    return http_post(url, body, content_type="application/json; charset=utf-8", timeout=WEBHOOK_TIMEOUT,
                     what="webhook alert", retry=retry)


def email_message(email: EmailAlerts, alert: Alert) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"{SUBJECT_PREFIX} {alert.title}"
    message["From"] = email.sender
    message["To"] = ", ".join(email.recipients)
    message["Date"] = formatdate(usegmt=True)
    domain = email.sender.rpartition("@")[2].strip(" >") or None
    message["Message-ID"] = make_msgid(idstring="audience-sync", domain=domain)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
    message["X-Audience-Sync-Event"] = alert.event
    message.set_content(alert.text + "\n\n-- \naudience-sync\n", cte="quoted-printable")
    return message


def _send_email(email: EmailAlerts, alert: Alert) -> str | None:
    where = f"{email.host}:{email.port}"
    what = "e-mail alert not sent"
    if not email.recipients:
        return f"{what}: no recipient (list alerts.email.recipients, or set technical_email on the destination)"
    try:
        message = email_message(email, alert)
    except (ValueError, TypeError) as exc:
        return f"{what}: the message cannot be built ({exc}): check alerts.email.sender and recipients"
    context = ssl.create_default_context()
    try:
        smtp: smtplib.SMTP
        if email.security == "ssl":
            smtp = smtplib.SMTP_SSL(email.host, email.port, timeout=email.timeout, context=context)
        else:
            smtp = smtplib.SMTP(email.host, email.port, timeout=email.timeout)
        with smtp:
            if email.security == "starttls":
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    return f"{what}: {where} does not offer STARTTLS (set alerts.email.security = \"ssl\" or \"none\")"
                smtp.starttls(context=context)
                smtp.ehlo()
            if email.username:
                smtp.ehlo_or_helo_if_needed()
                if not smtp.has_extn("auth"):
                    return (f"{what}: {where} does not offer to log in (AUTH), so alerts.email.username cannot be "
                            "used" + (" (many servers offer it only after STARTTLS)" if email.security == "none"
                                      else ""))
                password = email.password.get_secret_value() if email.password else ""
                smtp.login(email.username, password)
            refused = smtp.send_message(message)
        if refused:
            return f"{what} to {', '.join(sorted(refused))}: refused by {where} (the other recipients got it)"
        return None
    except smtplib.SMTPAuthenticationError as exc:
        return f"{what}: {where} refused the login ({exc.smtp_code}): check alerts.email.username and password"
    except smtplib.SMTPRecipientsRefused as exc:
        return f"{what}: {where} refused every recipient ({', '.join(sorted(exc.recipients))})"
    except smtplib.SMTPSenderRefused as exc:
        return f"{what}: {where} refused the sender {exc.sender} ({exc.smtp_code})"
    except smtplib.SMTPNotSupportedError as exc:
        return f"{what}: {where} does not support a command it was sent ({str(exc)[:200]})"
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{what}: {where} answered {exc.smtp_code} {text.strip()[:200]}"
    except smtplib.SMTPException as exc:
        return f"{what}: SMTP error with {where} ({type(exc).__name__}: {str(exc)[:200]})"
    except (TimeoutError, socket.timeout):
        return f"{what}: {where} did not answer within {email.timeout:g}s"
    except OSError as exc:
        return f"{what}: cannot reach {where} ({connection_failure(exc)})"
