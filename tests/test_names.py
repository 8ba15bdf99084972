"""Names are owned: a location holds exactly one activation's current delivery, two activations can never
write the same name, and no two activations share a state file. Attacks through the real CLI, against a
real local directory and real SFTP and FTPS servers."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Shown
from etl.runtime.activation_state import MEMBERS, ROWS, state_file
from etl.destinations.filedrop.base import TEMP_PREFIX, is_temp_name
from etl.files import final_file_name, name_matcher
from etl.files.names import Claim, literal_prefix, literal_tail, overlaps, owned_names, tails_can_meet
from etl.runtime.ledger import StateStore

pytest_plugins = ["conftest_delivery"]

from servers import PASSWORD, FtpsServer, Location, SftpServer, age  # noqa: E402

Cli = Callable[..., Shown]

HEAD = """
[settings]
state_dir = "state"

[warehouses.wh]
url = "sqlite:///wh.db"
"""

DESTINATION = """
[destinations.{name}]
environment = "sandbox"
entity = "demo"
files = {files}
"""

AUDIENCE = """
[activations.{name}]
sql = "{sql}"
destination = "{destination}"
identifier = "email"
max_shrink = 1
file = {file}
"""


def members_sql(count: int) -> str:
    return (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
            "SELECT 'person' || i || '@example.com' AS email FROM n")


def configure(root: Path, destinations: dict[str, str], audiences: list[tuple[str, str, str]], extra: str = "") -> Path:
    """A schedules.toml in ``root``: destinations (name -> files table) and audiences (name, destination,
    file table), every audience reading ``<name>.sql``."""
    (root / "wh.db").touch()
    text = HEAD + "".join(DESTINATION.format(name=name, files=files) for name, files in destinations.items())
    for name, destination, file in audiences:
        text += AUDIENCE.format(name=name, sql=f"{name}.sql", destination=destination, file=file)
        if not (root / f"{name}.sql").exists():
            (root / f"{name}.sql").write_text(members_sql(10))
    config = root / "schedules.toml"
    config.write_text(text + extra)
    return config


# --------------------------------------------------------------------------- validate: overlapping names


def refused(shown: Shown, *names: str) -> None:
    assert shown.code == 2, shown.said
    assert "Traceback" not in shown.said
    line = next((line for line in shown.said.splitlines() if "file.name" in line), "")
    for name in names:
        assert f"[activations.{name}]" in line, shown.said


def test_two_local_destinations_on_one_directory_written_differently_are_refused(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "outbox").mkdir()
    config = configure(tmp_path, {"one": '{ type = "local", path = "outbox" }',
                                  "two": '{ type = "local", path = "./outbox/" }'},
                       [("a", "one", '{ name = "audience.csv" }'), ("b", "two", '{ name = "audience.csv" }')])
    shown = cli(config, "validate")
    refused(shown, "a", "b")
    assert str((tmp_path / "outbox").resolve()) in shown.said


def test_a_literal_name_a_pattern_can_render_is_refused(tmp_path: Path, cli: Cli) -> None:
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'},
                       [("dated", "d", '{ name = "aud_$yyyy.csv" }'), ("fixed", "d", '{ name = "aud_2026.csv" }')])
    shown = cli(config, "validate")
    refused(shown, "dated", "fixed")
    assert "aud_2026.csv" in shown.said


@pytest.mark.parametrize(("first", "second"), [
    ("vip_$yyyyMM.csv", "vip_$yyyy$M$d.csv"),  # 6 digits; 4 + 1 or 2 + 1 or 2: vip_2026111.csv no, vip_202611 yes
    ("a.csv", "a_part001.csv"),  # an earlier version's part of a
    ("VIP.csv", "vip.csv"),  # one file where the server folds case
    ("a_$MMM.csv", "a_mar.csv"),
    ("x_$d.csv", "x_$dd.csv"),  # 1-2 digits against 2
])
def test_patterns_whose_names_can_coincide_are_refused(tmp_path: Path, cli: Cli, first: str, second: str) -> None:
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'},
                       [("one", "d", f'{{ name = "{first}" }}'), ("two", "d", f'{{ name = "{second}" }}')])
    refused(cli(config, "validate"), "one", "two")


def test_two_sftp_destinations_on_one_server_directory_written_differently_are_refused(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SFTP_PASSWORD", PASSWORD)
    sftp = '{{ type = "sftp", host = "{host}", port = 2222, username = "{user}", password = "${{TEST_SFTP_PASSWORD}}", remote_dir = "{dir}" }}'
    config = configure(tmp_path, {"one": sftp.format(host="sftp.example.com", user="actito", dir="/in"),
                                  "two": sftp.format(host="SFTP.Example.COM.", user="other", dir="//in/./")},
                       [("a", "one", "{}"), ("b", "two", '{ name = "a.csv" }')])
    shown = cli(config, "validate")
    refused(shown, "a", "b")
    assert "sftp://other@sftp.example.com:2222/in" in shown.said


@pytest.mark.parametrize(("first", "second"), [
    ("vip_$yyyyMM.csv", "vip_$yyyyMMdd.csv"),  # 6 digits never equal 8
    ("vip.csv", "vip.members.csv"),
    ("a_$yyyy.csv", "a_$yyyy_part.csv"),
])
def test_names_that_can_never_coincide_are_accepted(tmp_path: Path, cli: Cli, first: str, second: str) -> None:
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'},
                       [("one", "d", f'{{ name = "{first}" }}'), ("two", "d", f'{{ name = "{second}" }}')])
    shown = cli(config, "validate")
    assert shown.code == 0, shown.said


def test_relative_remote_directories_of_different_users_are_different_places(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SFTP_PASSWORD", PASSWORD)
    sftp = '{{ type = "sftp", host = "h", username = "{user}", password = "${{TEST_SFTP_PASSWORD}}", remote_dir = "in" }}'
    config = configure(tmp_path, {"one": sftp.format(user="u1"), "two": sftp.format(user="u2")},
                       [("a", "one", '{ name = "x.csv" }'), ("b", "two", '{ name = "x.csv" }')])
    assert cli(config, "validate").code == 0


def test_leftover_matchers_take_exactly_the_digits_a_pattern_renders() -> None:
    """The clean-up of one activation must not take another's names for its own."""
    monthly = owned_names("vip_$yyyyMM.csv")
    assert monthly("vip_202601.csv") and monthly("vip_202601.manifest.json") and monthly("vip_202601_part002.csv")
    assert not monthly("vip_20260115.csv") and not monthly("vip_20260115.manifest.json")
    assert not owned_names("vip_$yyyyMMdd.csv")("vip_202601.csv")


