"""Replaying a run: the files a past run delivered, delivered again as they were — to restore
yesterday's audience after a bad query slipped through, or the profile values an import set before a
bad one overwrote them. Checked before anything runs (the files are still there with their recorded
sha256, and the activation still delivers the same thing to the same place), then delivered by a new
run through the activation's own delivery: its lease and fencing; for an audience its shrink guard,
members snapshot and ownership of names at the location; for an import the daily budget, and the
delta snapshot forgetting the rows replayed (the warehouse's rows are sent again by the next run
wherever they differ)."""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from etl.config import AudienceActivation, Config, ImportActivationBase
from etl.destinations import open_audience, open_rows
from etl.destinations.base import RowDestination
from etl.errors import UsageError
from etl.extract.checks import query_schema
from etl.files import RejectWriter, WrittenFile, file_sha256, name_matcher, share_private
from etl.runtime.ledger import RunRecord, StateStore
from etl.runtime.results import RunStatus
from etl.runtime.runs import RunContext
from etl.transform.audience import HEADER, AudienceCounts
from etl.transform.delta import RowFormat, RowSnapshot, Staged, key_hashes, refusal_retries
from etl.transform.members import StagedMembers
from jobs.audience import KIND, Prepared, deliver
from jobs.profiles import row_snapshot_path

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
    if record.dry_run or record.status != RunStatus.SUCCEEDED or not record.details.get("files"):
        state = ("a dry run" if record.dry_run else f"{record.status}" if record.status != RunStatus.SUCCEEDED
                 else "it sent no file")
        raise UsageError(f"run {run_id} of {record.activation} is not a delivery ({state}): only the files a "
                         "run delivered can be delivered again", where="replay",
                         hint=_HINT if record.kind == KIND else
                         f"{_HINT}; `audience-sync run {record.activation} --full` sends every row again")
    if record.kind != KIND:
        _check_import(config, record)
        return config, record
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
    lease (retention may have removed them since the plan), then delivered as the activation delivers."""
    return _replaying_audience(record) if record.kind == KIND else _replaying_import(record)


def _replaying_audience(record: RunRecord) -> Callable[[RunContext], None]:
    """An audience's members are staged from the file for the diff."""

    def body(context: RunContext) -> None:
        activation = context.config.activation_of(context.activation, AudienceActivation)
        context.details["replay_of"] = record.run_id
        _check_files(record)
        source = Path(record.details["local_dir"])
        written = _shared_files(record, context)
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


# --------------------------------------------------------------------------------------------- imports


def _check_import(config: Config, record: RunRecord) -> None:
    """The import's files were written by a mapping (columns to attributes, each value to its attribute's
    rule, the table, the mode): replayed under another, they would set what no mapping says today."""
    activation = config.activations.get(record.activation)
    if not isinstance(activation, ImportActivationBase) or activation.kind != record.kind:
        raise UsageError(f"{record.activation} is no longer a {record.kind} activation of {config.source}",
                         where="replay", hint="a retired activation's runs cannot be delivered again")
    if "mapping_fingerprint" not in record.details:
        raise UsageError(f"run {record.run_id} was recorded by an older audience-sync, which kept no account of "
                         "the mapping its files were written by", where="replay",
                         hint=f"`audience-sync run {record.activation} --full` sends every row again")
    _check_files(record)
    context = RunContext(config, record.activation, "replay-check", datetime.now(UTC), True,
                         config.state_dir / "runs" / record.activation / "replay-check")
    with closing(open_rows(config, record.activation)) as destination:
        _check_mapping(record, _row_format(context, destination).fingerprint)


def _row_format(context: RunContext, destination: RowDestination) -> RowFormat:
    """The mapping as a run would build it now, from the query's columns (a query selecting no row)."""
    columns = query_schema(context.config, context.activation, context.data_time).names
    return destination.preflight(context, columns)


def _check_mapping(record: RunRecord, current: str) -> None:
    if current != record.details["mapping_fingerprint"]:
        raise UsageError(f"run {record.run_id} cannot be replayed: {record.activation} now maps its rows "
                         "differently (its columns, attributes, mode, table or the table's attributes changed), and "
                         "its files hold the rows as the mapping of then wrote them", where="replay",
                         hint="replaying it would set what the configuration no longer describes; run the "
                              "activation instead (with --full to send every row)")


def _replaying_import(record: RunRecord) -> Callable[[RunContext], None]:
    """The files imported again by the activation's destination, within today's budget. The delta
    snapshot forgets the replayed rows before anything is sent, so whatever happens next, the next run
    compares them as never sent."""

    def body(context: RunContext) -> None:
        context.details["replay_of"] = record.run_id
        with closing(open_rows(context.config, context.activation)) as destination:
            row_format = _row_format(context, destination)
            _check_mapping(record, row_format.fingerprint)
            _check_files(record)
            parts = _shared_files(record, context)
            staged = _staged_keys(parts, row_format.key_name)
            snapshot_path = row_snapshot_path(context.config, context.activation)
            destination.recover(context, snapshot_path)
            destination.restage(context, parts)
            context.details.update(files=record.details["files"], local_dir=str(context.run_dir),
                                   mapping_fingerprint=row_format.fingerprint)
            if "data_collection" in record.details:
                context.details["data_collection"] = record.details["data_collection"]
            destination.reserve(context, staged)
            if snapshot_path is not None and not context.dry_run:
                _forget(context, snapshot_path, row_format.fingerprint, staged)
            rejects = context.run_dir / f"{context.activation}.rejects.csv"
            context.details["rejects_file"] = str(rejects)
            with RejectWriter(rejects, by_field=True) as writer:
                destination.send(context, staged, None, writer)
            context.delivery = destination.describe(context)

    return body


def _shared_files(record: RunRecord, context: RunContext) -> list[WrittenFile]:
    source = Path(record.details["local_dir"])
    for file in record.details["files"]:
        share_private(source / file["name"], context.run_dir / file["name"])
    return [WrittenFile(context.run_dir / f["name"], f["rows"], (context.run_dir / f["name"]).stat().st_size,
                        f["sha256"]) for f in record.details["files"]]


def _staged_keys(parts: list[WrittenFile], key: str) -> Staged:
    """The files' keys, numbered by their line among the files' rows: a row Actito refuses is named by
    it in the rejects file (the warehouse's row numbers belong to the run replayed)."""
    staged, line = Staged(), 0
    for part in parts:
        for keys in _identifiers(part.path, key, ","):
            # no row hash: the snapshot forgets these rows rather than remembering them
            staged.add(np.arange(line + 1, line + len(keys) + 1), keys, key_hashes(keys), np.zeros(len(keys), np.uint64))
            line += len(keys)
    return staged


def _forget(context: RunContext, path: Path, fingerprint: str, staged: Staged) -> None:
    snapshot = RowSnapshot(path, fingerprint, refusal_retries(context))
    snapshot.forget(np.concatenate([np.empty(0, np.uint64), *staged.key_hashes]))
    context.fence()
    snapshot.commit()
