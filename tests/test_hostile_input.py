"""Input a user can type (or a Secret can carry) that used to end in an internal error or worse.

Each case is the attack as found: a TOML file nested hundreds of levels deep (also sent to a running
scheduler by SIGHUP), a parameter too large for any driver, an environment secret ending in a
newline (a Kubernetes Secret made from a file), an activation name ending in a newline, and
``--debug``, which must show the traceback of an internal error during a run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Shown
from etl.runtime.scheduler import Scheduler
from jobs import job_for

DEMO_ACTIVATION = """
[settings]
state_dir = "state"

[warehouses.demo]
url = "sqlite:///demo.db"
demo = true

[destinations.d]
environment = "sandbox"
entity = "demo"
files = { type = "local", path = "outbox" }

[activations.vip]
sql = "sql/vip_customers.sql"
destination = "d"
identifier = "profileId"
params = { min_value = 500 }
schedule = { every = "6h", timezone = "Europe/Brussels" }
"""


def _deep(levels: int) -> str:
    return f"[settings]\nnested = {'[' * levels}{']' * levels}\n"


def test_a_configuration_nested_hundreds_deep_is_a_configuration_error(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    shown = cli(project(_deep(900)), "validate")
    assert shown.code == 2, shown.said
    assert "nested hundreds of levels deep" in shown.said
    assert "internal error" not in shown.said and "Traceback" not in shown.said


def test_sighup_with_a_file_nested_hundreds_deep_keeps_the_schedule(
    project: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = project(DEMO_ACTIVATION)
    scheduler = Scheduler(config, job_for)
    scheduler.start(paused=True)
    try:
        config.write_text(_deep(5000))
        with caplog.at_level(logging.ERROR, logger="audience_sync"):
            assert scheduler.reload() is False
        assert [job.id for job in scheduler.jobs] and "reload refused" in caplog.text
    finally:
        scheduler.close()


def test_a_parameter_too_large_for_a_64_bit_integer_is_a_configuration_error(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    config = project(DEMO_ACTIVATION.replace("min_value = 500", "min_value = 99999999999999999999"))
    shown = cli(config, "validate")
    assert shown.code == 2, shown.said
    assert "[activations.vip] params: min_value = 99999999999999999999 does not fit a 64-bit integer" in shown.said


def test_an_environment_secret_ending_in_a_newline_is_used_without_it(
    project: Callable[[str], Path], cli: Callable[..., Shown], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = project(DEMO_ACTIVATION.replace('entity = "demo"', 'entity = "demo"\napi_key = "${ACTITO_API_KEY}"'))
    monkeypatch.setenv("ACTITO_API_KEY", "sandbox-demo-key\n")  # as `kubectl create secret --from-file` leaves it
    shown = cli(config, "actito", "check", "d")
    assert shown.code == 0, shown.said
    assert "illegal newline" not in shown.said


def test_an_activation_name_ending_in_a_newline_is_refused(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    shown = cli(project(DEMO_ACTIVATION.replace("[activations.vip]", '[activations."vip\\n"]')), "validate")
    assert shown.code == 2, shown.said
    assert "names use letters" in shown.said


def test_debug_shows_the_traceback_of_an_internal_error_during_a_run(
    project: Callable[[str], Path], tmp_path: Path
) -> None:
    config = project(DEMO_ACTIVATION)
    # a bug planted in this process only: the cleaner raises something no layer turns into a user error
    plant = ("import etl.transform.audience as t, etl.cli as c, sys\n"
             "def broken(self, batch): raise ZeroDivisionError('planted')\n"
             "t.AudienceCleaner.clean = broken\n"
             "sys.exit(c.main(sys.argv[1:]))\n")
    run = [sys.executable, "-c", plant, "--config", str(config)]
    plain = subprocess.run([*run, "run", "vip"], capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*run, "--debug", "run", "vip"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == debug.returncode == 1
    assert "internal error (ZeroDivisionError: planted)" in plain.stdout + plain.stderr
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and "ZeroDivisionError: planted" in debug.stderr


@pytest.mark.parametrize(("url", "refused"), [
    ("http://actito-proxy.example.com", True),
    ("http://10.1.2.3:8080", True),
    ("ftp://api.example.com", True),
    ("http://127.0.0.1:8080", False),  # a sandbox or proxy on this machine
    ("http://[::1]:8080", False),
    ("https://api.example.com", False),
])
def test_an_api_endpoint_in_plain_http_to_another_host_is_refused(
    project: Callable[[str], Path], cli: Callable[..., Shown], url: str, refused: bool
) -> None:
    config = project(DEMO_ACTIVATION.replace('environment = "sandbox"', f'base_url = "{url}"'))
    shown = cli(config, "validate")
    assert (shown.code == 2) is refused, shown.said
    if refused:
        assert "[destinations.d]" in shown.said and "https://" in shown.said


def test_plain_http_to_another_host_is_accepted_when_asked_for(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    config = project(DEMO_ACTIVATION.replace('environment = "sandbox"',
                                             'base_url = "http://proxy.internal:8080"\nallow_insecure_http = true'))
    assert cli(config, "validate").code == 0


def test_no_state_file_is_written_through_a_symbolic_link(tmp_path: Path) -> None:
    """A link planted in the state directory (``activations`` -> elsewhere, or at a snapshot's own name)
    must not have a run write people's identifiers wherever it points."""
    from test_kill_recovery import Project

    (tmp_path / "p" / "state").mkdir(parents=True)
    project = Project(tmp_path / "p")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "p" / "state" / "activations").symlink_to(elsewhere)
    code, output = project.run("members")
    assert code == 1 and "is a symbolic link" in output, output
    assert list(elsewhere.iterdir()) == []

    (tmp_path / "p" / "state" / "activations").unlink()
    assert project.run("members")[0] == 0
    planted = tmp_path / "p" / "state" / "activations" / "members" / "members.parquet"
    target = elsewhere / "stolen.parquet"
    target.write_bytes(b"")
    planted.unlink()
    planted.symlink_to(target)
    code, output = project.run("members")
    assert code == 1 and "the members snapshot is a symbolic link" in output, output
    assert target.read_bytes() == b""  # neither read nor written through
    planted.unlink()
    assert project.run("members")[0] == 0

    planted.write_bytes(b"not parquet")  # a damaged snapshot: said as such, not an internal error
    code, output = project.run("members")
    assert code == 1 and "the members snapshot cannot be read" in output and "internal error" not in output