# --------------------------------------------------------------------------- runs: the location holds the manifest's set


def listing(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir() if not is_temp_name(path.name)}


def holds_exactly_its_manifest(directory: Path, manifest_name: str, rows: int) -> None:
    """The location holds the manifest and exactly the files it lists, with the rows it says."""
    manifest = json.loads((directory / manifest_name).read_text())
    assert listing(directory) == {manifest_name} | {f["name"] for f in manifest["files"]}
    assert manifest["rows"] == rows == sum(f["rows"] for f in manifest["files"])


def rows_in(path: Path) -> int:
    raw = path.read_bytes()
    return len((gzip.decompress(raw) if path.name.endswith(".gz") else raw).splitlines()) - 1


def set_rows(root: Path, name: str, count: int) -> None:
    (root / f"{name}.sql").write_text(members_sql(count))


def set_file(config: Path, old: str, new: str) -> None:
    config.write_text(config.read_text().replace(old, new))


@pytest.fixture(params=["local", "sftp", "ftps"])
def outbox_at(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[str, Path]:
    """(files table, the directory it puts files in): a local directory, or a real SFTP or FTPS server's."""
    if request.param == "local":
        (tmp_path / "outbox").mkdir()
        return '{ type = "local", path = "outbox" }', tmp_path / "outbox"
    if request.param == "ftps":
        ftps: FtpsServer = request.getfixturevalue("make_ftps_server")()
        monkeypatch.setenv("TEST_FTPS_PASSWORD", PASSWORD)
        return (f'{{ type = "ftps", host = "127.0.0.1", port = {ftps.port}, username = "actito", '
                f'password = "${{TEST_FTPS_PASSWORD}}", ca_file = "{ftps.tls.cert}", remote_dir = "/in" }}'), ftps.root / "in"
    server: SftpServer = request.getfixturevalue("make_sftp_server")()
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    monkeypatch.setenv("TEST_SFTP_PASSWORD", PASSWORD)
    return (f'{{ type = "sftp", host = "127.0.0.1", port = {server.port}, username = "actito", '
            f'password = "${{TEST_SFTP_PASSWORD}}", known_hosts = "{known_hosts}", remote_dir = "in" }}'), server.root / "in"


def test_stale_parts_of_an_earlier_version_are_removed_and_a_too_big_audience_refused(
    tmp_path: Path, cli: Cli, outbox_at: tuple[str, Path]
) -> None:
    files, remote = outbox_at
    config = configure(tmp_path, {"d": files}, [("a", "d", "{ max_bytes = 100000 }")])
    # what an earlier version left: 2,000 rows as five parts, and their manifest
    for number in range(1, 6):
        (remote / f"a_part{number:03d}.csv").write_text("emailAddress\n" + "old@example.com\n" * 400)
    (remote / "a.manifest.json").write_text("{}")
    (remote / "someone_else.csv").write_text("emailAddress\n")  # not ours: never touched

    set_rows(tmp_path, "a", 1500)
    shown = cli(config, "run", "a")
    assert shown.code == 0, shown.said
    (remote / "someone_else.csv").unlink()
    holds_exactly_its_manifest(remote, "a.manifest.json", 1500)
    assert listing(remote) == {"a.csv", "a.manifest.json"} and rows_in(remote / "a.csv") == 1500
    before = {name: (remote / name).read_bytes() for name in listing(remote)}

    set_file(config, "max_bytes = 100000", "max_bytes = 10000")  # 1,500 rows are about 40 kB
    shown = cli(config, "run", "a")
    assert shown.code == 1 and "Traceback" not in shown.said, shown.said
    for words in ("bytes", "file.max_bytes = 10,000", "100 MB", 'compression = "gzip"', "[activations.a]"):
        assert words in shown.said, (words, shown.said)
    assert {name: (remote / name).read_bytes() for name in listing(remote)} == before  # the previous one, intact


def test_a_growing_audience_is_refused_whole_then_delivered_compressed_replacing_the_plain_file(
    tmp_path: Path, cli: Cli, outbox_at: tuple[str, Path]
) -> None:
    files, remote = outbox_at
    config = configure(tmp_path, {"d": files}, [("a", "d", "{ max_bytes = 10000 }")])
    set_rows(tmp_path, "a", 300)
    assert cli(config, "run", "a").code == 0
    holds_exactly_its_manifest(remote, "a.manifest.json", 300)

    set_rows(tmp_path, "a", 2000)  # about 50 kB: more than max_bytes
    shown = cli(config, "run", "a")
    assert shown.code == 1, shown.said
    holds_exactly_its_manifest(remote, "a.manifest.json", 300)  # a.csv, the name Actito reads, still whole
    assert rows_in(remote / "a.csv") == 300

    set_file(config, "{ max_bytes = 10000 }", '{ max_bytes = 10000, compression = "gzip" }')
    shown = cli(config, "run", "a")
    assert shown.code == 0, shown.said
    holds_exactly_its_manifest(remote, "a.manifest.json", 2000)
    assert listing(remote) == {"a.csv.gz", "a.manifest.json"} and rows_in(remote / "a.csv.gz") == 2000

    set_rows(tmp_path, "a", 20_000)  # compressed and still too large: compression is no longer the answer
    shown = cli(config, "run", "a")
    assert shown.code == 1 and "already compressed" in shown.said and 'delivery = "membership"' in shown.said
    assert 'set compression = "gzip"' not in shown.said, shown.said
    holds_exactly_its_manifest(remote, "a.manifest.json", 2000)

    set_rows(tmp_path, "a", 2000)
    set_file(config, '{ max_bytes = 10000, compression = "gzip" }', "{}")  # and back to plain
    assert cli(config, "run", "a").code == 0
    assert listing(remote) == {"a.csv", "a.manifest.json"}


def test_a_dated_file_replaces_the_previous_days_file(tmp_path: Path, cli: Cli, outbox_at: tuple[str, Path]) -> None:
    files, remote = outbox_at
    config = configure(tmp_path, {"d": files}, [("a", "d", '{ name = "a_$yyyyMMdd.csv" }'),
                                                ("b", "d", '{ name = "a_$yyyyMM.csv" }')])
    (remote / "a_20200101.csv").write_text("emailAddress\nold@example.com\n")  # an earlier day's delivery of a
    (remote / "a_202001.csv").write_text("emailAddress\nother@example.com\n")  # b's: 6 digits, not a's
    set_rows(tmp_path, "a", 20)
    assert cli(config, "run", "a").code == 0
    assert not (remote / "a_20200101.csv").exists()
    ours = {name for name in listing(remote) if name_matcher("a_$yyyyMMdd.csv")(name)}
    manifest = next(name for name in ours if name.endswith(".manifest.json"))
    assert ours == {manifest, manifest.replace(".manifest.json", ".csv")}
    assert (remote / "a_202001.csv").exists()


# --------------------------------------------------------------------------- state files


def test_an_audience_and_a_profiles_activation_named_like_its_snapshot_coexist(tmp_path: Path, cli: Cli) -> None:
    """``vip``'s members snapshot was snapshots/vip.members.parquet, the very file the profiles activation
    ``vip.members`` kept its delta in: each run overwrote the other's, and ``vip`` then failed every run."""
    (tmp_path / "outbox").mkdir()
    profiles = ('\n[activations."vip.members"]\nkind = "profiles"\nsql = "people.sql"\ndestination = "d"\n'
                'table = "customers"\n')
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'}, [("vip", "d", "{}")], profiles)
    (tmp_path / "people.sql").write_text(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30) "
        "SELECT 'person' || i || '@example.com' AS emailAddress, 'Name' || i AS firstName FROM n")
    for count in (40, 50, 45):
        set_rows(tmp_path, "vip", count)
        for name in ("vip", "vip.members"):
            shown = cli(config, "run", name)
            assert shown.code == 0 and "internal error" not in shown.said, shown.said
    state = tmp_path / "state"
    assert pq.read_schema(state_file(state, "vip", MEMBERS)).names[:1] == ["member"]
    assert set(pq.read_schema(state_file(state, "vip.members", ROWS)).names) >= {"key", "row"}
    assert pq.read_table(state_file(state, "vip", MEMBERS)).num_rows == 45


