"""Replaying an audience run: the files a past run delivered, delivered again as they were — to restore
yesterday's audience after a bad query slipped through. Checked before anything runs (the files are
still there with their recorded sha256, and the activation still delivers the same thing to the same
place), then delivered by a new run through the activation's own delivery: its lease, fencing, shrink
guard, members snapshot and ownership of names at the location."""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.csv as pacsv

from etl.config import AudienceActivation, Config
from etl.destinations import open_audience
from etl.errors import UsageError
from etl.files import WrittenFile, file_sha256, name_matcher, share_private
from etl.runtime.ledger import RunRecord, StateStore
from etl.runtime.results import RunStatus
from etl.runtime.runs import RunContext
from etl.transform.audience import HEADER, AudienceCounts
from etl.transform.members import StagedMembers
from jobs.audience import KIND, Prepared, deliver

_HINT = "replay a run whose files are still kept (`audience-sync history NAME`), or run the activation again"


def replay_plan(config: Config, store: StateStore, run_id: str) -> tuple[Config, RunRecord]:
    """The configuration to replay ``run_id`` in (a fan-out's delivery is an activation of its own) and
    the run; raises UsageError (nothing runs, nothing is recorded) saying why it cannot be replayed."""
    record = store.get_run(run_id)
    if record is None:
        raise UsageError(f"no run {run_id!r} in the ledger", where="replay", hint="see `audience-sync history`")
    deliveries = record.details.get("destinations")
    if isinstance(deliveries, dict):  # a fan-out's own run wrote the file; its deliveries delivered it
        runs = ", ".join(f"{d['activation']} {d['run_id']}" for d in deliveries.values() if d.get("run_id"))
        raise UsageError(f"run {run_id} of {record.activation} is a fan-out's extract: each destination got its "
                         f"files in a run of its own ({runs})", where="replay",
                         hint="replay the run of the destination to restore")
    if record.kind != KIND or record.dry_run or record.status != RunStatus.SUCCEEDED or "files" not in record.details:
        state = ("a dry run" if record.dry_run else f"{record.status}" if record.kind == KIND
                 else f"a {record.kind} run")
        raise UsageError(f"run {run_id} of {record.activation} is not a delivered audience ({state}): only what "
                         "an audience run delivered can be delivered again", where="replay", hint=_HINT)
    part = config.part_of(record.activation)
    if part is not None:
        config, _ = config.delivery(*part)
    activation = config.activations.get(record.activation)
    if not isinstance(activation, AudienceActivation):
        raise UsageError(f"{record.activation} is no longer an audience activation of {config.source}",
                         where="replay", hint="a retired activation's runs cannot be delivered again")
    _check_unchanged(config, record, activation)
    _check_files(record)
    return config, record


def _check_unchanged(config: Config, record: RunRecord, activation: AudienceActivation) -> None:
    """The past files must still be what the activation delivers: the same identifier column, the same
    place, and a name its file name pattern owns (else the location would keep a file nobody replaces)."""
    manifest = _manifest(record)
    problems = []
    if manifest.get("identifier") != HEADER[activation.identifier]:
        problems.append(f"its file holds {manifest.get('identifier')}, the activation now delivers "
                        f"{HEADER[activation.identifier]}")
    recorded = record.details.get("target") or {}
    target = open_audience(config, record.activation).target()
    if recorded.get("kind") != target.kind or list(recorded.get("where") or []) != list(target.where):
        problems.append(f"it was delivered to {recorded.get('shown', 'another place')}, the activation now "
                        f"delivers to {target.shown}")
    pattern = config.file_name_pattern(record.activation)
    name = record.details["files"][0]["name"]
    if not name_matcher(pattern)(name):
        problems.append(f"its file {name} is not a name of the activation's file.name {pattern!r} any more")
    if problems:
        raise UsageError(f"run {record.run_id} cannot be replayed: {'; '.join(problems)}", where="replay",
                         hint="replaying it would deliver something the configuration no longer describes; "
                              "run the activation instead")


def _manifest(record: RunRecord) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(Path(record.details["manifest"]).read_text(encoding="utf-8"))
        return loaded
    except (OSError, ValueError, KeyError):
        raise UsageError(f"the files of run {record.run_id} are gone (its manifest is no longer in "
                         f"{record.details.get('local_dir')}): runs' files are removed after run_retention_days, "
                         "except the last keep_runs", where="replay", hint=_HINT) from None


def _check_files(record: RunRecord) -> None:
    for file in record.details["files"]:
        path = Path(record.details["local_dir"]) / file["name"]
        if not path.is_file() or file_sha256(path) != file["sha256"]:
            what = "is gone" if not path.is_file() else "no longer has its recorded sha256"
            raise UsageError(f"{path} of run {record.run_id} {what}: it cannot be delivered as it was",
                             where="replay", hint=_HINT)


def replaying(record: RunRecord) -> Callable[[RunContext], None]:
    """The body of the replay run: the past files shared into its directory, checked again under the
    lease (retention may have removed them since the plan), their members staged for the diff."""

    def body(context: RunContext) -> None:
        activation = context.config.activation_of(context.activation, AudienceActivation)
        context.details["replay_of"] = record.run_id
        _check_files(record)
        source = Path(record.details["local_dir"])
        written = []
        for file in record.details["files"]:
            share_private(source / file["name"], context.run_dir / file["name"])
            written.append(WrittenFile(context.run_dir / file["name"], file["rows"], file["bytes"], file["sha256"]))
        rejects = context.run_dir / f"{context.activation}.rejects.csv"
        if (source / rejects.name).is_file():
            share_private(source / rejects.name, rejects)
        members = context.run_dir / f"{context.activation}.members.parquet"
        with StagedMembers(members) as staged:
            for identifiers in _identifiers(written[0].path, HEADER[activation.identifier], activation.file.separator):
                staged.add(identifiers)
        counts = AudienceCounts(extracted=record.rows_extracted or 0, rejected=record.rows_rejected or 0,
                                duplicates=record.rows_duplicate or 0, kept=sum(f.rows for f in written))
        manifest = _manifest(record)
        query = {key: manifest[key] for key in manifest if key.startswith(("sql_", "dbt_"))}
        deliver(context, activation, Prepared(written[0].path.name, written, counts, members, rejects,
                                              query={**query, "replay_of": record.run_id}))

    return body


def _identifiers(path: Path, header: str, separator: str) -> Iterator[pa.Array]:
    """The identifier column of a delivered file (CSV, gzip or a one-member zip), a block at a time."""
    with _opened(path) as raw:
        reader = pacsv.open_csv(raw, parse_options=pacsv.ParseOptions(delimiter=separator),
                                convert_options=pacsv.ConvertOptions(column_types={header: pa.string()},
                                                                     include_columns=[header]))
        for batch in reader:
            yield batch.column(0)


@contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as member:
            yield member
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rb") as unpacked:
            yield cast(IO[bytes], unpacked)
    else:
        with path.open("rb") as plain:
            yield plain
