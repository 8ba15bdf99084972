"""Requests that match Actito's documented contract, checked by the sandbox they talk to, over real sockets.

A compressed import file is named and typed for what it holds; a triggered ETL gets the data file and
nothing else; the parts of the wire Actito leaves open are settings of schedules.toml; `actito check`
covers every table an activation writes and names mandatory attributes no column feeds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from etl.destinations.actito.client import ActitoClient
from etl.testing.actito.server import ActitoSandbox
from etl.testing.actito.state import DEFAULT_FIXTURE
from servers import with_actito_sandbox

REPO = Path(__file__).resolve().parent.parent
KEY = "sandbox-demo-key"
E = "demo"
EXECUTIONS = f"/mass-imports/v5/entities/{E}/etl-executions"
TRIGGER = f"/mass-imports/v5/entities/{E}/etls/customers-upsert/trigger-execution"
GZIPPED = gzip.compress(b"emailAddress,firstName,subscription_Newsletter\nann@example.com,Ann,Y\n")


@pytest.fixture
def sandbox() -> Iterator[ActitoSandbox]:
    with ActitoSandbox(processing_seconds=0.05, fault_delay_seconds=0.3) as server:
        yield server


def configured(tmp_path: Path, sandbox: ActitoSandbox, extra: str = "") -> Path:
    """The shipped configuration, its Actito destination pointed at this test's sandbox, plus ``extra``."""
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    path = tmp_path / "schedules.toml"
    path.write_text(with_actito_sandbox((REPO / "schedules.toml").read_text(), sandbox.url) + extra)
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_ACTITO_KEY": KEY, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=config.parent)


def token(sandbox: ActitoSandbox) -> dict[str, str]:
    answer = requests.get(sandbox.url + "/auth/token", headers={"Authorization": KEY, "Accept": "application/json"},
                          timeout=5)
    return {"Authorization": f"Bearer {answer.json()['accessToken']}", "Accept": "application/json"}


def definition(compression: str) -> str:
    return json.dumps({"reference": f"old-{compression}", "target": {"type": "PROFILE_TABLE", "id": "customers"},
                       "mode": "CREATE_UPDATE", "keyColumn": "emailAddress",
                       "format": {"separator": ",", "encoding": "UTF-8", "compression": compression}})


@pytest.mark.parametrize(("compression", "suffix"), [("gzip", ".csv.gz"), ("zip", ".zip")])
def test_a_compressed_import_is_named_and_typed_for_its_content(
    tmp_path: Path, sandbox: ActitoSandbox, compression: str, suffix: str
) -> None:
    config = configured(tmp_path, sandbox)
    text = config.read_text().replace('preset = "qualifio"            #',
                                      f'compression = "{compression}"\npreset = "qualifio"            #', 1)
    config.write_text(text)
    done = cli(config, "run", "qualifio_profiles")
    assert done.returncode == 0, done.stderr
    [execution] = sandbox.executions(E)
    # the sandbox refuses a file part whose name or content type does not match the compression: it was accepted
    assert execution["status"] in ("SUCCESS", "PARTIAL_SUCCESS") and execution["counts"]["created"] > 1000
    assert execution["fileName"].startswith("qualifio_profiles.") and execution["fileName"].endswith(suffix)
    [on_disk] = (tmp_path / "var/state/runs/qualifio_profiles").glob(f"*/qualifio_profiles{suffix}")
    assert not list(on_disk.parent.glob("qualifio_profiles.csv"))  # no gzip bytes under a .csv name


def test_the_sandbox_refuses_the_old_shapes_as_actito_would(sandbox: ActitoSandbox) -> None:
    headers = token(sandbox)
    old_gzip = requests.post(sandbox.url + EXECUTIONS, headers=headers, timeout=5, files={
        "definition": (None, definition("GZIP"), "application/json"),
        "inputFile": ("profiles.csv", GZIPPED, "text/csv")})
    assert old_gzip.status_code == 400
    said = old_gzip.json()
    assert "compression is GZIP" in said["message"] and "'profiles.csv' does not end with .gz" in said["message"]
    assert [e["field"] for e in said["errors"]] == ["inputFile", "inputFile"]
    old_trigger = requests.post(sandbox.url + TRIGGER, headers=headers, timeout=5, files={
        "reference": (None, "run-1"), "inputFile": ("customers.csv.gz", GZIPPED, "application/gzip")})
    assert old_trigger.status_code == 400
    assert "unexpected multipart part 'reference' (expected: inputFile)" in old_trigger.json()["message"]
    untyped_definition = requests.post(sandbox.url + EXECUTIONS, headers=headers, timeout=5, files={
        "definition": (None, definition("NONE"), "text/plain"), "inputFile": ("p.csv", b"emailAddress\n", "text/csv")})
    assert untyped_definition.status_code == 400 and "application/json" in untyped_definition.json()["message"]
    zip_as_octets = requests.post(sandbox.url + EXECUTIONS, headers=headers, timeout=5, files={
        "definition": (None, definition("ZIP"), "application/json"),
        "inputFile": ("p.zip", b"PK", "application/octet-stream")})
    assert zip_as_octets.status_code == 400 and "'application/octet-stream' is not" in zip_as_octets.text
    assert sandbox.executions(E) == []  # nothing refused was created or counted
    right = requests.post(sandbox.url + TRIGGER, headers=headers, timeout=5,
                          files={"inputFile": ("customers.csv.gz", GZIPPED, "application/gzip")})
    assert right.status_code == 201, right.text