def test_state_files_of_earlier_versions_move_to_their_activation_once(tmp_path: Path) -> None:
    """The old flat names are adopted by the activation whose state they hold, by a rename; a file
    holding another activation's state (the shared name) is left for that one."""
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    members = pa.table({"member": ["a@example.com"], "hash": pa.array([1], pa.uint64())})
    rows = pa.table({"key": pa.array([1], pa.uint64()), "row": pa.array([2], pa.uint64())})
    pq.write_table(members, snapshots / "news.members.parquet")
    pq.write_table(rows, snapshots / "vip.members.parquet")  # the import vip.members wrote last

    assert not state_file(tmp_path, "vip", MEMBERS).exists()  # not an audience's members: left alone
    assert (snapshots / "vip.members.parquet").exists()
    adopted = state_file(tmp_path, "vip.members", ROWS)
    assert pq.read_table(adopted).equals(rows) and not (snapshots / "vip.members.parquet").exists()
    moved = state_file(tmp_path, "news", MEMBERS)
    assert pq.read_table(moved).equals(members) and not (snapshots / "news.members.parquet").exists()
    assert moved.parent.stat().st_mode & 0o777 == 0o700

    pq.write_table(pa.table({"member": ["stale@example.com"], "hash": pa.array([9], pa.uint64())}),
                   snapshots / "news.members.parquet")  # an old version ran again after the move
    assert pq.read_table(state_file(tmp_path, "news", MEMBERS)).equals(members)  # the new file wins


