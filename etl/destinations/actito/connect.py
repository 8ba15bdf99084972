"""From a configured destination to a connected client.

A destination with ``environment = "sandbox"`` (and no ``base_url``) talks to the project's own
Actito sandbox (``etl.testing``, loaded only then), started in this process on first use and stopped
at exit, so the demo and a laptop trial need no licence; with ``base_url`` it talks to a sandbox (or
proxy) running elsewhere. The in-process sandbox keeps its state in ``<state_dir>/sandbox/state.json``,
so what one ``audience-sync run`` imported is still there for the next one, as it would be in Actito.
"""

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
    """Where the in-process sandbox of this configuration keeps its state between processes."""
    return config.state_dir / "sandbox" / "state.json"


def in_process_sandbox_url(config: Config) -> str:
    """The URL of this process's Actito sandbox for the configuration, started on first use (from its state file)."""
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
    # the licence's limits and token, shared with every other run of this process (and its slots
    # with every process of the ledger): Actito counts per licence, not per client
    licence = licence_for(
        config, service="Actito", url=ACTITO_ENVIRONMENTS.get(base_url, base_url), account=destination.entity,
        max_in_flight=MAX_IN_FLIGHT, calls_per_minute=CALLS_PER_MINUTE, connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )
    return ActitoClient(base_url=base_url, entity=destination.entity, api_key=api_key, licence=licence)
