"""The audience activation end to end, through the real CLI: demo warehouse -> outbox."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from etl.runtime.leases import hold
from etl.config import load_config
from etl.runtime.ledger import StateStore
from etl.values.email import email_rejection_reasons


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl", "--config", str(config), *args],
        capture_output=True, text=True, timeout=300,
    )


def read_identifiers(path: Path) -> tuple[bytes, list[str]]:
    """Raw bytes of the CSV inside the delivered file, and its rows."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            (member,) = archive.namelist()
            raw = archive.read(member)
    return raw, raw.decode("utf-8").splitlines()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("demo")
    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "sql", root / "sql")  # the queries and the demo's transform module
    (root / "schedules.toml").write_bytes((repo / "schedules.toml").read_bytes())
    return root, cli(root / "schedules.toml", "run", "--all")


def test_the_demo_runs_every_activation_and_prints_a_summary(demo_run) -> None:
    root, done = demo_run
    assert done.returncode == 0, done.stderr
    names = ("newsletter_engaged", "vip_customers", "lapsed_buyers", "vip_scored", "vip_everywhere",
             "vip_everywhere@actito_demo", "vip_everywhere@actito_fr",  # a fan-out: its deliveries are runs too
             "qualifio_profiles", "qualifio_participations", "didomi_consents", "vip_members", "openfield_profiles")
    for name in names:
        assert name in done.stdout
    assert done.stdout.count("succeeded") == len(names)
    assert "Traceback" not in done.stderr


def test_delivered_files_hold_only_valid_unique_identifiers(demo_run) -> None:
    root, _ = demo_run
    outbox = root / "var" / "outbox"
    files = sorted(p for p in outbox.iterdir() if not p.name.endswith(".json"))
    names = {p.name for p in files}
    assert {"newsletter_engaged.csv.gz", "vip_customers.csv"} <= names
    assert any(n.startswith("lapsed_buyers_2") and n.endswith(".zip") for n in names), names
    for path in files:
        raw, lines = read_identifiers(path)
        assert not raw.startswith(b"\xef\xbb\xbf"), path
        header, values = lines[0].strip('"'), [v.strip('"') for v in lines[1:]]
        assert len(values) > 100, path
        assert len(set(values)) == len(values), f"duplicates in {path}"
        if header == "emailAddress":
            reasons = email_rejection_reasons(pa.array(values))
            assert reasons.null_count == len(values), f"invalid e-mails in {path}"
            assert all(v == v.strip().lower() for v in values)
        else:
            assert header == "profileId"
            assert all(v.isdigit() and int(v) > 0 for v in values)
        manifest = json.loads(next(outbox.glob(path.name.split(".")[0] + "*.manifest.json")).read_text())
        assert manifest["rows"] == len(values)
        assert manifest["files"][0]["name"] == path.name