def test_a_migration_cut_short_is_finished_by_the_next_run(tmp_path: Path, cli: Cli) -> None:
    """A crash between creating the activation's directory and the rename leaves the old name: the next
    run adopts it and compares with it (no one counts as entered again)."""
    (tmp_path / "outbox").mkdir()
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'}, [("news", "d", "{}")])
    set_rows(tmp_path, "news", 10)
    assert cli(config, "run", "news").code == 0
    snapshot = tmp_path / "state" / "activations" / "news" / "members.parquet"
    old = tmp_path / "state" / "snapshots" / "news.members.parquet"
    old.parent.mkdir(exist_ok=True)
    snapshot.rename(old)  # as an earlier version kept it, its new directory already made

    set_rows(tmp_path, "news", 12)
    shown = cli(config, "run", "news")
    assert shown.code == 0, shown.said
    assert not old.exists() and pq.read_table(snapshot).num_rows == 12
    store = StateStore.in_directory(tmp_path / "state")
    try:
        last = store.last_success("news")
    finally:
        store.close()
    assert last is not None and (last.details["entered"], last.details["left"]) == (2, 0)  # compared with the old


def test_clean_ups_touch_only_the_activations_own_names(location: Location) -> None:
    """On every protocol: the stale clean-up after a delivery removes this activation's other names only,
    and the clean-up of dead runs' leftovers and retention leave another activation's temporary file alone (vip_$yyyyMM.csv's leftovers are
    not vip_$yyyyMMdd.csv's)."""
    connect, directory = location
    ours = name_matcher("vip_$yyyyMMdd.csv")
    names = ["vip_20260101.csv", "vip_20260101_part002.csv", "vip_20260101.manifest.json",  # ours, stale
             "vip_20260102.csv", "vip_20260102.manifest.json",  # ours, current
             "vip_202601.csv", "vip_202601.manifest.json", "partner.csv",  # another activation's, a partner's
             f"{TEMP_PREFIX}20260101T000000Z-abc-vip_202601.csv.part",  # the other activation's leftover
             f"{TEMP_PREFIX}20260101T000000Z-abc-vip_20260101.csv.part"]  # ours
    for name in names:
        (directory / name).write_bytes(b"x")
        age(directory / name, 10 * 86_400)
    with connect() as deliverer:
        removed = deliverer.remove_stale(ours, ["vip_20260102.csv", "vip_20260102.manifest.json"])
        assert sorted(removed) == ["vip_20260101.csv", "vip_20260101.manifest.json", "vip_20260101_part002.csv"]
        assert deliverer.discard_leftovers(ours, "20260102T000000Z-fff") == [
            f"{TEMP_PREFIX}20260101T000000Z-abc-vip_20260101.csv.part"]  # not the monthly activation's, live or not
        deliverer.apply_retention(ours, datetime.now(UTC))  # everything is older than now
    left = {path.name for path in directory.iterdir()}
    assert {"vip_202601.csv", "vip_202601.manifest.json", "partner.csv",
            f"{TEMP_PREFIX}20260101T000000Z-abc-vip_202601.csv.part"} <= left
    assert f"{TEMP_PREFIX}20260101T000000Z-abc-vip_20260101.csv.part" not in left


