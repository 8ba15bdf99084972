"""Where an activation keeps its state between runs: one directory per activation.

Earlier versions kept every snapshot flat in ``<state_dir>/snapshots``, named after the activation:
``<name>.members.parquet`` for an audience's delivered members, ``<name>.parquet`` for an import's
delta. Activation names may contain dots, so an audience ``vip`` and a profiles activation
``vip.members`` shared ``snapshots/vip.members.parquet``, each overwriting the other's file and then
failing to read it. Now each activation has its own directory, ``<state_dir>/activations/<name>/``,
and a file in it is named by what it holds (`MEMBERS`, `ROWS`): two activations (whose names differ,
in case too: validate refuses names equal apart from case) never share a path. A new root, not
``snapshots/<name>/``: an activation named ``x.parquet`` would otherwise want a directory where the
old flat file of ``x`` is.

The first time an activation asks for a state file, its file under the old name is moved into place
if it holds what the new name is for (its columns say so: in the shared-name case above only one of
the two activations adopts it; the other starts afresh, as after a lost state directory). The move is
a rename in one file system, so a crash leaves the old name or the new one, and the next run finishes.
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
    """A kind of per-activation state file: its name now, its flat name before, the columns it holds."""

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
    """The activation's own state directory, created private (0700, never through a link)."""
    return private_directory(state_dir / ROOT / activation, root=state_dir)


def state_file(state_dir: Path, activation: str, kind: StateKind) -> Path:
    """The path of one of the activation's state files, its old flat file moved there on first use."""
    path = activation_dir(state_dir, activation) / kind.name
    if not path.exists():
        _adopt(state_dir / "snapshots" / f"{activation}{kind.old_suffix}", path, kind)
    return path


def _adopt(old: Path, new: Path, kind: StateKind) -> None:
    """Move ``old`` to ``new`` if it holds ``kind``'s columns; leave it otherwise (it is another activation's)."""
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
    _sync_directory(new.parent)  # the rename itself is durable before the old name is forgotten
    log.info("migrated %s to %s", old, new)