def test_a_triggered_import_whose_answer_is_lost_is_found_by_its_file_name(
    sandbox: ActitoSandbox, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv.gz"
    path.write_bytes(GZIPPED)
    sandbox.inject_faults("timeout", 1, "trigger-execution")  # created, then the answer never comes
    with ActitoClient(base_url=sandbox.url, entity=E, api_key=KEY, backoff_base=0.01, read_timeout=5) as client:
        started = client.start_import({}, path, etl_id="customers-upsert", upload_name="people.r1-1.csv.gz")
        assert client.wait_for(started.id, poll_initial=0.02).status == "SUCCESS"
    [execution] = sandbox.executions(E)  # not sent twice
    assert execution["id"] == started.id and execution["fileName"] == "people.r1-1.csv.gz"
    assert [p for m, p, s in sandbox.request_log if m == "POST"] == [TRIGGER]


def test_wire_guesses_are_settings_of_schedules_toml(tmp_path: Path, sandbox: ActitoSandbox) -> None:
    octets = configured(tmp_path, sandbox, '\n[destinations.actito_demo.wire]\n'
                                           'gzip_content_type = "application/octet-stream"\n')
    refused = cli(octets, "run", "qualifio_profiles")
    assert refused.returncode == 1
    assert "'application/octet-stream' is not application/gzip" in refused.stdout + refused.stderr
    octets.write_text(octets.read_text().replace('"application/octet-stream"', '"application/x-gzip"'))
    assert cli(octets, "run", "qualifio_profiles").returncode == 0
    broken = octets.read_text() + 'success_statuses = []\nbudget_message = "daily ("\n'
    octets.write_text(broken)
    invalid = cli(octets, "validate")
    assert invalid.returncode == 2
    said = invalid.stdout + invalid.stderr
    assert "wire.success_statuses" in said and "wire.budget_message" in said and "Traceback" not in said


def test_check_covers_membership_tables_and_unmapped_mandatory_attributes(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(DEFAULT_FIXTURE.read_text())
    customers = fixture["licences"][0]["entities"][0]["profileTables"][0]
    for attribute in customers["attributes"]:
        if attribute["name"] == "loyaltyTier":
            attribute["mandatory"] = True
    with ActitoSandbox(fixture) as sandbox:
        done = cli(configured(tmp_path, sandbox), "actito", "check", "actito_demo")
    assert done.returncode == 1, done.stderr
    assert "✓ vip_members: table 'Audience members', key memberKey" in done.stdout
    assert ("✗ qualifio_profiles: attribute 'loyaltyTier' of table 'Customers' is mandatory but no column feeds it"
            in done.stdout)
    assert "didomi_consents: attribute 'loyaltyTier'" not in done.stdout  # UPDATE_ONLY creates no profile


def test_a_licence_naming_the_reference_otherwise_still_finds_a_lost_import(tmp_path: Path) -> None:
    """With ``reference_field`` set as the licence names it, a run killed after its upload, before it
    recorded Actito's answer, is resolved by its successor through that field: one import, not two."""
    with ActitoSandbox(processing_seconds=0.05, reference_field="externalId") as renamed:
        config = configured(tmp_path, renamed, '\n[destinations.actito_demo.wire]\nreference_field = "externalId"\n')
        env = {**os.environ, "TEST_ACTITO_KEY": KEY, "PYTHONPATH": str(REPO), "AUDIENCE_SYNC_KILL_AT": "posted"}
        killed = subprocess.run([sys.executable, "-m", "etl", "--config", str(config), "run", "qualifio_profiles"],
                                capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert killed.returncode == -9, killed.stdout + killed.stderr
        done = cli(config, "--log-format", "json", "run", "qualifio_profiles")
        assert done.returncode == 0, done.stdout + done.stderr
        [execution] = renamed.executions(E)  # found again by our reference under its name, not sent twice
        assert execution["reference"].endswith("-1")  # ours (the run id and part), not one the client made up
        finished = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event"')][0]
        assert finished["rows_delivered"] == 0 and finished["unchanged"] > 2000  # the dead run's rows landed
