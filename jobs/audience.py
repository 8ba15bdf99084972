"""Audience activations: warehouse SQL -> clean identifier file, complete and checked before its destination gets it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.config import AudienceActivation, Config
from etl.config.checks import warehouse_dialect
from etl.destinations import open_audience
from etl.errors import DeliveryFailed, GuardStop
from etl.extract import activation_batches, local_time
from etl.extract.pushdown import COUNT_COLUMN, warehouse_batches
from etl.files import CsvFileWriter, RejectWriter, WrittenFile, final_file_name, share_private, write_manifest
from etl.ops.history import size_after
from etl.runtime.ledger import open_store
from etl.runtime.results import Delivery
from etl.runtime.runs import RunContext
from etl.transform.audience import HEADER, AudienceCleaner, AudienceCounts, CleanBatch
from etl.transform.user_step import TransformContext, TransformStep
from etl.transform.members import MemberDiff, MemberSnapshot, StagedMembers

log = logging.getLogger("audience_sync.audience")

KIND = "audience"
#: a writer's max_bytes that never cuts a part: an audience file is one file (its destination may refuse it)
UNSPLIT = 1 << 62


@dataclass(frozen=True)
class Preview:
    counts: AudienceCounts
    sample: list[str]
    columns_used: str
    #: reason -> rows rejected for it (duplicates included), most frequent first
    rejected_by_reason: dict[str, int]


def cleaned_batches(
    config: Config, name: str, when: datetime, *, spill_dir: Path | None = None
) -> Iterator[tuple[AudienceCleaner, CleanBatch]]:
    """Extract and clean the audience chunk by chunk; the cleaner carries counts and the dedupe memory
    (spilled to ``spill_dir`` past its budget)."""
    activation = config.activation_of(name, AudienceActivation)
    cleaner = AudienceCleaner(
        activation.identifier, column=activation.identifier_column, where=config.query_where(name),
        spill_dir=spill_dir,
    )
    if activation.clean_in == "warehouse":
        yield from _warehouse_cleaned(config, name, when, cleaner)
        return
    step = _transform_step(config, name, when)

    def identifier_only(names: list[str]) -> list[int]:  # the other columns are never carried
        return [names.index(cleaner.identifier_column(names))]

    try:
        # a transform step sees every column: it may rename one to the identifier or filter on another
        for batch in activation_batches(config, name, when, columns=None if step else identifier_only):
            if step is None:
                yield cleaner, cleaner.clean(batch)
            else:
                shaped = step.shape(batch, cleaner.identifier_column)
                yield cleaner, cleaner.clean(shaped.table, shaped.rows)
        for deferred in cleaner.finish():
            yield cleaner, deferred
    finally:
        cleaner.close()


def _warehouse_cleaned(
    config: Config, name: str, when: datetime, cleaner: AudienceCleaner
) -> Iterator[tuple[AudienceCleaner, CleanBatch]]:
    """``clean_in = "warehouse"``: the warehouse sends each normalised key once with its row count; the
    cleaner checks them all again. A key the client normalises otherwise is a bug of the dialect's SQL:
    handled (`AudienceCleaner.clean_counted`), and said once per run, as the audience may hold a duplicate."""
    warned = False
    for batch in warehouse_batches(config, name, when, cleaner.check_type):
        parts = cleaner.clean_counted(batch, COUNT_COLUMN)
        cleaned = next(parts)
        if cleaner.disagreements and not warned:
            warned = True
            log.warning("%s: the %s warehouse normalised e-mail addresses otherwise than the client "
                        "(clean_in = \"warehouse\"): such keys are deduplicated by the client, but one "
                        "identical to a key sent earlier may be delivered twice; please report it, and use "
                        "clean_in = \"client\" meanwhile", name, warehouse_dialect(config, name))
        yield cleaner, cleaned
        for rejects_only in parts:
            yield cleaner, rejects_only


def _transform_step(config: Config, name: str, when: datetime) -> TransformStep | None:
    """The activation's transform function, loaded once per run before any row is read."""
    activation = config.activation_of(name, AudienceActivation)
    if activation.transform_target is None:
        return None
    file, function = activation.transform_target
    context = TransformContext(name, local_time(activation, when).date(), activation.params)
    return TransformStep(config.path(file), function, context)


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


