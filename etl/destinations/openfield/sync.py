"""Profiles into OpenField: rows → payloads → what changed → budget → find, then create or update.

Unlike a bulk import each profile lands on its own, so those delivered are remembered even when a
later one fails the run. A profile OpenField refuses (400, 409, 422) is rejected and the run goes on;
any other failure stops it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from etl.config import Config, OpenFieldDestination, ProfilesActivation
from etl.destinations.base import refuse_over_budget
from etl.destinations.openfield.client import OpenFieldClient, Outcome
from etl.destinations.openfield.connect import open_client
from etl.errors import OpenFieldBudgetExhausted, OpenFieldRefused, UsageError
from etl.destinations.openfield.payload import PayloadBuilder, Profile, payload_text
from etl.files import RejectWriter, WrittenFile, create_private
from etl.runtime.ledger import open_store
from etl.runtime.results import Delivery
from etl.runtime.runs import RunContext
from etl.transform.delta import MappedRows, RowSnapshot, Staged, fingerprint
from etl.transform.mapping import Mapping as RowMapping

#: requests one profile costs: find, then create or update
REQUESTS_PER_PROFILE = 2


class _Payloads:
    """The query's chunks as OpenField payloads, one per profile, hashed as sent."""

    def __init__(self, builder: PayloadBuilder, fingerprint_: str) -> None:
        self._builder = builder
        self.key_name = builder.match_on
        self.fingerprint = fingerprint_

    def map(self, batch: pa.RecordBatch) -> MappedRows:
        built = self._builder.build(batch)
        profiles = built.profiles
        rows = pa.table({"row": pa.array([p.row for p in profiles], pa.int64()),
                         "key": pa.array([p.key for p in profiles], pa.string()),
                         "payload": pa.array([payload_text(p.payload) for p in profiles], pa.string())})
        return MappedRows(rows=rows, keys=rows.column("key"), source_rows=rows.column("row"), rejects=built.rejects,
                          hashed=rows.select(["payload"]))


class OpenFieldProfiles:
    """Profiles pushed one by one to an OpenField tenant, from a spool written while the query streams."""

    def __init__(self, config: Config, name: str) -> None:
        self._activation = config.activation_of(name, ProfilesActivation)
        self._destination = config.destination_of(self._activation.destination, OpenFieldDestination)
        self._builder: PayloadBuilder | None = None

    def preflight(self, context: RunContext, columns: list[str]) -> _Payloads:
        destination, activation = self._destination, self._activation
        builder = PayloadBuilder(
            columns, match_on=destination.match_on, party_version=destination.party_version,
            language=destination.language, services=activation.subscriptions,
            on_invalid=activation.invalid_policies(),
            where=context.config.query_where(context.activation),
        )
        context.details.update(openfield=destination.tenant_id, dropped_columns=builder.dropped)
        self._builder = builder
        return _Payloads(builder, fingerprint(["openfield", destination.tenant_id, destination.application_id,
                                               activation.mode, *builder.fingerprint_parts()]))

    def mapping(self) -> RowMapping:
        assert self._builder is not None  # after preflight
        return self._builder.mapping

    def recover(self, context: RunContext, snapshot_path: Path | None) -> None:
        """Nothing is left in flight: each profile that landed was put in the snapshot as it landed."""

    @contextmanager
    def staging(self, context: RunContext) -> Iterator[Callable[[pa.Table], None]]:
        with _private_text(self._spool(context)) as out:
            def write(rows: pa.Table) -> None:
                for row, key, text in zip(*(rows.column(name).to_pylist() for name in ("row", "key", "payload"))):
                    out.write(json.dumps({"row": row, "key": key}) + "\t" + text + "\n")

            yield write

    def reserve(self, context: RunContext, staged: Staged) -> str:
        """Every attempt counts: the requests of the day (UTC) are summed from the ledger."""
        config, name = context.config, self._activation.destination
        needed = staged.count * REQUESTS_PER_PROFILE
        activations = {activation for activation, a in config.activations.items() if a.destination == name}
        with closing(open_store(config)) as store:
            runs_today = store.runs(since=datetime.now(UTC).date(), limit=100_000)
        used = sum(int(record.details.get("requests", 0)) for record in runs_today
                   if record.activation in activations and record.run_id != context.run_id)
        context.details["requests_today_before"] = used
        refuse_over_budget(
            OpenFieldBudgetExhausted, needs=f"up to {needed} requests ({staged.count} profiles)", used=used,
            needed=needed, allowed=self._destination.daily_request_budget,
            where=f"[destinations.{name}] daily_request_budget",
            hint="wait for tomorrow (UTC), or raise daily_request_budget if your OpenField contract allows more",
        )
        return f"{staged.count:,} profiles in up to {needed:,} requests to OpenField"

    def restage(self, context: RunContext, parts: list[WrittenFile]) -> None:
        raise UsageError(f"{context.activation} sends its profiles to OpenField one request at a time: no run "
                         "of it has files to deliver again", where="replay",
                         hint=f"`audience-sync run {context.activation} --full` sends every profile again")

    def send(self, context: RunContext, staged: Staged, snapshot: RowSnapshot | None, rejects: RejectWriter) -> None:
        if context.dry_run:
            context.details["note"] = f"dry run: {staged.count} profile(s) to send, nothing sent to OpenField"
            return
        with context.step("send"), open_client(context.config, self._activation.destination) as client:
            _send_all(context, client, self._activation, self._spool(context), staged, snapshot, rejects)

    def describe(self, context: RunContext) -> Delivery:
        details, where = context.details, f"OpenField tenant '{self._destination.tenant_id}'"
        if context.dry_run or "created" not in details:
            return Delivery("openfield", where, f"{details.get('to_send', 0):,} changed profiles"
                            f"{' (dry run, nothing sent)' if context.dry_run else ''}, "
                            f"{details.get('unchanged', 0):,} unchanged")
        return Delivery("openfield", where, f"{details['created']:,} created, {details['updated']:,} updated, "
                                            f"{details.get('unchanged', 0):,} unchanged")

    def close(self) -> None:
        """The client is opened and closed around the sends."""

    @staticmethod
    def _spool(context: RunContext) -> Path:
        return context.run_dir / f"{context.activation}.profiles.jsonl"


