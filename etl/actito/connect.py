"""From a configured destination to a connected client.

A destination with ``environment = "sandbox"`` (and no ``base_url``) talks to the project's own
Actito sandbox, started in this process on first use and stopped at exit, so the demo and a
laptop trial need no licence; with ``base_url`` it talks to a sandbox (or proxy) running elsewhere.
The in-process sandbox keeps its state in ``<state_dir>/sandbox/state.json``, so what one
``audience-sync run`` imported is still there for the next one, as it would be in Actito.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, cast

from etl.actito.client import CALLS_PER_MINUTE, CONNECT_TIMEOUT, MAX_IN_FLIGHT, READ_TIMEOUT, ActitoClient
from etl.actito.sandbox import ActitoSandbox
from etl.config import ACTITO_ENVIRONMENTS, Config, Destination
from etl.errors import ConfigError
from etl.licence import licence_for

#: the API key of the sandbox's default fixture; a demo value, not a secret
SANDBOX_DEMO_KEY = "sandbox-demo-key"

class _Sandbox(Protocol):
    def start(self) -> str: ...
    def stop(self) -> None: ...


_SandboxT = TypeVar("_SandboxT", bound=_Sandbox)

#: one sandbox per state file (a process normally has one configuration, hence one sandbox per kind)
_sandboxes: dict[Path, _Sandbox] = {}
_sandbox_lock = threading.Lock()


def sandbox_state_file(config: Config) -> Path:
    """Where the in-process sandbox of this configuration keeps its state between processes."""
    return config.state_dir / "sandbox" / "state.json"


def started_once(state_file: Path, create: Callable[[Path], _SandboxT]) -> _SandboxT:
    """This process's sandbox for ``state_file``: created and started on first use, stopped at exit.
    Shared by the Actito and OpenField sandboxes (each has its own state file)."""
    state_file = state_file.absolute()
    with _sandbox_lock:
        sandbox = _sandboxes.get(state_file)
        if sandbox is None:
            sandbox = create(state_file)
            sandbox.start()
            atexit.register(sandbox.stop)
            _sandboxes[state_file] = sandbox
        return cast(_SandboxT, sandbox)


def in_process_sandbox(config: Config) -> ActitoSandbox:
    """This process's Actito sandbox for the configuration, started on first use (from its state file)."""
    return started_once(sandbox_state_file(config), lambda state_file: ActitoSandbox(state_file=state_file))


def open_client(config: Config, destination_name: str) -> ActitoClient:
    destination = config.destination_of(destination_name, Destination)
    api_key = destination.api_key.get_secret_value() if destination.api_key else None
    if destination.base_url:
        base_url = destination.base_url
    elif destination.environment == "sandbox":
        base_url = in_process_sandbox(config).url
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
