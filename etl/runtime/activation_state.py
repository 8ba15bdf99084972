"""Where an activation keeps its state between runs: ``<state_dir>/activations/<name>/``.

Flat ``snapshots/<name>[.members].parquet`` names collided for names with dots (``vip`` and
``vip.members``). An old flat file is adopted on first use only if its columns match, so of two
colliding activations only the owner takes it; the rename is crash-safe.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from etl.files import _sync_directory, private_directory

log = logging.getLogger("audience_sync.state")

ROOT = "activations"
#: each run's own files, ``<state_dir>/runs/<activation>/<run id>/`` (etl.runtime.runs)
RUNS = "runs"


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
    import pyarrow.parquet as pq  # here: `validate` looks for activations' state without loading pyarrow

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


def kept_state(state_dir: Path, activation: str) -> list[Path]:
    """What the activation keeps on this machine: its state directory, its runs' files, and flat snapshots of
    older versions that are its own (by their columns: ``vip.members.parquet`` may be ``vip.members``'s)."""
    import pyarrow.parquet as pq  # here: see _adopt

    found = [path for path in (state_dir / ROOT / activation, state_dir / RUNS / activation)
             if path.exists() or path.is_symlink()]
    for kind in (MEMBERS, ROWS):
        old = state_dir / "snapshots" / f"{activation}{kind.old_suffix}"
        try:
            if kind.columns <= set(pq.read_schema(old).names):
                found.append(old)
        except Exception:  # missing or unreadable: not known to be this activation's
            continue
    return found


def remove_state(paths: list[Path]) -> None:
    """A link is removed, never followed: what it points to is not the activation's."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
