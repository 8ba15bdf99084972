"""A dbt model as an audience's query, end to end: a real dbt project (dbt-duckdb) is built once, then the
CLI reads the model from the project's manifest and delivers its rows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from etl.config import load_config
from etl.errors import ConfigError
from etl.extract import query_columns
from etl.ops.k8s import K8sOptions, configmap_manifest, cronjob_manifests

DBT = Path(sys.executable).parent / "dbt"
pytestmark = pytest.mark.skipif(not DBT.exists(), reason="dbt-duckdb is not installed (the test extra)")

CUSTOMERS = "email,spend\nann@example.com,500\nbob@example.com,20\ncid@example.com,900\nNOT-AN-EMAIL,300\n"


@pytest.fixture(scope="module")
def analytics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dbt project whose model vip_customers is built by `dbt build`, once for the module (dbt is slow)."""
    root = tmp_path_factory.mktemp("dbt") / "analytics"
    (root / "models").mkdir(parents=True)
    (root / "seeds").mkdir()
    (root / "dbt_project.yml").write_text('name: analytics\nversion: "1.0"\nprofile: analytics\n'
                                          'model-paths: ["models"]\nseed-paths: ["seeds"]\n')
    (root / "profiles.yml").write_text(f"analytics:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                                       f"      path: {root.parent / 'warehouse.duckdb'}\n")
    (root / "seeds" / "customers.csv").write_text(CUSTOMERS)
    (root / "models" / "vip_customers.sql").write_text(
        "select email from {{ ref('customers') }} where spend >= 100 order by email\n")
    (root / "models" / "small_spenders.sql").write_text(  # no relation: only its compiled code can be run
        "{{ config(materialized='ephemeral') }}\nselect email from {{ ref('customers') }} where spend < 100\n")
    env = {**os.environ, "DBT_PROFILES_DIR": str(root), "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "0"}
    done = subprocess.run([str(DBT), "build"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300)


def job(root: Path, analytics: Path, dbt: str = "") -> Path:
    """A configuration beside a copy of the dbt project (so a test may break it), the model's warehouse its
    duckdb file; ``dbt`` adds keys to the activation's dbt table."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(analytics, root / "analytics")  # copy2: the files keep their times, the manifest stays fresh
    config = root / "jobs" / "schedules.toml"
    config.parent.mkdir()
    config.write_text(textwrap.dedent(f'''\
        [settings]
        state_dir = "state"

        [warehouses.w]
        url = "duckdb:///{analytics.parent / 'warehouse.duckdb'}"

        [destinations.d]
        environment = "sandbox"
        entity = "demo"
        files = {{ type = "local", path = "outbox" }}

        [activations.vip]
        dbt = {{ project_dir = "../analytics", model = "vip_customers"{dbt} }}
        destination = "d"
        identifier = "email"
        '''))
    return config


def model_rows(analytics: Path) -> list[str]:
    with duckdb.connect(str(analytics.parent / "warehouse.duckdb"), read_only=True) as db:
        return sorted(row[0] for row in db.execute("SELECT email FROM vip_customers").fetchall())


def delivered(config: Path) -> tuple[list[str], dict[str, object]]:
    """The delivered file's identifiers (header left out) and the run's manifest."""
    lines = (config.parent / "outbox" / "vip.csv").read_text().splitlines()
    assert lines[0] == "emailAddress"
    (manifest,) = (config.parent / "state" / "runs" / "vip").glob("*/vip.manifest.json")
    return sorted(lines[1:]), json.loads(manifest.read_text())


def test_a_dbt_model_is_delivered_as_the_audience(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics)
    for checks in (["validate"], ["validate", "--connect"]):  # --connect: the relation planned on the warehouse
        checked = cli(config, *checks)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    done = cli(config, "run", "vip")
    assert done.returncode == 0, done.stdout + done.stderr
    identifiers, manifest = delivered(config)
    # the model's rows, less the one cleaning rejects
    assert identifiers == [row for row in model_rows(analytics) if "@" in row] == ["ann@example.com",
                                                                                   "cid@example.com"]
    assert manifest["dbt_model"] == "model.analytics.vip_customers"
    assert manifest["dbt_relation"] == '"warehouse"."main"."vip_customers"'
    text_run = 'SELECT * FROM "warehouse"."main"."vip_customers"'
    assert manifest["sql_sha256"] == hashlib.sha256(text_run.encode()).hexdigest()
    assert "sql_file" not in manifest


def test_compiled_runs_the_models_compiled_code(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics, ", compiled = true")
    done = cli(config, "run", "vip")
    assert done.returncode == 0, done.stdout + done.stderr
    identifiers, manifest = delivered(config)
    assert identifiers == ["ann@example.com", "cid@example.com"]
    nodes = json.loads((analytics / "target" / "manifest.json").read_text())["nodes"]
    compiled = nodes["model.analytics.vip_customers"]["compiled_code"]
    assert "customers" in compiled and "{{" not in compiled
    assert manifest["sql_sha256"] == hashlib.sha256(compiled.encode()).hexdigest()


def _refused(config: Path, *expected: str) -> str:
    """The command stops with the configuration's exit code (2), one clear message and no traceback."""
    done = cli(config, "run", "vip")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    return done.stderr


def test_a_missing_manifest_says_to_run_dbt(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics)
    shutil.rmtree(tmp_path / "analytics" / "target")
    _refused(config, "[activations.vip] dbt project_dir", "target/manifest.json",
             f"run `dbt compile` or `dbt run` in {tmp_path / 'analytics'}")


def test_an_unknown_model_lists_close_names(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics)
    config.write_text(config.read_text().replace('model = "vip_customers"', 'model = "vip_customer"'))
    _refused(config, "[activations.vip] dbt model", "no model 'vip_customer'", "did you mean 'vip_customers'?")


def test_a_model_changed_after_the_manifest_is_refused(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics)
    model = tmp_path / "analytics" / "models" / "vip_customers.sql"
    os.utime(model)  # edited now, after dbt wrote the manifest
    _refused(config, "[activations.vip] dbt model", f"{model} was changed after",
             "run `dbt run --select vip_customers`")


def test_compiled_without_compiled_code_is_refused(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics, ", compiled = true")
    manifest_file = tmp_path / "analytics" / "target" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    del manifest["nodes"]["model.analytics.vip_customers"]["compiled_code"]  # as `dbt parse` leaves it
    manifest_file.write_text(json.dumps(manifest))
    _refused(config, "[activations.vip] dbt compiled", "no compiled code for model.analytics.vip_customers",
             "`dbt compile --select vip_customers`")


def test_sql_and_dbt_together_are_refused(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path, analytics)
    config.write_text(config.read_text().replace("[activations.vip]\n", '[activations.vip]\nsql = "x.sql"\n'))
    with pytest.raises(ConfigError, match=r"give exactly one of sql = .* or dbt = "):
        load_config(config)


def test_a_pod_mounts_the_models_manifest(tmp_path: Path, analytics: Path) -> None:
    file = job(tmp_path, analytics)
    file.write_text(file.read_text() + 'schedule = { every = "6h" }\n')
    config = load_config(file)
    (cronjob,) = cronjob_manifests(config, ["vip"], K8sOptions(ephemeral_state=True))
    mounts = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "config", "mountPath": "/etc/analytics/target/manifest.json", "subPath": "manifest.json",
            "readOnly": True} in mounts
    data = configmap_manifest(config, K8sOptions())["data"]
    assert json.loads(data["manifest.json"])["nodes"]["model.analytics.vip_customers"]


def test_other_kinds_read_a_dbt_model_through_the_same_extract(tmp_path: Path, analytics: Path) -> None:
    file = job(tmp_path, analytics)
    file.write_text(file.read_text().replace('identifier = "email"\n', 'kind = "profiles"\ntable = "profiles"\n'
                                                                         'attributes = { email = "emailAddress" }\n'))
    config = load_config(file)
    assert config.query("vip").record["dbt_model"] == "model.analytics.vip_customers"
    assert query_columns(config, "vip") == ["email"]


def test_an_ephemeral_model_runs_only_as_compiled_code(tmp_path: Path, analytics: Path) -> None:
    config = job(tmp_path / "as relation", analytics)
    config.write_text(config.read_text().replace('"vip_customers"', '"small_spenders"'))
    _refused(config, "[activations.vip] dbt model", "model.analytics.small_spenders is ephemeral",
             "add compiled = true")
    config = job(tmp_path / "compiled", analytics, ", compiled = true")
    config.write_text(config.read_text().replace('"vip_customers"', '"small_spenders"'))
    done = cli(config, "run", "vip")
    assert done.returncode == 0, done.stdout + done.stderr
    assert delivered(config)[0] == ["bob@example.com"]


def test_validate_says_a_stale_manifest_with_the_configurations_other_problems(tmp_path: Path,
                                                                               analytics: Path) -> None:
    config = job(tmp_path, analytics)
    os.utime(tmp_path / "analytics" / "models" / "vip_customers.sql")
    config.write_text(config.read_text().replace('identifier = "email"', 'identifier = "email"\nmax_shrink = 2'))
    done = cli(config, "validate")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "2 problems" in done.stderr and "was changed after" in done.stderr and "max_shrink" in done.stderr


def test_a_manifest_too_large_for_a_configmap_is_said(tmp_path: Path, analytics: Path) -> None:
    config = load_config(job(tmp_path, analytics))
    manifest_file = tmp_path / "analytics" / "target" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["docs"] = {"padding": "x" * 1_100_000}  # a large project's manifest
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"--with-config: .* a ConfigMap holds at most 1,048,576"):
        configmap_manifest(config, K8sOptions())
