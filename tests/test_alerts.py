"""Alerts against real servers on 127.0.0.1: a webhook receiver (http.server) and an SMTP server (aiosmtpd).

Runs go through `etl.runtime.runs.execute` and a real ledger, so that "previous run" means what it will
mean in production.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from servers import HOST, make_tls_certificate, silent_server, unused_port

from etl.ops import alerts as alerts_module
from etl.ops.alerts import Alert, alert_for, previous_status, send_alert, webhook_payload
from etl.ops.webhook import WEBHOOK_RETRY
from etl.config import Alerts, Config, EmailAlerts, Settings
from etl.errors import AudienceSyncError
from etl.ops.announce import announce
from etl.runtime.runs import RunContext, RunOutcome, execute
from etl.runtime.ledger import StateStore

#: the token part of the webhook URL: it must never be shown anywhere
TOKEN = "T0KEN-b7c1e9f2a4d6-SECRET"
SMTP_PASSWORD = "smtp-pa55word-never-shown"
ACTIVATION = "newsletter_engaged"


#: the webhook's retry budget as shipped, without its pause
NO_PAUSE = replace(WEBHOOK_RETRY, sleep=lambda seconds: None)


# --------------------------------------------------------------------------- a webhook receiver


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server recording every request; answers the queued statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.redirect_to: str | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Received(self.command, self.path, dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if receiver.redirect_to and 300 <= status < 400:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/services/{TOKEN}"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


# --------------------------------------------------------------------------- an SMTP server


@dataclass
class Inbox:
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == ("alerts", SMTP_PASSWORD), handled=False)



class SmtpServer:
    """aiosmtpd on a free port of 127.0.0.1: plain, STARTTLS (with login), or implicit TLS."""

    def __init__(self, mode: str = "none", tls_dir: Path | None = None) -> None:
        self.inbox = Inbox()
        self.port = unused_port()
        kwargs: dict[str, Any] = {}
        if mode != "none":
            assert tls_dir is not None
            files = make_tls_certificate(tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(files.cert, files.key)
            self.ca_file = files.cert
            kwargs["authenticator"] = self.inbox.authenticate
            if mode == "starttls":
                kwargs.update(tls_context=context, require_starttls=True)
            else:
                # the connection is TLS from the start; aiosmtpd only knows about STARTTLS
                kwargs.update(ssl_context=context, server_hostname=HOST, auth_require_tls=False)
        self.controller = Controller(self.inbox, hostname=HOST, port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def email_settings(port: int, **overrides: Any) -> EmailAlerts:
    values: dict[str, Any] = {
        "host": HOST, "port": port, "sender": "audience-sync@example.com",
        "recipients": ["data-team@example.com", "oncall@example.com"], "security": "none", "timeout": 5,
    }
    values.update(overrides)
    return EmailAlerts(**values)


# --------------------------------------------------------------------------- runs through the real ledger


class Activation:
    """Runs one activation through `execute`, which sends the alerts each run calls for (as the CLI
    and the scheduler do); records what was sent and the problems it logged."""

    def __init__(self, tmp_path: Path, alerts: Alerts, name: str = ACTIVATION) -> None:
        self.config = Config(settings=Settings(state_dir=tmp_path / "state"), alerts=alerts,
                             warehouses={}, destinations={}, activations={}, base_dir=tmp_path)
        self.store = StateStore.in_directory(self.config.state_dir)
        self.name = name
        self.sent: list[Alert] = []
        self.problems: list[str] = []
        self._handler = _Problems(self.problems)
        logging.getLogger("audience_sync.alerts").addHandler(self._handler)

    def run(self, body: Callable[[RunContext], None], *, dry_run: bool = False) -> RunOutcome:
        before = previous_status(self.store, self.name)
        outcome = execute(self.config, self.store, self.name, "audience", body, dry_run=dry_run,
                          finishers=(announce,))
        alert = alert_for(outcome, before) if not dry_run else None
        if alert is not None:
            self.sent.append(alert)
        return outcome

    def close(self) -> None:
        logging.getLogger("audience_sync.alerts").removeHandler(self._handler)
        self.store.close()


class _Problems(logging.Handler):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.append(record.getMessage())


def succeeds(delivered: int = 1200) -> Callable[[RunContext], None]:
    def body(context: RunContext) -> None:
        context.results.update(rows_extracted=delivered + 30, rows_rejected=30, rows_delivered=delivered)

    return body


def fails(message: str = "the warehouse refused the query: relation \"orders\" does not exist") -> Callable[
        [RunContext], None]:
    def body(context: RunContext) -> None:
        context.results.update(rows_extracted=0)
        raise AudienceSyncError(message, where="warehouse dwh", hint="check the SQL")

    return body


def stopped_by_guard(context: RunContext) -> None:
    context.results.update(rows_extracted=400, rows_rejected=0, rows_delivered=0)
    context.details["guard"] = {"name": "max_shrink", "reason": "the audience shrank by 67% (1,200 -> 400), more "
                                                               "than the 50% allowed"}
    raise AudienceSyncError("stopped by the max_shrink guard: nothing was delivered")


@pytest.fixture
def activation(tmp_path: Path, webhook: WebhookReceiver, smtp: SmtpServer) -> Iterator[Activation]:
    subject = Activation(tmp_path, Alerts(webhook_url=SecretStr(webhook.url), email=email_settings(smtp.port)))
    yield subject
    subject.close()


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(message["Subject"]) for message in smtp.inbox.messages]


# --------------------------------------------------------------------------- which runs alert, once per channel


def test_a_failure_then_its_recovery_each_send_one_webhook_call_and_one_email(
    activation: Activation, webhook: WebhookReceiver, smtp: SmtpServer
) -> None:
    first = activation.run(succeeds())
    assert (first.status, len(webhook.requests), len(smtp.inbox.messages)) == ("succeeded", 0, 0)

    failed = activation.run(fails())
    assert failed.status == "failed"
    assert len(webhook.requests) == 1 and len(smtp.inbox.messages) == 1
    call = webhook.requests[0]
    assert (call.method, call.path) == ("POST", f"/services/{TOKEN}")
    assert call.headers["Content-Type"].startswith("application/json")
    payload = call.json()
    assert {k: payload[k] for k in ("event", "activation", "run_id", "status")} == {
        "event": "failure", "activation": ACTIVATION, "run_id": failed.run_id, "status": "failed"}
    assert payload["text"].startswith(f"*FAILED {ACTIVATION}*\n")
    assert "relation \"orders\" does not exist" in payload["text"]
    mail = smtp.inbox.messages[0]
    assert mail["Subject"] == f"[audience-sync] FAILED {ACTIVATION}"
    assert mail["From"] == "audience-sync@example.com"
    assert smtp.inbox.recipients[0] == ["data-team@example.com", "oncall@example.com"]
    assert mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_content()
    assert failed.run_id is not None and failed.run_id in text
    assert f"audience-sync show {failed.run_id}" in text
    assert "warehouse dwh: the warehouse refused the query" in text and "check the SQL" in text

    recovered = activation.run(succeeds(1180))
    assert len(webhook.requests) == 2 and len(smtp.inbox.messages) == 2
    assert webhook.requests[1].json()["event"] == "recovery"
    assert webhook.requests[1].json()["run_id"] == recovered.run_id
    assert subjects(smtp)[1] == f"[audience-sync] RECOVERED {ACTIVATION}"
    assert "1,180 delivered" in smtp.inbox.messages[1].get_content()

    activation.run(succeeds())  # a success after a success: nothing
    assert len(webhook.requests) == 2 and len(smtp.inbox.messages) == 2
    assert activation.problems == []


def test_every_failure_alerts_and_a_repeat_says_so(
    activation: Activation, webhook: WebhookReceiver, smtp: SmtpServer
) -> None:
    activation.run(fails())
    activation.run(fails())
    assert [r.json()["event"] for r in webhook.requests] == ["failure", "failure"]
    assert subjects(smtp) == [f"[audience-sync] FAILED {ACTIVATION}", f"[audience-sync] FAILED {ACTIVATION} (again)"]


def test_a_guard_stop_sends_one_guard_alert_naming_the_reason(
    activation: Activation, webhook: WebhookReceiver, smtp: SmtpServer
) -> None:
    activation.run(succeeds())
    stopped = activation.run(stopped_by_guard)
    assert len(webhook.requests) == 1 and len(smtp.inbox.messages) == 1
    payload = webhook.requests[0].json()
    assert (payload["event"], payload["run_id"]) == ("guard", stopped.run_id)
    assert "the audience shrank by 67% (1,200 -&gt; 400)" in payload["text"]  # Slack-escaped
    assert "the audience shrank by 67% (1,200 -> 400)" in payload["error"]  # raw for other consumers
    assert subjects(smtp) == [f"[audience-sync] STOPPED by guard: {ACTIVATION}"]
    body = smtp.inbox.messages[0].get_content()
    assert "stopped by its max_shrink guard: the audience shrank by 67% (1,200 -> 400)" in body
    assert f"audience-sync show {stopped.run_id}" in body

    activation.run(succeeds())  # the next good run is a recovery
    assert webhook.requests[1].json()["event"] == "recovery"
    assert "stopped by a guard" in smtp.inbox.messages[1].get_content()


def test_interrupted_dry_and_locked_runs_do_not_alert_and_interruptions_do_not_hide_a_recovery(
    activation: Activation, webhook: WebhookReceiver, smtp: SmtpServer
) -> None:
    stop = threading.Event()
    stop.set()

    def interrupted(context: RunContext) -> None:
        context.tick({"extracted": 0, "kept": 0, "rejected": 0, "duplicates": 0})

    activation.run(fails())
    assert len(webhook.requests) == 1
    outcome = execute(activation.config, activation.store, ACTIVATION, "audience", interrupted, stop=stop,
                      finishers=(announce,))
    assert outcome.status == "interrupted"
    assert alert_for(outcome, previous_status(activation.store, ACTIVATION, outcome.run_id)) is None
    assert activation.run(fails(), dry_run=True).status == "failed"  # a dry run: its user is watching
    locked = RunOutcome(ACTIVATION, None, "locked", False, 0.0, {}, {}, "already running")
    assert alert_for(locked, "failed") is None
    assert len(webhook.requests) == 1 and len(smtp.inbox.messages) == 1

    activation.run(succeeds())  # failed, interrupted, (dry run), succeeded: a recovery
    assert [r.json()["event"] for r in webhook.requests] == ["failure", "recovery"]


def test_only_the_enabled_events_are_sent(tmp_path: Path, webhook: WebhookReceiver, smtp: SmtpServer) -> None:
    alerts = Alerts(webhook_url=SecretStr(webhook.url), email=email_settings(smtp.port), events=["failure"])
    subject = Activation(tmp_path, alerts)
    subject.run(fails())
    subject.run(succeeds())  # a recovery, not enabled
    subject.close()
    assert [r.json()["event"] for r in webhook.requests] == ["failure"]
    assert len(smtp.inbox.messages) == 1


def test_a_channel_not_configured_is_not_used(tmp_path: Path, smtp: SmtpServer) -> None:
    subject = Activation(tmp_path, Alerts(email=email_settings(smtp.port)))
    subject.run(fails())
    subject.close()
    assert len(smtp.inbox.messages) == 1 and subject.problems == []
    assert send_alert(Alerts(), subject.sent[0]) == []


# --------------------------------------------------------------------------- failing to send never fails the run


def test_unreachable_webhook_and_smtp_give_problems_not_exceptions_and_never_show_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead_http, dead_smtp = unused_port(), unused_port()
    alerts = Alerts(webhook_url=SecretStr(f"http://{HOST}:{dead_http}/services/{TOKEN}?key={TOKEN}"),
                    email=email_settings(dead_smtp, username="alerts", password=SecretStr(SMTP_PASSWORD)))
    subject = Activation(tmp_path, alerts)
    outcome = subject.run(fails())
    subject.close()
    assert outcome.status == "failed"
    assert len(subject.problems) == 2
    webhook_problem, email_problem = subject.problems
    assert webhook_problem.startswith(f"webhook alert not sent: cannot reach http://{HOST}:{dead_http} ")
    assert "after one retry" in webhook_problem
    assert email_problem.startswith(f"e-mail alert not sent: cannot reach {HOST}:{dead_smtp} ")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == subject.problems
    for shown in [*subject.problems, caplog.text]:
        assert TOKEN not in shown and "/services" not in shown and SMTP_PASSWORD not in shown


def test_a_webhook_answering_5xx_is_retried_once(webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alert = Alert("failure", ACTIVATION, "r1", f"FAILED {ACTIVATION}", "it broke", "failed", "it broke")
    alerts = Alerts(webhook_url=SecretStr(webhook.url))
    webhook.statuses = [503]
    assert send_alert(alerts, alert, retry=NO_PAUSE) == []
    assert len(webhook.requests) == 2  # the retry got through

    webhook.statuses = [500, 502]
    problems = send_alert(alerts, alert, retry=NO_PAUSE)
    assert len(webhook.requests) == 4
    assert problems == [f"webhook alert not sent: http://{HOST}:{webhook.server.server_address[1]} answered "
                        "HTTP 502 (after one retry)"]

    webhook.statuses = [404]
    problems = send_alert(alerts, alert, retry=NO_PAUSE)
    assert len(webhook.requests) == 5  # a 4xx is not retried
    assert "HTTP 404" in problems[0] and "token may be wrong" in problems[0]
    assert TOKEN not in caplog.text and all(TOKEN not in p for p in problems)


def test_a_redirected_webhook_is_reported_not_followed(webhook: WebhookReceiver) -> None:
    webhook.statuses = [302]
    webhook.redirect_to = f"http://{HOST}:{webhook.server.server_address[1]}/elsewhere"
    alert = Alert("failure", ACTIVATION, "r1", "FAILED x", "it broke")
    problems = send_alert(Alerts(webhook_url=SecretStr(webhook.url)), alert)
    assert len(webhook.requests) == 1
    assert "HTTP 302" in problems[0] and "redirect" in problems[0]


def test_a_webhook_that_never_answers_times_out_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts_module, "WEBHOOK_TIMEOUT", 0.5)
    alert = Alert("failure", ACTIVATION, "r1", "FAILED x", "it broke")
    with silent_server() as port:
        problems = send_alert(Alerts(webhook_url=SecretStr(f"http://{HOST}:{port}/{TOKEN}")), alert)
    assert problems == [f"webhook alert not sent: http://{HOST}:{port} did not answer within 0.5s"]


def test_a_webhook_url_that_is_not_http_is_a_problem() -> None:
    alert = Alert("failure", ACTIVATION, "r1", "FAILED x", "it broke")
    problems = send_alert(Alerts(webhook_url=SecretStr(f"file:///tmp/{TOKEN}")), alert)
    assert problems == ["webhook alert not sent: the URL is not an http:// or https:// URL"]


def test_slack_control_sequences_in_an_error_are_escaped() -> None:
    outcome = RunOutcome(ACTIVATION, "r1", "failed", False, 1.0, {}, {}, "<!channel> <script>x</script> & more")
    alert = alert_for(outcome, None)
    assert alert is not None
    payload = webhook_payload(alert)
    assert "<!channel>" not in payload["text"] and "<script>" not in payload["text"]
    assert "&lt;!channel&gt; &lt;script&gt;x&lt;/script&gt; &amp; more" in payload["text"]
    assert payload["error"] == "<!channel> <script>x</script> & more"


def test_decisions_of_alert_for_without_a_ledger() -> None:
    def outcome(status: str, **details: Any) -> RunOutcome:
        return RunOutcome(ACTIVATION, "r", status, False, 1.0, {"rows_delivered": 5}, details, None)

    assert alert_for(outcome("succeeded"), None) is None
    assert alert_for(outcome("succeeded"), "succeeded") is None
    assert alert_for(outcome("succeeded"), "interrupted") is None
    assert getattr(alert_for(outcome("succeeded"), "failed"), "event") == "recovery"
    assert getattr(alert_for(outcome("succeeded"), "guard"), "event") == "recovery"
    assert getattr(alert_for(outcome("failed"), None), "event") == "failure"
    assert alert_for(outcome("interrupted"), "succeeded") is None
    guard = alert_for(outcome("succeeded", guard="audience is empty"), "succeeded")  # whatever its status
    assert guard is not None and (guard.event, guard.error) == ("guard", "audience is empty")


# --------------------------------------------------------------------------- e-mail security modes


def _alert() -> Alert:
    return Alert("failure", ACTIVATION, "r1", f"FAILED {ACTIVATION}", "it broke\nsee: audience-sync show r1")


def test_starttls_with_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpServer("starttls", tmp_path / "tls") as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))  # trust the test server's certificate
        settings = email_settings(server.port, security="starttls", username="alerts",
                                  password=SecretStr(SMTP_PASSWORD))
        assert send_alert(Alerts(email=settings), _alert()) == []
        assert server.inbox.logins == [("alerts", SMTP_PASSWORD)]
        assert [str(m["Subject"]) for m in server.inbox.messages] == [f"[audience-sync] FAILED {ACTIVATION}"]

        wrong = settings.model_copy(update={"password": SecretStr("not-the-password")})
        problems = send_alert(Alerts(email=wrong), _alert())
        assert len(problems) == 1 and "refused the login" in problems[0]
        assert "not-the-password" not in problems[0] and len(server.inbox.messages) == 1


def test_starttls_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    with SmtpServer("starttls", tmp_path / "tls") as server:
        settings = email_settings(server.port, security="starttls", username="alerts",
                                  password=SecretStr(SMTP_PASSWORD))
        problems = send_alert(Alerts(email=settings), _alert())
    assert len(problems) == 1 and "certificate" in problems[0]
    assert server.inbox.logins == [] and server.inbox.messages == []


def test_implicit_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpServer("ssl", tmp_path / "tls") as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        settings = email_settings(server.port, security="ssl", username="alerts", password=SecretStr(SMTP_PASSWORD))
        assert send_alert(Alerts(email=settings), _alert()) == []
        assert len(server.inbox.messages) == 1


def test_starttls_asked_of_a_server_without_it_is_a_problem(smtp: SmtpServer) -> None:
    problems = send_alert(Alerts(email=email_settings(smtp.port, security="starttls")), _alert())
    assert len(problems) == 1 and "does not offer STARTTLS" in problems[0]
    assert smtp.inbox.messages == []


def test_a_login_asked_of_a_server_without_auth_is_a_problem(smtp: SmtpServer) -> None:
    settings = email_settings(smtp.port, username="alerts", password=SecretStr(SMTP_PASSWORD))
    problems = send_alert(Alerts(email=settings), _alert())
    assert len(problems) == 1 and "does not offer to log in" in problems[0] and "STARTTLS" in problems[0]
    assert SMTP_PASSWORD not in problems[0] and smtp.inbox.messages == []


# --------------------------------------------------------------------------- the technical e-mail as recipient


def fails_on_actito(tmp_path: Path, smtp: SmtpServer, recipients: list[str]) -> None:
    """One failed run of an activation whose Actito destination has a technical_email."""
    from etl.config import AudienceActivation, Destination

    subject = Activation(tmp_path, Alerts(email=email_settings(smtp.port, recipients=recipients)))
    subject.config = subject.config.model_copy(update={
        "destinations": {"actito": Destination(environment="sandbox", entity="demo",
                                               technical_email="actito-reports@example.com")},
        "activations": {ACTIVATION: AudienceActivation(sql=Path("a.sql"), destination="actito", identifier="email")},
    })
    try:
        subject.run(fails())
    finally:
        subject.close()
    assert not subject.problems


def test_without_recipients_an_email_alert_goes_to_the_destinations_technical_email(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    fails_on_actito(tmp_path, smtp, [])
    assert smtp.inbox.recipients == [["actito-reports@example.com"]]
    assert str(smtp.inbox.messages[0]["To"]) == "actito-reports@example.com"


def test_configured_recipients_win_over_the_technical_email(tmp_path: Path, smtp: SmtpServer) -> None:
    fails_on_actito(tmp_path, smtp, ["oncall@example.com"])
    assert smtp.inbox.recipients == [["oncall@example.com"]]


def test_email_alerts_with_nobody_to_send_to_are_refused_by_validate(tmp_path: Path) -> None:
    from etl.config import load_config
    from etl.errors import ConfigError

    (tmp_path / "a.sql").write_text("SELECT 'a@b.be' AS email")
    (tmp_path / "schedules.toml").write_text(
        '[warehouses.w]\nurl = "sqlite:///w.db"\n'
        '[destinations.d]\nenvironment = "sandbox"\nentity = "demo"\nfiles = { type = "local", path = "out" }\n'
        '[activations.a]\nsql = "a.sql"\ndestination = "d"\nidentifier = "email"\n'
        '[alerts.email]\nhost = "127.0.0.1"\nsender = "audience-sync@example.com"\n')
    with pytest.raises(ConfigError, match=r"\[alerts.email\] recipients: none listed, and a has no Actito destination "
                                          r"with a technical_email"):
        load_config(tmp_path / "schedules.toml", environ={})
    text = (tmp_path / "schedules.toml").read_text().replace('entity = "demo"\n',
                                                             'entity = "demo"\ntechnical_email = "t@example.com"\n')
    (tmp_path / "schedules.toml").write_text(text)
    assert load_config(tmp_path / "schedules.toml", environ={}).alert_recipients("a") == ["t@example.com"]
