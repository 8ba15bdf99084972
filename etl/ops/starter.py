"""`audience-sync init`: a first configuration that validates and runs, to be edited from there.
It never overwrites: an existing file is the user's work."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from etl.errors import ConfigError

ACTIVATION = "my_audience"
SQL_FILE = f"sql/{ACTIVATION}.sql"

_DEMO_URL = "sqlite:///var/demo/warehouse.db"

_CONFIG = """\
# audience-sync configuration, written by `audience-sync init`. Reference: README.md, "Configuration".
# Paths are relative to this file. Secrets are never written here: use "${{ENV_VAR}}" (or ENV_VAR_FILE).

[settings]
state_dir = "var/state"        # the run ledger, leases and each run's local files (keep it between runs)
# state_url = "postgresql+psycopg://etl:${{STATE_PASSWORD}}@db/etl_state"   # a ledger shared by several hosts

[warehouses.main]
url = "{url}"
{demo}
# Actito: the built-in sandbox until you have a licence; then set environment = "ENV-0" (or the one
# of your licence), api_key = "${{ACTITO_API_KEY}}" and your entity.
[destinations.actito]
environment = "sandbox"
entity = "demo"
technical_email = "data-team@example.com"

# Where Actito's file synchronisation picks the audience file up: a local outbox to start with;
# in production, for example:
#   files = {{ type = "sftp", host = "sftp.example.com", username = "actito", password = "${{SFTP_PASSWORD}}", remote_dir = "/audiences" }}
[destinations.actito.files]
type = "local"
path = "var/outbox"

[activations.{activation}]
description = "{description}"
sql = "{sql}"
destination = "actito"
identifier = "email"           # or "profileId"
{params}schedule = {{ cron = "30 6 * * *", timezone = "Europe/Brussels" }}
file = {{ compression = "gzip" }}
"""

_DEMO_SQL = """\
-- Newsletter subscribers who ordered at least :min_orders times, from the demo warehouse.
-- The audience is one column of e-mail addresses (or profileIds); name it as Actito does, or set
-- identifier_column in the activation.
SELECT email AS "emailAddress"
FROM customers
WHERE newsletter_optin = 1
  AND orders_count >= :min_orders
"""

_OWN_SQL = """\
-- Your audience: one column of e-mail addresses (or profileIds, with identifier = "profileId").
-- Adapt the table and the conditions, then try it with `audience-sync preview {activation}`.
-- :run_date is the run's local date; declare your own parameters under the activation's params.
SELECT email AS "emailAddress"
FROM customers
WHERE newsletter_optin = TRUE
"""


@dataclass(frozen=True)
class Started:
    config: Path
    sql: Path
    next_commands: list[str]


def write_starter(directory: Path, warehouse_url: str | None) -> Started:
    config, sql = directory / "schedules.toml", directory / SQL_FILE
    existing = [str(path) for path in (config, sql) if path.exists()]
    if existing:
        raise ConfigError([(path, "already exists: init never overwrites (choose another directory)")
                           for path in existing], source=str(config))
    url = _shareable(warehouse_url) if warehouse_url else _DEMO_URL
    demo = warehouse_url is None
    sql.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(_CONFIG.format(
        url=url,
        demo="demo = true                    # the demo warehouse: a SQLite file created on first use\n" if demo else "",
        activation=ACTIVATION,
        description="Newsletter subscribers with at least two orders" if demo else "My first audience",
        sql=SQL_FILE,
        params="params = { min_orders = 2 }\n" if demo else "",
    ), encoding="utf-8")
    sql.write_text(_DEMO_SQL if demo else _OWN_SQL.format(activation=ACTIVATION), encoding="utf-8")
    shown = config if config.is_absolute() else Path(".") / config
    return Started(config, sql, [
        f"audience-sync --config {shown} validate",
        f"audience-sync --config {shown} preview {ACTIVATION}",
        f"audience-sync --config {shown} run {ACTIVATION}",
    ])


def _shareable(url: str) -> str:
    """The URL as it may stand in the file: a literal password becomes ``${WAREHOUSE_PASSWORD}``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError([("--warehouse-url", "not a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db); "
                                               "percent-encode reserved characters")], source="init") from None
    if parsed.password and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", str(parsed.password)):
        head, _, tail = url.rpartition("@")
        user = head.split("://", 1)[1].split(":", 1)[0]
        return f"{head.split('://', 1)[0]}://{user}:${{WAREHOUSE_PASSWORD}}@{tail}"
    return url
