"""The static HTML report: structure, escaping, the audience chart, an empty ledger.

The report is written as well-formed markup, so the tests read it back with an XML parser and look
at elements rather than at substrings.
"""

from __future__ import annotations

import re
import stat
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from etl.config import AudienceActivation, Config, Destination, ProfilesActivation, Schedule, Warehouse
from etl.ops.report import write_report
from etl.runtime.ledger import StateStore

EVIL = '<script>alert("x")</script>'
SVG = "{http://www.w3.org/2000/svg}"


def make_config(tmp_path: Path, **activations: Any) -> Config:
    return Config(
        warehouses={"dwh": Warehouse(url=SecretStr("sqlite:///wh.db"))},
        destinations={"actito": Destination(environment="sandbox", entity="demo")},
        activations=activations or {
            "newsletter_engaged": AudienceActivation(
                sql=Path("sql/a.sql"), destination="actito", identifier="email",
                description="Newsletter subscribers with at least two orders",
                schedule=Schedule(cron="30 6 * * *", timezone="Europe/Brussels"),
            ),
            "qualifio_profiles": ProfilesActivation(
                kind="profiles", sql=Path("sql/b.sql"), destination="actito", table="customers",
                schedule=Schedule(every="1h"), enabled=False,
            ),
        },
        base_dir=tmp_path,
        source=str(tmp_path / "schedules.toml"),
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    ledger = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield ledger
    ledger.close()


def record(store: StateStore, activation: str, run_id: str, started: datetime, status: str, *,
           dry_run: bool = False, delivered: int | None = None, error: str | None = None) -> None:
    store.start_run(run_id, activation, "audience", dry_run=dry_run, started_at=started)
    values: dict[str, Any] = {"finished_at": started + timedelta(seconds=42), "duration_s": 42.0, "error": error}
    if delivered is not None:
        values.update(rows_extracted=delivered + 25, rows_rejected=25, rows_delivered=delivered)
    store.finish_run(run_id, status, **values)


def parse(path: Path) -> ET.Element:
    return ET.fromstring(path.read_text(encoding="utf-8").split("\n", 1)[1])  # after <!DOCTYPE html>


def section(root: ET.Element, name: str) -> ET.Element:
    for element in root.iter("section"):
        heading = element.find("h2")
        if heading is not None and heading.text == name:
            return element
    raise AssertionError(f"no section for {name}")


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def test_each_activation_has_its_facts_chart_and_last_runs(tmp_path: Path, store: StateStore) -> None:
    start = datetime(2025, 10, 1, 6, 30)
    for day in range(5):
        record(store, "newsletter_engaged", f"ok{day}", start + timedelta(days=day), "succeeded",
               delivered=1000 + 10 * day)
    record(store, "newsletter_engaged", "ko", start + timedelta(days=5), "failed", error="the warehouse is down")
    record(store, "newsletter_engaged", "dry", start + timedelta(days=6), "succeeded", dry_run=True, delivered=5)
    path = write_report(make_config(tmp_path), store, tmp_path / "out" / "report.html")

    assert path == tmp_path / "out" / "report.html"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    raw = path.read_text(encoding="utf-8")
    assert raw.startswith("<!DOCTYPE html>")
    root = parse(path)
    head = root.find("head")
    assert head is not None
    assert head.find("meta[@name='viewport']") is not None  # phone width
    assert "@media (max-width: 640px)" in text_of(head)
    # self-contained: nothing is loaded from anywhere, no script
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\(|@import", raw, re.IGNORECASE)
    assert not [a for a in root.iter("a") if not a.get("href", "").startswith("#")]

    engaged = section(root, "newsletter_engaged")
    assert text_of(engaged).count("Newsletter subscribers with at least two orders") == 1
    facts = {dt.text: text_of(dd) for dt, dd in zip(engaged.iter("dt"), engaged.iter("dd"))}
    assert facts == {"Kind": "audience", "Destination": "actito", "Schedule": "cron 30 6 * * * (Europe/Brussels)"}
    rows = engaged.findall("./table/tbody/tr")
    assert len(rows) == 7  # newest first, dry runs included and marked
    first = [text_of(td).strip() for td in rows[0]]
    assert first[0] == "succeeded dry run"
    assert [text_of(td).strip() for td in rows[1]][0] == "failed"
    assert [text_of(td) for td in rows[1]][8] == "the warehouse is down"
    newest_real = [text_of(td) for td in rows[2]]
    assert newest_real[1] == "2025-10-05 06:30ok4"
    assert newest_real[2:7] == ["42.0s", "1,065", "25", "—", "1,040"]  # an audience drops no value
    assert all(td.get("data-label") for td in rows[2])  # the labels of the phone layout

    profiles = section(root, "qualifio_profiles")
    facts = {dt.text: text_of(dd) for dt, dd in zip(profiles.iter("dt"), profiles.iter("dd"))}
    assert facts["Schedule"] == "every 1h (UTC)" and facts["State"] == "disabled"

    overview = root.find(".//section[@class='overview']/table/tbody")
    assert overview is not None
    cells = [[text_of(td).strip() for td in tr] for tr in overview]
    assert cells[0] == ["newsletter_engaged", "audience", "succeeded dry run", "2025-10-05 06:30", "1,040"]
    assert cells[1] == ["qualifio_profiles disabled", "profiles", "never run", "—", "—"]


def test_the_chart_has_one_point_per_successful_real_run(tmp_path: Path, store: StateStore) -> None:
    start = datetime(2025, 1, 1, 6, 0)
    sizes = [1200, 1180, 1250, 900, 1310, 1320, 1290]
    for i, size in enumerate(sizes):
        record(store, "newsletter_engaged", f"r{i}", start + timedelta(days=i), "succeeded", delivered=size)
    record(store, "newsletter_engaged", "ko", start + timedelta(days=8), "failed", error="down")
    record(store, "newsletter_engaged", "dry", start + timedelta(days=9), "succeeded", dry_run=True, delivered=1)
    path = write_report(make_config(tmp_path), store, tmp_path / "report.html")
    svg = section(parse(path), "newsletter_engaged").find(f"{SVG}svg")
    assert svg is not None and svg.get("viewBox") and svg.get("role") == "img"
    circles = svg.findall(f"{SVG}circle")
    assert len(circles) == len(sizes)
    line = svg.find(f"{SVG}polyline")
    assert line is not None
    points = [tuple(map(float, pair.split(","))) for pair in (line.get("points") or "").split()]
    assert len(points) == len(sizes)
    xs = [x for x, _ in points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # oldest to newest, left to right
    ys = [y for _, y in points]
    assert ys.index(max(ys)) == sizes.index(min(sizes))  # SVG's y grows downwards: the dip is lowest
    assert [text_of(c) for c in circles][0] == "2025-01-01 06:00: 1,200"
    assert "7 successful runs" in (svg.get("aria-label") or "")

    # the chart reads further back than the table
    path = write_report(make_config(tmp_path), store, tmp_path / "report.html", runs_per_activation=3)
    engaged = section(parse(path), "newsletter_engaged")
    assert len(engaged.findall("./table/tbody/tr")) == 3
    assert len(engaged.findall(f".//{SVG}circle")) == len(sizes)
    path = write_report(make_config(tmp_path), store, tmp_path / "report.html", chart_runs=4)
    assert len(section(parse(path), "newsletter_engaged").findall(f".//{SVG}circle")) == 4


def test_a_single_run_is_one_point_without_a_line(tmp_path: Path, store: StateStore) -> None:
    record(store, "newsletter_engaged", "r1", datetime(2025, 1, 1), "succeeded", delivered=0)
    path = write_report(make_config(tmp_path), store, tmp_path / "report.html")
    svg = section(parse(path), "newsletter_engaged").find(f"{SVG}svg")
    assert svg is not None
    assert len(svg.findall(f"{SVG}circle")) == 1 and svg.find(f"{SVG}polyline") is None


def test_names_descriptions_and_errors_are_escaped_everywhere(tmp_path: Path, store: StateStore) -> None:
    evil_name = f"x{EVIL}"
    activation = AudienceActivation(sql=Path("a.sql"), destination="actito", identifier="email",
                                    description=f"for {EVIL} & <b>friends</b>")
    long_error = f"{EVIL} " + "the warehouse said no. " * 40
    record(store, evil_name, "r1", datetime(2025, 1, 1), "succeeded", delivered=10)
    record(store, evil_name, "r2", datetime(2025, 1, 2), "failed", error=f"bad value {EVIL}")
    record(store, evil_name, "r3", datetime(2025, 1, 3), "failed", error=long_error)
    path = write_report(make_config(tmp_path, **{evil_name: activation}), store, tmp_path / "report.html")
    raw = path.read_text(encoding="utf-8")
    assert "<script" not in raw.lower() and "<b>" not in raw
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in raw
    root = parse(path)  # still well-formed: the markup was not broken by the values
    part = section(root, evil_name)
    assert text_of(part).count(f"for {EVIL} & <b>friends</b>") == 1  # shown as text, as written
    rows = part.findall("./table/tbody/tr")
    assert text_of(rows[1][8]) == f"bad value {EVIL}"
    details = rows[0][8].find("details")
    assert details is not None  # a long error is truncated, the rest behind "more"
    summary = details.find("summary")
    assert summary is not None and len(text_of(summary)) <= 141 and text_of(summary).startswith(EVIL)
    assert EVIL in (part.find(f".//{SVG}svg").get("aria-label") or "")  # type: ignore[union-attr]
    anchors = [a.get("href") for a in root.iter("a")]
    assert anchors and all(re.fullmatch(r"#[A-Za-z0-9_-]+", a or "") for a in anchors)
    assert section(root, evil_name).get("id") == (anchors[0] or "")[1:]


def test_an_empty_ledger(tmp_path: Path, store: StateStore) -> None:
    path = write_report(make_config(tmp_path), store, tmp_path / "report.html",
                        now=datetime(2025, 3, 1, 12, 0, tzinfo=UTC))
    root = parse(path)
    engaged = section(root, "newsletter_engaged")
    assert "No runs recorded yet." in text_of(engaged)
    assert "No successful run yet: nothing to chart." in text_of(engaged)
    assert not list(root.iter(f"{SVG}svg")) and engaged.find("table") is None
    assert "generated 2025-03-01 12:00 UTC" in text_of(root)


def test_a_delta_sync_that_sent_nothing_shows_the_rows_it_holds_and_same_day_runs_their_time(
    demo_project: Path, tmp_path: Path
) -> None:
    from etl.cli import main as cli_main

    for _ in range(2):  # the second run finds nothing changed: it sends 0 rows
        assert cli_main(["--config", str(demo_project), "run", "qualifio_profiles"]) == 0
    page = tmp_path / "r.html"
    assert cli_main(["--config", str(demo_project), "report", "-o", str(page)]) == 0
    html = page.read_text()
    profiles = next(r for r in html.split("<tr>") if ">qualifio_profiles</a>" in r)  # its overview row
    # every participant with a valid e-mail (the demo sends incomplete ones' profiles too)
    assert 'data-label="Size" class="num">2,334<' in profiles, profiles
    assert re.search(r'text-anchor="end">\d{4}-\d\d-\d\d \d\d:\d\d</text>', html)  # same day: the time too
