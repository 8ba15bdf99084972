"""`audience-sync preview NAME` of an import activation (profiles, subscriptions, interactions), through the
real CLI on a copy of the shipped demo: the columns as mapped, what would be sent, what would be refused and
why; and nothing sent, written or recorded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=300, cwd=config.parent, env={**os.environ, **(env or {})})


def preview_json(config: Path, name: str) -> dict[str, Any]:
    done = cli(config, "--log-format", "json", "preview", name)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def reason_counts(text: str) -> dict[str, int]:
    """The "refused, by reason:" block of a preview, reason -> rows."""
    block = text.split("refused, by reason:\n", 1)[1].split("\nfirst ", 1)[0].split("\nvalues dropped", 1)[0]
    counts = {}
    for line in block.splitlines():
        count, reason = line.split(None, 1)
        counts[re.sub(r"  \[first: .*\]$", "", reason)] = int(count.replace(",", ""))
    return counts


IMPORTS = ("qualifio_profiles", "didomi_consents", "qualifio_participations", "openfield_profiles")


@pytest.fixture(scope="module")
def previewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """One copy of the shipped demo, every import activation of it previewed once."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "sql", root / "sql")
    shutil.copy(REPO / "schedules.toml", root / "schedules.toml")
    return root / "schedules.toml", {name: cli(root / "schedules.toml", "preview", name) for name in IMPORTS}


@pytest.mark.parametrize(("name", "mapped", "reason"), [
    ("qualifio_profiles", "gender → sex", "email: '…' is not an accepted e-mail address"),
    ("didomi_consents", "organization_user_id → emailAddress", "duplicate emailAddress: an earlier row has it"),
    ("qualifio_participations", "participationId → participationId",
     "email: '…' is not an accepted e-mail address: more than one @"),
    ("openfield_profiles", "civility → Civility", "email: '…' is not an accepted e-mail address"),
])
def test_preview_of_an_import_shows_its_mapped_columns_and_why_rows_would_be_refused(
    previewed: tuple[Path, dict[str, subprocess.CompletedProcess[str]]], name: str, mapped: str, reason: str
) -> None:
    done = previewed[1][name]
    assert done.returncode == 0, done.stderr
    head = done.stdout.splitlines()[0]
    sent, read, refused = (int(n.replace(",", "")) for n in re.findall(
        r"([\d,]+) rows would be sent \(([\d,]+) read, ([\d,]+) refused", head)[0])
    left_out = re.search(r", ([\d,]+) incomplete participations left out", head)
    # a first preview: nothing was sent before, every kept row is new (or left out by incomplete_participations)
    assert read > 0 and sent + refused + (int(left_out[1].replace(",", "")) if left_out else 0) == read
    columns = done.stdout.split("mapped columns:\n", 1)[1]
    assert any(re.sub(r"\s+", " ", line).strip().startswith(mapped) for line in columns.splitlines()), done.stdout
    counts = reason_counts(done.stdout)
    assert sum(counts.values()) == refused  # every refused row is counted under one reason
    assert any(r.startswith(reason) for r in counts), counts
    assert list(counts.values()) == sorted(counts.values(), reverse=True)  # most frequent first
    assert re.search(r"^first \d rows as mapped:$", done.stdout, re.M)
    if name == "qualifio_profiles":  # a bad optional value is dropped, not its row: said apart
        dropped = done.stdout.split("values dropped (the row is sent without them), by reason:\n", 1)[1]
        assert "gender: '…' is not a sex (M or F)" in dropped.split("\nfirst ", 1)[0]


def test_previews_send_nothing_and_record_no_run(
    previewed: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]
) -> None:
    state = previewed[0].parent / "var" / "state"
    assert all(done.returncode == 0 for done in previewed[1].values())
    assert not (state / "sandbox").exists() and not (state / "openfield-sandbox").exists()  # nothing sent
    assert not (state / "runs").exists() and not (state / "activations").exists()
    assert "no runs recorded yet" in cli(previewed[0], "history").stdout


