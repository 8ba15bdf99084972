"""From a configured OpenField destination to a connected client; ``environment = "sandbox"`` starts an
in-process sandbox whose profiles persist between runs."""

from __future__ import annotations

from pathlib import Path

from etl.config import OPENFIELD_SANDBOX_PASSWORD, Config, OpenFieldDestination
from etl.runtime.doubles import openfield_sandbox_url
from etl.destinations.licence import licence_for
from etl.destinations.openfield.client import CONNECT_TIMEOUT, READ_TIMEOUT, OpenFieldClient


def sandbox_state_file(config: Config) -> Path:
    return config.state_dir / "openfield-sandbox" / "state.json"


def in_process_sandbox_url(config: Config, destination: OpenFieldDestination, password: str) -> str:
    return openfield_sandbox_url(
        sandbox_state_file(config), tenant_id=destination.tenant_id, application_id=destination.application_id,
        username=destination.username, password=password, routes=destination.routes.model_dump(),
    )


def open_client(config: Config, destination_name: str) -> OpenFieldClient:
    destination = config.destination_of(destination_name, OpenFieldDestination)
    password = destination.password.get_secret_value() if destination.password else OPENFIELD_SANDBOX_PASSWORD
    url = in_process_sandbox_url(config, destination, password) if destination.environment == "sandbox" else destination.url
    assert url is not None  # validated: url, or environment = "sandbox"
    # one set of limits per tenant: the first destination of a tenant sets them
    licence = licence_for(
        config, service="OpenField", url=url, account=destination.tenant_id,
        max_in_flight=destination.max_concurrency, calls_per_minute=destination.calls_per_minute,
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
    )
    return OpenFieldClient(base_url=url, tenant_id=destination.tenant_id, application_id=destination.application_id,
                           username=destination.username, password=password, routes=destination.routes.model_dump(),
                           match_on=destination.match_on, licence=licence)
