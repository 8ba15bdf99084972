"""Secrets never show, in any URL form, and ordinary words are never mangled.

Found by trying: a password in a URL's query (``?password=${DWH_PASSWORD}``) was shown everywhere; a
``state_url`` password holding ``@`` showed its tail; and redaction replaced substrings anywhere, so
``DWH_PASSWORD=postgres`` turned ``postgresql+psycopg://`` into ``***ql+psycopg://`` and a one-letter
secret mangled every word holding that letter.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import etl.logs
from conftest import Shown
from etl.logs import redact, register_secret, url_secrets

SECRET_CHARS = string.ascii_letters + string.digits + "@:/%!#&?=+-_."


@pytest.fixture
def fresh_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered by a test stay in that test (the registry is process-wide)."""
    monkeypatch.setattr(etl.logs, "_secrets", set())
    monkeypatch.setattr(etl.logs, "_pattern", None)


def shows(secret: str, text: str) -> bool:
    """True if ``secret`` stands in ``text`` as a value of its own: not merely inside a longer word that was
    there anyway ("post" inside "postgresql" shows nothing)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", text.replace("***", "\0")) is not None


secrets = st.one_of(
    st.text(SECRET_CHARS, min_size=4, max_size=24),
    st.sampled_from(["postgres", "password", "admin", "secret", "test", "root@db", "a:b/c%d"]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secrets)
def test_a_registered_secret_never_shows_as_a_value_or_in_a_url(fresh_secrets: None, secret: str) -> None:
    register_secret(secret)
    url = f"postgresql+psycopg://etl:{secret}@db.internal:5432/analytics"
    for part in url_secrets(url):
        register_secret(part)
    messages = [
        f"login refused for {secret}",
        f"({secret})",
        f"cannot connect to {url}: timeout",
        f"cannot connect to postgresql+psycopg://etl@db:5432/a?sslmode=require&password={quote(secret, safe='')}",
        f'{{"error": "{secret}"}}',
    ]
    for message in messages:
        assert not shows(secret, redact(message)), message


@pytest.mark.parametrize("secret", ["postgres", "xist", "true"])
def test_ordinary_words_holding_a_secret_are_not_mangled(fresh_secrets: None, secret: str) -> None:
    register_secret(secret)
    text = "cannot connect to postgresql+psycopg://etl@db/test: database does not exist; untrue"
    assert redact(text) == text


def test_a_password_holding_an_at_sign_is_hidden_whole(fresh_secrets: None) -> None:
    shown = redact("cannot open postgresql+psycopg://postgres:Tail@Of-Secret@127.0.0.1:5432/state: refused")
    assert shown == "cannot open postgresql+psycopg://postgres:***@127.0.0.1:5432/state: refused"


CONFIG = """
[settings]
state_dir = "state"

[warehouses.wh]
url = "{url}"

[destinations.d]
environment = "sandbox"
entity = "demo"
files = {{ type = "local", path = "outbox" }}

[activations.a]
sql = "sql/vip_customers.sql"
destination = "d"
identifier = "profileId"
params = {{ min_value = 500 }}
"""


@pytest.mark.parametrize("secret", ["postgres", "p@ss:w/rd%1-Secret", "S3cr3t-Value"])
def test_a_warehouse_password_in_the_url_query_never_reaches_any_output(
    project: Callable[[str], Path], cli: Callable[..., Shown], monkeypatch: pytest.MonkeyPatch,
    fresh_secrets: None, tmp_path: Path, secret: str,
) -> None:
    import dbservers

    dbservers.postgres_url()  # the server must answer: the run fails on a missing database, naming the URL
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_here?password=${DWH_PASSWORD}"
    config = project(CONFIG.format(url=url))
    monkeypatch.setenv("DWH_PASSWORD", secret)
    text = cli(config, "run", "a")
    as_json = cli(config, "--log-format", "json", "--debug", "run", "a")
    history = cli(config, "history")
    report = tmp_path / "report.html"
    cli(config, "report", "--output", str(report))
    outputs = [text.said, as_json.said, history.said, report.read_text() if report.exists() else ""]
    if "@" in secret:  # a raw '@' breaks the URL: refused before anything runs, without showing it
        assert text.code == 2 and "percent-encode" in text.said
    else:
        assert text.code == 1 and "no_such_db_here" in text.said  # the URL is shown, without its secret
        assert "postgresql+psycopg://" in text.said  # and not mangled
    for output in outputs:
        assert not shows(secret, output)
    for line in as_json.err.splitlines():
        if line.startswith("{"):
            assert not shows(secret, json.dumps(json.loads(line)))
