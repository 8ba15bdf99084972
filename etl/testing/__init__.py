"""Test doubles: the Actito sandbox, the OpenField sandbox and the demo warehouse, so the tests,
benchmarks and README demo run with no licence and no database server. A production run never loads
them: the runtime reaches this package only through ``etl.runtime.doubles``, the one module
``lint-imports`` (pyproject.toml) lets import it."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from etl.testing.actito.server import ActitoSandbox
    from etl.testing.openfield_sandbox import OpenFieldSandbox


class _Sandbox(Protocol):
    def start(self) -> str: ...
    def stop(self) -> None: ...


_SandboxT = TypeVar("_SandboxT", bound=_Sandbox)

#: one sandbox per state file (a process normally has one configuration, hence one sandbox per kind)
_sandboxes: dict[Path, _Sandbox] = {}
_sandbox_lock = threading.Lock()


def _started_once(state_file: Path, create: Callable[[Path], _SandboxT]) -> _SandboxT:
    """This process's sandbox for ``state_file``: created and started on first use, stopped at exit."""
    state_file = state_file.absolute()
    with _sandbox_lock:
        sandbox = _sandboxes.get(state_file)
        if sandbox is None:
            sandbox = create(state_file)
            sandbox.start()
            atexit.register(sandbox.stop)
            _sandboxes[state_file] = sandbox
        return cast(_SandboxT, sandbox)


def in_process_actito_sandbox(state_file: Path) -> ActitoSandbox:
    """This process's Actito sandbox (default fixture) keeping its state in ``state_file``, started on first use."""
    from etl.testing.actito.server import ActitoSandbox

    return _started_once(state_file, lambda path: ActitoSandbox(state_file=path))


def in_process_openfield_sandbox(state_file: Path, **options: Any) -> OpenFieldSandbox:
    """This process's OpenField sandbox keeping its profiles in ``state_file``, started on first use;
    ``options`` (tenant, application, credentials, routes) are those of its first caller."""
    from etl.testing.openfield_sandbox import OpenFieldSandbox

    return _started_once(state_file, lambda path: OpenFieldSandbox(state_file=path, **options))


def ensure_demo_warehouse(url: str) -> bool:
    from etl.testing.demo import ensure_demo_warehouse as ensure

    return ensure(url)


def serve_actito_sandbox(options: list[str]) -> int:
    """The ``sandbox`` command: an Actito sandbox served until interrupted."""
    from etl.testing.actito.server import main

    return main(options)
