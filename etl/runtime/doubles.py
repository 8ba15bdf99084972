"""The runtime's one door into the test doubles (etl.testing), imported only when a configuration
asks for a sandbox or the demo warehouse; ``lint-imports`` allows no other runtime module to."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def actito_sandbox_url(state_file: Path) -> str:
    from etl import testing

    return testing.in_process_actito_sandbox(state_file).url


def openfield_sandbox_url(state_file: Path, **options: Any) -> str:
    from etl import testing

    return testing.in_process_openfield_sandbox(state_file, **options).url


def ensure_demo_warehouse(url: str) -> bool:
    from etl import testing

    return testing.ensure_demo_warehouse(url)


def serve_actito_sandbox(options: list[str]) -> int:
    from etl import testing

    return testing.serve_actito_sandbox(options)
