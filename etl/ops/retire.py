"""Retiring an activation: its files and members leave the places it delivered them to, its local state goes,
its history stays and the retirement joins it.

The usual case is an activation already removed from (or renamed in) the configuration, so where it
delivered is read from the targets its runs recorded in the ledger (`Target`), with the configuration's
own when it is still there; credentials always come from a configured destination that reaches the same
place. Retiring is recorded as a run of kind ``retire``, under the activation's lease, so it cannot race a
run of it, and a re-created activation of that name starts fresh: no snapshot, and a last successful run
that delivered nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.config import Config
from etl.config.load import valid_name
from etl.config.model import DELIVERY_SEPARATOR
from etl.destinations import open_audience, open_retirement
from etl.destinations.base import Retirement, Target
from etl.errors import AudienceSyncError, ConfigError, UsageError
from etl.runtime.activation_state import ROOT, RUNS, kept_state, remove_state
from etl.runtime.ledger import RunRecord, StateStore, open_store
from etl.runtime.results import RETIRE_KIND as RETIRE, RunStatus
from etl.runtime.runs import RunContext, RunOutcome, execute

log = logging.getLogger("audience_sync.retire")


@dataclass
class Retiring:
    """What retiring an activation would remove, and what it keeps."""

    name: str
    retirements: list[Retirement]
    state: list[Path]
    #: runs in the ledger, kept
    runs: int
    #: the retirement that already happened, when nothing has been left since
    already: RunRecord | None
    notes: list[str] = field(default_factory=list)


def plan(config: Config, store: StateStore, name: str) -> Retiring:
    """Nothing is changed; a target no configured destination reaches is a ConfigError, before anything is removed."""
    if not all(valid_name(each) for each in name.split(DELIVERY_SEPARATOR, 1)):
        raise UsageError(f"{name!r} is not an activation name", where="retire",
                         hint="names use letters, digits, '_', '.', '-' only, at most 100 characters; a fan-out's "
                              "delivery is ACTIVATION@DESTINATION")
    records = store.runs(name, limit=1_000_000)
    state = kept_state(config.state_dir, name)
    part = config.part_of(name)
    if part is not None:
        config, _ = config.delivery(*part)
    in_config = name in config.activations
    if not (in_config or records or state):
        known = ", ".join(sorted(set(config.activations) | set(store.latest_runs()))) or "none"
        raise ConfigError([(f"activation {name!r}", "nothing to retire: not in the configuration, no run in the "
                            f"ledger, no state in {config.state_dir} (known: {known})")], source=config.source)
    done = records[0] if records and records[0].kind == RETIRE and records[0].status == RunStatus.SUCCEEDED else None
    targets = recorded_targets(records)
    if in_config and config.activations[name].kind == "audience":
        targets.insert(0, open_audience(config, name).target())
    unique = {(t.kind, t.where, t.pattern): t for t in reversed(targets)}  # the configuration's wins
    retiring = Retiring(name, [open_retirement(config, name, t) for t in unique.values()], state,
                        len(records), done if done and not state else None)
    if in_config:
        retiring.notes.append(f"still in the configuration ({config.source}): its next run delivers it again; "
                              "remove it there")
    if not unique and any(r.details.get("delivered") for r in records):
        retiring.notes.append("its runs delivered before deliveries recorded their target: where they went, see "
                              f"`audience-sync history {name}` and `show`; remove those files by hand")
    for retirement in retiring.retirements:
        retiring.notes += retirement.notes
    return retiring


def deliveries_left(config: Config, name: str) -> list[str]:
    """The deliveries (``NAME@destination``) a fan-out no longer in the configuration left in the ledger
    or the state directory: retired with it, as nothing delivers to them any more."""
    if name in config.activations:
        return []
    prefix = f"{name}{DELIVERY_SEPARATOR}"
    known: set[str] = set()
    for root in (ROOT, RUNS):
        directory = config.state_dir / root
        known |= {path.name for path in directory.iterdir()} if directory.is_dir() else set()
    with open_store(config) as store:
        known |= set(store.latest_runs())
    return sorted(part for part in known if part.startswith(prefix))


def recorded_targets(records: list[RunRecord]) -> list[Target]:
    """Newest first, every target a delivery recorded (a location can change over an activation's life)."""
    found = (Target.from_details(record.details.get("target")) for record in records if not record.dry_run)
    return [target for target in found if target is not None]


def pending(retiring: Retiring) -> list[str]:
    """A dry run: exactly what retiring would remove, listed at each target."""
    lines = [line for retirement in retiring.retirements for line in retirement.pending()]
    return lines + [f"{path} (local state)" for path in retiring.state]


def retire(config: Config, store: StateStore, retiring: Retiring) -> RunOutcome:
    """Under the activation's lease (LOCKED while a run holds it), recorded in the ledger whatever the end."""

    def body(context: RunContext) -> None:
        removed: list[str] = []
        try:
            for retirement in retiring.retirements:
                removed += retirement.retire(context)
            context.fence()
            state = kept_state(config.state_dir, retiring.name)  # this retirement's own run directory too
            remove_state(state)
            removed += [f"{path} (local state)" for path in state]
        finally:
            context.details.update(removed=removed, note=_summary(removed, retiring.runs))

    return execute(config, store, retiring.name, RETIRE, body, shown=True)


def _summary(removed: list[str], runs: int) -> str:
    return (f"retired: {len(removed)} removed" + (f" ({'; '.join(removed)})" if removed else "")
            + f"; {runs:,} earlier run{'' if runs == 1 else 's'} kept in the ledger")


@dataclass(frozen=True)
class Said:
    """What `retire` tells: as text, as one JSON object, and the retirement run (None: a dry run, or nothing to do)."""

    text: str
    json: dict[str, Any]
    outcome: RunOutcome | None


def retire_command(config: Config, name: str, *, dry_run: bool) -> Said:
    with open_store(config) as store:
        retiring = plan(config, store, name)
        done = retiring.already
        if done is not None:
            text = (f"{name} was already retired (run {done.run_id}, {done.started_at:%Y-%m-%d %H:%M} UTC) and has "
                    "left nothing since: nothing to do")
            return Said(text, {"event": "already_retired", "activation": name, "run_id": done.run_id}, None)
        outcome = None if dry_run else retire(config, store, retiring)
    lines = pending(retiring) if outcome is None else list(outcome.details.get("removed", []))
    said = "would remove (dry run, nothing removed)" if outcome is None else "removed"
    text = "\n".join([f"{name}: {said}:", *(f"  {line}" for line in lines or ["nothing"]),
                      *(f"note: {note}" for note in retiring.notes),
                      f"kept: {retiring.runs:,} run{'' if retiring.runs == 1 else 's'} in the ledger (history)"
                      + ("; the retirement is recorded there" if outcome else "")])
    return Said(text, {"event": "retired" if outcome else "retire_planned", "activation": name,
                       "run_id": outcome.run_id if outcome else None, "status": outcome.status if outcome else None,
                       "removed" if outcome else "would_remove": lines, "notes": retiring.notes,
                       "error": outcome.error if outcome else None}, outcome)


def leftovers(config: Config, *, shared_ledger: bool) -> list[str]:
    """State of activations no longer in the configuration, for `validate` to point at `retire`. Only a ledger
    that exists is read (`validate` creates nothing), and a shared one (``state_url``) only when ``shared_ledger``
    (`validate --connect`): without it, `validate` contacts no server."""
    names: dict[str, list[str]] = {}
    for kind, root in (("a state directory", ROOT), ("run files", RUNS)):
        directory = config.state_dir / root
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            names.setdefault(path.name, []).append(kind)
    if (shared_ledger and config.settings.state_url) or (
            not config.settings.state_url and (config.state_dir / "state.db").is_file()):
        try:
            with open_store(config) as store:
                for name, last in store.latest_runs().items():
                    if name not in config.activations and config.part_of(name) is None and last.kind != RETIRE:
                        names.setdefault(name, []).append(_unretired(store, name))
        except AudienceSyncError as exc:
            return [f"the ledger could not be read to find activations left unretired: {exc.message()}"]
    return [f"[activations.{name}] is no longer in the configuration but left {', '.join(kept)}: "
            f"`audience-sync retire {name}` removes them (`--dry-run` lists what)"
            for name, kept in sorted(names.items()) if name not in config.activations and config.part_of(name) is None]


def _unretired(store: StateStore, name: str) -> str:
    targets = {target.shown for target in recorded_targets(store.runs(name, limit=1_000_000))}
    return "runs in the ledger not retired" + (f", files or members at {', '.join(sorted(targets))}"
                                               if targets else "")