def _send_all(
    context: RunContext,
    client: OpenFieldClient,
    activation: ProfilesActivation,
    spool: Path,
    pending: Staged,
    snapshot: RowSnapshot | None,
    rejects: RejectWriter,
) -> None:
    """Send the spooled profiles, a few at a time in parallel (within the client's limits)."""
    create, update = activation.mode != "UPDATE_ONLY", activation.mode != "CREATE_ONLY"
    outcomes: dict[str, int] = {"created": 0, "updated": 0, "skipped": 0, "refused": 0}
    delivered = np.zeros(pending.count, dtype=bool)
    workers = max(1, client.max_concurrency)

    def one(item: tuple[int, Profile]) -> Outcome | OpenFieldRefused:
        _, profile = item
        try:
            return client.upsert(profile.key, profile.payload, create=create, update=update)
        except OpenFieldRefused as refused:
            return refused

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openfield") as pool:
            profiles = enumerate(_read_spool(spool))
            # the first profile goes alone: wrong credentials or routes then cost one request, not one per worker
            size = 1
            while chunk := list(islice(profiles, size)):
                context.fence()  # a run taken over sends nothing more
                size = workers * 8
                for (index, profile), outcome in zip(chunk, pool.map(one, chunk)):
                    if isinstance(outcome, OpenFieldRefused):
                        outcomes["refused"] += 1
                        rejects.write(pa.table({"row": [profile.row], "value": [profile.key],
                                                "reason": [f"refused by OpenField: {outcome.openfield_message}"]}))
                        continue
                    outcomes[outcome] += 1
                    delivered[index] = outcome != "skipped"
                context.tick({"extracted": context.results["rows_extracted"], "kept": int(delivered.sum()),
                              "rejected": outcomes["refused"], "duplicates": 0})
    finally:
        context.results["rows_delivered"] = outcomes["created"] + outcomes["updated"]
        context.results["rows_rejected"] = context.results.get("rows_rejected", 0) + outcomes["refused"]
        context.details.update(outcomes, requests=client.requests_sent)
        if snapshot is not None:
            # what OpenField now holds, even if the run stops halfway (unless another run took over)
            context.fence()
            hashes = pending.hashes()
            snapshot.stage(hashes.column("key").to_numpy()[delivered], hashes.column("row").to_numpy()[delivered])
            snapshot.commit()


def _read_spool(spool: Path) -> Iterator[Profile]:
    with spool.open(encoding="utf-8") as lines:
        for line in lines:
            head, _, text = line.rstrip("\n").partition("\t")
            where = json.loads(head)
            yield Profile(int(where["row"]), str(where["key"]), json.loads(text))


def _private_text(path: Path) -> IO[str]:
    """A new text file only its owner can read: the payloads are personal data."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return io.TextIOWrapper(create_private(path), encoding="utf-8")
