"""Audience activations: warehouse SQL -> clean identifier file -> file transfer location.

The file is what an Actito External Target List (a saved targeting's File module, "Use reference")
reads; it is written completely and checked locally before anything is delivered, and delivered
atomically, so Actito only ever sees the previous complete audience or the new complete one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from etl.config import AudienceActivation, Config, Destination
from etl.destinations.filedrop.factory import open_deliverer
from etl.transform.members import MemberDiff, MemberSnapshot, StagedMembers
from etl.extract import activation_batches, local_time
from etl.files import CsvFileWriter, RejectWriter, WrittenFile, final_file_name, name_matcher, write_manifest
from etl.errors import AudienceSyncError, FileTooLarge
from etl.runtime.runs import RunContext
from etl.runtime.ledger import open_store
from etl.transform.audience import HEADER, AudienceCleaner, AudienceCounts, CleanBatch

KIND = "audience"
#: a writer's max_bytes that never cuts a part: an audience file is one file (see refuse_too_large)
UNSPLIT = 1 << 62
#: Actito refuses files bigger than this
ACTITO_MAX_BYTES = 100_000_000


@dataclass(frozen=True)
class Preview:
    counts: AudienceCounts
    sample: list[str]
    columns_used: str
    #: reason -> rows rejected for it (duplicates included), most frequent first
    rejected_by_reason: dict[str, int]


def cleaned_batches(config: Config, name: str, when: datetime) -> Iterator[tuple[AudienceCleaner, CleanBatch]]:
    """Extract and clean the audience chunk by chunk; the cleaner carries counts and the dedupe memory."""
    activation = config.activation_of(name, AudienceActivation)
    cleaner = AudienceCleaner(
        activation.identifier, column=activation.identifier_column, where=str(config.path(activation.sql))
    )
    def identifier_only(names: list[str]) -> list[int]:  # the other columns are never carried
        return [names.index(cleaner.identifier_column(names))]

    for batch in activation_batches(config, name, when, columns=identifier_only):
        yield cleaner, cleaner.clean(batch)


def preview(config: Config, name: str, *, sample_size: int = 10, when: datetime | None = None) -> Preview:
    sample: list[str] = []
    cleaner: AudienceCleaner | None = None
    reasons: Counter[str] = Counter()
    for cleaner, cleaned in cleaned_batches(config, name, when or datetime.now(UTC)):
        if len(sample) < sample_size:
            sample += cleaned.identifiers.slice(0, sample_size - len(sample)).to_pylist()
        for entry in cleaned.rejects.column("reason").value_counts().to_pylist():
            reasons[entry["values"]] += entry["counts"]
    counts = cleaner.counts if cleaner else AudienceCounts()
    return Preview(counts, sample, HEADER[config.activation_of(name, AudienceActivation).identifier],
                   dict(reasons.most_common()))


def run(context: RunContext) -> None:
    """The body of an audience run: extract → clean → write → deliver → retention."""
    config, name = context.config, context.activation
    activation = config.activation_of(name, AudienceActivation)
    pattern = config.file_name_pattern(name)
    file_name = final_file_name(pattern, local_time(activation, context.started_at), activation.file.compression)
    rejects_path = context.run_dir / f"{name}.rejects.csv"

    snapshot = MemberSnapshot.of(config.state_dir, name)
    with context.step("extract"), StagedMembers(context.run_dir / f"{name}.members.parquet") as members:
        written, counts = _write_audience(context, activation, file_name, rejects_path, members)
    if activation.delivery == "file":
        refuse_too_large(activation, name, written[0])
    sql_sha256 = hashlib.sha256(config.path(activation.sql).read_bytes()).hexdigest()
    manifest_path = context.run_dir / f"{_stem(file_name)}.manifest.json"
    write_manifest(manifest_path, _manifest(context, activation, written, counts, sql_sha256))
    context.results.update(
        rows_extracted=counts.extracted,
        rows_rejected=counts.rejected,
        rows_duplicate=counts.duplicates,
        rows_delivered=0,
        file_name=written[0].path.name,
        sha256=written[0].sha256,
    )
    context.details.update(
        files=[{"name": f.path.name, "rows": f.rows, "bytes": f.size, "sha256": f.sha256} for f in written],
        local_dir=str(context.run_dir),
        rejects_file=str(rejects_path),
        manifest=str(manifest_path),
        sql_sha256=sql_sha256,
    )
    context.checkpoint("written")
    with context.step("diff"):
        diff = snapshot.diff(members, identifiers=activation.delivery == "membership")
    context.details.update(diff.counts())  # a dry run reports the would-be diff too
    if context.dry_run:
        return
    check_shrink(context, activation, diff.size, diff)
    if activation.delivery == "membership":
        from jobs.membership import deliver_membership  # loads the Actito client only when needed

        diff = deliver_membership(context, activation, snapshot, diff)
    else:
        _deliver(context, [f.path for f in written] + [manifest_path], pattern)
        context.fence()
        snapshot.replace(diff)  # only now: after a failed delivery, the next run compares with the old members
    context.results["rows_delivered"] = diff.size


class GuardStop(AudienceSyncError):
    """A safety guard refused to deliver; the previous delivered audience stays in place."""


def check_shrink(context: RunContext, activation: AudienceActivation, size: int, diff: MemberDiff) -> None:
    """An audience that suddenly shrinks is far more often a broken query or source table than a real
    change, and delivering it would drop those people from every campaign that targets it. The refusal
    says how many left and entered: a broken query rarely brings anyone new, real churn does."""
    if context.force:
        return
    store = open_store(context.config)
    try:
        last = store.last_success(context.activation)
    finally:
        store.close()
    previous = last.rows_delivered if last and last.rows_delivered else 0
    if not previous and size == 0:  # a first audience that is empty is a broken query far more often
        context.details["guard"] = {"name": "empty", "reason": "the audience is empty"}
        raise GuardStop("not delivered: the audience is empty (no row of the query holds a valid identifier)",
                        where=context.activation,
                        hint="`audience-sync preview NAME` shows the counts and the reject file why rows were "
                             "dropped; if an empty audience is intended, run again with --force")
    if not previous:
        return
    floor = previous * (1 - activation.max_shrink)
    if size > 0 and (activation.max_shrink >= 1 or size >= floor):
        return
    reason = (f"the audience fell from {previous:,} to {size:,} rows"
              + ("" if size == 0 else f" ({(previous - size) / previous:.0%}, more than the "
                                      f"{activation.max_shrink:.0%} allowed by max_shrink)")
              + (f": {diff.left:,} left and {diff.entered:,} entered since the last delivery"
                 if diff.compared else " (no snapshot of the last delivered members to compare with)"))
    context.details["guard"] = {"name": "max_shrink", "reason": reason}
    raise GuardStop(f"not delivered: {reason}", where=context.activation,
                    hint="check the query and its source tables; if the change is real, run again with --force")


def refuse_too_large(activation: AudienceActivation, name: str, written: WrittenFile) -> None:
    """An audience file bigger than ``file.max_bytes`` is refused, never split into parts: Actito's file
    synchronisation takes the last file that appears as the whole audience, so a second part would
    replace the first as the targeting instead of adding to it. Refused before anything is delivered,
    so the previous delivery stays in place."""
    limit = activation.file.max_bytes
    if written.size <= limit:
        return
    raise FileTooLarge(
        f"not delivered: the audience file is {written.size:,} bytes ({written.rows:,} rows), over "
        f"file.max_bytes = {limit:,}; an audience is always delivered as one file (Actito reads the last file "
        f"as the whole audience) and Actito refuses files over {ACTITO_MAX_BYTES:,} bytes (100 MB)",
        where=f"[activations.{name}] file.max_bytes",
        hint='set compression = "gzip" in [activations.' + name + '.file] (identifiers shrink several times)'
             + ("" if limit >= ACTITO_MAX_BYTES else f" or raise file.max_bytes (at most {ACTITO_MAX_BYTES:,})")
             + "; the previous delivery is still in place",
    )


def _write_audience(
    context: RunContext, activation: AudienceActivation, file_name: str, rejects_path: Path, members: StagedMembers
) -> tuple[list[WrittenFile], AudienceCounts]:
    counts = AudienceCounts()
    with (
        CsvFileWriter(
            context.run_dir,
            file_name,
            header=HEADER[activation.identifier],
            separator=activation.file.separator,
            compression=activation.file.compression,
            max_bytes=UNSPLIT,  # one file whatever its size; refuse_too_large applies file.max_bytes
        ) as writer,
        RejectWriter(rejects_path) as rejects,
    ):
        for cleaner, cleaned in cleaned_batches(context.config, context.activation, context.started_at):
            writer.write(cleaned.identifiers)
            members.add(cleaned.identifiers, cleaned.hashes)
            rejects.write(cleaned.rejects)
            counts = cleaner.counts
            context.tick(vars(counts))
        context.checkpoint("extracted")
        written = writer.close()
        rejects.close()
    return written, counts


def _deliver(context: RunContext, paths: list[Path], pattern: str) -> None:
    destination = context.config.destination_of(context.config.activations[context.activation].destination, Destination)
    location = destination.files
    assert location is not None  # validated: an audience destination has a files location
    is_ours = name_matcher(pattern)  # exactly this activation's names: validate keeps them apart from others'
    with context.step("deliver"), open_deliverer(context.config, location) as deliverer:
        context.fence()  # removals and renames from here on: only while the activation is still ours
        leftovers = deliverer.discard_leftovers(is_ours, context.run_id)  # of a run killed mid-upload
        if leftovers:
            context.details["leftovers_removed"] = leftovers
        delivered = deliverer.deliver(paths, context.run_id, all_uploaded=lambda: context.checkpoint("delivered"))
        context.details["delivered"] = [{"name": d.name, "bytes": d.size, "location": d.location} for d in delivered]
        context.checkpoint("confirmed")
        # only now, with the new files in place: the location never lacks a complete audience
        context.details["stale_removed"] = deliverer.remove_stale(is_ours, [d.name for d in delivered])
        if location.retention_days:
            context.fence()
            cutoff = datetime.now(UTC) - timedelta(days=location.retention_days)
            context.details["retention_removed"] = deliverer.apply_retention(is_ours, cutoff)


def _stem(file_name: str) -> str:
    for suffix in (".csv.gz", ".csv", ".zip"):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


def _manifest(
    context: RunContext,
    activation: AudienceActivation,
    written: list[WrittenFile],
    counts: AudienceCounts,
    sql_sha256: str,
) -> dict[str, Any]:
    return {
        "activation": context.activation,
        "run_id": context.run_id,
        "generated_at": context.started_at.astimezone(UTC).isoformat(timespec="seconds"),
        "identifier": HEADER[activation.identifier],
        "rows": sum(f.rows for f in written),
        "rows_extracted": counts.extracted,
        "rows_rejected": counts.rejected,
        "rows_duplicate": counts.duplicates,
        "sql_file": activation.sql.as_posix(),
        "sql_sha256": sql_sha256,
        "files": [{"name": f.path.name, "rows": f.rows, "bytes": f.size, "sha256": f.sha256} for f in written],
    }