def test_a_bad_value_is_counted_under_its_reason(demo_project: Path) -> None:
    before = preview_json(demo_project, "didomi_consents")
    sql = demo_project.parent / "sql" / "didomi_consents.sql"
    sql.write_text(sql.read_text().replace(
        "FROM didomi_consents\n",
        "FROM didomi_consents\nUNION ALL SELECT 'zz.preview@example.com', 'perhaps', 'true', 'false', 'fr', NULL, NULL\n"
        "UNION ALL SELECT 'zz..preview@example.com', 'true', 'true', 'true', 'fr', NULL, NULL\n"))
    after = preview_json(demo_project, "didomi_consents")
    assert after["extracted"] == before["extracted"] + 2 and after["rejected"] == before["rejected"] + 1
    assert after["to_send"] == before["to_send"] + 1  # sent without its invalid consent
    grew = {reason: count - before["rejected_by_reason"].get(reason, 0)
            for reason, count in after["rejected_by_reason"].items()
            if count != before["rejected_by_reason"].get(reason, 0)}
    assert len(grew) == 1 and set(grew.values()) == {1}, grew
    consent = next(reason for reason in after["dropped_by_reason"] if reason.startswith("consent_newsletter: '…'"))
    assert after["dropped_by_reason"][consent] == before["dropped_by_reason"].get(consent, 0) + 1
    assert after["examples"][consent] == "perhaps"
    assert "organization_user_id: '…' is not an accepted e-mail address: two dots in a row" in grew
    assert {"source": "consent_newsletter", "target": "Newsletter", "rule": "yes_no", "role": "subscription"} \
        in after["columns"]
    assert after["sample"] and set(after["sample"][0]) >= {"emailAddress", "subscription_Newsletter"}


def test_a_preview_after_a_run_compares_and_moves_nothing(demo_project: Path) -> None:
    state = demo_project.parent / "var" / "state"
    assert cli(demo_project, "run", "qualifio_profiles").returncode == 0
    sandbox = (state / "sandbox" / "state.json").read_bytes()
    snapshot = (state / "activations" / "qualifio_profiles" / "rows.parquet").read_bytes()
    runs = list((state / "runs" / "qualifio_profiles").iterdir())
    again = cli(demo_project, "preview", "qualifio_profiles")
    assert again.returncode == 0, again.stderr
    assert re.search(r": 0 rows would be sent .*; 2,334 unchanged since the last run\)", again.stdout), again.stdout
    assert (state / "sandbox" / "state.json").read_bytes() == sandbox  # no import, no profile changed
    assert (state / "activations" / "qualifio_profiles" / "rows.parquet").read_bytes() == snapshot
    assert list((state / "runs" / "qualifio_profiles").iterdir()) == runs
    runs_recorded = cli(demo_project, "--log-format", "json", "history").stdout.splitlines()
    assert len(runs_recorded) == 1  # the run's row, none for the preview


def test_a_destination_preview_cannot_reach_is_named_as_needed(demo_project: Path) -> None:
    text = demo_project.read_text().replace('environment = "sandbox"        # ENV-0',
                                            'base_url = "http://127.0.0.1:1"\napi_key = "${PREVIEW_KEY}"  # ENV-0')
    demo_project.write_text(text)
    done = cli(demo_project, "preview", "qualifio_profiles", env={"PREVIEW_KEY": "preview-test-key"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = done.stderr.splitlines()[-1]
    assert said.startswith("audience-sync: qualifio_profiles: the destination could not be reached, and a preview "
                           "needs it to map the rows"), said
    assert "127.0.0.1:1" in said and "check the network" in said


def test_a_negative_limit_is_refused_plainly(demo_project: Path) -> None:
    done = cli(demo_project, "preview", "qualifio_profiles", "--limit", "-1")
    assert done.returncode == 2 and "'-1' is not a count (0 or more)" in done.stderr
