"""The manifest beside a delivered file: what was delivered, for people and for the next run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from etl.files.private import replace_text, write_error


def write_manifest(path: Path, manifest: Mapping[str, object]) -> None:
    """Write ``manifest`` as JSON (sorted keys, indent 2) atomically, private to its owner."""
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        replace_text(Path(path), text, mode=0o600)
    except OSError as exc:
        raise write_error(Path(path), exc) from exc