def test_the_setup_sheet_names_only_a_file_every_run_keeps_updating(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "outbox").mkdir()
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'},
                       [("fixed", "d", '{ compression = "gzip" }'), ("dated", "d", '{ name = "dated_$yyyyMMdd.csv" }')])
    fixed = cli(config, "setup-sheet", "fixed")
    assert fixed.code == 0, fixed.said
    assert "File              : fixed.csv.gz   (replaced whole by every run)" in fixed.out
    assert "never split into parts" in fixed.out and "_part" not in fixed.out
    dated = cli(config, "setup-sheet", "dated")
    assert "point the synchronisation at the pattern, not at this name" in dated.out
    assert "File name pattern : dated_$yyyyMMdd.csv" in dated.out


def test_max_bytes_on_a_membership_audience_is_refused_as_meaningless(tmp_path: Path, cli: Cli) -> None:
    """file.max_bytes caps the one file an audience delivers; a membership delivery delivers none."""
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'}, [("m", "d", "{ max_bytes = 50000 }")])
    set_file(config, 'file = { max_bytes = 50000 }', 'file = { max_bytes = 50000 }\ndelivery = "membership"')
    shown = cli(config, "validate")
    assert shown.code == 2 and "[activations.m] file.max_bytes: not used with delivery" in shown.said, shown.said
    set_file(config, 'file = { max_bytes = 50000 }\ndelivery = "membership"', 'file = { max_bytes = 50000 }')
    assert cli(config, "validate").code == 0  # a ceiling for a file audience: accepted


