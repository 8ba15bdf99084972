"""The manifest beside a delivered file: what was delivered, for people and for the next run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from etl.files.private import replace_text, write_error


def file_sha256(path: Path) -> str:
    """The digest a manifest records of a file, read a megabyte at a time (files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: Path, manifest: Mapping[str, object]) -> None:
    """Write ``manifest`` as JSON (sorted keys, indent 2) atomically, private to its owner."""
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        replace_text(Path(path), text, mode=0o600)
    except OSError as exc:
        raise write_error(Path(path), exc) from exc