@dataclass(frozen=True)
class Prepared:
    """An audience extracted, cleaned and written once: what each delivery of it starts from."""

    file_name: str
    written: list[WrittenFile]
    counts: AudienceCounts
    #: the members staged for the snapshot, and the rows rejected, beside the file
    members: Path
    rejects: Path
    #: what the manifest says of the query, when it is not the configuration's today (a replay's)
    query: dict[str, Any] | None = None


def run(context: RunContext) -> None:
    """The body of an audience run: extract → clean → write → deliver → retention. A fan-out
    (``destinations = [...]``) writes once, then delivers to each destination as a part of its own."""
    activation = context.config.activation_of(context.activation, AudienceActivation)
    prepared = _prepare(context, activation)
    if activation.destinations:
        _fan_out(context, activation, prepared)
    else:
        deliver(context, activation, prepared)


def _prepare(context: RunContext, activation: AudienceActivation) -> Prepared:
    file_name = final_file_name(context.config.file_name_pattern(context.activation),
                                local_time(activation, context.data_time), activation.file.compression)
    with context.step("extract"), StagedMembers(context.run_dir / f"{context.activation}.members.parquet") as members:
        written, counts = _write_audience(context, activation, file_name, members)
    return Prepared(file_name, written, counts, members.path, _rejects_path(context))


def deliver(context: RunContext, activation: AudienceActivation, prepared: Prepared) -> None:
    """From a written audience to its destination: the check, the manifest, the diff, the shrink guard, the
    delivery; shared by a run, each delivery of a fan-out and a replay."""
    config, name = context.config, context.activation
    with closing(open_audience(config, name)) as destination:
        destination.accept(prepared.written[0])
        manifest_path = _record_written(context, activation, prepared)
        context.checkpoint("written")
        snapshot = MemberSnapshot.of(config.state_dir, name)
        with context.step("diff"):
            diff = snapshot.diff(prepared.members, identifiers=destination.wants_members)
        context.details.update(diff.counts())  # a dry run reports the would-be diff too
        if not context.dry_run:
            check_shrink(context, activation, diff.size, diff)
            if destination.wants_members:  # a file is sent whole anyway: --full changes nothing for it
                context.confirm_full(f"all {diff.size:,} members again, and the removal of {diff.left:,} who left")
            diff = destination.deliver(context, [f.path for f in prepared.written] + [manifest_path], snapshot, diff)
            context.details["members"] = diff.size
            context.results["rows_delivered"] = _delivered(context, diff, changes_only=destination.wants_members)
        context.delivery = destination.describe(context)


def _fan_out(context: RunContext, activation: AudienceActivation, prepared: Prepared) -> None:
    """Each destination gets the one written file as a delivery of its own: its guard, lease, snapshot and
    ledger entry. One failing does not stop the others; the run fails if any did, naming them."""
    assert context.run_part is not None
    _record_counts(context, prepared.counts)
    context.results.update(file_name=prepared.written[0].path.name, sha256=prepared.written[0].sha256)
    outcomes = {}
    for destination in activation.destinations:
        part_config, part = context.config.delivery(context.activation, destination)
        outcomes[destination] = context.run_part(part_config, part, _delivery_of(prepared))
        context.parts.append(outcomes[destination])
    context.details["destinations"] = {
        destination: {"activation": o.activation, "run_id": o.run_id, "status": o.status, "error": o.error}
        for destination, o in outcomes.items()}
    context.results["rows_delivered"] = sum(o.results.rows_delivered or 0 for o in outcomes.values())
    failed = [destination for destination, o in outcomes.items() if not o.ok]
    if not failed:
        context.delivery = Delivery(", ".join(outcomes), f"{len(outcomes)} destinations ({', '.join(outcomes)})", "")
    else:
        context.details["failed_destinations"] = failed
        raise DeliveryFailed(
            f"not delivered to {', '.join(failed)} ({len(failed)} of {len(outcomes)} destinations)"
            + "".join(f"; {outcomes[d].activation}: {outcomes[d].error}" for d in failed),
            where=context.activation,
            hint="each destination's run says why (`audience-sync history`); the next run delivers to every "
                 "destination again")


