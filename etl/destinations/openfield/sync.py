"""A profiles run into OpenField: rows → payloads → what changed → budget → find, then create or update.

The same rules as an Actito import, with OpenField's own wire:

* **Delta**: a `RowSnapshot` of the payloads sent (hash per key); an unchanged second run sends
  nothing. Unlike a bulk import, each profile lands on its own, so the profiles that were
  delivered are remembered even when a later one fails the run: the next run resends only the rest.
* **Budget**: every attempt counts; the requests of the day (UTC) are summed from the ledger, and a
  run that would go over ``daily_request_budget`` (two requests a profile: find, then create or
  update) is refused before anything is sent.
* **Nothing held in memory**: the payloads to send are spooled to a 0600 JSON-lines file in the
  run's directory while the query streams, then sent from it.
* **Rejects**: a value OpenField would refuse never leaves (etl.destinations.openfield.payload); a profile that
  OpenField still refuses (400, 409, 422) is rejected with its reason and the run goes on; any
  other failure (credentials, rate limit, network) stops the run with one clear error.
"""

from __future__ import annotations

import json
import logging
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from etl.config import OpenFieldDestination, ProfilesActivation
from etl.extract import activation_batches
from etl.files import RejectWriter, create_private
from etl.destinations.openfield.client import OpenFieldClient, Outcome
from etl.destinations.openfield.connect import open_client
from etl.errors import OpenFieldBudgetExhausted, OpenFieldRefused
from etl.destinations.openfield.payload import PayloadBuilder, Profile, payload_text
from etl.runtime.runs import RunContext
from etl.runtime.ledger import open_store
from etl.runtime.activation_state import ROWS, state_file
from etl.transform.delta import RowSnapshot, fingerprint, key_hashes, row_hashes
from etl.transform import SeenHashes

log = logging.getLogger("audience_sync.openfield")

#: requests one profile costs: find, then create or update
REQUESTS_PER_PROFILE = 2


@dataclass
class _Pending:
    """What was spooled to send: counts, and per profile (in spool order) its hashes for the snapshot."""

    key_hashes: list[np.ndarray] = field(default_factory=list)
    row_hashes: list[np.ndarray] = field(default_factory=list)
    count: int = 0


def run(context: RunContext) -> None:
    """The body of a profiles run whose destination is OpenField."""
    config, name = context.config, context.activation
    activation = config.activation_of(name, ProfilesActivation)
    destination = config.destination_of(activation.destination, OpenFieldDestination)
    batches = activation_batches(config, name, context.started_at)
    first = next(batches, None)
    builder = PayloadBuilder(
        first.schema.names if first is not None else [], match_on=destination.match_on,
        party_version=destination.party_version, language=destination.language,
        services=activation.subscriptions, where=str(config.path(activation.sql)),
    )
    snapshot = None
    if activation.delta:
        snapshot = RowSnapshot(
            state_file(config.state_dir, name, ROWS),
            fingerprint(["openfield", destination.tenant_id, destination.application_id, activation.mode,
                         *builder.fingerprint_parts()]),
        )
    spool = context.run_dir / f"{name}.profiles.jsonl"
    rejects_path = context.run_dir / f"{name}.rejects.csv"
    context.details.update(openfield=destination.tenant_id, rejects_file=str(rejects_path),
                           dropped_columns=builder.dropped)
    with RejectWriter(rejects_path) as rejects:
        with context.step("extract"):
            pending = _spool(context, builder, chain([first] if first else [], batches), snapshot, rejects, spool)
        if not pending.count:
            context.results["rows_delivered"] = 0
            context.details["note"] = "nothing changed since the last successful run: nothing sent"
            return
        _check_budget(context, activation.destination, destination, pending.count * REQUESTS_PER_PROFILE)
        if context.dry_run:
            context.details["note"] = f"dry run: {pending.count} profile(s) to send, nothing sent to OpenField"
            return
        with context.step("send"), open_client(config, activation.destination) as client:
            _send_all(context, client, activation, spool, pending, snapshot, rejects)


def _spool(
    context: RunContext,
    builder: PayloadBuilder,
    batches: Iterator[pa.RecordBatch],
    snapshot: RowSnapshot | None,
    rejects: RejectWriter,
    spool: Path,
) -> _Pending:
    """Map every chunk, keep the first row of each key that changed, and write it to the spool."""
    counts = {"extracted": 0, "rejected": 0, "unchanged": 0, "sent": 0, "duplicates": 0}
    pending = _Pending()
    seen = SeenHashes()
    with _private_text(spool) as out:
        for batch in batches:
            built = builder.build(batch)
            counts["extracted"] += batch.num_rows
            rejects.write(built.rejects)
            counts["rejected"] += built.rejects.num_rows
            profiles = built.profiles
            keys = key_hashes(pa.array([p.key for p in profiles], pa.string()))
            texts = [payload_text(p.payload) for p in profiles]
            rows = row_hashes(pa.table({"payload": pa.array(texts, pa.string())}))
            first = seen.add_new(keys)
            duplicates = [p for p, is_first in zip(profiles, first) if not is_first]
            rejects.write(pa.table({
                "row": pa.array([p.row for p in duplicates], pa.int64()),
                "value": pa.array([p.key for p in duplicates], pa.string()),
                "reason": pa.array([f"duplicate {builder.match_on}: an earlier row has it"] * len(duplicates),
                                   pa.string()),
            }))
            changed = first & (snapshot.changed(keys, rows) if snapshot is not None else True)
            for index in np.flatnonzero(changed):
                profile = profiles[index]
                out.write(json.dumps({"row": profile.row, "key": profile.key}) + "\t" + texts[index] + "\n")
            pending.key_hashes.append(keys[changed])
            pending.row_hashes.append(rows[changed])
            pending.count += int(changed.sum())
            counts["rejected"] += len(duplicates)
            counts["duplicates"] += len(duplicates)
            counts["unchanged"] += int((first & ~changed).sum())
            counts["sent"] = pending.count
            context.tick({**counts, "kept": pending.count})
    context.results.update(rows_extracted=counts["extracted"], rows_rejected=counts["rejected"])
    context.details.update(unchanged=counts["unchanged"], to_send=pending.count)
    return pending


def _send_all(
    context: RunContext,
    client: OpenFieldClient,
    activation: ProfilesActivation,
    spool: Path,
    pending: _Pending,
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
            # what OpenField now holds, even if the run stops halfway: the next run resends only the rest
            # (unless another run took the activation over: its snapshot stands)
            context.fence()
            snapshot.stage(np.concatenate(pending.key_hashes)[delivered], np.concatenate(pending.row_hashes)[delivered])
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


def _check_budget(context: RunContext, destination_name: str, destination: OpenFieldDestination, needed: int) -> None:
    """Refuse before sending rather than stop halfway through: today's requests come from the ledger."""
    config = context.config
    activations = {name for name, a in config.activations.items() if a.destination == destination_name}
    today = datetime.now(UTC).date()
    with closing(open_store(config)) as store:
        runs_today = store.runs(since=today, limit=100_000)
    used = sum(int(record.details.get("requests", 0)) for record in runs_today
               if record.activation in activations and record.run_id != context.run_id)
    context.details["requests_today_before"] = used
    if used + needed > destination.daily_request_budget:
        raise OpenFieldBudgetExhausted(
            f"this run needs up to {needed} requests ({needed // REQUESTS_PER_PROFILE} profiles) but {used} of the "
            f"{destination.daily_request_budget} allowed today are used",
            where=f"[destinations.{destination_name}] daily_request_budget",
            hint="wait for tomorrow (UTC), or raise daily_request_budget if your OpenField contract allows more",
        )
