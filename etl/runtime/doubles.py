"""The runtime's one door into the test doubles (etl.testing).

A production configuration never needs a double, so none is loaded unless it asks for one:
``environment = "sandbox"`` (an Actito or OpenField sandbox started in this process), ``demo = true``
(the demo warehouse), or the ``sandbox`` command. ``lint-imports`` lets this module, and no other
module of the runtime, import etl.testing; the import waits inside each function until it is needed.
"""

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
