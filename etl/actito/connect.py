"""From a configured destination to a connected client.

A destination with ``environment = "sandbox"`` (and no ``base_url``) talks to the project's own
Actito sandbox, started in this process on first use and stopped at exit, so the demo and a
laptop trial need no licence; with ``base_url`` it talks to a sandbox (or proxy) running elsewhere.
"""

from __future__ import annotations

import atexit
import threading

from etl.actito.client import ActitoClient
from etl.actito.sandbox import ActitoSandbox
from etl.config import ACTITO_ENVIRONMENTS, Config
from etl.errors import ConfigError

#: the API key of the sandbox's default fixture; a demo value, not a secret
SANDBOX_DEMO_KEY = "sandbox-demo-key"

_sandbox: ActitoSandbox | None = None
_sandbox_lock = threading.Lock()


def in_process_sandbox() -> ActitoSandbox:
    global _sandbox
    with _sandbox_lock:
        if _sandbox is None:
            _sandbox = ActitoSandbox()
            _sandbox.start()
            atexit.register(_sandbox.stop)
        return _sandbox


def open_client(config: Config, destination_name: str) -> ActitoClient:
    destination = config.destinations[destination_name]
    api_key = destination.api_key.get_secret_value() if destination.api_key else None
    if destination.base_url:
        base_url = destination.base_url
    elif destination.environment == "sandbox":
        base_url = in_process_sandbox().url
        api_key = api_key or SANDBOX_DEMO_KEY
    else:
        base_url = ACTITO_ENVIRONMENTS[destination.environment or ""]
    if not api_key:
        raise ConfigError(
            [(f"[destinations.{destination_name}] api_key", "needed to call Actito's API: \"${ACTITO_API_KEY}\"")],
            source=config.source,
        )
    return ActitoClient(base_url=base_url, entity=destination.entity, api_key=api_key)
