"""From a configured destination to a connected client. ``environment = "sandbox"`` without
``base_url`` starts an in-process Actito sandbox whose state persists between runs, as Actito's would."""

from __future__ import annotations

from pathlib import Path

from etl.destinations.actito.client import CALLS_PER_MINUTE, CONNECT_TIMEOUT, MAX_IN_FLIGHT, READ_TIMEOUT, ActitoClient
from etl.config import ACTITO_ENVIRONMENTS, Config, Destination
from etl.errors import ConfigError
from etl.runtime.doubles import actito_sandbox_url
from etl.destinations.licence import licence_for

#: the API key of the sandbox's default fixture; a demo value, not a secret
SANDBOX_DEMO_KEY = "sandbox-demo-key"


def sandbox_state_file(config: Config) -> Path:
    return config.state_dir / "sandbox" / "state.json"


def in_process_sandbox_url(config: Config) -> str:
    return actito_sandbox_url(sandbox_state_file(config))


def open_client(config: Config, destination_name: str) -> ActitoClient:
    destination = config.destination_of(destination_name, Destination)
    api_key = destination.api_key.get_secret_value() if destination.api_key else None
    if destination.base_url:
        base_url = destination.base_url
    elif destination.environment == "sandbox":
        base_url = in_process_sandbox_url(config)
        api_key = api_key or SANDBOX_DEMO_KEY
    else:
        base_url = ACTITO_ENVIRONMENTS[destination.environment or ""]
    if not api_key:
        raise ConfigError(
            [(f"[destinations.{destination_name}] api_key", "needed to call Actito's API: \"${ACTITO_API_KEY}\"")],
            source=config.source,
        )
    # Actito counts per licence, not per client
    licence = licence_for(
        config, service="Actito", url=ACTITO_ENVIRONMENTS.get(base_url, base_url), account=destination.entity,
        max_in_flight=MAX_IN_FLIGHT, calls_per_minute=CALLS_PER_MINUTE, connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )
    return ActitoClient(base_url=base_url, entity=destination.entity, api_key=api_key, licence=licence,
                        wire=destination.wire)
