"""Where an activation keeps its state between runs: ``<state_dir>/activations/<name>/``.

Flat ``snapshots/<name>[.members].parquet`` names collided for names with dots (``vip`` and
``vip.members``). An old flat file is adopted on first use only if its columns match, so of two
colliding activations only the owner takes it; the rename is crash-safe.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from etl.files import _sync_directory, private_directory

log = logging.getLogger("audience_sync.state")

ROOT = "activations"


@dataclass(frozen=True)
class StateKind:

    #: file name inside the activation's directory
    name: str
    #: suffix of the old flat name, ``snapshots/<activation><old_suffix>``
    old_suffix: str
    columns: frozenset[str]


#: an audience's delivered members (etl.transform.members.MemberSnapshot)
MEMBERS = StateKind("members.parquet", ".members.parquet", frozenset({"member", "hash"}))
#: an import's rows as last sent, for delta imports (etl.transform.delta.RowSnapshot)
ROWS = StateKind("rows.parquet", ".parquet", frozenset({"key", "row"}))


def activation_dir(state_dir: Path, activation: str) -> Path:
    return private_directory(state_dir / ROOT / activation, root=state_dir)


def state_file(state_dir: Path, activation: str, kind: StateKind) -> Path:
    path = activation_dir(state_dir, activation) / kind.name
    if not path.exists():
        _adopt(state_dir / "snapshots" / f"{activation}{kind.old_suffix}", path, kind)
    return path


def _adopt(old: Path, new: Path, kind: StateKind) -> None:
    try:
        columns = set(pq.read_schema(old).names)
    except FileNotFoundError:
        return
    except Exception as exc:  # unreadable: not ours to judge, and the run must not fail for a migration
        log.warning("not migrating %s: %s", old, exc)
        return
    if not kind.columns <= columns:
        log.info("not migrating %s to %s: it holds another activation's state (columns %s)",
                 old, new, ", ".join(sorted(columns)))
        return
    os.replace(old, new)
    _sync_directory(new.parent)
    log.info("migrated %s to %s", old, new)

