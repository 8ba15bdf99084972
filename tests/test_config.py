"""Configuration: every problem reported at once, with its location; secrets only from env or files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from etl.config import load_config
from etl.errors import ConfigError

VALID = """
[warehouses.main]
url = "sqlite:///wh.db"

[destinations.d]
environment = "ENV-0"
entity = "acme"
files = { type = "local", path = "out" }

[activations.a]
sql = "sql/newsletter_engaged.sql"
destination = "d"
identifier = "email"
params = { min_orders = 2 }
schedule = { cron = "30 6 * * *", timezone = "Europe/Brussels" }
"""

BROKEN = """
[settings]
chunk_sise = 1000

[warehouses.main]
url = "postgresql+psycopg://etl:${DWH_PASSWORD_UNSET_X}@localhost/dwh"

[destinations.d]
environment = "ENV-9"
entity = "acme"
api_key = "literal-key-123"
files = { type = "sftp", host = "h", username = "u" }

[activations.a]
sql = "sql/missing.sql"
destination = "nowhere"
identifier = "email"
schedule = { cron = "61 6 * * *", timezone = "Europe/Bruxelles" }

[activations.b]
sql = "sql/newsletter_engaged.sql"
destination = "d"
identifier = "email"

[activations.c]
sql = "sql/vip_customers.sql"
destination = "d"
identifier = "phone"
params = { min_value = 1 }
"""


def test_the_shipped_configuration_is_valid(demo_project: Path) -> None:
    config = load_config(demo_project)
    assert set(config.activations) == {
        "newsletter_engaged", "vip_customers", "lapsed_buyers", "vip_scored", "vip_everywhere",
        "qualifio_profiles", "qualifio_participations", "didomi_consents", "vip_members", "openfield_profiles",
    }


def test_a_valid_configuration_loads_with_paths_relative_to_the_file(project) -> None:
    path = project(VALID)
    config = load_config(path)
    assert config.path(config.activations["a"].sql) == path.parent / "sql/newsletter_engaged.sql"
    assert config.file_name_pattern("a") == "a.csv"


def test_every_problem_is_listed_with_its_location(project) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(project(BROKEN), environ={})
    message = caught.value.message()
    expected = [
        ("settings.chunk_sise", "unknown key"),
        ("[warehouses.main] url", "DWH_PASSWORD_UNSET_X is not set"),
        ("[destinations.d] environment", "ENV-9"),
        ("[destinations.d] api_key", "a secret cannot be written in the file"),
        ("[destinations.d] files", "SFTP needs password"),
        ("[activations.a] sql", "no such file"),
        ("[activations.a] destination", "no [destinations.nowhere]"),
        ("[activations.a] schedule.timezone", "Europe/Bruxelles"),
        ("[activations.c] identifier", "'email' or 'profileId'"),
        ("[activations.b] params", ":min_orders which is not declared"),
    ]
    for where, what in expected:
        assert any(where in line and what in line for line in message.splitlines()), (where, what, message)
    assert caught.value.exit_code == 2


def test_a_bad_cron_expression_is_named(project) -> None:
    path = project(VALID.replace('"30 6 * * *"', '"61 6 * * *"'))
    with pytest.raises(ConfigError, match=r"\[activations.a\] schedule.cron: '61 6 \* \* \*' is not a valid cron"):
        load_config(path)


def test_secrets_come_from_the_environment_or_a_file(project, tmp_path: Path) -> None:
    secret_file = tmp_path / "sftp.secret"
    secret_file.write_text("s3cr3t-from-file\n")
    path = project(
        VALID.replace(
            'files = { type = "local", path = "out" }',
            f'api_key = "${{ACTITO_KEY}}"\nfiles = {{ type = "sftp", host = "h", username = "u", '
            f'password_file = "{secret_file}" }}',
        )
    )
    config = load_config(path, environ={"ACTITO_KEY": "key-from-env"})
    destination = config.destinations["d"]
    assert destination.api_key is not None and destination.api_key.get_secret_value() == "key-from-env"
    assert destination.files is not None and destination.files.password.get_secret_value() == "s3cr3t-from-file"
    assert "key-from-env" not in repr(config)


def test_env_var_file_convention_is_honoured(project, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-mounted-secret")
    path = project(VALID.replace('entity = "acme"', 'entity = "acme"\napi_key = "${ACTITO_KEY}"'))
    config = load_config(path, environ={"ACTITO_KEY_FILE": str(tmp_path / "key")})
    assert config.destinations["d"].api_key.get_secret_value() == "from-mounted-secret"


def test_literal_password_in_a_url_is_refused(project) -> None:
    path = project(VALID.replace("sqlite:///wh.db", "postgresql+psycopg://etl:hunter2@db/dwh"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "literal password" in caught.value.message()
    assert "hunter2" not in caught.value.message()


def test_two_activations_writing_the_same_file_are_refused(project) -> None:
    named = VALID + 'file = { name = "audience.csv" }\n'
    path = project(named + "\n[activations.b]" + named.split("[activations.a]")[1])
    with pytest.raises(ConfigError, match=r"\[activations.b\] file.name: same file name as \[activations.a\]"):
        load_config(path)


def test_path_traversal_in_a_file_name_is_refused(project) -> None:
    path = project(VALID + 'file = { name = "../../etc/cron.d/x.csv" }\n')
    with pytest.raises(ConfigError, match=r"\[activations.a\] file.name"):
        load_config(path)


def test_malformed_toml_names_the_line(project) -> None:
    path = project(VALID + "\n[activations.c\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line \d+"):
        load_config(path)


def test_validate_command_prints_all_problems_without_traceback(project) -> None:
    path = project(BROKEN)
    env = {k: v for k, v in os.environ.items() if k != "DWH_PASSWORD_UNSET_X"}
    done = subprocess.run(
        [sys.executable, "-m", "etl", "--config", str(path), "validate"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "10 problems in the configuration" in done.stderr or "problems in the configuration" in done.stderr
    assert "literal-key-123" not in done.stderr + done.stdout
    assert done.stderr.count("\n  - ") >= 10, done.stderr


def _config_scale_generator() -> Any:
    """The generator of bench/config_scale.py: the test checks the very configuration the benchmark times."""
    spec = importlib.util.spec_from_file_location("config_scale", Path(__file__).parent.parent / "bench" /
                                                  "config_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def test_a_thousand_activations_validate_and_plan_like_one(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from etl.runtime.triggers import _trigger, _upcoming, format_preview, next_runs

    path = _config_scale_generator()(tmp_path, 1000)
    environ = {"ACTITO_API_KEY": "k", "SFTP_PASSWORD": "p"}
    config = load_config(path, environ=environ)
    assert len(config.activations) == 1000
    assert {a.kind for a in config.activations.values()} == {"audience", "profiles", "subscriptions", "interactions"}
    now = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    planned = next_runs(config, 3, now)
    assert len(planned) == 1000
    for name in ("act_0000", "act_0001", "act_0507", "act_0999"):  # shared triggers plan what one trigger plans
        schedule = config.activations[name].schedule
        assert schedule is not None
        alone = [entry.at for entry in _upcoming(_trigger(name, schedule, str(path)), 3, now)]
        assert planned[name] == alone and str(planned[name][0].tzinfo) == schedule.timezone
    assert format_preview(config, 2, now).count("\nact_") == 1000

    # one SQL file shared by many activations: a parameter problem is still reported where it is
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("params = { min_value = 737, days = 67 }", "params = { min_value = 737 }")
                    .replace("params = { min_value = 142, days = 72 }",
                             "params = { min_value = 142, days = 72, extra = 1 }"), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=environ)
    assert raised.value.problems == [
        ("[activations.act_0637] params", "audience_37.sql uses :days which is not declared"),
    ]  # a declared but unused parameter is only a warning (tests/test_first_hour.py)