def test_a_run_killed_before_the_clean_up_leaves_a_complete_audience_and_the_next_run_finishes(tmp_path: Path) -> None:
    """Killed (SIGKILL, a real process) once its files are in place but before the stale ones are removed:
    the new audience is whole at the location; the next run removes what is left of the old delivery."""
    remote = tmp_path / "outbox"
    remote.mkdir()
    config = configure(tmp_path, {"d": '{ type = "local", path = "outbox" }'}, [("a", "d", "{}")])
    for number in (1, 2):  # an older version's parts
        (remote / f"a_part{number:03d}.csv").write_text("emailAddress\nold@example.com\n")
    set_rows(tmp_path, "a", 200)

    def run(kill_at: str | None = None) -> int:
        env = {key: value for key, value in os.environ.items() if key != "AUDIENCE_SYNC_KILL_AT"}
        env.update({"AUDIENCE_SYNC_KILL_AT": kill_at} if kill_at else {})
        done = subprocess.run([sys.executable, "-m", "etl", "--config", str(config), "run", "a"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode

    assert run("confirmed") == -signal.SIGKILL
    assert rows_in(remote / "a.csv") == 200 and (remote / "a_part001.csv").exists()
    assert run() == 0
    holds_exactly_its_manifest(remote, "a.manifest.json", 200)


# --------------------------------------------------------------------------- the intersection, as properties

_PIECES = st.sampled_from(["a", "B", "_", "1", "0", "-", ".", "_part", "$yyyy", "$yy", "$MM", "$M", "$dd", "$d",
                           "$MMM", "$MMMM", "$HHmm"])
_PATTERNS = st.lists(_PIECES, min_size=1, max_size=6).map(lambda pieces: "x" + "".join(pieces) + ".csv")
_DATES = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31))


@settings(max_examples=300, deadline=None)
@given(_PATTERNS, _DATES, st.sampled_from(["none", "gzip", "zip"]))
def test_a_pattern_owns_every_name_it_renders_and_overlaps_each_of_them(pattern: str, when: datetime,
                                                                        compression: str) -> None:
    name = final_file_name(pattern, when, compression)  # type: ignore[arg-type]
    assert owned_names(pattern)(name)
    stem = name.removesuffix(".gz").removesuffix(".csv").removesuffix(".zip")
    assert owned_names(pattern)(f"{stem}.manifest.json") and owned_names(pattern)(f"{stem}_part012.csv")
    for fixed in (f"{stem}.csv", f"{stem}_part001.csv", f"{stem.upper()}.csv"):
        claims = [Claim("a", pattern, ("local", "/x"), "/x"), Claim("b", fixed, ("local", "/x"), "/x")]
        assert overlaps(claims), (pattern, fixed)


@settings(max_examples=300, deadline=None)
@given(_PATTERNS, _PATTERNS)
def test_the_cheap_filters_never_skip_a_pair_that_meets(first: str, second: str) -> None:
    """Whenever the automata share a name, the prefix and tail filters let the pair through, and the
    name they share is one of each (case aside)."""
    common = owned_names(first, fold=True).common_name(owned_names(second, fold=True))
    if common is None:
        return
    assert owned_names(first, fold=True)(common) and owned_names(second, fold=True)(common)
    one, other = sorted((literal_prefix(first), literal_prefix(second)), key=len)
    assert other.startswith(one)
    assert tails_can_meet(literal_tail(first), literal_tail(second)), (first, second, common)