def _delivery_of(prepared: Prepared) -> Callable[[RunContext], None]:
    """The body of one destination's part: the fan-out's files shared into its own run directory."""

    def body(context: RunContext) -> None:
        activation = context.config.activation_of(context.activation, AudienceActivation)
        written = [replace(file, path=context.run_dir / file.path.name) for file in prepared.written]
        shared = replace(prepared, written=written, members=context.run_dir / f"{context.activation}.members.parquet",
                         rejects=_rejects_path(context))
        pairs = [(file.path, copy.path) for file, copy in zip(prepared.written, written)]
        for source, path in [*pairs, (prepared.members, shared.members), (prepared.rejects, shared.rejects)]:
            share_private(source, path)
        deliver(context, activation, shared)

    return body


def _delivered(context: RunContext, diff: MemberDiff, *, changes_only: bool) -> int:
    """What this run delivered: a file replaces the whole audience, so all its members; a destination
    that takes who entered and left (a membership table) only those changes, less what it refused."""
    if not changes_only:
        return diff.size
    return diff.entered + diff.left - int(context.details.get("refused") or 0)


def _record_written(context: RunContext, activation: AudienceActivation, prepared: Prepared) -> Path:
    """The manifest beside the file, and what was written into the run's results; returns the manifest."""
    written, counts = prepared.written, prepared.counts
    # the SQL file or the dbt model, and its hash
    query = prepared.query or context.config.query(context.activation).record
    manifest_path = context.run_dir / f"{_stem(prepared.file_name)}.manifest.json"
    files = [{"name": f.path.name, "rows": f.rows, "bytes": f.size, "sha256": f.sha256} for f in written]
    write_manifest(manifest_path, {
        "activation": context.activation,
        "run_id": context.run_id,
        "generated_at": context.started_at.astimezone(UTC).isoformat(timespec="seconds"),
        "identifier": HEADER[activation.identifier],
        "rows": sum(f.rows for f in written),
        "rows_extracted": counts.extracted,
        "rows_rejected": counts.rejected,
        "rows_duplicate": counts.duplicates,
        **query,
        "files": files,
    })
    _record_counts(context, counts)
    context.results.update(rows_delivered=0, file_name=written[0].path.name, sha256=written[0].sha256)
    context.details.update(files=files, local_dir=str(context.run_dir), manifest=str(manifest_path),
                           sql_sha256=query.get("sql_sha256"))
    return manifest_path


def _record_counts(context: RunContext, counts: AudienceCounts) -> None:
    context.results.update(rows_extracted=counts.extracted, rows_rejected=counts.rejected,
                           rows_duplicate=counts.duplicates)
    context.details["rejects_file"] = str(_rejects_path(context))


def _rejects_path(context: RunContext) -> Path:
    return context.run_dir / f"{context.activation}.rejects.csv"


def check_shrink(context: RunContext, activation: AudienceActivation, size: int, diff: MemberDiff) -> None:
    """A sudden shrink is far more often a broken query than real churn, and would drop people from campaigns.

    The refusal says how many left and entered: a broken query rarely brings anyone new, real churn does."""
    if context.force:
        return
    store = open_store(context.config)
    try:
        last = store.last_success(context.activation)
    finally:
        store.close()
    previous = (size_after(last) or 0) if last else 0
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


def _write_audience(
    context: RunContext, activation: AudienceActivation, file_name: str, members: StagedMembers
) -> tuple[list[WrittenFile], AudienceCounts]:
    counts = AudienceCounts()
    with (
        CsvFileWriter(
            context.run_dir,
            file_name,
            header=HEADER[activation.identifier],
            separator=activation.file.separator,
            compression=activation.file.compression,
            max_bytes=UNSPLIT,  # one file whatever its size; the destination may refuse it
        ) as writer,
        RejectWriter(_rejects_path(context)) as rejects,
    ):
        for cleaner, cleaned in cleaned_batches(context.config, context.activation, context.data_time,
                                                spill_dir=context.run_dir):
            writer.write(cleaned.identifiers)
            members.add(cleaned.identifiers, cleaned.hashes)
            rejects.write(cleaned.rejects)
            counts = cleaner.counts
            context.tick(vars(counts))
        context.checkpoint("extracted")
        written = writer.close()
        rejects.close()
    return written, counts


def _stem(file_name: str) -> str:
    for suffix in (".csv.gz", ".csv", ".zip"):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name