def test_every_dropped_row_is_in_the_reject_file_with_a_reason(demo_run) -> None:
    root, _ = demo_run
    store = StateStore.in_directory(root / "var" / "state")
    record = store.runs("newsletter_engaged", limit=1)[0]
    store.close()
    with open(record.details["rejects_file"], newline="", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert len(rejects) == record.rows_rejected + record.rows_duplicate
    assert record.rows_extracted == record.rows_delivered + record.rows_rejected + record.rows_duplicate
    reasons = {row["reason"] for row in rejects}
    assert "duplicate" in reasons and "missing" in reasons
    assert all(row["row"].isdigit() for row in rejects)


def test_history_lists_the_runs(demo_run) -> None:
    root, _ = demo_run
    done = cli(root / "schedules.toml", "history")
    assert done.returncode == 0
    assert done.stdout.count("succeeded") == 12  # one run per activation of the demo, and vip_everywhere's deliveries


def test_setup_sheet_names_file_key_and_steps(demo_run) -> None:
    root, _ = demo_run
    done = cli(root / "schedules.toml", "setup-sheet", "vip_customers")
    assert done.returncode == 0, done.stderr
    assert "vip_customers.csv" in done.stdout
    assert "profileId" in done.stdout and "Use reference" in done.stdout
    assert "semicolon" in done.stdout


def test_preview_shows_counts_and_first_identifiers(demo_project: Path) -> None:
    done = cli(demo_project, "preview", "newsletter_engaged", "--limit", "3")
    assert done.returncode == 0, done.stderr
    first, *sample = done.stdout.split("not kept, by reason:")[0].strip().splitlines()
    assert "emailAddress values" in first and "rejected" in first
    assert len(sample) == 3 and all("@" in line for line in sample)
    assert not (demo_project.parent / "var" / "outbox").exists()


def test_dry_run_writes_locally_and_delivers_nothing(demo_project: Path) -> None:
    done = cli(demo_project, "run", "--dry-run", "vip_customers")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout
    assert not (demo_project.parent / "var" / "outbox").exists()
    assert list((demo_project.parent / "var" / "state" / "runs" / "vip_customers").glob("*/vip_customers.csv"))


def test_a_failing_query_fails_the_run_and_keeps_the_previous_file(demo_project: Path) -> None:
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    delivered = demo_project.parent / "var" / "outbox" / "vip_customers.csv"
    before = delivered.read_bytes()
    sql = demo_project.parent / "sql" / "vip_customers.sql"
    sql.write_text(sql.read_text().replace("FROM customers", "FROM customerz"))
    done = cli(demo_project, "run", "vip_customers")
    assert done.returncode == 1
    assert "customerz" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert delivered.read_bytes() == before
    store = StateStore.in_directory(demo_project.parent / "var" / "state")
    assert store.runs("vip_customers", limit=1)[0].status == "failed"
    store.close()


def test_a_locked_activation_is_skipped_with_exit_code_3(demo_project: Path) -> None:
    config = load_config(demo_project)
    store = StateStore.in_directory(config.state_dir)
    with hold(store, "vip_customers", "other-run", timedelta(minutes=5)):
        done = cli(demo_project, "run", "vip_customers")
    store.close()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "already running" in done.stdout + done.stderr


def test_an_unknown_activation_is_a_configuration_error(demo_project: Path) -> None:
    done = cli(demo_project, "run", "no_such_audience")
    assert done.returncode == 2
    assert "no_such_audience" in done.stderr and "known:" in done.stderr


def test_json_log_format_prints_one_result_object_per_activation(demo_project: Path) -> None:
    done = cli(demo_project, "--log-format", "json", "run", "vip_customers")
    assert done.returncode == 0, done.stderr
    (line,) = [l for l in done.stdout.splitlines() if l.strip()]
    result = json.loads(line)
    assert result["activation"] == "vip_customers" and result["status"] == "succeeded"
    assert result["rows_delivered"] > 0


def test_an_audience_is_delivered_over_sftp_with_the_password_from_the_environment(
    demo_project: Path, tmp_path: Path
) -> None:
    import os

    from servers import PASSWORD, SftpServer

    root = tmp_path / "sftp-root"
    (root / "in").mkdir(parents=True)
    with SftpServer(root) as server:
        known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
        config = demo_project.read_text().replace(
            '[destinations.actito_demo.files]\ntype = "local"\npath = "var/outbox"',
            f'[destinations.actito_demo.files]\ntype = "sftp"\nhost = "127.0.0.1"\nport = {server.port}\n'
            f'username = "actito"\npassword = "${{TEST_SFTP_PASSWORD}}"\nknown_hosts = "{known_hosts}"\n'
            'remote_dir = "/in"',
        )
        demo_project.write_text(config)
        done = subprocess.run(
            [sys.executable, "-m", "etl", "--config", str(demo_project), "run", "vip_customers"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "TEST_SFTP_PASSWORD": PASSWORD},
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (root / "in").iterdir()) == ["vip_customers.csv", "vip_customers.manifest.json"]
    assert (root / "in" / "vip_customers.csv").read_text().startswith("profileId\n")
    assert f"sftp://actito@127.0.0.1:{server.port}/in/vip_customers.csv" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_show_prints_a_run_in_full_and_history_tracks_the_audience_size(demo_project: Path) -> None:
    import sqlite3

    assert cli(demo_project, "run", "vip_customers").returncode == 0
    with sqlite3.connect(demo_project.parent / "var" / "demo" / "warehouse.db") as db:
        db.execute("UPDATE customers SET lifetime_value = 0 WHERE customer_id IN "
                   "(SELECT customer_id FROM customers WHERE lifetime_value >= 500 "
                   "AND actito_profile_id IS NOT NULL LIMIT 25)")
    assert cli(demo_project, "run", "vip_customers").returncode == 0
    sizes = cli(demo_project, "history", "vip_customers", "--sizes")
    assert "-25" in sizes.stdout, sizes.stdout
    latest = json.loads(cli(demo_project, "history", "--limit", "1", "--log-format", "json").stdout)
    shown = cli(demo_project, "show", latest["run_id"])
    assert shown.returncode == 0, shown.stderr
    for expected in ("status     succeeded", "steps      extract", "delivered  file://", "rejects", "missing"):
        assert expected in shown.stdout, (expected, shown.stdout)
    missing = cli(demo_project, "show", "no-such-run")
    assert missing.returncode == 1 and "no run 'no-such-run' in the ledger" in missing.stderr
